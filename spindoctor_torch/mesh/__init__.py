"""Tetrahedral meshes: the :class:`TetMesh` container, quality checks, I/O and gmsh recipes."""

from .tetmesh import TetMesh
from .topology import Topology

__all__ = ["TetMesh", "Topology"]
