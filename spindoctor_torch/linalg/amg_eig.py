"""Lowest eigenpairs of ``A φ = λ B φ`` without a factorization: LOBPCG + a block AMG cycle.

Catalogue
---------
BlockAMG        smoothed-aggregation AMG hierarchy (built by pyamg) of ``C = A − σB`` with a
                V-cycle applied to all columns of a block at once: ``apply(R) ≈ C⁻¹ R``
lobpcg_amg      lowest ``nev`` eigenpairs of a symmetric pencil (A positive semi-definite,
                B SPD) by a blocked, B-orthonormal LOBPCG preconditioned by :class:`BlockAMG`,
                started from a coarse-to-fine cascade over the AMG levels

Only NumPy, SciPy and pyamg (a plain wheel) are needed: no sparse factorization anywhere.

Design (each choice measured on a 1e5-node P1 ball, see ``benchmarks/bench_eig_amg.py``)
------------------------------------------------------------------------------------------
* The dofs are renumbered once by reverse Cuthill-McKee: gmsh numbers nodes in an order that
  makes ``CSR @ (n, m)`` products memory bound; after RCM they are about 3x faster.
* The V-cycle uses Chebyshev polynomial smoothers (degree 4) in the diagonally scaled
  ``Ĉ = D^{-1/2} C D^{-1/2}`` (sparse products only, so one product serves all columns; the
  products accumulate in place into reused work blocks), the same polynomial before and after
  the coarse correction (the cycle is a symmetric positive definite operator), and a dense
  Cholesky solve on the coarsest level. The level operators are the Galerkin products
  ``A_l = Pᵀ A_{l-1} P`` and ``B_l = Pᵀ B_{l-1} P`` of both matrices, so the shift σ can change
  without a new aggregation. Degree 4 halves the LOBPCG iterations of degree 1 (damped Jacobi)
  and beats 2, 3 and 6 in time; a W-cycle or a larger coarsest level changed nothing.
* The eigensolver's cycle runs in float32: a preconditioner needs no more, and the sparse
  products cost about a third of float64 ones. The eigensolver itself is float64 throughout
  (float32 products with the search directions were tried: the small-space orthonormalization
  amplifies their error once the directions become nearly dependent).
* LOBPCG on ``S = [X, W, P]``: X and P are B-orthonormal and mutually B-orthogonal by
  construction, W is projected against X; the Gram blocks with W are computed, the others are
  known, and the small problem is orthonormalized in its own space. When W is nearly in
  span(X, P) the iteration restarts without P. Converged wanted pairs are locked (hard), the
  guard columns above them stop getting directions once their residual is below
  ``guard_tol``.
* The initial block comes from the same iteration on the coarse levels (the Galerkin pencil
  ``(A_l, B_l)``, which gives upper bounds of the fine eigenvalues), prolongated level by level,
  with one preconditioned step on each finer level to remove the prolongation's roughness.

References
----------
Knyazev, A. V. (2001). Toward the optimal preconditioned eigensolver: locally optimal block
preconditioned conjugate gradient method. SIAM J. Sci. Comput. 23, 517-541.
doi:10.1137/S1064827500366124
Hetmaniuk, U., Lehoucq, R. (2006). Basis selection in LOBPCG. J. Comput. Phys. 218, 324-332.
doi:10.1016/j.jcp.2006.02.007
Duersch, J. A., Shao, M., Yang, C., Gu, M. (2018). A robust and efficient implementation of
LOBPCG. SIAM J. Sci. Comput. 40, C655-C676. doi:10.1137/17M1129830
Vaněk, P., Mandel, J., Brezina, M. (1996). Algebraic multigrid by smoothed aggregation for
second and fourth order elliptic problems. Computing 56, 179-196. doi:10.1007/BF02238511
Adams, M., Brezina, M., Hu, J., Tuminaro, R. (2003). Parallel multigrid smoothing: polynomial
versus Gauss-Seidel. J. Comput. Phys. 188, 593-610. doi:10.1016/S0021-9991(03)00194-3
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.csgraph import reverse_cuthill_mckee
from tqdm.auto import tqdm

from ..errors import SolverError, SpinDoctorWarning

__all__ = ["BlockAMG", "lobpcg_amg"]


# ------------------------------------------------------------------------------------ helpers
def _check_square(name: str, M) -> sp.csr_matrix:
    if not sp.issparse(M):
        raise TypeError(f"{name} must be a SciPy sparse matrix, got {type(M).__name__}")
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"{name} must be square, got shape {M.shape}")
    if np.iscomplexobj(M.data):
        raise TypeError(f"{name} must be real, got dtype {M.dtype}")
    out = sp.csr_matrix(M, dtype=np.float64)
    out.sum_duplicates()
    out.sort_indices()
    return out


def _lanczos_max(M: sp.csr_matrix, dinv_sqrt: np.ndarray, steps: int = 20) -> float:
    """Largest eigenvalue of ``D^{-1/2} M D^{-1/2}`` by a few Lanczos steps (seeded)."""
    n = M.shape[0]
    steps = max(1, min(steps, n))
    rng = np.random.default_rng(12345)
    v = rng.standard_normal(n)
    v /= np.linalg.norm(v)
    v_prev = np.zeros(n)
    alpha, beta = [], []
    b = 0.0
    for _ in range(steps):
        w = dinv_sqrt * (M @ (dinv_sqrt * v))
        a = float(v @ w)
        w -= a * v + b * v_prev
        alpha.append(a)
        b = float(np.linalg.norm(w))
        if b <= 1e-14 * abs(a):
            break
        beta.append(b)
        v_prev, v = v, w / b
    k = len(alpha)
    T = np.diag(alpha) + np.diag(beta[: k - 1], 1) + np.diag(beta[: k - 1], -1)
    return float(np.linalg.eigvalsh(T)[-1])


def _spmm_add(M: sp.csr_matrix, X: np.ndarray, Y: np.ndarray) -> None:
    """``Y += M @ X`` in place (C-ordered blocks of M's dtype), without the temporary and
    the zero-filled output SciPy's ``M @ X`` allocates: that allocation and the extra pass
    cost about as much as the product itself for (n, 60) float32 blocks."""
    if _csr_matvecs is None:  # pragma: no cover - SciPy without the private kernel
        Y += M @ X
        return
    if not (X.flags.c_contiguous and Y.flags.c_contiguous):
        raise ValueError("_spmm_add needs C-contiguous blocks")
    m = X.shape[1]
    _csr_matvecs(M.shape[0], M.shape[1], m, M.indptr, M.indices, M.data, X.ravel(), Y.ravel())


try:  # SciPy's CSR x dense-block kernel (private, stable since SciPy 0.7)
    from scipy.sparse._sparsetools import csr_matvecs as _csr_matvecs
except ImportError:  # pragma: no cover
    _csr_matvecs = None


# ----------------------------------------------------------------------------------- BlockAMG
class _Level:
    """One level of the hierarchy (internal, RCM order): matrices and smoother data."""

    __slots__ = ("A", "B", "P", "R", "C", "Cneg", "Ph", "Rh", "dis", "theta", "delta")

    def __init__(self, A, B, P, R):
        self.A, self.B, self.P, self.R = A, B, P, R
        self.C = self.Cneg = self.Ph = self.Rh = self.dis = None  # scaled, set by set_shift
        self.theta = self.delta = 0.0


class BlockAMG:
    """Smoothed-aggregation AMG V-cycle for ``C = A − σB``, applied to blocks of columns.

    The aggregation and prolongators come from ``pyamg.smoothed_aggregation_solver`` (built
    once, on ``A − σB`` with the constant near-null space); the Galerkin products of A and B
    are kept per level, so :meth:`set_shift` changes σ without a new aggregation. The cycle
    is written here: Chebyshev smoothers of degree ``degree`` in ``D⁻¹C`` on the interval
    ``[ρ/ratio, ρ]`` (ρ from 20 Lanczos steps, times 1.1), the same polynomial before and after
    the coarse correction, dense Cholesky on the coarsest level. It is a symmetric positive
    definite operator for SPD ``C`` (so it is valid inside CG and LOBPCG).

    Parameters
    ----------
    A : (n, n) SciPy sparse, symmetric positive semi-definite (e.g. D·stiffness, µm³/µs)
    B : (n, n) SciPy sparse, symmetric positive definite (e.g. the mass matrix, µm³), or None
        (then ``B = I`` and σ shifts by the identity)
    sigma : float
        Shift, ``σ < 0`` for a singular A (units of λ, 1/µs). ``C = A − σB`` must be SPD.
    degree : int
        Chebyshev degree of each pre- and post-smoothing (sparse products per sweep).
    ratio : float
        The smoother targets the eigenvalues of ``D⁻¹C`` in ``[ρ/ratio, ρ]``.
    max_coarse : int
        Coarsening stops below this size (the coarsest level is solved by dense Cholesky).
    dtype : np.float64 or np.float32
        Precision of the cycle (float32 halves the memory traffic; inputs are cast back).
    reorder : bool
        Renumber the dofs by reverse Cuthill-McKee (faster sparse products). ``apply`` takes
        and returns blocks in the caller's numbering either way.
    pyamg_options : dict, optional
        Extra keyword arguments of ``pyamg.smoothed_aggregation_solver`` (e.g. ``strength``).

    Measured (1e5-node ball, 60 columns, 1 thread, loaded machine): setup 0.6-1.5 s, one
    float32 cycle 0.5 s; inside PCG on ``A − σB`` it reaches 1e-10 in 14 iterations (2e4
    nodes, 20 right-hand sides, float32 and float64 alike).

    Attributes
    ----------
    perm : (n,) int64, internal position → caller's dof (identity when ``reorder=False``)
    sizes : list of int, dofs per level
    setup_time : float, seconds spent building the hierarchy
    """

    def __init__(
        self,
        A,
        B=None,
        *,
        sigma: float = 0.0,
        degree: int = 4,
        ratio: float = 30.0,
        max_coarse: int = 400,
        dtype=np.float64,
        reorder: bool = True,
        pyamg_options: dict | None = None,
    ):
        try:
            import pyamg
        except ImportError as err:  # pragma: no cover - optional dependency
            raise ImportError("BlockAMG needs pyamg (pip install pyamg)") from err
        t0 = time.perf_counter()
        A = _check_square("A", A)
        n = A.shape[0]
        B = sp.identity(n, format="csr") if B is None else _check_square("B", B)
        if B.shape != A.shape:
            raise ValueError(f"A and B must have the same shape, got {A.shape} and {B.shape}")
        if int(degree) < 1:
            raise ValueError(f"degree must be a positive integer, got {degree}")
        if not ratio > 1.0:
            raise ValueError(f"ratio must be > 1, got {ratio}")
        if np.dtype(dtype) not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ValueError(f"dtype must be float64 or float32, got {dtype}")
        self.degree = int(degree)
        self.ratio = float(ratio)
        self.gamma = 1
        self.dtype = np.dtype(dtype)
        if reorder:
            perm = reverse_cuthill_mckee((A + B).tocsr(), symmetric_mode=True).astype(np.int64)
            A = A[perm][:, perm].tocsr()
            B = B[perm][:, perm].tocsr()
        else:
            perm = np.arange(n, dtype=np.int64)
        self.perm = perm
        self.iperm = np.empty_like(perm)
        self.iperm[perm] = np.arange(n)
        ml = pyamg.smoothed_aggregation_solver(
            (A - sigma * B).tocsr(),
            symmetry="symmetric",
            max_coarse=int(max_coarse),
            presmoother=None,
            postsmoother=None,
            keep=False,
            **(pyamg_options or {}),
        )
        self.levels: list[_Level] = []
        Al, Bl = A, B
        for lvl in ml.levels[:-1]:
            P = sp.csr_matrix(lvl.P)
            R = sp.csr_matrix(P.T)
            self.levels.append(_Level(Al, Bl, P, R))
            Al = (R @ Al @ P).tocsr()
            Bl = (R @ Bl @ P).tocsr()
        self.levels.append(_Level(Al, Bl, None, None))
        self.sizes = [lv.A.shape[0] for lv in self.levels]
        self._buffers: dict[int, np.ndarray] = {}
        self.sigma = math.nan
        self.set_shift(sigma)
        self.setup_time = time.perf_counter() - t0

    # -------------------------------------------------------------------------------- setup
    def set_shift(self, sigma: float) -> None:
        """Use ``C = A − σB`` from now on (rebuilds the smoothers and the coarse Cholesky).

        Every level works with the diagonally scaled ``Ĉ = D^{-1/2} C D^{-1/2}`` (unit
        diagonal) and correspondingly scaled transfer operators, so the Chebyshev smoother
        needs no diagonal products.
        """
        sigma = float(sigma)
        if sigma == self.sigma:
            return
        dt = self.dtype
        dis_next = None
        for lv in reversed(self.levels):
            C = (lv.A - sigma * lv.B).tocsr()
            d = C.diagonal()
            if not np.all(d > 0):
                raise SolverError(f"A − σB has a non-positive diagonal entry (σ = {sigma:g})")
            dis = 1.0 / np.sqrt(d)
            Ch = (sp.diags(dis) @ C @ sp.diags(dis)).tocsr()
            lv.dis = dis.astype(dt)[:, None]
            if lv.P is None:  # coarsest level: dense Cholesky of Ĉ
                Cc = Ch.toarray()
                try:
                    self._coarse = sla.cho_factor(0.5 * (Cc + Cc.T), lower=True, check_finite=False)
                except np.linalg.LinAlgError as err:
                    raise SolverError(
                        f"A − σB is not positive definite on the coarsest level (σ = {sigma:g});"
                        " use a negative σ for a singular A"
                    ) from err
            else:
                rho = 1.1 * _lanczos_max(Ch, np.ones(Ch.shape[0]))
                lo = rho / self.ratio
                lv.theta, lv.delta = 0.5 * (rho + lo), 0.5 * (rho - lo)
                Ph = (sp.diags(1.0 / dis) @ lv.P @ sp.diags(dis_next)).tocsr()
                lv.Ph = Ph.astype(dt)
                lv.Rh = sp.csr_matrix(Ph.T).astype(dt)
            lv.C = Ch.astype(dt)
            lv.Cneg = (-Ch).astype(dt)
            lv.Cneg.sort_indices()
            dis_next = dis
        self.sigma = sigma

    def __repr__(self) -> str:
        return (
            f"BlockAMG(sizes={self.sizes}, sigma={self.sigma:g}, degree={self.degree}, "
            f"dtype={self.dtype.name})"
        )

    # -------------------------------------------------------------------------------- cycle
    def _work(self, level: int, m: int) -> list[np.ndarray]:
        """Three reusable (n_level, m) blocks of the cycle's dtype (no page faults per call)."""
        n = self.sizes[level]
        buf = self._buffers.get(level)
        if buf is None or buf.size < 3 * n * m:
            buf = np.empty(3 * n * m, dtype=self.dtype)
            self._buffers[level] = buf
        return [buf[i * n * m : (i + 1) * n * m].reshape(n, m) for i in range(3)]

    def _smooth(self, lv: _Level, r: np.ndarray, y: np.ndarray, d: np.ndarray, residual: bool):
        """Chebyshev iteration for ``Ĉ y = r`` from ``y = 0``, into the work block y (d: work).

        r is overwritten by the residual ``r − Ĉ y`` (completed only when ``residual``).
        Per degree: one sparse product accumulated in place into r and three BLAS passes.
        """
        axpy = sla.blas.get_blas_funcs("axpy", (r,))
        theta, delta = lv.theta, lv.delta
        s1 = theta / delta
        rho = 1.0 / s1
        rf, df, yf = r.reshape(-1), d.reshape(-1), y.reshape(-1)  # views (C-contiguous)
        np.multiply(r, 1.0 / theta, out=d)
        y[...] = d
        for k in range(1, self.degree + (1 if residual else 0)):
            _spmm_add(lv.Cneg, d, r)  # r ← r − Ĉ d
            if k == self.degree:
                break
            rho_new = 1.0 / (2.0 * s1 - rho)
            d *= rho_new * rho
            axpy(rf, df, a=2.0 * rho_new / delta)
            axpy(df, yf)
            rho = rho_new

    def _cycle(self, level: int, b: np.ndarray) -> np.ndarray:
        """V-cycle for ``Ĉ_level x = b`` (scaled variables); b is overwritten. The result is a
        work block of this level (valid until the next cycle at this level)."""
        if level == len(self.levels) - 1:
            x = sla.cho_solve(self._coarse, b.astype(np.float64), check_finite=False)
            return np.ascontiguousarray(x, dtype=b.dtype)
        lv = self.levels[level]
        x, d, y = self._work(level, b.shape[1])
        self._smooth(lv, b, x, d, residual=True)  # b is now the residual
        ec = self._cycle(level + 1, lv.Rh @ b)
        d.fill(0.0)
        _spmm_add(lv.Ph, ec, d)  # d = e, the coarse correction
        x += d
        _spmm_add(lv.Cneg, d, b)  # b ← b − Ĉ e
        self._smooth(lv, b, y, d, residual=False)
        x += y
        return x

    def cycle(self, R: np.ndarray, level: int = 0) -> np.ndarray:
        """One V-cycle ``≈ C_level⁻¹ R`` on a block (n_level, m) in the internal (RCM)
        numbering (no checks; a new float64 array out)."""
        dis = self.levels[level].dis
        out = self._cycle(level, dis * np.ascontiguousarray(R, dtype=self.dtype))
        return np.multiply(out, dis, dtype=np.float64)

    def apply(self, R: np.ndarray) -> np.ndarray:
        """``≈ (A − σB)⁻¹ R`` for R of shape (n,) or (n, m), in the caller's numbering."""
        R = np.asarray(R)
        n = self.sizes[0]
        if R.shape[0] != n or R.ndim not in (1, 2):
            raise ValueError(f"R must have shape ({n},) or ({n}, m), got {R.shape}")
        vec = R.ndim == 1
        Rb = R[:, None] if vec else R
        X = self.cycle(Rb[self.perm])[self.iperm]
        return X[:, 0] if vec else X

    __call__ = apply


# ------------------------------------------------------------------------------------ LOBPCG
def _orthonormalizer(G: np.ndarray, drop: float, return_cond: bool = False):
    """M with ``Mᵀ G M = I`` spanning the numerically independent directions of a symmetric
    positive semi-definite Gram matrix G (eigen-decomposition of the diagonally scaled G;
    directions with relative eigenvalue below ``drop`` are discarded). With ``return_cond``
    also the ratio of the smallest to the largest eigenvalue of the scaled G."""
    G = 0.5 * (G + G.T)
    d = np.sqrt(np.clip(np.diag(G), 0.0, None))
    d = np.where(d > 0, d, np.inf)
    theta, U = np.linalg.eigh(G / d[:, None] / d[None, :])
    top = max(float(theta[-1]), 1e-300)
    keep = theta > drop * top
    M = (U[:, keep] / np.sqrt(theta[keep])) / d[:, None]
    return (M, float(theta[0]) / top) if return_cond else M


def _b_orthonormalize(B, X: np.ndarray, drop: float) -> tuple[np.ndarray, np.ndarray]:
    """B-orthonormal basis of span(X) (two passes), with its product ``B X``."""
    for _ in range(2):
        BX = B @ X
        T = _orthonormalizer(X.T @ BX, drop)
        X = X @ T
    return X, B @ X


class _Pencil:
    """The matrices of one level and its preconditioner (internal numbering)."""

    def __init__(self, A, B, prec):
        self.A, self.B, self.prec = A, B, prec


def _combine(blocks, coefs) -> np.ndarray:
    """``Σ_b blocks[b] @ coefs[b]`` as a C-contiguous (n, ·) array, by BLAS gemm accumulating
    in place (on the transposes, which are Fortran-ordered views; no temporaries)."""
    gemm = sla.blas.get_blas_funcs("gemm", (blocks[0],))
    acc = None
    for Y, C in zip(blocks, coefs):
        if Y is None or Y.shape[1] == 0:
            continue
        if acc is None:
            acc = gemm(1.0, C.T, Y.T)
        else:
            acc = gemm(1.0, C.T, Y.T, beta=1.0, c=acc, overwrite_c=1)
    return acc.T


def _colnorm(X: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->j", X, X))


def _rel_residuals(AX, BX, lam, lam_floor):
    R = BX * (-lam)
    R += AX
    rn, bn, an = _colnorm(R), _colnorm(BX), _colnorm(AX)
    den = np.maximum(np.abs(lam) * bn + an, lam_floor * bn)
    return R, rn / np.where(den > 0, den, 1.0)


def _lobpcg(
    pen: _Pencil,
    X: np.ndarray,
    nev: int,
    tol: float,
    maxiter: int,
    *,
    guard_tol: float = 1e-3,
    floor_rel: float = 0.05,
    drop: float = 1e-14,
    restart_tol: float = 1e-8,
    log: list | None = None,
    progress=None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Blocked LOBPCG with hard locking (see the module docstring).

    Basis ``S = [X, W, P]``. X (Ritz vectors) and P are B-orthonormal and B-orthogonal to each
    other by construction; W (the preconditioned residuals) is projected once against X.
    ``AX, BX`` are fresh sparse products every iteration (exact residuals, no drift); the
    Gram blocks with W come from ``AW, BW``. The blocks of P alone are known from the previous
    small problem (``PᵀBP = I``, ``XᵀBP = XᵀAP = 0``, ``PᵀAP = QᵀG_A Q``), so P needs no sparse
    products. The small problem is orthonormalized in its own space (numerically dependent
    directions are dropped). All of this is float64: the small-space orthonormalization
    amplifies Gram errors by the inverse of the smallest kept Gram eigenvalue, so float32
    products (tried) break the Rayleigh-Ritz step once W and P become nearly dependent.

    The first ``nev`` pairs are converged when their relative residual
    ``‖Aφ − λBφ‖/(|λ|‖Bφ‖ + ‖Aφ‖) ≤ tol`` (|λ| floored at ``floor_rel·λ_{nev−1}``, so a
    null-space vector is measured against the spectrum's scale); they are then locked (moved
    out of the iteration; new directions are projected twice against them). The remaining
    columns (guards) only need ``guard_tol``: below it they get no new direction.

    Returns λ (m,) ascending, X (n, m) and stats.
    """
    A, B, prec = pen.A, pen.B, pen.prec
    n, m = X.shape
    st: dict[str, Any] = {"iterations": 0, "spmm_cols": 0, "prec_cols": 0, "restarts": 0}
    P = None
    GPP = None  # Pᵀ A P, known from the small space
    Xl, BXl = np.empty((n, m)), np.empty((n, m))  # locked vectors: the first nl columns
    lam_l, rel_l = np.empty(0), np.empty(0)
    lam = np.zeros(m)
    rel = np.full(m, np.inf)
    store = [np.empty(n * m) for _ in range(4)]  # reused storage of AX, BX, AW, BW

    def product(M, Y, slot):
        Y = np.ascontiguousarray(Y)
        out = store[slot][: Y.size].reshape(Y.shape)
        out.fill(0.0)
        _spmm_add(M, Y, out)
        st["spmm_cols"] += Y.shape[1]
        return out

    for it in range(maxiter + 1):
        AX, BX = product(A, X, 0), product(B, X, 1)
        if it == 0:  # Rayleigh-Ritz on the start block
            GXA, GXB = X.T @ AX, X.T @ BX
            try:
                lam, C = sla.eigh(0.5 * (GXA + GXA.T), 0.5 * (GXB + GXB.T), check_finite=False)
            except np.linalg.LinAlgError as err:
                raise SolverError("the initial block is (numerically) rank deficient") from err
            X, AX, BX = X @ C, AX @ C, BX @ C
        lam_all = np.sort(np.concatenate([lam_l, lam]))
        top = float(lam_all[nev - 1])
        Rr, rel = _rel_residuals(AX, BX, lam, floor_rel * abs(top))
        wanted = lam <= top
        if log is not None:
            log.append((np.concatenate([rel_l, rel]), np.concatenate([lam_l, lam])))
        if progress is not None:
            progress.update(1)
            ndone = lam_l.size + int(np.sum(rel[wanted] <= tol))
            progress.set_postfix(converged=f"{ndone}/{nev}", residual=f"{rel[wanted].max():.1e}")
        if np.all(rel[wanted] <= tol) or it == maxiter:
            break
        # lock the converged wanted columns; X, AX, BX keep them until the update below
        # (it gives them zero weight), which spares copying the blocks
        lock = wanted & (rel <= tol)
        nl = lam_l.size
        if lock.any():
            nlock = int(lock.sum())
            Xl[:, nl : nl + nlock] = X[:, lock]
            BXl[:, nl : nl + nlock] = BX[:, lock]
            lam_l = np.concatenate([lam_l, lam[lock]])
            rel_l = np.concatenate([rel_l, rel[lock]])
            nl += nlock
        kept = np.flatnonzero(~lock)
        lam, rel, wanted = lam[kept], rel[kept], wanted[kept]
        act = np.where(wanted, rel > tol, rel > guard_tol)
        mx = kept.size
        W = prec(Rr[:, kept[act]])
        mw = W.shape[1]
        st["prec_cols"] += mw
        if nl:
            for _ in range(2):
                W -= Xl[:, :nl] @ (BXl[:, :nl].T @ W)
        W -= X @ (BX.T @ W)  # all current columns: the kept ones and the just locked
        AW, BW = product(A, W, 2), product(B, W, 3)
        mp = 0 if P is None else P.shape[1]
        k = mx + mw + mp
        sw, sp_ = slice(mx, mx + mw), slice(mx + mw, k)
        GA = np.zeros((k, k))
        GB = np.eye(k)
        GA[:mx, :mx] = np.diag(lam)  # X: B-orthonormal Ritz vectors (by construction)
        GA[:mx, sw], GB[:mx, sw] = (AX.T @ W)[kept], (BX.T @ W)[kept]
        GA[sw, sw], GB[sw, sw] = W.T @ AW, W.T @ BW
        if mp:
            GA[sw, sp_], GB[sw, sp_] = AW.T @ P, BW.T @ P
            GA[sp_, sp_] = GPP
        GA = np.triu(GA) + np.triu(GA, 1).T
        GB = np.triu(GB) + np.triu(GB, 1).T
        # Rayleigh-Ritz in the small space
        M, cond = _orthonormalizer(GB, drop, return_cond=True)
        if mp and cond < restart_tol:
            # W nearly in span(X, P): the implicit blocks' round-off would be amplified by
            # 1/cond, so restart without P and with explicit X-X blocks
            st["restarts"] += 1
            k, mp, P = mx + mw, 0, None
            GA, GB = GA[:k, :k], GB[:k, :k]
            GXA, GXB = (X.T @ AX)[np.ix_(kept, kept)], (X.T @ BX)[np.ix_(kept, kept)]
            GA[:mx, :mx], GB[:mx, :mx] = 0.5 * (GXA + GXA.T), 0.5 * (GXB + GXB.T)
            sp_ = slice(k, k)
            M = _orthonormalizer(GB, drop)
        theta, Y = np.linalg.eigh(M.T @ GA @ M)
        C = M @ Y
        Cx = C[:, :mx]
        lam = theta[:mx]
        # new direction: the W/P components of the active Ritz vectors, GB-orthogonal to Cx
        Z = Cx[:, act].copy()
        Z[:mx] = 0.0
        for _ in range(2):
            Z -= Cx @ (Cx.T @ (GB @ Z))
        Q = Z @ _orthonormalizer(Z.T @ GB @ Z, 1e-16)
        Q -= Cx @ (Cx.T @ (GB @ Q))
        Q = Q @ _orthonormalizer(Q.T @ GB @ Q, 1e-16)
        GPP = Q.T @ GA @ Q
        GPP = 0.5 * (GPP + GPP.T)
        outs = []
        for F in (Cx, Q):
            Fx = np.zeros((X.shape[1], F.shape[1]))
            Fx[kept] = F[:mx]  # the just locked columns of X get zero weight
            outs.append(_combine((X, W, P), (Fx, F[sw], F[sp_])))
        X, P = outs
        st["iterations"] = it + 1
        if log is not None:
            st.setdefault("trace", []).append((time.perf_counter(), mx, mw, mp, nl))
    st["locked"] = int(lam_l.size)
    lam = np.concatenate([lam_l, lam])
    X = np.hstack([Xl[:, : lam_l.size], X])
    order = np.argsort(lam, kind="stable")
    st["rel_residual"] = np.concatenate([rel_l, rel])[order]
    return lam[order], X[:, order], st


# ------------------------------------------------------------------------------------ driver
_DENSE_MAX = 1500  # pencils up to this size are solved by dense eigh
_COARSE_FACTOR = 6  # the cascade starts on the coarsest level with ≥ this many dofs per column


def _dense_lowest(A: sp.spmatrix, B: sp.spmatrix, m: int) -> tuple[np.ndarray, np.ndarray]:
    Ad = A.toarray()
    Bd = B.toarray()
    return sla.eigh(
        0.5 * (Ad + Ad.T), 0.5 * (Bd + Bd.T), subset_by_index=(0, m - 1), check_finite=False
    )


def _presmooth(pen: _Pencil, X: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """One preconditioned inverse iteration step ``X ← X − T(AX − BXΛ)`` for prolongated
    coarse Ritz pairs (X, Λ): removes the rough error the prolongation leaves, for one cycle
    per column (cheaper than a LOBPCG iteration). ``P X`` is B-orthonormal with Rayleigh
    quotients Λ already (Galerkin coarse pencil), so no Rayleigh-Ritz step is needed."""
    return X - pen.prec(pen.A @ X - (pen.B @ X) * lam)


def lobpcg_amg(
    A,
    B,
    nev: int,
    *,
    tol: float = 1e-10,
    maxiter: int = 200,
    X0: np.ndarray | None = None,
    nguard: int | None = None,
    guard_tol: float = 1e-3,
    sigma: float | None = None,
    amg: BlockAMG | None = None,
    degree: int = 4,
    dtype=np.float32,
    coarse_tol: float = 1e-2,
    dense_max: int = _DENSE_MAX,
    seed: int = 0,
    quiet: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Lowest ``nev`` eigenpairs of ``A φ = λ B φ`` by AMG-preconditioned block LOBPCG.

    Needs only SciPy and pyamg (no sparse factorization). See the module docstring for the
    method; :class:`BlockAMG` for the preconditioner.

    Parameters
    ----------
    A : (n, n) SciPy sparse, symmetric positive semi-definite (e.g. ``D·K + Q``, µm³/µs)
    B : (n, n) SciPy sparse, symmetric positive definite (e.g. the mass matrix, µm³)
    nev : int, number of eigenpairs wanted (lowest first)
    tol : float
        Relative residual ``‖Aφ − λBφ‖ / (|λ|‖Bφ‖ + ‖Aφ‖)`` every returned pair reaches (|λ|
        floored at 0.05·λ_{nev−1}, so null-space vectors are measured against the spectrum's
        scale). Eigenvalue errors are about the square of this, relative.
    maxiter : int, LOBPCG iterations on the finest level
    X0 : (n, j) array, optional
        Initial vectors (e.g. the eigenvectors of a nearby problem); the coarse cascade still
        runs and its vectors join X0 in a first Rayleigh-Ritz step.
    nguard : int, optional
        Extra columns iterated along (default ``max(10, nev // 5)``): the convergence rate of
        the top wanted pairs depends on the gap to eigenvalue ``nev + nguard``.
    guard_tol : float, residual at which guard columns stop getting new directions
    sigma : float, optional
        Shift of the preconditioner ``(A − σB)⁻¹`` (1/µs, negative). Default: the shift of a
        given ``amg``, else ``−1e-4·tr(A)/tr(B)`` (0.1-0.3 λ_1 on the test balls; from 1e-3 λ_1
        to λ_1 the iteration counts differ by one or two).
    amg : BlockAMG, optional
        A hierarchy to reuse (built on the same A and B); default: a new one.
    degree, dtype : Chebyshev degree and precision of a new :class:`BlockAMG`
    coarse_tol : float
        Tolerance of the cascade's coarse-level solves (the prolongated vectors are only a
        start; 1e-2 and 1e-4 gave the same fine-level iterations at 1e5 nodes).
    dense_max : int
        Pencils with at most this many dofs (and any level of the cascade this small) are
        solved by dense ``scipy.linalg.eigh``.
    seed : int, seed of the random block on the coarsest level used
    quiet : bool, no progress bar (finest level: iterations, converged pairs) when True

    Returns
    -------
    w : (nev,) float64, ascending eigenvalues (1/µs for A in µm³/µs and B in µm³)
    V : (n, nev) float64, B-orthonormal eigenvectors (largest-magnitude entry positive)
    info : dict
        ``iterations`` (finest level), ``coarse_iterations`` (per level), ``converged``,
        ``residuals`` (nev,) relative residuals measured after the final Rayleigh-Ritz step,
        ``timings`` (seconds: setup, coarse, fine, polish, total), ``sigma``, ``levels``,
        ``prec_columns`` and ``spmm_columns`` (work counts), ``amg`` (the hierarchy, whose
        ``apply`` approximates ``(A − σB)⁻¹`` in the caller's numbering).

    Raises
    ------
    TypeError, ValueError
        Non-sparse, complex or mismatched matrices; bad ``nev``, ``tol``, ``X0`` or ``amg``.
    SolverError
        A − σB not positive definite, or a rank-deficient start.
    """
    t_start = time.perf_counter()
    A = _check_square("A", A)
    B = _check_square("B", B)
    n = A.shape[0]
    if B.shape != A.shape:
        raise ValueError(f"A and B must have the same shape, got {A.shape} and {B.shape}")
    if isinstance(nev, bool) or not isinstance(nev, (int, np.integer)) or not 1 <= nev < n:
        raise ValueError(f"nev must be an integer in [1, {n - 1}], got {nev!r}")
    if not (0 < tol < 1):
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    if int(maxiter) < 1:
        raise ValueError(f"maxiter must be a positive integer, got {maxiter}")
    nev = int(nev)
    nguard = max(10, nev // 5) if nguard is None else int(nguard)
    if nguard < 0:
        raise ValueError(f"nguard must be ≥ 0, got {nguard}")
    m = nev + nguard
    if X0 is not None:
        X0 = np.asarray(X0, dtype=np.float64)
        if X0.ndim != 2 or X0.shape[0] != n:
            raise ValueError(f"X0 must have shape ({n}, j), got {X0.shape}")
    timings: dict[str, float] = {}
    info: dict[str, Any] = {"nguard": nguard, "coarse_iterations": []}
    if n <= dense_max or 4 * m >= n:
        t0 = time.perf_counter()
        w, V = _dense_lowest(A, B, nev)
        w, V, rel = _polish(A, B, V, nev)
        timings["fine"] = time.perf_counter() - t0
        info.update(iterations=0, converged=True, sigma=math.nan, levels=[n], amg=None)
        info.update(prec_columns=0, spmm_columns=0, residuals=rel)
        timings["total"] = time.perf_counter() - t_start
        info["timings"] = timings
        return w, V, info

    # ---- hierarchy
    t0 = time.perf_counter()
    if amg is None:
        scale = float(A.diagonal().sum() / B.diagonal().sum())
        amg = BlockAMG(
            A, B, sigma=-1e-4 * scale if sigma is None else sigma, degree=degree, dtype=dtype
        )
    else:
        if not isinstance(amg, BlockAMG) or amg.sizes[0] != n:
            raise ValueError(f"amg must be a BlockAMG for {n} dofs, got {amg!r}")
        if sigma is not None:
            amg.set_shift(sigma)
    levels = amg.levels
    timings["setup"] = time.perf_counter() - t0

    # ---- coarse-to-fine cascade
    t0 = time.perf_counter()
    l0 = max([i for i, s in enumerate(amg.sizes) if s >= _COARSE_FACTOR * m] or [0])
    its: list[int] = []
    w = None
    if l0 > 0:
        lv = levels[l0]
        if lv.A.shape[0] <= max(dense_max, 4 * m):
            w, X = _dense_lowest(lv.A, lv.B, m)
        else:
            X = np.random.default_rng(seed).standard_normal((lv.A.shape[0], m))
            pen = _Pencil(lv.A, lv.B, lambda R, lvl=l0: amg.cycle(R, lvl))
            w, X, stc = _lobpcg(pen, X, nev, coarse_tol, maxiter, guard_tol=guard_tol)
            its.append(stc["iterations"])
        for lvl in range(l0 - 1, 0, -1):
            pen = _Pencil(levels[lvl].A, levels[lvl].B, lambda R, lvl=lvl: amg.cycle(R, lvl))
            X = _presmooth(pen, levels[lvl].P @ X, w)
            w, X, stc = _lobpcg(pen, X, nev, coarse_tol, maxiter, guard_tol=guard_tol)
            its.append(stc["iterations"])
        X = levels[0].P @ X
    else:
        X = np.random.default_rng(seed).standard_normal((n, m))
    pen = _Pencil(levels[0].A, levels[0].B, lambda R: amg.cycle(R, 0))
    if X0 is not None:
        X, w = _start_with(pen, np.hstack([X0[amg.perm], X]), m)
    if w is not None:
        X = _presmooth(pen, X, w)
    timings["coarse"] = time.perf_counter() - t0

    # ---- finest level
    t0 = time.perf_counter()
    # lock at tol/2: the final Rayleigh-Ritz step may rotate clustered pairs, which can raise a
    # residual a little above its locking value
    with tqdm(total=maxiter + 1, desc="lobpcg_amg", disable=quiet, leave=False) as bar:
        w, X, st = _lobpcg(pen, X, nev, 0.5 * tol, maxiter, guard_tol=guard_tol, progress=bar)
    timings["fine"] = time.perf_counter() - t0
    info.update(
        iterations=st["iterations"],
        coarse_iterations=its,
        sigma=amg.sigma,
        levels=list(amg.sizes),
        amg=amg,
        prec_columns=st["prec_cols"],
        spmm_columns=st["spmm_cols"],
        converged=bool(np.all(st["rel_residual"][:nev] <= 0.5 * tol)),
        restarts=st["restarts"],
    )
    t0 = time.perf_counter()
    w, V, rel = _polish(levels[0].A, levels[0].B, X[:, :nev], nev)
    info["residuals"] = rel
    info["converged"] = info["converged"] and bool(np.all(rel <= tol))
    if not info["converged"]:
        warnings.warn(
            f"lobpcg_amg: {int(np.sum(rel > tol))} of {nev} pairs did not reach tol = {tol:g} "
            f"in {maxiter} iterations (largest relative residual {float(rel.max()):.2e})",
            SpinDoctorWarning,
            stacklevel=2,
        )
    timings["polish"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    info["timings"] = timings
    return w, V[amg.iperm], info


def _start_with(pen: _Pencil, X: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The m lowest Ritz pairs of span(X) (a Rayleigh-Ritz step on a wider block)."""
    X, _ = _b_orthonormalize(pen.B, X, 1e-12)
    if X.shape[1] < m:
        raise SolverError(f"the initial block has rank {X.shape[1]} < {m}")
    AX = pen.A @ X
    w, C = np.linalg.eigh(0.5 * (X.T @ AX + AX.T @ X))
    return X @ C[:, :m], w[:m]


def _polish(A, B, X: np.ndarray, nev: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rayleigh-Ritz on span(X) with fresh products (exact B-orthonormality), the nev lowest
    pairs with their relative residuals, and the sign convention (largest-magnitude entry of
    each vector positive)."""
    AX, BX = A @ X, B @ X
    GA, GB = X.T @ AX, X.T @ BX
    w, C = sla.eigh(0.5 * (GA + GA.T), 0.5 * (GB + GB.T), subset_by_index=(0, nev - 1))
    V, AV, BV = X @ C, AX @ C, BX @ C
    sign = np.sign(V[np.abs(V).argmax(0), np.arange(nev)])
    V *= sign
    AV *= sign
    BV *= sign
    _, rel = _rel_residuals(AV, BV, w, 0.05 * abs(float(w[nev - 1])))
    return w, V, rel
