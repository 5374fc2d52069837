"""Sparse linear solves: factorization handles, a batched COCG, preconditioners, autograd.

Catalogue
---------
SUPERLU_OPTIONS       SciPy ``splu`` options tuned for structurally symmetric FEM matrices
SuperLUFactor         factor once (real or complex), solve many: ``A``, ``Aᵀ``, ``Aᴴ``, ``conj(A)``
sparse_solve          differentiable ``x = A⁻¹ b`` for a :class:`SparseMatrix` (adjoint backward)
cocg                  conjugate-orthogonal CG for complex-symmetric ``A = Aᵀ``, many right-hand
                      sides at once, any torch device
JacobiPreconditioner  diagonal (per right-hand side) preconditioner
FactorPreconditioner  exact solve with a real :class:`SuperLUFactor` (CPU)
AMGPreconditioner     smoothed-aggregation AMG V-cycle (hierarchy from pyamg, cycle in torch)
csr_tensor            real torch CSR tensor of a :class:`SparseMatrix` (values detached)
real_matmul           ``A @ X`` for a real torch CSR ``A`` and a real or complex block ``X``

Why these choices (measured, see ``DEPENDENCIES.md`` and ``benchmarks/bench_btpde.py``): SciPy's
SuperLU with a symmetric ordering (``MMD_AT_PLUS_A``), no pivoting preference
(``diag_pivot_thresh=0``) and ``SymmetricMode`` is about 30x faster than with its defaults on
FEM matrices, but fill grows quickly in 3-D; COCG needs only sparse products, runs on GPUs and
its cost grows gently with the mesh. Real sparse products with complex blocks go through a
real view (``view_as_real``): a real CSR times ``2k`` real columns is about twice as fast as
a complex CSR times ``k`` complex columns in torch 2.13, and 20x faster than gather +
``index_add``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from ..errors import SolverError
from .sparse import SparseMatrix, SparsePattern

__all__ = [
    "SUPERLU_OPTIONS",
    "SuperLUFactor",
    "SparseSolve",
    "sparse_solve",
    "CocgInfo",
    "cocg",
    "JacobiPreconditioner",
    "FactorPreconditioner",
    "AMGPreconditioner",
    "csr_tensor",
    "sparse_csr",
    "real_matmul",
]

SUPERLU_OPTIONS: dict = {
    "permc_spec": "MMD_AT_PLUS_A",
    "diag_pivot_thresh": 0.0,
    "options": {"SymmetricMode": True},
}
"""SciPy ``splu`` keyword arguments for structurally symmetric FEM matrices (about 30x faster
than the defaults on 3-D meshes; see ``DEPENDENCIES.md``)."""

_TRANS = ("N", "T", "H")


# ------------------------------------------------------------------------------------ helpers
def _to_scipy(matrix) -> sp.csc_matrix:
    if isinstance(matrix, SparseMatrix):
        return matrix.to_scipy().tocsc()
    if sp.issparse(matrix):
        return sp.csc_matrix(matrix)
    raise TypeError(f"matrix must be a SparseMatrix or a SciPy sparse matrix, got {type(matrix)}")


def sparse_csr(crow, cols, values, size) -> torch.Tensor:
    """``torch.sparse_csr_tensor`` without invariant checks and without torch's one-time
    "beta" warning (the layout is used for products only)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, values, size=size, check_invariants=False)


def csr_tensor(pattern: SparsePattern, values: torch.Tensor) -> torch.Tensor:
    """torch sparse CSR tensor on ``pattern`` with detached ``values`` (for fast products).

    Not for autograd: back-propagating through a sparse product to its values builds a dense
    n×n gradient in torch; use :class:`SparseMatrix` products or the adjoint functions here.
    """
    crow = _crow_cache(pattern, values.device)
    cols = pattern.cols.to(values.device)
    return sparse_csr(crow, cols, values.detach(), (pattern.n, pattern.n))


_CROWS: dict[tuple[int, str], torch.Tensor] = {}


def _crow_cache(pattern: SparsePattern, device: torch.device) -> torch.Tensor:
    key = (id(pattern), str(device))
    crow = _CROWS.get(key)
    if crow is None or crow.shape[0] != pattern.n + 1:
        crow = pattern.crow_indices().to(device)
        if len(_CROWS) > 64:
            _CROWS.clear()
        _CROWS[key] = crow
    return crow


