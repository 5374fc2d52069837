"""Sparse linear algebra with autograd: fixed-pattern matrices, solves, eigensolvers.

Modules
-------
sparse          SparsePattern, SparseMatrix (gather + index_add products, value gradients)
solve           sparse_solve (differentiable), SuperLUFactor, COCG with AMG/factor preconditioners
eig             sparse_eigsh (differentiable generalized eigenpairs), project, sddmm
block_lanczos   thick-restart block Lanczos in shift-invert mode (CHOLMOD forward)
amg_eig         factorization-free LOBPCG with a block smoothed-aggregation AMG cycle
expm            batched exponential actions of the reduced MF operators
"""

from .eig import EigInfo, project, sparse_eigsh
from .solve import SuperLUFactor, cocg, sparse_solve
from .sparse import SparseMatrix, SparsePattern

__all__ = [
    "SparseMatrix",
    "SparsePattern",
    "sparse_solve",
    "SuperLUFactor",
    "cocg",
    "sparse_eigsh",
    "EigInfo",
    "project",
]
