"""A sparse matrix with differentiable values on a fixed pattern.

torch's own sparse tensors have an autograd trap: back-propagating through ``torch.sparse.mm``
to the matrix values builds a dense n×n gradient (pytorch issue 41128). Every FEM matrix here
is therefore a :class:`SparseMatrix`: a shared :class:`SparsePattern` (row/column indices in
CSR order, computed once per mesh topology) plus a 1-D ``values`` tensor. Products are a
gather, an elementwise product and an ``index_add``, so gradients with respect to the values
(and through them to mesh vertices and physical parameters) cost O(nnz) memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SparsePattern", "SparseMatrix"]


@dataclass(frozen=True, eq=False)
class SparsePattern:
    """Row and column indices of a square sparse matrix, sorted row-major (CSR order).

    Attributes
    ----------
    rows, cols : (nnz,) int64 tensors
    n : int, the matrix size
    """

    rows: torch.Tensor
    cols: torch.Tensor
    n: int

    @property
    def nnz(self) -> int:
        return int(self.rows.shape[0])

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def crow_indices(self) -> torch.Tensor:
        """CSR row pointer, (n+1,) int64."""
        counts = torch.bincount(self.rows, minlength=self.n)
        return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])

    def to(self, device) -> SparsePattern:
        if torch.device(device) == self.device:
            return self
        return SparsePattern(self.rows.to(device), self.cols.to(device), self.n)

    def transpose_permutation(self) -> torch.Tensor:
        """Permutation ``p`` such that ``values[p]`` are the values of the transpose on this
        same pattern (the FEM patterns are structurally symmetric)."""
        key = self.rows * self.n + self.cols
        tkey = self.cols * self.n + self.rows
        pos = torch.searchsorted(key, tkey)
        if not bool((key[pos.clamp_max(self.nnz - 1)] == tkey).all()):
            raise ValueError("pattern is not structurally symmetric")
        return pos

    def diagonal_positions(self) -> torch.Tensor:
        """(n,) position of each diagonal entry in ``values``."""
        key = self.rows * self.n + self.cols
        diag = torch.arange(self.n, device=self.device) * (self.n + 1)
        pos = torch.searchsorted(key, diag)
        if not bool((key[pos.clamp_max(self.nnz - 1)] == diag).all()):
            raise ValueError("pattern lacks a diagonal entry")
        return pos


class SparseMatrix:
    """Square sparse matrix = fixed :class:`SparsePattern` + differentiable ``values``.

    Supports ``A @ x`` for vectors (n,) and blocks of vectors (n, k), real or complex, linear
    combinations with scalars and other matrices on the same pattern, conversion to torch
    sparse CSR/COO and to SciPy (detached).
    """

    __array_priority__ = 1000  # make numpy defer to our __rmul__

    def __init__(self, pattern: SparsePattern, values: torch.Tensor):
        if values.ndim != 1 or values.shape[0] != pattern.nnz:
            raise ValueError(
                f"values must have shape ({pattern.nnz},) for this pattern, got "
                f"{tuple(values.shape)}"
            )
        self.pattern = pattern
        self.values = values

    # --------------------------------------------------------------------------- basics
    @property
    def shape(self) -> tuple[int, int]:
        return (self.pattern.n, self.pattern.n)

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def __repr__(self) -> str:
        return f"SparseMatrix(n={self.pattern.n}, nnz={self.pattern.nnz}, dtype={self.dtype})"

    def detach(self) -> SparseMatrix:
        return SparseMatrix(self.pattern, self.values.detach())

    def _same_pattern(self, other: SparseMatrix) -> None:
        if other.pattern is not self.pattern:
            raise ValueError("sparse matrices must share the same pattern to be combined")

    def __add__(self, other):
        if isinstance(other, SparseMatrix):
            self._same_pattern(other)
            return SparseMatrix(self.pattern, self.values + other.values)
        return NotImplemented

    def __sub__(self, other):
        if isinstance(other, SparseMatrix):
            self._same_pattern(other)
            return SparseMatrix(self.pattern, self.values - other.values)
        return NotImplemented

    def __neg__(self):
        return SparseMatrix(self.pattern, -self.values)

    def __mul__(self, scalar):
        if isinstance(scalar, SparseMatrix):
            return NotImplemented
        return SparseMatrix(self.pattern, self.values * scalar)

    __rmul__ = __mul__

    def __truediv__(self, scalar):
        return SparseMatrix(self.pattern, self.values / scalar)

    @property
    def T(self) -> SparseMatrix:  # noqa: N802 (numpy convention)
        """Transpose (on the same, structurally symmetric, pattern)."""
        return SparseMatrix(self.pattern, self.values[self.pattern.transpose_permutation()])

    def conj(self) -> SparseMatrix:
        return SparseMatrix(self.pattern, self.values.conj())

    # --------------------------------------------------------------------------- products
    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``A @ x`` for x of shape (n,) or (n, k); differentiable in values and x with
        O(nnz) memory."""
        p = self.pattern
        if x.shape[0] != p.n:
            raise ValueError(f"x has {x.shape[0]} rows, the matrix has {p.n}")
        v = self.values if x.ndim == 1 else self.values.unsqueeze(-1)
        prod = v * x[p.cols]
        out = torch.zeros((p.n,) + tuple(x.shape[1:]), dtype=prod.dtype, device=prod.device)
        return out.index_add(0, p.rows, prod)

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x)

    def rmatvec(self, x: torch.Tensor) -> torch.Tensor:
        """``Aᵀ @ x`` (no conjugation)."""
        p = self.pattern
        v = self.values if x.ndim == 1 else self.values.unsqueeze(-1)
        prod = v * x[p.rows]
        out = torch.zeros((p.n,) + tuple(x.shape[1:]), dtype=prod.dtype, device=prod.device)
        return out.index_add(0, p.cols, prod)

    def bilinear(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``xᵀ A y`` (no conjugation) for vectors, or ``diag(Xᵀ A Y)`` for (n, k) blocks."""
        p = self.pattern
        v = self.values if x.ndim == 1 else self.values.unsqueeze(-1)
        return (x[p.rows] * v * y[p.cols]).sum(0)

    def diagonal(self) -> torch.Tensor:
        return self.values[self.pattern.diagonal_positions()]

    def row_sums(self) -> torch.Tensor:
        """``A @ 1``."""
        out = torch.zeros(self.pattern.n, dtype=self.dtype, device=self.device)
        return out.index_add(0, self.pattern.rows, self.values)

    # --------------------------------------------------------------------------- conversion
    def to_torch(self, layout: torch.layout = torch.sparse_csr) -> torch.Tensor:
        """torch sparse tensor (CSR by default). Do not back-propagate through
        ``torch.sparse.mm`` with it: use :meth:`matvec`."""
        p = self.pattern
        if layout == torch.sparse_csr:
            return torch.sparse_csr_tensor(p.crow_indices(), p.cols, self.values, size=self.shape)
        if layout == torch.sparse_coo:
            idx = torch.stack([p.rows, p.cols])
            return torch.sparse_coo_tensor(idx, self.values, size=self.shape).coalesce()
        raise ValueError(f"layout = {layout} is not supported; use sparse_csr or sparse_coo")

    def to_scipy(self):
        """SciPy CSR matrix of the detached values (on CPU)."""
        import scipy.sparse as sp

        p = self.pattern
        return sp.csr_matrix(
            (
                self.values.detach().cpu().numpy(),
                p.cols.cpu().numpy(),
                p.crow_indices().cpu().numpy(),
            ),
            shape=self.shape,
        )

    def to_dense(self) -> torch.Tensor:
        """Dense (n, n) tensor: for small matrices and tests only."""
        out = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        return out.index_put((self.pattern.rows, self.pattern.cols), self.values, accumulate=True)
