"""Device benchmark: the FEM assembly, MF signals and an MF gradient on a torch device (CUDA)
against the CPU, in the same run.

Parts (each timed on ``cpu`` and on ``--device``, medians of ``--repeat`` runs, the device
synchronized before every clock read):

* assembly: forward (no gradient) and backward of Σ w·values over M, K, Q, J_x/y/z to the
  points and κ, on a jittered two-compartment structured box of ~``--tets`` tetrahedra;
* MF signals: 1000 (b, direction) pairs (10 b-values × 100 directions, one PGSE) at
  ``--nmode`` modes after the eigen step, without gradient; the eigenpairs are computed once
  on the CPU (scipy) and moved to each device, so both sides propagate the same reduction;
* MF gradient: ``solve_mf`` forward and backward of Σ|S|² to the points (length scale
  ``--grad-length-scale``), eigen step included (it runs on the CPU on both sides);
* BTPDE: ``solve_btpde`` (PGSE, 3 b-values × 3 directions, ``--btpde-steps`` Crank-Nicolson
  steps per interval) forward and backward of Σ|S|² to the points, with the default solver
  on each side (CPU: SuperLU up to ``SPLU_MAX_DOF`` dofs, else COCG; device: COCG; the
  preconditioner is AMG where pyamg is installed, else Jacobi); single runs.

The MF parts run on bench_mf's gmsh ball (radius 5 µm, edge ``--ball-h``, 2,476 nodes at the
default 0.6). ``--mesh`` names an ``.npz`` (``points``, ``tets``) that is read when it
exists and otherwise written from the ball, so that a GPU machine without gmsh can reuse a
mesh made elsewhere. CPU threads are pinned (``--threads``) and reported.
Run: ``python benchmarks/bench_gpu.py --device cuda --mesh ball_2k.npz``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

from _meshes import cached_ball
from _threads import pin_threads


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tets", type=float, default=1e6)
    ap.add_argument("--mesh", type=Path, default=None)
    ap.add_argument("--ball-h", type=float, default=0.6, help="gmsh ball edge length, µm")
    ap.add_argument("--nmode", type=int, default=300)
    ap.add_argument("--grad-length-scale", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--skip", nargs="*", default=[], choices=["assembly", "signals", "grad", "btpde"]
    )
    ap.add_argument("--btpde-steps", type=int, default=20, help="CN steps per interval")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results_gpu.json"))
    args = ap.parse_args(argv)
    pin_threads(args.threads)

    import torch

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    from spindoctor_torch.experiment import Experiment, unit_sphere
    from spindoctor_torch.fem.assemble import assemble
    from spindoctor_torch.mesh.structured import structured_box
    from spindoctor_torch.model import Model
    from spindoctor_torch.sequences import PGSE
    from spindoctor_torch.solvers.btpde import solve_btpde
    from spindoctor_torch.solvers.mf import (
        _propagate_sequence,
        _reduce,
        compute_laplace_eig,
        solve_mf,
    )

    dev = torch.device(args.device)
    devices = [torch.device("cpu"), dev]

    def sync(d):
        if d.type == "cuda":
            torch.cuda.synchronize(d)

    def timed(fn, d, repeat):
        fn()  # warm-up (kernels, caches, allocator)
        ts = []
        for _ in range(repeat):
            sync(d)
            t0 = time.perf_counter()
            fn()
            sync(d)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    def forward_backward(solve, d):
        """(result, forward s, backward s) of ``solve()`` and of Σ|S|²'s backward."""
        sync(d)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = solve()
        loss = (out.signal_allcmpts.abs() ** 2).sum()
        sync(d)
        t1 = time.perf_counter()
        loss.backward()
        sync(d)
        return out, t1 - t0, time.perf_counter() - t1

    res: dict = {"threads": args.threads, "torch": torch.__version__, "device": str(dev)}
    if dev.type == "cuda":
        res["device_name"] = torch.cuda.get_device_name(dev)
    print(f"CPU threads pinned to {args.threads}; device {res.get('device_name', dev)}")

    if "assembly" not in args.skip:
        n = 2 * max(1, round((args.tets / 6) ** (1 / 3) / 2))  # even: interface at x = 5
        box = structured_box((10.0, 10.0, 10.0), (n, n, n), x_interfaces=[5.0], jitter=0.1)
        row = {"ntet": box.ntet}
        for d in devices:
            pts = box.points.to(d)
            kappa = torch.tensor(1e-4, device=d)

            def fwd(pts=pts, kappa=kappa):
                with torch.no_grad():
                    assemble(Model(box.with_points(pts), diffusivity=0.002, permeability=kappa))

            def bwd(pts=pts, kappa=kappa):
                p = pts.clone().requires_grad_(True)
                k = kappa.clone().requires_grad_(True)
                fem = assemble(Model(box.with_points(p), diffusivity=0.002, permeability=k))
                loss = sum(m.values.sum() for m in (fem.M, fem.K, fem.Q, *fem.J))
                loss.backward()

            row[f"{d.type}_forward_s"] = timed(fwd, d, args.repeat)
            row[f"{d.type}_forward_backward_s"] = timed(bwd, d, args.repeat)
            print(
                f"assembly {box.ntet} tets on {d.type}: forward {row[f'{d.type}_forward_s']:.3f} s,"
                f" forward+backward {row[f'{d.type}_forward_backward_s']:.3f} s"
            )
        res["assembly"] = row

    mesh = cached_ball(args.ball_h, args.mesh)
    print(f"MF mesh: {mesh.npoint} nodes, {mesh.ntet} tets")

    if "signals" not in args.skip:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lap = compute_laplace_eig(
                Model(mesh, diffusivity=0.002), length_scale=0.5, neig_max=args.nmode, quiet=True
            )
        exp = Experiment(
            [PGSE(10000.0, 43100.0)],
            bvalues=torch.linspace(400.0, 4000.0, 10),
            directions=unit_sphere(100, seed=0),
        )
        row = {"npoint": mesh.npoint, "nmode": lap.nmode}

        class _Quiet:
            def update(self, _):
                pass

        sig = {}
        for d in devices:
            model = Model(mesh.to(d), diffusivity=0.002)
            fem = assemble(model)
            red = _reduce(model, fem, lap.funcs.detach().to(d))
            q = exp.qvalues[:, 0].to(d)
            dirs = exp.directions.to(d)
            seq = exp.sequences[0]

            def run(red=red, q=q, dirs=dirs, seq=seq, d=d):
                with torch.no_grad():
                    sig[d.type] = _propagate_sequence(
                        red, seq, q, dirs, 500, False, 1e-10, _Quiet()
                    )[0]

            row[f"{d.type}_signal_1000_pairs_s"] = timed(run, d, args.repeat)
            print(
                f"MF signals, {lap.nmode} modes, 1000 pairs on {d.type}: "
                f"{row[f'{d.type}_signal_1000_pairs_s']:.3f} s"
            )
        a, b = sig["cpu"], sig[dev.type].cpu()
        row["max_rel_diff"] = float((a - b).abs().max() / a.abs().max())
        print(f"max relative difference device/CPU: {row['max_rel_diff']:.1e}")
        res["signals"] = row

    if "grad" not in args.skip:
        row = {"npoint": mesh.npoint}
        for d in devices:
            pts = mesh.points.to(d).clone().requires_grad_(True)
            ed = Experiment(
                [PGSE(10000.0, 43100.0)],
                bvalues=torch.tensor([1000.0, 3000.0], device=d),
                directions=torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], device=d),
            )
            model = Model(mesh.with_points(pts), diffusivity=0.002)
            out, t_fwd, t_bwd = forward_backward(
                lambda model=model, ed=ed: solve_mf(
                    model, ed, length_scale=args.grad_length_scale, neig_max=1000, quiet=True
                ),
                d,
            )
            row.update(
                {
                    f"{d.type}_nmode": out.info["nmode"],
                    f"{d.type}_forward_s": t_fwd,
                    f"{d.type}_backward_s": t_bwd,
                    f"{d.type}_grad_norm": float(pts.grad.norm()),
                }
            )
            print(
                f"MF gradient on {d.type}: {out.info['nmode']} modes, forward {t_fwd:.2f} s, "
                f"backward {t_bwd:.2f} s, |grad| {float(pts.grad.norm()):.6e}"
            )
        res["grad"] = row

    if "btpde" not in args.skip:
        row = {"npoint": mesh.npoint, "nsteps_per_interval": args.btpde_steps}
        sig = {}
        for d in devices:
            pts = mesh.points.to(d).clone().requires_grad_(True)
            ed = Experiment(
                [PGSE(10000.0, 43100.0)],
                bvalues=torch.tensor([1000.0, 2000.0, 3000.0], device=d),
                directions=unit_sphere(3, seed=0).to(d),
            )
            model = Model(mesh.with_points(pts), diffusivity=0.002)
            out, t_fwd, t_bwd = forward_backward(
                lambda model=model, ed=ed: solve_btpde(
                    model, ed, nsteps=args.btpde_steps, quiet=True
                ),
                d,
            )
            sig[d.type] = out.signal_allcmpts.detach().cpu()
            row.update(
                {
                    f"{d.type}_solver": out.info.get("solver", "?"),
                    f"{d.type}_forward_s": t_fwd,
                    f"{d.type}_backward_s": t_bwd,
                }
            )
            print(
                f"BTPDE (PGSE, 3 b x 3 directions, {args.btpde_steps} CN steps per interval) on "
                f"{d.type} [{row[f'{d.type}_solver']}]: forward {t_fwd:.2f} s, backward "
                f"{t_bwd:.2f} s"
            )
        a, b = sig["cpu"], sig[dev.type]
        row["max_rel_diff"] = float((a - b).abs().max() / a.abs().max())
        print(f"max relative difference device/CPU: {row['max_rel_diff']:.1e}")
        res["btpde"] = row

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
