"""Tetrahedral meshes: the :class:`TetMesh` container, quality checks, I/O and gmsh recipes."""

from .tetmesh import TetMesh
from .topology import Topology

__all__ = ["TetMesh", "Topology"]

from .deform import bend, bend_twist, twist  # noqa: E402
from .gmsh_recipes import (  # noqa: E402
    box,
    cylinder,
    gmsh_session,
    mesh_size,
    slabs,
    soma_dendrites,
    sphere,
    tetmesh_from_gmsh,
)

__all__ += [
    "box",
    "sphere",
    "cylinder",
    "slabs",
    "soma_dendrites",
    "gmsh_session",
    "tetmesh_from_gmsh",
    "mesh_size",
    "bend",
    "twist",
    "bend_twist",
]
