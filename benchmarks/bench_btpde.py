"""Benchmark of the Bloch-Torrey solver (solve_btpde) against a tuned SuperLU baseline.

Meshes: gmsh balls of radius 5 µm with ~10k, ~50k and ~100k nodes (``--sizes``). Experiment
(the issue's): PGSE(δ = 10000, Δ = 43100 µs), 5 b-values (500 … 4000 s/mm²) × 3 directions,
Crank-Nicolson with 50 steps per interval (150 steps), D = 0.002 µm²/µs.

Phases (each in its own subprocess, so that its peak memory is its own):

* ``forward``: ``solve_btpde`` without gradients (``solver="auto"``: COCG with an AMG
  preconditioner at these sizes); median of ``--repeat`` runs.
* ``backward``: forward with gradients on (mesh points and D require grad, checkpointed states)
  then ``backward()`` of Σ|S|²; median of ``--repeat`` runs, forward and backward times apart.
* ``baseline``: plain SciPy doing the same factorizations: SuperLU with the tuned options
  (``permc_spec="MMD_AT_PLUS_A"``, ``diag_pivot_thresh=0``, ``SymmetricMode``), one complex
  factorization per (b, direction) for the first lobe (its conjugate serves the second lobe),
  one real factorization for the pause shared by all, and the triangular solves of every step,
  one (b, direction) column at a time (memory: one complex factor at a time). At the larger
  sizes only ``--baseline-columns`` of the 15 columns are run and the time is scaled by
  15/columns (every column costs the same: one factorization of the same size plus 150
  solves); the run says so. Its signals are compared with ``solve_btpde``'s.

Threads are pinned to ``--threads`` (default 1) for BLAS, OpenMP and torch, and reported: on
the shared 2-core machines of this project two threads ran 6x *slower* than one under load.
Peak memory is the subprocess's maximum resident set size. Results are printed as a table and
written to ``--out`` (JSON).

Run: ``python benchmarks/bench_btpde.py --sizes 10k 50k [--repeat 3] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _meshes import cached_ball
from _threads import pin_threads, thread_env

SIZES = {"10k": 0.35, "50k": 0.2, "100k": 0.158}  # gmsh target edge length h (µm)
BVALUES = [500.0, 1000.0, 2000.0, 3000.0, 4000.0]
DIRECTIONS = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
DELTA, BIG_DELTA, NSTEPS, D0 = 10000.0, 43100.0, 50, 0.002


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _setup(size: str, mesh_dir: Path):
    """Mesh (cached as .npz), model and experiment."""
    from spindoctor_torch.experiment import Experiment
    from spindoctor_torch.model import Model
    from spindoctor_torch.sequences import PGSE

    mesh = cached_ball(SIZES[size], mesh_dir / f"ball_r5_h{SIZES[size]}.npz")
    exp = Experiment([PGSE(DELTA, BIG_DELTA)], bvalues=BVALUES, directions=DIRECTIONS)
    return mesh, Model(mesh, diffusivity=D0), exp


# ------------------------------------------------------------------------------ phases
def phase_forward(size, repeat, mesh_dir):
    import torch

    from spindoctor_torch.solvers.btpde import solve_btpde

    _, model, exp = _setup(size, mesh_dir)
    times, info, res = [], None, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        with torch.no_grad():
            res = solve_btpde(model, exp, nsteps=NSTEPS, quiet=True)
        times.append(time.perf_counter() - t0)
        info = res.info
    return {
        "ndof": info["ndof"],
        "forward_s": times,
        "solver": info["solver"],
        "preconditioner": info["preconditioner"],
        "cocg_iterations_per_solve": info["cocg_iterations"] / max(info["solves"], 1),
        "signal": res.signal_allcmpts.detach()[:, 0, :].real.tolist(),
        "peak_mb": _peak_mb(),
    }


def phase_backward(size, repeat, mesh_dir):
    import torch

    from spindoctor_torch.model import Model
    from spindoctor_torch.solvers.btpde import solve_btpde

    mesh, _, exp = _setup(size, mesh_dir)
    fwd, bwd, info = [], [], None
    for _ in range(repeat):
        pts = mesh.points.detach().clone().requires_grad_(True)
        D = torch.tensor(D0, dtype=torch.float64, requires_grad=True)
        model = Model(mesh.with_points(pts), diffusivity=D)
        t0 = time.perf_counter()
        res = solve_btpde(model, exp, nsteps=NSTEPS, quiet=True)
        loss = res.signal_allcmpts.abs().square().sum()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
        info = res.info
        assert bool(torch.isfinite(pts.grad).all()) and bool(torch.isfinite(D.grad))
    return {
        "ndof": info["ndof"],
        "forward_with_grad_s": fwd,
        "backward_s": bwd,
        "checkpoint_every": info["checkpoint_every"],
        "peak_mb": _peak_mb(),
    }


def phase_baseline(size, columns, mesh_dir):
    """Plain SciPy Crank-Nicolson with tuned SuperLU (see the module docstring)."""
    import numpy as np
    import scipy.sparse.linalg as spla

    from spindoctor_torch.fem.assemble import assemble
    from spindoctor_torch.linalg.solve import SUPERLU_OPTIONS

    mesh, model, exp = _setup(size, mesh_dir)
    t_start = time.perf_counter()
    mats = assemble(model)
    M = mats.M.to_scipy().tocsc()
    A0 = (mats.K + mats.Q + mats.R).to_scipy().tocsc()
    J = [j.to_scipy().tocsc() for j in mats.J]
    w = np.asarray(M.sum(axis=1)).ravel()
    rho = np.ones(M.shape[0])
    pieces = [(DELTA, 1.0), (BIG_DELTA - DELTA, 0.0), (DELTA, -1.0)]
    t_fact = time.perf_counter()
    dt_pause = pieces[1][0] / NSTEPS
    lu_pause = spla.splu((M + 0.5 * dt_pause * A0).tocsc(), **SUPERLU_OPTIONS)
    r_pause = (M - 0.5 * dt_pause * A0).tocsr()
    t_real = time.perf_counter() - t_fact
    qvals = exp.qvalues[:, 0].numpy()
    pairs = [(a, d) for d in range(len(DIRECTIONS)) for a in range(len(BVALUES))][:columns]
    signals, t_complex = {}, 0.0
    for a, d in pairs:
        Ju = sum(u * Jd for u, Jd in zip(DIRECTIONS[d], J))
        dt = DELTA / NSTEPS
        A = (A0 + 1j * qvals[a] * Ju).tocsc()
        t0 = time.perf_counter()
        lu = spla.splu((M + 0.5 * dt * A).tocsc(), **SUPERLU_OPTIONS)
        t_complex += time.perf_counter() - t0
        R = (M - 0.5 * dt * A).tocsr()
        Rc = (M - 0.5 * dt * A.conj()).tocsr()
        x = rho.astype(complex)
        for _ in range(NSTEPS):
            x = lu.solve(R @ x)
        for _ in range(NSTEPS):
            x = r_pause @ x
            x = lu_pause.solve(np.ascontiguousarray(x.real)) + 1j * lu_pause.solve(
                np.ascontiguousarray(x.imag)
            )
        for _ in range(NSTEPS):
            x = np.conj(lu.solve(np.conj(Rc @ x)))  # conj(L)⁻¹ b = conj(L⁻¹ conj(b))
        signals[f"{a},{d}"] = float((w * x).sum().real)
        del lu
    total = time.perf_counter() - t_start
    per_column = (total - t_real) / len(pairs)
    return {
        "columns_run": len(pairs),
        "measured_s": total,
        "estimated_15_columns_s": t_real + per_column * 15,
        "real_factorization_s": t_real,
        "complex_factorization_s_per_column": t_complex / len(pairs),
        "signals": signals,
        "peak_mb": _peak_mb(),
    }


# ------------------------------------------------------------------------------ driver
def _run_phase(args, phase, size, extra=()) -> dict:
    cmd = [
        sys.executable, __file__, "--phase", phase, "--sizes", size,
        "--threads", str(args.threads), "--repeat", str(args.repeat),
        "--baseline-columns", f"{size}:{args.baseline_columns.get(size, 15)}",
        "--mesh-dir", str(args.mesh_dir), *extra,
    ]  # fmt: skip
    env = thread_env(args.threads)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"phase {phase} ({size}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["10k", "50k"], choices=list(SIZES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--baseline-columns",
        default="10k:15,50k:2,100k:1",
        help="columns of the baseline actually run per size, e.g. '50k:2'",
    )
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-backward", action="store_true")
    ap.add_argument("--skip-forward", action="store_true", help="e.g. a memory check at 100k")
    ap.add_argument("--phase", choices=["forward", "backward", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--mesh-dir", type=Path, default=Path("/tmp/spindoctor_bench_meshes"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_btpde.json"))
    args = ap.parse_args(argv)
    pin_threads(args.threads)
    if isinstance(args.baseline_columns, str):
        try:
            cols = dict(item.split(":") for item in args.baseline_columns.split(","))
            args.baseline_columns = {k: int(v) for k, v in cols.items()}
        except ValueError:
            ap.error(f"--baseline-columns {args.baseline_columns!r}: use e.g. '10k:15,50k:2'")

    if args.phase:  # child process
        import torch

        torch.set_num_threads(args.threads)
        size = args.sizes[0]
        if args.phase == "forward":
            out = phase_forward(size, args.repeat, args.mesh_dir)
        elif args.phase == "backward":
            out = phase_backward(size, args.repeat, args.mesh_dir)
        else:
            out = phase_baseline(size, args.baseline_columns.get(size, 15), args.mesh_dir)
        print(json.dumps(out))
        return 0

    results = {"threads": args.threads, "repeat": args.repeat, "nsteps_per_interval": NSTEPS}
    for size in args.sizes:
        row = {}
        if not args.skip_forward:
            row["forward"] = _run_phase(args, "forward", size)
        if not args.skip_backward:
            row["backward"] = _run_phase(args, "backward", size, ("--repeat", "1"))
        if not args.skip_baseline:
            row["baseline"] = _run_phase(args, "baseline", size)
        results[size] = row
        _report(size, row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"written {args.out}")
    return 0


def _report(size: str, row: dict) -> None:
    f = row.get("forward")
    fwd = None
    if f is not None:
        fwd = statistics.median(f["forward_s"])
        print(
            f"[{size}] ndof {f['ndof']}: forward {fwd:.1f} s (median of {len(f['forward_s'])};"
            f" {f['solver']}/{f['preconditioner']}, {f['cocg_iterations_per_solve']:.1f} COCG "
            f"iterations per solve), peak {f['peak_mb']:.0f} MB"
        )
    if "backward" in row:
        b = row["backward"]
        fg, bw = statistics.median(b["forward_with_grad_s"]), statistics.median(b["backward_s"])
        ratio = f"backward/forward {bw / fwd:.2f}; " if fwd else ""
        print(
            f"[{size}] ndof {b['ndof']}: forward with grad {fg:.1f} s + backward {bw:.1f} s "
            f"({ratio}checkpoint every {b['checkpoint_every']}), peak {b['peak_mb']:.0f} MB"
        )
    if "baseline" in row and f is not None:
        base = row["baseline"]
        est = base["estimated_15_columns_s"]
        note = (
            ""
            if base["columns_run"] == 15
            else f" (run on {base['columns_run']} of 15 columns, scaled)"
        )
        sig = f["signal"]
        diffs = []
        for key, value in base["signals"].items():
            a, d = (int(v) for v in key.split(","))
            diffs.append(abs(sig[a][d] - value) / abs(value))
        print(
            f"[{size}] tuned SuperLU baseline {est:.1f} s{note}: complex factorization "
            f"{base['complex_factorization_s_per_column']:.1f} s per column, real "
            f"{base['real_factorization_s']:.1f} s; peak {base['peak_mb']:.0f} MB; "
            f"speed-up {est / fwd:.1f}x; max signal difference {max(diffs):.1e}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
