"""Forward and backward time and memory of the full FEM assembly (M, K, R, Q, J_x/y/z, G).

Meshes: structured boxes split into two compartments with a permeable interface, ~1e4, ~1e5
and ~1e6 tets (``--sizes``). Each size runs in its own subprocess, so that memory figures
are its own, in phases:

* pattern: the one-off pattern construction per topology (``fem_pattern``): time, peak
  resident memory during it and the memory it keeps;
* forward: ``assemble(model)`` on the built pattern without gradients (the cost of one
  evaluation);
* backward: ``loss.backward()`` of a scalar that touches every matrix value
  (Σ w·values over M, K, R, Q, J_x/y/z, plus ΣG), to the mesh points, D and κ, after a
  forward with gradients on (timed apart, ``forward (grad)``);
* floor: one sparse mat-vec ``M @ x``; forward and backward are also given as multiples of it;
* peak RSS of the assembly phase (forward and backward), measured after resetting the
  process's peak-RSS counter at the end of the pattern phase (Linux ``/proc/self/clear_refs``;
  where that is unavailable the peak includes the pattern build, and the run says so).

Times are medians of ``--repeat`` runs. Threads are pinned (``--threads``, default 2) for torch,
OpenMP, OpenBLAS and MKL, and reported with the load average before and after each size. On
the project's shared 2-core machines other processes hold the cores most of the time; torch
code that opens many OpenMP regions then runs several times slower with 2 threads than with
1 (each region waits for a descheduled thread). The volume assembly avoids this (serial
per-block ops in worker threads), the mat-vec floor and the old code do not; compare figures
taken at similar load, or set ``OMP_WAIT_POLICY=PASSIVE`` in the environment (passed on to
the subprocesses and reported; it must be set before torch starts).

Run: ``python benchmarks/bench_assembly.py [--sizes 1e4 1e5 1e6] [--repeat 3] [--threads 2]``
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

from _threads import THREAD_VARS, thread_env


def _status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field (VmRSS, VmHWM) in kB, None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the peak resident set size (VmHWM) to the current one; False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _peak_gb() -> float:
    hwm = _status_kb("VmHWM")
    if hwm is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return hwm / 1e6


def _rss_gb() -> float:
    rss = _status_kb("VmRSS")
    return float("nan") if rss is None else rss / 1e6


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_size(ntet: float, repeat: int, threads: int) -> dict:
    """All phases for one mesh size, in the current process."""
    import torch

    torch.set_num_threads(threads)
    from spindoctor_torch.fem.assemble import assemble
    from spindoctor_torch.fem.pattern import fem_pattern
    from spindoctor_torch.mesh.structured import structured_box
    from spindoctor_torch.model import Model

    load0 = os.getloadavg()[0]
    n = max(2, round((ntet / 6) ** (1 / 3)))
    n += n % 2  # even, so the interface plane x = L/2 lies on the grid
    mesh = structured_box((10.0, 10.0, 10.0), (n, n, n), x_interfaces=[5.0], jitter=0.1)

    # Pattern phase.
    rss_mesh = _rss_gb()
    resettable = _reset_peak()
    t0 = time.perf_counter()
    fp = fem_pattern(mesh)
    t_pattern = time.perf_counter() - t0
    pattern_peak = _peak_gb()
    pattern_kept = _rss_gb() - rss_mesh

    # Assembly phase.
    _reset_peak()
    rss_before = _rss_gb()
    pts = mesh.points.clone().requires_grad_(True)
    dval = torch.tensor([0.002, 0.001], dtype=torch.float64, requires_grad=True)
    kappa = torch.tensor(1e-4, dtype=torch.float64, requires_grad=True)

    def forward():
        m = mesh.with_points(pts)
        return assemble(Model(m, diffusivity=dval, permeability=kappa, relaxation=5e4))

    with torch.no_grad():
        forward()  # warm-up (allocator, caches)
        t_fwd = _median_time(forward, repeat)
    weights = torch.rand(fp.pattern.nnz, dtype=torch.float64)
    t_fwd_grad, t_bwd = [], []
    for _ in range(repeat):
        pts.grad = dval.grad = kappa.grad = None
        t0 = time.perf_counter()
        a = forward()
        t1 = time.perf_counter()
        loss = sum((weights * m.values).sum() for m in (a.M, a.K, a.R, a.Q, *a.J)) + a.G.sum()
        loss.backward()
        t2 = time.perf_counter()
        t_fwd_grad.append(t1 - t0)
        t_bwd.append(t2 - t1)
        del a, loss
    assembly_peak = _peak_gb()
    with torch.no_grad():
        mats = forward()
        x = torch.rand(mats.ndof, dtype=torch.float64)
        t_matvec = _median_time(lambda: mats.M @ x, max(repeat, 10))
    fwd, bwd = t_fwd, statistics.median(t_bwd)
    return {
        "ntet": mesh.ntet,
        "npoint": mesh.npoint,
        "ndof": mesh.ndof,
        "nnz": fp.pattern.nnz,
        "threads": torch.get_num_threads(),
        "thread_env": {v: os.environ.get(v) for v in (*THREAD_VARS, "OMP_WAIT_POLICY")},
        "load_before": load0,
        "load_after": os.getloadavg()[0],
        "pattern_s": t_pattern,
        "pattern_peak_rss_GB": pattern_peak,
        "pattern_kept_GB": pattern_kept,
        "forward_s": fwd,
        "forward_grad_s": statistics.median(t_fwd_grad),
        "backward_s": bwd,
        "matvec_s": t_matvec,
        "forward_over_matvec": fwd / t_matvec,
        "backward_over_matvec": bwd / t_matvec,
        "assembly_peak_rss_GB": assembly_peak,
        "assembly_extra_GB": assembly_peak - rss_before,
        "peak_reset": resettable,
    }


def _report(r: dict) -> None:
    note = "" if r["peak_reset"] else "  (peak includes the pattern build: no clear_refs)"
    print(
        f"ntet {r['ntet']:>8d}  ndof {r['ndof']:>7d}  nnz {r['nnz']:>8d}  "
        f"threads {r['threads']}  OMP_WAIT_POLICY {r['thread_env']['OMP_WAIT_POLICY']}  "
        f"load {r['load_before']:.1f}->{r['load_after']:.1f}\n"
        f"  pattern  {r['pattern_s']:7.3f} s   peak RSS {r['pattern_peak_rss_GB']:.2f} GB, "
        f"keeps {r['pattern_kept_GB']:.2f} GB\n"
        f"  forward  {r['forward_s']:7.3f} s   (with grad {r['forward_grad_s']:.3f} s)  "
        f"= {r['forward_over_matvec']:.0f} x M@x\n"
        f"  backward {r['backward_s']:7.3f} s   = {r['backward_over_matvec']:.0f} x M@x\n"
        f"  M@x      {r['matvec_s'] * 1e3:7.2f} ms\n"
        f"  assembly peak RSS {r['assembly_peak_rss_GB']:.2f} GB "
        f"(+{r['assembly_extra_GB']:.2f} GB over mesh and pattern){note}",
        flush=True,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:  # one size, results as JSON on the last stdout line
        print(json.dumps(run_size(args.child, args.repeat, args.threads)))
        return 0
    env = thread_env(args.threads)
    print(
        f"threads = {args.threads} ({', '.join(THREAD_VARS)} and torch), median of "
        f"{args.repeat} runs, one subprocess per size"
    )
    rows = []
    for n in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(n),
            "--repeat",
            str(args.repeat),
            "--threads",
            str(args.threads),
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        _report(r)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
