"""Benchmark of the factorization-free eigensolver (``lobpcg_amg``) against SciPy's eigsh.

Problem (issue 5): the lowest ``--nev`` (50) eigenpairs of ``A φ = λ B φ`` with A = D·K (P1
stiffness of the Neumann Laplacian, D = 0.002 µm²/µs) and B = M (P1 mass) on gmsh balls of
radius 5 µm (``--sizes``: 20k or 100k nodes; meshes cached in ``--mesh-dir``), or on a pencil
saved as ``PREFIX_A.npz`` / ``PREFIX_B.npz`` (``--pencil PREFIX``, scipy.sparse.save_npz).

Phases, each in its own subprocess with pinned threads (``--threads``, BLAS/OpenMP/torch):

* ``amg``: ``lobpcg_amg(A, B, nev, tol=--tol)``; median of ``--repeat`` runs (wall and CPU
  seconds), iterations, preconditioned columns, largest relative residual
  ``‖Aφ − λBφ‖/(|λ|‖Bφ‖ + ‖Aφ‖)`` recomputed here from the returned pairs (λ > 0).
* ``eigsh`` (unless ``--skip-baseline``): the default SciPy baseline
  ``eigsh(A, k=nev, M=B, sigma=-1e-8)`` (shift-invert, SuperLU with its default ordering),
  run once; its eigenvalues are compared with the AMG ones (max relative difference over the
  nonzero eigenvalues) and its residuals reported the same way.

On this project's shared 2-core machines other jobs change wall times by up to 2x: compare
ratios from one run of this script, and check ``uptime`` before trusting absolute numbers.

Run: ``python benchmarks/bench_eig_amg.py --sizes 20k [100k] [--threads 1] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _meshes import cached_ball
from _threads import pin_threads, thread_env

SIZES = {"20k": 0.27, "100k": 0.158}  # gmsh target edge length h (µm) of the R = 5 µm ball
D0 = 0.002


def _pencil(size: str | None, prefix: str | None, mesh_dir: Path):
    """(A, B) as SciPy CSR, from a saved pencil or a (cached) gmsh ball."""
    import scipy.sparse as sp

    if prefix:
        return sp.load_npz(f"{prefix}_A.npz").tocsr(), sp.load_npz(f"{prefix}_B.npz").tocsr()
    from spindoctor_torch.fem.assemble import assemble
    from spindoctor_torch.model import Model

    mesh = cached_ball(SIZES[size], mesh_dir / f"ball_r5_h{SIZES[size]}.npz")
    fem = assemble(Model(mesh, diffusivity=D0))
    return sp.csr_matrix((fem.K + fem.Q).to_scipy()), sp.csr_matrix(fem.M.to_scipy())


def _residuals(A, B, w, V):
    import numpy as np

    AV, BV = A @ V, B @ V
    num = np.linalg.norm(AV - BV * w, axis=0)
    rel = num / (np.abs(w) * np.linalg.norm(BV, axis=0) + np.linalg.norm(AV, axis=0))
    return rel[w > 1e-8 * np.abs(w).max()]


def phase_amg(args) -> dict:
    from spindoctor_torch.linalg.amg_eig import lobpcg_amg

    A, B = _pencil(args.sizes[0], args.pencil, args.mesh_dir)
    walls, cpus, info, w, V = [], [], None, None, None
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        w, V, info = lobpcg_amg(A, B, args.nev, tol=args.tol)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {
        "n": A.shape[0],
        "wall_s": walls,
        "cpu_s": cpus,
        "timings_last": info["timings"],
        "iterations": info["iterations"],
        "coarse_iterations": info["coarse_iterations"],
        "levels": info["levels"],
        "prec_columns": info["prec_columns"],
        "spmm_columns": info["spmm_columns"],
        "restarts": info["restarts"],
        "max_residual": float(_residuals(A, B, w, V).max()),
        "eigenvalues": w.tolist(),
    }


def phase_eigsh(args) -> dict:
    import numpy as np
    import scipy.sparse.linalg as spla

    A, B = _pencil(args.sizes[0], args.pencil, args.mesh_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    w, V = spla.eigsh(A.tocsc(), k=args.nev, M=B.tocsc(), sigma=-1e-8)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    order = np.argsort(w)
    w, V = w[order], V[:, order]
    return {
        "n": A.shape[0],
        "wall_s": [wall],
        "cpu_s": [cpu],
        "max_residual": float(_residuals(A, B, w, V).max()),
        "eigenvalues": w.tolist(),
    }


def _run_phase(args, phase: str, size: str | None) -> dict:
    cmd = [
        sys.executable, __file__, "--phase", phase, "--threads", str(args.threads),
        "--repeat", str(args.repeat), "--nev", str(args.nev), "--tol", str(args.tol),
        "--mesh-dir", str(args.mesh_dir),
    ]  # fmt: skip
    cmd += ["--pencil", args.pencil] if args.pencil else ["--sizes", size]
    env = thread_env(args.threads)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"phase {phase} ({size or args.pencil}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["20k"], choices=list(SIZES))
    ap.add_argument("--pencil", default=None, help="PREFIX of PREFIX_A.npz / PREFIX_B.npz")
    ap.add_argument("--nev", type=int, default=50)
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--phase", choices=["amg", "eigsh"], help=argparse.SUPPRESS)
    ap.add_argument("--mesh-dir", type=Path, default=Path("/tmp/spindoctor_bench_meshes"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_eig_amg.json"))
    args = ap.parse_args(argv)
    pin_threads(args.threads)

    if args.phase:  # child process
        import torch

        torch.set_num_threads(args.threads)
        out = phase_amg(args) if args.phase == "amg" else phase_eigsh(args)
        print(json.dumps(out))
        return 0

    import numpy as np

    results = {"threads": args.threads, "repeat": args.repeat, "nev": args.nev, "tol": args.tol}
    cases = [None] if args.pencil else args.sizes
    print(f"threads {args.threads}, nev {args.nev}, tol {args.tol:g}; load: {os.getloadavg()}")
    for size in cases:
        name = size or Path(args.pencil).name
        row = {"amg": _run_phase(args, "amg", size)}
        a = row["amg"]
        print(
            f"{name}: n = {a['n']}, lobpcg_amg wall median {statistics.median(a['wall_s']):.2f} s "
            f"(runs {', '.join(f'{t:.2f}' for t in a['wall_s'])}), cpu median "
            f"{statistics.median(a['cpu_s']):.2f} s; iterations {a['iterations']} (coarse "
            f"{a['coarse_iterations']}, levels {a['levels']}), preconditioned columns "
            f"{a['prec_columns']}, restarts {a['restarts']}, max residual "
            f"{a['max_residual']:.2e}; phases {a['timings_last']}",
            flush=True,
        )
        if not args.skip_baseline:
            row["eigsh"] = e = _run_phase(args, "eigsh", size)
            wa, we = np.array(a["eigenvalues"]), np.array(e["eigenvalues"])
            nz = we > 1e-8 * we.max()
            row["max_rel_eig_diff"] = float(np.max(np.abs(wa[nz] - we[nz]) / we[nz]))
            ratio = e["wall_s"][0] / statistics.median(a["wall_s"])
            print(
                f"{name}: eigsh(sigma=-1e-8) wall {e['wall_s'][0]:.2f} s, cpu "
                f"{e['cpu_s'][0]:.2f} s, max residual {e['max_residual']:.2e}; speed-up "
                f"{ratio:.1f}x; eigenvalues agree to {row['max_rel_eig_diff']:.1e} (relative)",
                flush=True,
            )
        results[name] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"load after: {os.getloadavg()}; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
