"""Sparse linear algebra with autograd: fixed-pattern matrices, solves, eigensolvers."""

from .sparse import SparseMatrix, SparsePattern

__all__ = ["SparseMatrix", "SparsePattern"]