def real_matmul(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a @ x`` for a real sparse (CSR) or dense ``a`` and ``x`` (n,) or (n, k), real or complex.

    A complex ``x`` is multiplied through its real view, so ``a`` is never promoted to complex.
    """
    if not x.is_complex():
        return a @ x
    vec = x.ndim == 1
    xb = x.unsqueeze(1) if vec else x
    n, k = xb.shape
    xr = torch.view_as_real(xb.resolve_conj().contiguous()).reshape(n, 2 * k)
    out = (a @ xr).reshape(a.shape[0], k, 2)
    out = torch.view_as_complex(out.contiguous())
    return out.squeeze(1) if vec else out


# ----------------------------------------------------------------------------- SuperLU handle
class SuperLUFactor:
    """LU factorization of a square sparse matrix (SciPy SuperLU), reused for many solves.

    Parameters
    ----------
    matrix : SparseMatrix or SciPy sparse matrix, (n, n), real or complex
        Values are detached: the handle is a numerical object, gradients are formed by the
        callers (:func:`sparse_solve`, the Bloch-Torrey adjoint).
    options : dict, optional
        Keyword arguments of :func:`scipy.sparse.linalg.splu`; default
        :data:`SUPERLU_OPTIONS`.

    Attributes
    ----------
    n : int
    is_complex : bool
    nnz_factor : int, nonzeros of L + U
    nbytes : int, memory of the factors (bytes, values and indices)

    Notes
    -----
    :meth:`solve` accepts torch tensors on any device (moved to CPU for SuperLU and back), real
    or complex right-hand sides (a real factor solves the real and imaginary parts together),
    and ``conjugate=True`` to solve with ``conj(A)``: ``conj(A)⁻¹ b = conj(A⁻¹ conj(b))``. This
    is how one factorization serves both lobes of a PGSE, whose step matrices are complex
    conjugates of each other.
    """

    def __init__(self, matrix, *, options: dict | None = None):
        a = _to_scipy(matrix)
        if a.shape[0] != a.shape[1]:
            raise ValueError(f"matrix must be square, got shape {a.shape}")
        opts = dict(SUPERLU_OPTIONS if options is None else options)
        self.is_complex = bool(np.iscomplexobj(a.data))
        a = a.astype(np.complex128 if self.is_complex else np.float64)
        try:
            self._lu = spla.splu(a, **opts)
        except RuntimeError as err:  # "Factor is exactly singular"
            raise SolverError(f"sparse LU factorization failed: {err}") from err
        self.n = int(a.shape[0])
        self.nnz_factor = int(self._lu.L.nnz + self._lu.U.nnz)
        itemsize = 16 if self.is_complex else 8
        self.nbytes = self.nnz_factor * (itemsize + 4) + 2 * (self.n + 1) * 4

    def __repr__(self) -> str:
        kind = "complex" if self.is_complex else "real"
        return f"SuperLUFactor(n={self.n}, {kind}, nnz(L+U)={self.nnz_factor})"

    def solve(self, b: torch.Tensor, *, trans: str = "N", conjugate: bool = False) -> torch.Tensor:
        """Solve ``op(A) x = b`` with op = identity ("N"), transpose ("T") or conjugate
        transpose ("H"); ``conjugate=True`` uses ``conj(A)`` in place of ``A``.

        Parameters
        ----------
        b : (n,) or (n, k) tensor, real or complex, any device

        Returns
        -------
        x : tensor of b's shape and device; complex if A or b is, else real
        """
        if trans not in _TRANS:
            raise ValueError(f"trans = {trans!r}; allowed: {', '.join(_TRANS)}")
        if b.shape[0] != self.n:
            raise ValueError(f"b has {b.shape[0]} rows, the matrix has {self.n}")
        device = b.device
        bn = b.detach().resolve_conj().cpu().numpy()
        if not self.is_complex:
            # Real factor: conj and H are immaterial; solve real and imaginary parts at once.
            t = "T" if trans in ("T", "H") else "N"
            if np.iscomplexobj(bn):
                k = 1 if bn.ndim == 1 else bn.shape[1]
                stacked = np.concatenate(
                    [bn.real.reshape(self.n, k), bn.imag.reshape(self.n, k)], axis=1
                )
                xs = self._lu.solve(np.asfortranarray(stacked), trans=t)
                x = (xs[:, :k] + 1j * xs[:, k:]).reshape(bn.shape)
            else:
                x = self._lu.solve(np.asarray(bn, dtype=np.float64), trans=t)
        else:
            rhs = np.asarray(bn, dtype=np.complex128)
            if conjugate:
                rhs = rhs.conj()
            x = self._lu.solve(np.asfortranarray(rhs) if rhs.ndim == 2 else rhs, trans=trans)
            if conjugate:
                x = x.conj()
        out = torch.from_numpy(np.ascontiguousarray(x))
        return out.to(device)


# ------------------------------------------------------------------ differentiable sparse solve
class SparseSolve(torch.autograd.Function):
    """``x = A⁻¹ b`` with A given by ``values`` on a fixed pattern; see :func:`sparse_solve`.

    Backward (torch's conjugate-Wirtinger convention, ``g = ∂L/∂x̄``): ``λ = A⁻ᴴ g`` with the
    forward factorization, ``grad_b = λ`` and ``grad_A = −λ xᴴ`` restricted to the pattern,
    ``grad_values[e] = −Σ_cols λ[row_e] conj(x[col_e])`` (real part for real values). Memory is
    O(nnz + n·k); no dense n×n matrix is formed.
    """

    @staticmethod
    def forward(ctx, values, b, pattern, factor):
        if factor is None:
            factor = SuperLUFactor(SparseMatrix(pattern, values.detach()))
        x = factor.solve(b.detach())
        dtype = torch.promote_types(values.dtype, b.dtype)
        x = x.to(dtype=dtype)
        ctx.factor = factor
        ctx.pattern = pattern
        ctx.values_complex = values.is_complex()
        ctx.b_complex = b.is_complex()
        ctx.save_for_backward(x)
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_x):
        (x,) = ctx.saved_tensors
        lam = ctx.factor.solve(grad_x, trans="H").to(dtype=grad_x.dtype)
        grad_values = grad_b = None
        if ctx.needs_input_grad[0]:
            p = ctx.pattern
            prod = lam[p.rows] * x[p.cols].conj()
            if prod.ndim == 2:
                prod = prod.sum(1)
            grad_values = -prod if ctx.values_complex else -prod.real
        if ctx.needs_input_grad[1]:
            grad_b = lam if ctx.b_complex else lam.real
        return grad_values, grad_b, None, None


def sparse_solve(
    matrix: SparseMatrix, b: torch.Tensor, *, factor: SuperLUFactor | None = None
) -> torch.Tensor:
    """Differentiable sparse solve ``x = A⁻¹ b`` (direct, SciPy SuperLU tuned).

    Parameters
    ----------
    matrix : SparseMatrix, (n, n), real or complex, values may require grad
    b : (n,) or (n, k) tensor, real or complex, may require grad
    factor : SuperLUFactor, optional
        A factorization of ``matrix`` to reuse (it is not checked against the values).

    Returns
    -------
    x : tensor of b's shape, dtype promoted from A and b

    Raises
    ------
    TypeError, ValueError
        Wrong types or shapes. SolverError: singular matrix.

    Notes
    -----
    The backward pass reuses the factorization for one adjoint solve ``Aᴴ λ = g`` and forms the
    gradient with respect to the values at the nonzeros only (see :class:`SparseSolve`).

    Examples
    --------
    >>> import torch
    >>> from spindoctor_torch.linalg.sparse import SparseMatrix, SparsePattern
    >>> pat = SparsePattern(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]), 2)
    >>> A = SparseMatrix(pat, torch.tensor([2.0, 1.0, 1.0, 3.0], dtype=torch.float64))
    >>> sparse_solve(A, torch.tensor([3.0, 4.0], dtype=torch.float64))
    tensor([1., 1.], dtype=torch.float64)
    """
    if not isinstance(matrix, SparseMatrix):
        raise TypeError(f"matrix must be a SparseMatrix, got {type(matrix).__name__}")
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"b must be a tensor, got {type(b).__name__}")
    if b.ndim not in (1, 2) or b.shape[0] != matrix.shape[0]:
        raise ValueError(
            f"b must have shape ({matrix.shape[0]},) or ({matrix.shape[0]}, k), "
            f"got {tuple(b.shape)}"
        )
    if b.device != matrix.device:
        raise ValueError(f"b is on {b.device}, the matrix on {matrix.device}")
    return SparseSolve.apply(matrix.values, b, matrix.pattern, factor)


# ---------------------------------------------------------------------------------- COCG
@dataclass
class CocgInfo:
    """Convergence record of :func:`cocg`.

    Attributes
    ----------
    iterations : int, iterations run (the slowest right-hand side)
    residual : (k,) tensor, final relative residual norms ``‖b − A x‖ / ‖b‖``
    converged : bool
    """

    iterations: int
    residual: torch.Tensor
    converged: bool


def _colnorm(x: torch.Tensor) -> torch.Tensor:
    """Column 2-norms of an (n, k) block, through the (n, 2k) real view: torch 2.13's complex
    ``vector_norm`` and multi-axis reductions are ~20x slower than one contiguous-axis sum."""
    if x.is_complex():
        n, k = x.shape
        xr = torch.view_as_real(x.resolve_conj().contiguous()).reshape(n, 2 * k)
        return xr.square().sum(0).reshape(k, 2).sum(1).sqrt()
    return x.square().sum(0).sqrt()


def cocg(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    precond: Callable[[torch.Tensor], torch.Tensor] | None = None,
    x0: torch.Tensor | None = None,
    rtol: float = 1e-10,
    atol: float = 0.0,
    maxiter: int = 2000,
    raise_on_failure: bool = True,
) -> tuple[torch.Tensor, CocgInfo]:
    """Conjugate-orthogonal conjugate gradients for complex-symmetric systems ``A x = b``.

    ``A = Aᵀ`` (not Hermitian) such as ``M + c(K + iqJ)``; the unconjugated bilinear form
    ``xᵀy`` replaces the inner product of CG (van der Vorst & Melissen 1990). Every column of
    ``b`` is solved at once, with its own step lengths; columns that have converged stop
    changing. For real symmetric positive definite ``A`` this is preconditioned CG.

    Parameters
    ----------
    matvec : callable, (n, k) -> (n, k)
        Column-wise product with the (possibly column-dependent) symmetric matrices.
    b : (n,) or (n, k) tensor, complex or real
    precond : callable (n, k) -> (n, k), optional
        Symmetric preconditioner ``z = P⁻¹ r`` (``P = Pᵀ``, column-wise).
    x0 : tensor like b, optional
        Initial guess (e.g. the previous time step).
    rtol, atol : float
        Stop when ``‖b − A x‖ ≤ max(rtol·‖b‖, atol)`` for every column.
    maxiter : int
    raise_on_failure : bool
        Raise :class:`SolverError` when not converged after ``maxiter`` or on breakdown.

    Returns
    -------
    x : tensor like b
    info : CocgInfo

    References
    ----------
    H. A. van der Vorst, J. B. M. Melissen, "A Petrov-Galerkin type method for solving Ax = b,
    where A is symmetric complex", IEEE Trans. Magn. 26 (1990) 706-708,
    doi:10.1109/20.106415.
    """
    vec = b.ndim == 1
    bb = b.unsqueeze(1) if vec else b
    # In-place updates and one scratch buffer: fresh multi-megabyte temporaries cost page
    # faults on every iteration (measured: x + a*p is 3x slower than x.addcmul_(p, a)).
    x = torch.zeros_like(bb) if x0 is None else (x0.unsqueeze(1) if vec else x0).clone()
    scratch = torch.empty_like(bb)

    def dot(u, v):
        return torch.mul(u, v, out=scratch).sum(0)

    bnorm = _colnorm(bb)
    tol = torch.clamp(rtol * bnorm, min=atol)
    r = bb - matvec(x) if x0 is not None else bb.clone()
    rnorm = _colnorm(r)
    active = rnorm > tol
    it = 0
    if bool(active.any()):
        z = precond(r) if precond is not None else r.clone()
        p = z.clone()
        rho = dot(r, z)
        while True:
            q = matvec(p)
            pq = dot(p, q)
            bad = active & (pq.abs() == 0)
            if bool(bad.any()):
                if raise_on_failure:
                    col = int(bad.nonzero()[0])
                    raise SolverError(f"COCG breakdown (pᵀAp = 0) in column {col}")
                active = active & ~bad
            safe_pq = torch.where(active, pq, torch.ones_like(pq))
            alpha = torch.where(active, rho / safe_pq, torch.zeros_like(rho))
            x.addcmul_(p, alpha)
            r.addcmul_(q, alpha, value=-1)
            it += 1
            rnorm = _colnorm(r)
            active = active & (rnorm > tol)
            if not bool(active.any()) or it >= maxiter:
                break
            z = precond(r) if precond is not None else r
            rho_new = dot(r, z)
            safe_rho = torch.where(rho.abs() > 0, rho, torch.ones_like(rho))
            beta = torch.where(active, rho_new / safe_rho, torch.zeros_like(rho))
            p.mul_(beta).add_(z)
            rho = rho_new
    rel = rnorm / torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    converged = not bool(active.any())
    if not converged and raise_on_failure:
        raise SolverError(
            f"COCG did not converge in {maxiter} iterations: worst relative residual "
            f"{float(rel.max()):.3e} > rtol = {rtol:g}"
        )
    x = x.squeeze(1) if vec else x
    return x, CocgInfo(iterations=it, residual=rel, converged=converged)


# ------------------------------------------------------------------------- preconditioners
class JacobiPreconditioner:
    """``z = r / d`` with a diagonal ``d`` of shape (n,) or (n, k) (one per column).

    Symmetric, so valid for COCG; ``d`` may be complex (the diagonal of ``M + c(K + iqJ)``).
    """

    def __init__(self, diagonal: torch.Tensor):
        if bool((diagonal == 0).any()):
            raise SolverError("Jacobi preconditioner: the matrix has a zero diagonal entry")
        self.inv = 1.0 / diagonal

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        inv = self.inv if (self.inv.ndim == r.ndim or r.ndim == 1) else self.inv.unsqueeze(1)
        return r * inv


class FactorPreconditioner:
    """Exact solve with a (real) :class:`SuperLUFactor` of a nearby matrix, e.g.
    ``M + c(K + Q + R)`` for the Bloch-Torrey step matrix (CPU; other devices copy)."""

    def __init__(self, factor: SuperLUFactor):
        self.factor = factor

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        return self.factor.solve(r).to(dtype=r.dtype)


class AMGPreconditioner:
    """Symmetric smoothed-aggregation AMG V-cycle for a real symmetric positive definite matrix.

    The hierarchy (aggregation, prolongators, Galerkin coarse matrices) is built once by pyamg
    on CPU; the cycle itself runs in torch on the device of the matrix, on all columns at once
    (complex blocks through their real view). Smoother: damped Jacobi,
    ``ω = 4/(3ρ(D⁻¹A))`` with ρ estimated by power iteration, ``nsmooth`` sweeps before and
    after the coarse correction, so the cycle is a symmetric positive definite operator (valid
    for CG/COCG). The coarsest level is solved densely.

    Parameters
    ----------
    matrix : SparseMatrix or SciPy sparse, (n, n), real SPD
    device : torch device of the cycle (default: the matrix's, CPU for SciPy input)
    max_coarse : int, size below which the coarsest level is solved densely
    nsmooth : int, Jacobi sweeps before and after the coarse correction

    References
    ----------
    P. Vaněk, J. Mandel, M. Brezina, "Algebraic multigrid by smoothed aggregation for second
    and fourth order elliptic problems", Computing 56 (1996) 179-196, doi:10.1007/BF02238511.
    N. Bell, L. Olson, J. Schroder, "PyAMG: Algebraic multigrid solvers in Python",
    J. Open Source Softw. 7 (2022) 4142, doi:10.21105/joss.04142.
    """

    def __init__(
        self,
        matrix,
        *,
        device=None,
        max_coarse: int = 300,
        nsmooth: int = 1,
        dtype: torch.dtype = torch.float64,
    ):
        try:
            import pyamg
        except ImportError as err:  # pragma: no cover - optional dependency
            raise ImportError(
                "the AMG preconditioner needs pyamg (pip install 'spindoctor-torch[amg]')"
            ) from err
        if isinstance(matrix, SparseMatrix):
            device = matrix.device if device is None else device
        a = sp.csr_matrix(_to_scipy(matrix), dtype=np.float64)
        device = torch.device("cpu") if device is None else torch.device(device)
        ml = pyamg.smoothed_aggregation_solver(
            a, symmetry="symmetric", max_coarse=max_coarse, keep=False
        )
        self.nsmooth = int(nsmooth)
        self.levels = []
        for lvl in ml.levels[:-1]:
            A = sp.csr_matrix(lvl.A)
            P = sp.csr_matrix(lvl.P)
            dinv = 1.0 / A.diagonal()
            rho = _spectral_radius(sp.diags(dinv) @ A)
            self.levels.append(
                (
                    _scipy_to_torch_csr(A, device, dtype),
                    _scipy_to_torch_csr(P, device, dtype),
                    _scipy_to_torch_csr(sp.csr_matrix(P.T), device, dtype),
                    torch.as_tensor(dinv * (4.0 / (3.0 * rho)), device=device, dtype=dtype),
                )
            )
        coarse = np.asarray(ml.levels[-1].A.toarray(), dtype=np.float64)
        self.coarse_inv = torch.as_tensor(np.linalg.pinv(coarse), device=device, dtype=dtype)
        self.dtype = dtype
        self.sizes = [lvl.A.shape[0] for lvl in ml.levels]
        self.operator_complexity = float(ml.operator_complexity())

    def __repr__(self) -> str:
        return f"AMGPreconditioner(levels={self.sizes}, complexity={self.operator_complexity:.2f})"

    def _cycle(self, level: int, b: torch.Tensor) -> torch.Tensor:
        if level == len(self.levels):
            return self.coarse_inv @ b
        A, P, R, wdinv = self.levels[level]
        w = wdinv.unsqueeze(1)
        x = w * b

        def smooth(x):  # x += ω D⁻¹ (b − A x), in place
            t = A @ x
            torch.sub(b, t, out=t)
            return x.addcmul_(w, t)

        for _ in range(self.nsmooth - 1):
            x = smooth(x)
        t = A @ x
        torch.sub(b, t, out=t)
        x.add_(P @ self._cycle(level + 1, R @ t))
        for _ in range(self.nsmooth):
            x = smooth(x)
        return x

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        vec = r.ndim == 1
        rb = r.unsqueeze(1) if vec else r
        n, k = rb.shape
        if rb.is_complex():
            rr = torch.view_as_real(rb.resolve_conj().contiguous()).reshape(n, 2 * k)
            zr = self._cycle(0, rr.to(self.dtype)).to(rr.dtype)
            z = torch.view_as_complex(zr.reshape(n, k, 2).contiguous())
        else:
            z = self._cycle(0, rb.to(self.dtype)).to(rb.dtype)
        return z.squeeze(1) if vec else z


def _scipy_to_torch_csr(a: sp.csr_matrix, device, dtype=torch.float64) -> torch.Tensor:
    a = sp.csr_matrix(a)
    a.sort_indices()
    return sparse_csr(
        torch.as_tensor(a.indptr, dtype=torch.int64, device=device),
        torch.as_tensor(a.indices, dtype=torch.int64, device=device),
        torch.as_tensor(a.data, dtype=dtype, device=device),
        a.shape,
    )


def _spectral_radius(a, iterations: int = 30, seed: int = 0) -> float:
    """Power-iteration estimate of the spectral radius of ``a`` (safety factor 1.05)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(a.shape[0])
    lam = 1.0
    for _ in range(iterations):
        w = a @ v
        lam = float(np.linalg.norm(w) / max(np.linalg.norm(v), 1e-300))
        v = w / max(np.linalg.norm(w), 1e-300)
    return 1.05 * lam if math.isfinite(lam) and lam > 0 else 2.0
