"""Run every benchmark script in this folder (``make bench``) and keep their logs.

Each ``bench_*.py`` runs as its own process with pinned threads (OMP/OpenBLAS/MKL = the
value of ``--threads``, default 2), so one benchmark's allocations or thread pools do not
disturb the next. Logs go to ``benchmarks/results/<name>.log``.

Run: ``python benchmarks/run_all.py [--only assembly mf] [--threads 2]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _threads import thread_env

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="names like 'assembly', 'mf'")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    env = thread_env(args.threads)
    failed = []
    for script in scripts:
        print(f"== {script.name} (threads {args.threads})", flush=True)
        t0 = time.perf_counter()
        log = out_dir / f"{script.stem}.log"
        with log.open("w") as fh:
            proc = subprocess.run(
                [sys.executable, str(script)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            fh.write(proc.stdout)
        print(proc.stdout, end="")
        print(
            f"== {script.name}: exit {proc.returncode}, {time.perf_counter() - t0:.1f} s, "
            f"log {log.relative_to(HERE.parent)}",
            flush=True,
        )
        if proc.returncode:
            failed.append(script.name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
