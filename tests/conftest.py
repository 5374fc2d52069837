"""Shared pytest configuration: pinned threads, headless rendering, reference data paths."""

from __future__ import annotations

import os

# 2-core machines: oversubscribed BLAS/OpenMP threads make sparse factorizations crawl.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Headless VTK through Mesa EGL; must be set before vtk is imported.
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
os.environ.setdefault("PYVISTA_OFF_SCREEN", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("SDT_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference" / "spindoctor"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """SpinDoctor's own results (../shared/reference/spindoctor)."""
    if not REFERENCE.is_dir():
        pytest.skip(f"SpinDoctor reference data not found at {REFERENCE}")
    return REFERENCE


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
