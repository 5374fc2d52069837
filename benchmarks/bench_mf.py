"""Benchmark of the matrix formalism: eigen step, batched signals, gradients, baselines.

Meshes: gmsh balls of radius 5 µm with ~2k, ~20k and ~100k nodes (``--sizes``). For each:

* eig: the lowest ``--nev`` (default 50) eigenpairs of (K+Q)φ = λMφ by our solver (``auto``:
  CHOLMOD when scikit-sparse is installed; also the no-extra paths ``splu`` (N ≤ 40k) and
  ``lobpcg``) side by side with the default SciPy baseline ``eigsh(A, k, M, sigma=-1e-8)``
  (SuperLU with its default ordering) and, where it fits (≤ 3000 nodes), a dense generalized
  ``eigh``; above that the memory of its two dense matrices and its time scaled by n³ from
  the smallest size of the run are printed instead (where the dense approach stops);
* signal (meshes up to ``--signals-max-nodes`` nodes, default 25k): 1000 (b, direction)
  pairs (10 b-values × 100 directions, one PGSE) at ``--nmode``
  modes (default 300), after the eigen step: the propagation a user gets from ``solve_mf``
  under ``torch.no_grad()`` (in-place Chebyshev series, one batched product per direction),
  the same series with the stacked ``[A_x A_y A_z]`` products (the layout of the gradient
  path), and the gradient path itself (q requiring grad: autograd series, forward and
  backward of ``Σ|S|²``, single run; skipped with ``--skip-grad``);
* gradient: forward (eig + reduction + signals) and backward of ``Σ|S|²`` w.r.t. the mesh
  points, at ``--grad-length-scale`` (default 1 µm: ~200 modes);
* dense baseline (the approach of existing PyTorch tools): dense generalized eigh plus one
  dense ``matrix_exp`` per pair, timed on a few pairs and extrapolated to 1000.

Threads are pinned (``--threads``, default 1) for BLAS, OpenMP and torch, and reported; the
README figures use ``--threads 2`` (the development machine has 2 cores).
Timings are medians over ``--repeat`` runs for the fast parts (single runs for the eigen
steps above 20k nodes). Run: ``python benchmarks/bench_mf.py --sizes 2k 20k 100k``.
Results are printed as a table and written to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _threads import pin_threads

SIZES = {"2k": 0.6, "20k": 0.27, "100k": 0.155}  # gmsh target edge length h (µm)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["2k", "20k"], choices=list(SIZES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nev", type=int, default=50)
    ap.add_argument("--nmode", type=int, default=300)
    ap.add_argument("--grad-length-scale", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-baseline", action="store_true", help="skip default eigsh")
    ap.add_argument("--skip-grad", action="store_true")
    ap.add_argument(
        "--signals-max-nodes",
        type=int,
        default=25_000,
        help="signal part only up to this many nodes (its eigen step of --nmode pairs takes "
        "minutes at 1e5 nodes)",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results_mf.json"))
    args = ap.parse_args(argv)
    pin_threads(args.threads)

    import scipy.sparse.linalg as spla
    import torch

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    from spindoctor_torch.experiment import Experiment, unit_sphere
    from spindoctor_torch.fem.assemble import assemble
    from spindoctor_torch.linalg.eig import cholmod_available, sparse_eigsh
    from spindoctor_torch.linalg.expm import chebyshev_coefficients
    from spindoctor_torch.mesh.gmsh_recipes import sphere
    from spindoctor_torch.model import Model
    from spindoctor_torch.sequences import PGSE
    from spindoctor_torch.solvers.mf import _propagate_sequence, _reduce, compute_laplace_eig

    def timed(fn, *a, repeat=1, **kw):
        ts, out = [], None
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts), out

    results = {
        "threads": args.threads,
        "torch": torch.__version__,
        "cholmod": cholmod_available(),
        "python": sys.version.split()[0],
        "sizes": {},
    }
    print(f"threads pinned to {args.threads}; CHOLMOD available: {cholmod_available()}")
    dense_ref = None  # (nodes, seconds) of the dense eigh measured in this run
    for size in args.sizes:
        mesh = sphere(5.0, h=SIZES[size])
        model = Model(mesh, diffusivity=0.002)
        fem = assemble(model)
        A, B = fem.K + fem.Q, fem.M
        n = mesh.npoint
        row: dict = {"npoint": n, "ntet": mesh.ntet}
        print(f"\n== {size}: {n} nodes, {mesh.ntet} tets")
        # ---- eigen step, nev lowest pairs (λ_max large, nmax = nev)
        backends = ["auto"] + (["splu"] if n <= 40_000 else ["lobpcg"])
        for be in backends:
            rep = args.repeat if n < 20_000 else 1
            t, (_, _, info) = timed(
                sparse_eigsh, A, B, lam_max=1e9, nmax=args.nev, backend=be, nbuffer=10, repeat=rep
            )
            row[f"eig_{be}_s"] = t
            row[f"eig_{be}_backend"] = info.backend
            print(f"eig {args.nev} pairs, ours [{info.backend}]: {t:.2f} s")
        if not args.skip_baseline:
            As, Bs = A.to_scipy().tocsc(), B.to_scipy().tocsc()
            rep = args.repeat if n < 20_000 else 1
            t, _ = timed(spla.eigsh, As, k=args.nev, M=Bs, sigma=-1e-8, repeat=rep)
            row["eig_default_eigsh_s"] = t
            print(f"eig {args.nev} pairs, default scipy eigsh (SuperLU): {t:.2f} s")
        if n <= 3000:
            import scipy.linalg as sla

            Ad, Bd = A.to_dense().numpy(), B.to_dense().numpy()
            t, _ = timed(sla.eigh, Ad, Bd, subset_by_index=(0, args.nev - 1))
            row["eig_dense_scipy_s"] = t
            dense_ref = (n, t)
            print(f"eig {args.nev} pairs, dense scipy eigh: {t:.2f} s")
        else:  # where the dense baseline stops: its memory, and its time by n³ scaling
            gb = 2 * n * n * 8 / 1e9  # the two dense matrices alone, before any workspace
            row["eig_dense_matrices_gb"] = gb
            msg = f"eig, dense baseline not run: A and B alone take {gb:.1f} GB"
            if dense_ref is not None:
                t_ext = dense_ref[1] * (n / dense_ref[0]) ** 3
                row["eig_dense_scipy_s_extrapolated"] = t_ext
                msg += f", ~{t_ext:.0f} s by n³ scaling from {dense_ref[0]} nodes"
            print(msg)
        # ---- signals: 1000 pairs at nmode modes
        if n <= args.signals_max_nodes:
            t_eig, lap = timed(
                compute_laplace_eig, model, length_scale=0.5, neig_max=args.nmode, quiet=True
            )
            k = lap.nmode
            exp = Experiment(
                [PGSE(10000.0, 43100.0)],
                bvalues=torch.linspace(400.0, 4000.0, 10),
                directions=unit_sphere(100, seed=0),
            )
            t_red, red = timed(_reduce, model, lap.fem, lap.funcs.detach(), repeat=args.repeat)

            class _Bar:
                def update(self, _):
                    pass

            q = exp.qvalues[:, 0]
            dirs = exp.directions
            seq = exp.sequences[0]

            def signals(red, seq, q, dirs, grouped=None):
                with torch.no_grad():
                    return _propagate_sequence(
                        red, seq, q, dirs, 500, False, 1e-10, _Bar(), grouped=grouped
                    )[0]

            t_sig, sig = timed(signals, red, seq, q, dirs, repeat=args.repeat)
            t_stk, sig_stk = timed(signals, red, seq, q, dirs, False, repeat=args.repeat)
            imag = red.imag_bound(dirs, q[None].expand(dirs.shape[0], -1))
            degree = chebyshev_coefficients(seq.delta, red.lo, red.hi, imag, 1e-10)[0].size - 1
            diff = float(((sig - sig_stk).abs() / sig_stk.abs()).max())
            row.update(
                nmode=k,
                eig_nmode_s=t_eig,
                reduce_s=t_red,
                signal_1000_pairs_s=t_sig,
                signal_1000_pairs_stacked_s=t_stk,
                chebyshev_degree=degree,
                grouped_vs_stacked_max_rel_diff=diff,
            )
            print(
                f"signals: {k} modes (eig {t_eig:.1f} s), reduction {t_red:.2f} s, Chebyshev "
                f"degree {degree}; 1000 pairs without grad {t_sig:.3f} s (per-direction "
                f"products), {t_stk:.3f} s (stacked products); max rel. difference {diff:.1e}"
            )
            if not args.skip_grad:
                qg = q.clone().requires_grad_(True)
                t0 = time.perf_counter()
                sg = _propagate_sequence(red, seq, qg, dirs, 500, False, 1e-10, _Bar())[0]
                t_gf = time.perf_counter() - t0
                t0 = time.perf_counter()
                (sg.abs() ** 2).sum().backward()
                t_gb = time.perf_counter() - t0
                gdiff = float(((sg.detach() - sig).abs() / sig.abs()).max())
                row.update(
                    signal_1000_pairs_grad_forward_s=t_gf,
                    signal_1000_pairs_grad_backward_s=t_gb,
                    grad_vs_no_grad_max_rel_diff=gdiff,
                )
                print(
                    f"signals with grad (q requires grad), 1000 pairs: forward {t_gf:.2f} s, "
                    f"backward {t_gb:.2f} s; max rel. difference to no-grad {gdiff:.1e}"
                )
            # dense-baseline reduced part: one matrix_exp per pair (time 5, extrapolate)
            Kd = torch.diag_embed(red.sigma.detach()).to(torch.complex128)
            Ad_ = red.A[0].detach().to(torch.complex128)

            def dense_pairs(Kd, Ad_, q, npair=5):
                for i in range(npair):
                    torch.linalg.matrix_exp(-10000.0 * (Kd + 1j * float(q[i % 10]) * Ad_))

            t_dp, _ = timed(dense_pairs, Kd, Ad_, q)
            row["dense_matrix_exp_1000_pairs_s_extrapolated"] = t_dp / 5 * 2 * 1000
            print(
                f"dense matrix_exp baseline, 1000 pairs (2 exps each): "
                f"{t_dp / 5 * 2 * 1000:.0f} s (extrapolated from 5)"
            )
        # ---- gradient
        if not args.skip_grad:
            pts = mesh.points.detach().clone().requires_grad_(True)
            exp = Experiment(
                [PGSE(10000.0, 43100.0)],
                bvalues=[1000.0, 3000.0],
                directions=[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
            )
            from spindoctor_torch.solvers.mf import solve_mf

            t0 = time.perf_counter()
            m2 = Model(mesh.with_points(pts), diffusivity=0.002)
            res = solve_mf(m2, exp, length_scale=args.grad_length_scale, neig_max=1000, quiet=True)
            loss = (res.signal_allcmpts.abs() ** 2).sum()
            t_fwd = time.perf_counter() - t0
            t0 = time.perf_counter()
            loss.backward()
            t_bwd = time.perf_counter() - t0
            ok = bool(torch.isfinite(pts.grad).all())
            row.update(
                grad_nmode=res.info["nmode"], forward_s=t_fwd, backward_s=t_bwd, grad_finite=ok
            )
            print(
                f"gradient: {res.info['nmode']} modes, forward {t_fwd:.1f} s, backward "
                f"{t_bwd:.1f} s ({t_bwd / t_fwd:.2f}x), finite: {ok}"
            )
        results["sizes"][size] = row
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
