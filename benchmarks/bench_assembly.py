"""Forward and backward time of the full FEM assembly (M, K, R, Q, J_x/y/z, G).

Meshes: structured boxes split into two compartments with a permeable interface, ~1e4, ~1e5
and ~1e6 tets. For each size we report medians over ``--repeat`` runs of

* forward: ``assemble(model)`` on an already-built pattern (the optimization loop's cost),
* backward: gradient of a scalar that touches every matrix value, to points and parameters,
* floor: one sparse mat-vec with M (the cheapest possible use of the matrices),
* pattern: the one-off pattern construction per topology,

and the peak resident memory. Threads are pinned (``--threads``, default 2) and printed.

Run: ``python benchmarks/bench_assembly.py [--sizes 1e4 1e5 1e6] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from spindoctor_torch import Model, assemble
from spindoctor_torch.fem.pattern import fem_pattern
from spindoctor_torch.mesh.structured import structured_box


def _box_with_ntets(ntet: float):
    n = max(2, round((ntet / 6) ** (1 / 3)))
    n += n % 2  # even, so the interface plane x = L/2 lies on the grid
    return structured_box((10.0, 10.0, 10.0), (n, n, n), x_interfaces=[5.0], jitter=0.1)


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(ntet: float, repeat: int) -> dict:
    mesh = _box_with_ntets(ntet)
    t0 = time.perf_counter()
    fem_pattern(mesh)
    t_pattern = time.perf_counter() - t0
    pts = mesh.points.clone().requires_grad_(True)
    dval = torch.tensor([0.002, 0.001], dtype=torch.float64, requires_grad=True)
    kappa = torch.tensor(1e-4, dtype=torch.float64, requires_grad=True)

    def forward():
        m = mesh.with_points(pts)
        return assemble(Model(m, diffusivity=dval, permeability=kappa, relaxation=5e4))

    with torch.no_grad():
        t_fwd = _median_time(forward, repeat)
    mats = forward()
    weights = torch.rand(mats.fem.pattern.nnz, dtype=torch.float64)

    def forward_backward():
        a = forward()
        loss = sum((weights * mat.values).sum() for mat in (a.M, a.K, a.R, a.Q, *a.J)) + a.G.sum()
        loss.backward()

    t_fwdbwd = _median_time(forward_backward, repeat)
    x = torch.rand(mats.ndof, dtype=torch.float64)
    with torch.no_grad():
        t_matvec = _median_time(lambda: mats.M @ x, repeat)
    return {
        "ntet": mesh.ntet,
        "npoint": mesh.npoint,
        "ndof": mesh.ndof,
        "nnz": mats.fem.pattern.nnz,
        "pattern_s": t_pattern,
        "forward_s": t_fwd,
        "backward_s": t_fwdbwd - t_fwd,
        "matvec_s": t_matvec,
        "forward_over_matvec": t_fwd / t_matvec,
        "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads = {torch.get_num_threads()}, "
        f"median of {args.repeat} runs"
    )
    rows = []
    for n in args.sizes:
        r = bench(n, args.repeat)
        rows.append(r)
        print(
            f"ntet {r['ntet']:>8d}  ndof {r['ndof']:>7d}  pattern {r['pattern_s']:.3f} s  "
            f"forward {r['forward_s']:.3f} s  backward {r['backward_s']:.3f} s  "
            f"M@x {r['matvec_s'] * 1e3:.2f} ms  (forward = {r['forward_over_matvec']:.0f}x "
            f"mat-vec)  peak RSS {r['peak_rss_GB']:.2f} GB",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
