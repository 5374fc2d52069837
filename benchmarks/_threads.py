"""Thread pinning shared by the benchmarks.

On the project's 2-core machines oversubscribed BLAS/OpenMP pools have made a sparse
factorization 100× slower, so every benchmark pins them. The pools read their variables when
the libraries load: call :func:`pin_threads` before numpy, scipy or torch is imported, or pass
:func:`thread_env` to a subprocess.
"""

from __future__ import annotations

import os

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pin_threads(n: int) -> None:
    """Pin this process's OpenMP, OpenBLAS and MKL pools to ``n`` threads."""
    os.environ.update({var: str(n) for var in THREAD_VARS})


def thread_env(n: int) -> dict[str, str]:
    """A copy of the environment with the pools pinned to ``n`` threads (for subprocesses)."""
    return dict(os.environ, **{var: str(n) for var in THREAD_VARS})
