"""The benchmarks' gmsh ball (radius 5 µm), cached as ``.npz`` between runs and machines."""

from __future__ import annotations

from pathlib import Path


def cached_ball(h: float, path: Path | None = None):
    """TetMesh of the radius-5 µm ball at gmsh edge length ``h`` (µm).

    Read from ``path`` (``points``, ``tets``) when it exists; otherwise meshed with gmsh and,
    if ``path`` is given, written there, so that later runs (or a machine without gmsh) reuse
    the same mesh. numpy and torch load here, not at import: the benchmarks pin their
    threads first."""
    import numpy as np

    from spindoctor_torch.mesh.tetmesh import TetMesh

    if path is not None and path.exists():
        data = np.load(path)
        return TetMesh(data["points"], data["tets"])
    from spindoctor_torch.mesh.gmsh_recipes import sphere

    mesh = sphere(5.0, h=h)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, points=mesh.points.numpy(), tets=mesh.tets.numpy())
    return mesh
