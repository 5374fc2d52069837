"""Time per shape-optimization iteration: matrix-formalism forward pass plus gradient.

One iteration of a free-form fit (``examples/fit_freeform.py``) on a ball of radius 5 µm
meshed with about ``--sizes`` nodes (default ~5k and ~50k):

* ``params``: the parameterization, z ↦ points (Large-Steps smoothing + harmonic extension),
* ``eig``: the Laplace eigen-decomposition (assembly + shift-invert eigensolver),
* ``forward``: everything from the parameters to the loss (params + eig + reduction +
  propagation of every b-value, sequence and direction),
* ``backward``: ``loss.backward()`` down to the free-form parameters (eigenvector adjoint,
  sparse assembly adjoint, transposed parameterization solves),
* ``iteration``: forward + backward (wall clock; ``iteration_cpu``: CPU time of this
  process, which stays meaningful on a shared machine).

Medians over ``--repeat`` iterations after one warm-up iteration (the warm-up also builds
the FEM pattern and the parameterization's factorizations, which an optimization pays once).
Threads are pinned (``--threads``, default 1; the OMP/OpenBLAS/MKL variables are set before
torch is imported) and printed with the results.

Run: ``python benchmarks/bench_optimize.py [--sizes 5000 50000] [--repeat 3] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import sys

from _threads import pin_threads


def _pin_threads(argv) -> int:
    """Read --threads before torch is imported and pin the BLAS/OpenMP pools to it."""
    threads = 1
    for k, a in enumerate(argv):
        if a == "--threads" and k + 1 < len(argv):
            threads = int(argv[k + 1])
        elif a.startswith("--threads="):
            threads = int(a.split("=", 1)[1])
    pin_threads(threads)
    return threads


_THREADS = _pin_threads(sys.argv[1:])

import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from spindoctor_torch.experiment import Experiment, unit_sphere  # noqa: E402
from spindoctor_torch.mesh.gmsh_recipes import sphere  # noqa: E402
from spindoctor_torch.model import Model  # noqa: E402
from spindoctor_torch.optimize import FreeForm, mse_loss  # noqa: E402
from spindoctor_torch.sequences import PGSE  # noqa: E402
from spindoctor_torch.solvers.mf import solve_mf  # noqa: E402

RADIUS = 5.0  # µm
NODES_PER_UNIT = 4.8  # measured: a gmsh ball has ≈ 4.8·(R/h)³ nodes


def ball_with_nodes(n: float):
    """A gmsh ball of radius 5 µm with about ``n`` nodes (one corrective re-mesh)."""
    h = RADIUS / (n / NODES_PER_UNIT) ** (1.0 / 3.0)
    mesh = sphere(RADIUS, h)
    if abs(mesh.npoint / n - 1.0) > 0.15:
        h *= (mesh.npoint / n) ** (1.0 / 3.0)
        mesh = sphere(RADIUS, h)
    return mesh, h


def bench(n: float, repeat: int, ndirection: int, length_scale: float) -> dict:
    t0 = time.perf_counter()
    mesh, h = ball_with_nodes(n)
    t_mesh = time.perf_counter() - t0
    experiment = Experiment(
        [PGSE(5000.0, 15000.0), PGSE(10000.0, 43100.0)],
        bvalues=[500.0, 1500.0, 3000.0],
        directions=unit_sphere(ndirection),
    )
    t0 = time.perf_counter()
    geometry = FreeForm(mesh, smoothing=30.0)
    t_setup = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        geometry.parameters["z"].copy_(
            0.05 * torch.randn(geometry.parameters["z"].shape, generator=gen, dtype=torch.float64)
        )
        target = torch.rand(3, 2, ndirection, generator=gen, dtype=torch.float64)

    rows = []
    for _ in range(repeat + 1):
        geometry.parameters["z"].grad = None
        c0 = time.process_time()
        t0 = time.perf_counter()
        m = geometry.mesh()
        t1 = time.perf_counter()
        res = solve_mf(Model(m, 0.002), experiment, length_scale=length_scale, quiet=True)
        loss = mse_loss(res.normalized().abs(), target)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        if not bool(torch.isfinite(geometry.parameters["z"].grad).all()):
            raise FloatingPointError("non-finite gradient")
        rows.append(
            {
                "params": t1 - t0,
                "eig": res.timings.get("eig", float("nan")),
                "forward": t2 - t0,
                "backward": t3 - t2,
                "iteration": t3 - t0,
                "iteration_cpu": time.process_time() - c0,
                "nmode": int(res.info["nmode"]),
            }
        )
    timed = rows[1:]
    med = {k: statistics.median(r[k] for r in timed) for k in timed[0] if k != "nmode"}
    return {
        "npoint": mesh.npoint,
        "ntet": mesh.ntet,
        "nsurface": int(geometry.surface_nodes.size),
        "h": h,
        "nmode": timed[-1]["nmode"],
        "nsignal": 3 * 2 * ndirection,
        "mesh_s": t_mesh,
        "param_setup_s": t_setup,
        "warmup_iteration_s": rows[0]["iteration"],
        **{f"{k}_s": v for k, v in med.items()},
        "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[5e3, 5e4], help="node counts")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ndirection", type=int, default=32)
    ap.add_argument("--length-scale", type=float, default=1.5, help="MF length scale, µm")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # Sparse CSR beta warnings
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads = {torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}), median of {args.repeat} "
        f"iterations after 1 warm-up; ball R = {RADIUS} µm, {args.ndirection} directions x "
        f"3 b-values x 2 PGSE, length scale {args.length_scale} µm"
    )
    rows = []
    for n in args.sizes:
        r = bench(n, args.repeat, args.ndirection, args.length_scale)
        rows.append(r)
        print(
            f"nodes {r['npoint']:>6d}  tets {r['ntet']:>7d}  modes {r['nmode']:>4d}  "
            f"iteration {r['iteration_s']:.2f} s = forward {r['forward_s']:.2f} s "
            f"(params {r['params_s']:.3f}, eig {r['eig_s']:.2f}) + backward "
            f"{r['backward_s']:.2f} s; CPU {r['iteration_cpu_s']:.2f} s   "
            f"[warm-up {r['warmup_iteration_s']:.2f} s, "
            f"free-form setup {r['param_setup_s']:.2f} s, peak RSS {r['peak_rss_GB']:.2f} GB]",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
