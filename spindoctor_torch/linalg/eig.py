"""Lowest eigenpairs of a sparse generalized symmetric problem, differentiable in the values.

Catalogue
---------
sparse_eigsh        lowest eigenpairs of ``A φ = λ B φ`` (A symmetric, B SPD) for two
                    :class:`SparseMatrix` on one pattern, truncated at ``lam_max``; an autograd
                    Function returns ``(λ, Φ)`` with gradients to both value vectors
EigInfo             what was computed (backend, counts, timings, the cap flag)
project             ``Φᵀ X Φ`` for a sparse X, with the value gradient formed at the nonzeros
sddmm               ``(U Vᵀ)`` sampled on a pattern (the building block of the value gradients)
BACKENDS            the forward eigensolvers: "dense", "splu", "cholmod", "lobpcg" (+ "auto")

Forward (no autograd, float64 on the CPU)
-----------------------------------------
* ``dense``: ``scipy.linalg.eigh`` of the dense pencil (small problems, N ≲ 3000).
* ``splu``: ARPACK (``eigsh``) in shift-invert mode, the operator ``(A − σB)⁻¹`` from SciPy's
  SuperLU with a geometric nested-dissection ordering (when dof coordinates are given) and
  ``SymmetricMode``. Needs no compiled extra; practical to ~3·10⁴ dofs (SuperLU's fill grows
  fast in 3-D: 1e5 dofs take minutes to factor).
* ``cholmod``: a CHOLMOD Cholesky factorization (scikit-sparse, optional extra; nested-
  dissection ordering) driving a thick-restart block Lanczos
  (:mod:`~spindoctor_torch.linalg.block_lanczos`): blocks of 8 right-hand sides cost little
  more than one, and the shift is moved to ~5 % of the lowest non-zero eigenvalue.
* ``lobpcg``: LOBPCG preconditioned by a block smoothed-aggregation AMG V-cycle
  (:mod:`~spindoctor_torch.linalg.amg_eig`; NumPy, SciPy and pyamg only, no factorization);
  the cycle also preconditions the adjoint.
* ``auto``: dense for N ≤ 1500, else cholmod if importable, else splu for N ≤ 40 000, else
  lobpcg if pyamg is importable, else splu.

Independent blocks (e.g. compartments without permeability) are solved separately and merged
into one basis over all dofs (each column supported on its block), sorted ascending.

Backward (the adjoint)
----------------------
Let ``AΦ = BΦΛ``, ``ΦᵀBΦ = I`` for the k returned pairs and ``Φ_b`` a buffer of further computed
pairs (``λ_b > λ_k``; the forward always computes some). For symmetric perturbations,

* ``dλ_n = φ_nᵀ (dA − λ_n dB) φ_n``;
* ``dΦ = Φ C + Φ_b C_b + W`` with ``W`` B-orthogonal to all computed pairs. With ``H = ΦᵀΦ̄``
  split into symmetric ``Hs`` and antisymmetric ``Ha`` parts, the in-subspace terms give
  ``−½ Φ Hs Φᵀ : dB`` (no eigenvalue gaps at all) and, for ``m ≠ n``,
  ``Ha_mn/(λ_n − λ_m) · φ_mᵀ(2dA − (λ_m + λ_n)dB)φ_n``; the buffer gives
  ``(Φ_bᵀΦ̄)_mn/(λ_n − λ_m) · φ_mᵀ(dA − λ_n dB)φ_n``;
* the complement part is ``−z_nᵀ(dA − λ_n dB)φ_n`` with ``z_n`` B-orthogonal to all computed
  pairs and ``(A − λ_n B) z_n = P⊥ᵀ Φ̄_n``. On that complement ``A − λ_n B`` is positive
  definite (every eigenvalue there exceeds the buffer), so the k systems are solved together
  by a column-wise preconditioned CG, with the forward's shift-invert operator ``(A − σB)⁻¹``
  (or the AMG cycle) as the preconditioner: no factorization per mode. The buffer keeps the
  preconditioned condition number ≤ λ_{b+1}/(λ_{b+1} − λ_k).

Degenerate and clustered eigenvalues (the invariant-subspace argument): only ``Ha`` needs gaps.
A loss that depends on Φ only through the spanned subspace (and on λ only through the
subspace operator, e.g. ``ΦᵀAΦ``) has ``Ha = 0`` identically, so its gradient needs no
``1/(λ_n − λ_m)`` at all. Pairs whose gap is below ``cluster_rtol·max|λ|`` are therefore dropped
(``Ha_mn`` is zero there for any loss invariant under rotations inside the cluster; such a loss
must then also use λ symmetrically within the cluster, which holds when it uses ``ΦᵀAΦ``
instead of ``diag(λ)`` - the matrix formalism in :mod:`spindoctor_torch.solvers.mf` does).
Truncation never cuts through a cluster.

Gradients are formed at the pattern's nonzeros only (``sddmm``), chunked, O(nnz·k) time and
O(chunk·k) memory; they are symmetrized (the FEM values of a symmetric matrix).

References
----------
Nelson, R. B. (1976). Simplified calculation of eigenvector derivatives. AIAA J. 14, 1201.
Giles, M. (2008). Collected matrix derivative results for forward and reverse mode AD.
Li, J.-R. et al. (2019). SpinDoctor. NeuroImage 202, 116120. doi:10.1016/j.neuroimage.2019.116120
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from ..errors import SolverError, SpinDoctorWarning
from .amg_eig import BlockAMG, lobpcg_amg
from .block_lanczos import block_shift_invert_eigsh, linear_rayleigh_shift
from .sparse import SparseMatrix, SparsePattern

__all__ = [
    "BACKENDS",
    "EigInfo",
    "sparse_eigsh",
    "project",
    "sddmm",
    "nested_dissection_order",
    "cholmod_available",
]

BACKENDS = ("auto", "dense", "splu", "cholmod", "lobpcg")

_DENSE_MAX = 3000
_SPLU_MAX = 40_000
_SDDMM_CHUNK = 1 << 22  # entries of the (chunk, k) gather


def cholmod_available() -> bool:
    """True when scikit-sparse's CHOLMOD can be imported."""
    return importlib.util.find_spec("sksparse") is not None


# ----------------------------------------------------------------------------------- helpers
def sddmm(pattern: SparsePattern, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Values of ``U Vᵀ`` at the pattern's nonzeros: ``out[e] = Σ_k U[row_e, k] V[col_e, k]``.

    Parameters
    ----------
    pattern : SparsePattern (nnz entries)
    U, V : (n, k) tensors

    Returns
    -------
    (nnz,) tensor. Computed in chunks of the (nnz, k) gather, so memory stays bounded.
    """
    rows, cols = pattern.rows, pattern.cols
    k = max(1, U.shape[1])
    step = max(1, _SDDMM_CHUNK // k)
    out = torch.empty(pattern.nnz, dtype=torch.result_type(U, V), device=U.device)
    for s in range(0, pattern.nnz, step):
        r = rows[s : s + step]
        c = cols[s : s + step]
        out[s : s + step] = (U[r] * V[c]).sum(1)
    return out


def _symmetrize(pattern: SparsePattern, g: torch.Tensor) -> torch.Tensor:
    return 0.5 * (g + g[pattern.transpose_permutation()])


def _csr(pattern: SparsePattern, values: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            pattern.crow_indices(),
            pattern.cols,
            values.detach(),
            size=(pattern.n, pattern.n),
            check_invariants=False,
        )


class _Project(torch.autograd.Function):
    """``P = Φᵀ X Φ``; backward ``X̄ = sddmm(Φ P̄, Φ)``, ``Φ̄ = XΦP̄ᵀ + XᵀΦP̄``."""

    @staticmethod
    def forward(ctx, values, phi, pattern):
        X = _csr(pattern, values)
        XPhi = torch.sparse.mm(X, phi.detach())
        ctx.save_for_backward(values, phi)
        ctx.pattern = pattern
        return phi.detach().T @ XPhi

    @staticmethod
    def backward(ctx, gP):
        values, phi = ctx.saved_tensors
        pattern = ctx.pattern
        gvals = gphi = None
        if ctx.needs_input_grad[0]:
            gvals = sddmm(pattern, phi @ gP, phi)
        if ctx.needs_input_grad[1]:
            X = _csr(pattern, values)
            XT = _csr(pattern, values.detach()[pattern.transpose_permutation()])
            gphi = torch.sparse.mm(X, phi @ gP.T) + torch.sparse.mm(XT, phi @ gP)
        return gvals, gphi, None


def project(X: SparseMatrix, phi: torch.Tensor) -> torch.Tensor:
    """Reduced matrix ``Φᵀ X Φ`` (k, k) of a sparse X (n, n) and a basis Φ (n, k).

    Differentiable in ``X.values`` (gradient formed at the nonzeros only, never an n×n dense
    matrix) and in Φ. Real tensors only.
    """
    if phi.ndim != 2 or phi.shape[0] != X.shape[0]:
        raise ValueError(f"phi must have shape ({X.shape[0]}, k), got {tuple(phi.shape)}")
    if phi.is_complex() or X.values.is_complex():
        raise TypeError("project expects real X and phi")
    return _Project.apply(X.values, phi.to(X.values.dtype), X.pattern)


def nested_dissection_order(adj: sp.csr_matrix, coords: np.ndarray, leaf: int = 64) -> np.ndarray:
    """Geometric nested-dissection ordering of a mesh graph (fill-reducing for factorization).

    Recursively splits the nodes at the median of the longest bounding-box axis; the nodes of
    the lower half that touch the upper half form the separator, ordered last.

    Parameters
    ----------
    adj : (n, n) sparse matrix, the graph (its pattern)
    coords : (n, 3) node coordinates
    leaf : subdomains of at most ``leaf`` nodes are not split further

    Returns
    -------
    (n,) int64 permutation (new position → old index).
    """
    adj = sp.csr_matrix(adj)
    n = adj.shape[0]
    out: list[np.ndarray] = []
    upper = np.zeros(n, dtype=bool)
    # explicit stack of (nodes, stage): stage 0 = split, 1 = emit separator
    stack: list[tuple[np.ndarray, np.ndarray | None]] = [(np.arange(n), None)]
    while stack:
        nodes, sep = stack.pop()
        if sep is not None:
            out.append(sep)
            continue
        if nodes.size <= leaf:
            out.append(nodes)
            continue
        p = coords[nodes]
        ax = int(np.argmax(p.max(0) - p.min(0)))
        med = np.median(p[:, ax])
        low = p[:, ax] < med
        if low.all() or not low.any():
            out.append(nodes)
            continue
        lo, hi = nodes[low], nodes[~low]
        upper[hi] = True
        sub = adj[lo]
        touch_rows = np.repeat(np.arange(lo.size), np.diff(sub.indptr))[upper[sub.indices]]
        upper[hi] = False
        touch = np.zeros(lo.size, dtype=bool)
        touch[touch_rows] = True
        # post-order: low part, high part, then the separator
        stack.append((nodes[:0], lo[touch]))
        stack.append((hi, None))
        stack.append((lo[~touch], None))
    perm = np.concatenate(out)
    return perm


# ----------------------------------------------------------------------------- shift-invert
class _ShiftInvert:
    """Solve ``(A − σB) X = R`` for blocks R (n, m): the forward's operator and the backward's
    preconditioner. Built per independent block; ``groups`` map block dofs into all dofs."""

    def __init__(self, solvers: list[Callable[[np.ndarray], np.ndarray]], groups):
        self.solvers = solvers
        self.groups = groups

    def __call__(self, R: np.ndarray) -> np.ndarray:
        if self.groups is None:
            return self.solvers[0](R)
        X = np.zeros_like(R)
        for solve, g in zip(self.solvers, self.groups):
            X[g] = solve(R[g])
        return X


def _cholmod_factor(C: sp.csc_matrix):
    """CHOLMOD Cholesky of an SPD matrix with a nested-dissection ordering.

    Measured (1e5-node ball, 1 thread): METIS/NESDIS orderings give L with 52M nonzeros and a
    5 s factorization; AMD 117M and 18 s; CHOLMOD's "best" tries several orderings (10 s of
    analysis). NESDIS is used when CHOLMOD was built with METIS, else AMD.
    """
    from sksparse.cholmod import CholmodError, analyze  # optional extra

    try:
        fac = analyze(C, ordering_method="nesdis")
    except (CholmodError, ValueError):
        fac = analyze(C, ordering_method="amd")
    fac.cholesky_inplace(C)
    return fac


def _factor_solver(C: sp.spmatrix, backend: str, coords: np.ndarray | None, B=None, sigma=0.0):
    """Return a solve callable for the SPD (or nearly so) matrix C and a description."""
    n = C.shape[0]
    if backend == "dense":
        lu = sla.lu_factor(C.toarray(), check_finite=False)
        return (lambda R: sla.lu_solve(lu, R, check_finite=False)), "dense LU"
    if backend == "cholmod":
        fac = _cholmod_factor(sp.csc_matrix(C))
        return (lambda R: fac(R)), "CHOLMOD"
    if backend == "splu":
        C = sp.csr_matrix(C)
        if coords is not None and n > 2000:
            perm = nested_dissection_order(C, coords)
        else:
            perm = sp.csgraph.reverse_cuthill_mckee(C, symmetric_mode=True).astype(np.int64)
        inv = np.empty_like(perm)
        inv[perm] = np.arange(n)
        Cp = sp.csc_matrix(C[perm][:, perm])
        lu = spla.splu(
            Cp, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
        )

        def solve(R):
            return lu.solve(np.ascontiguousarray(R[perm]))[inv]

        return solve, "SuperLU (nested dissection)"
    if backend == "lobpcg":
        amg = BlockAMG(C)  # C is already shifted
        return amg.apply, "block AMG V-cycle"
    raise ValueError(f"backend = {backend!r}; allowed: {', '.join(BACKENDS)}")


# ----------------------------------------------------------------------------------- forward
@dataclass
class EigInfo:
    """What :func:`sparse_eigsh` computed.

    Attributes
    ----------
    backend : str, the forward solver used (and its factorization)
    ncomputed : int, eigenpairs computed (returned + buffer)
    nreturned : int
    capped : bool, True when ``nmax`` cut pairs below ``lam_max``
    lam_max : float
    timings : dict of seconds ("factorization", "eigensolve", "backward", "cg_iterations")
    """

    backend: str
    ncomputed: int
    nreturned: int
    capped: bool
    lam_max: float
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class _State:
    """Numeric data shared by the forward and backward of one eigen-decomposition."""

    def __init__(self):
        self.values: np.ndarray | None = None  # (nc,) all computed
        self.vectors: np.ndarray | None = None  # (n, nc)
        self.k: int = 0
        self.precond: _ShiftInvert | None = None
        self.make_precond: Callable[[], _ShiftInvert] | None = None
        self.info: EigInfo | None = None
        self.cluster_rtol: float = 1e-8
        self.cg_tol: float = 1e-10
        self.cg_maxiter: int = 500


def _solve_block(
    A: sp.csr_matrix,
    B: sp.csr_matrix,
    lam_target: float,
    ntotal: int,
    sigma: float,
    backend: str,
    coords: np.ndarray | None,
    nev_guess: int,
    quiet: bool,
    timings: dict,
) -> tuple[np.ndarray, np.ndarray, Callable]:
    """Eigenpairs ≤ lam_target (at most ntotal) of one block, with its shift-invert solver."""
    n = A.shape[0]
    ntotal = min(ntotal, n)
    if backend != "dense" and ntotal >= n - 2:
        backend = "dense"  # ARPACK/LOBPCG need nev well below n
    if backend == "dense":
        t0 = time.perf_counter()
        Ad, Bd = A.toarray(), B.toarray()
        Ad = 0.5 * (Ad + Ad.T)
        w, V = sla.eigh(Ad, Bd, subset_by_index=(0, ntotal - 1), check_finite=False)
        if math.isfinite(lam_target):
            keep = w <= lam_target
            w, V = w[keep], V[:, keep]
        timings["eigensolve"] = timings.get("eigensolve", 0.0) + time.perf_counter() - t0
        C = sp.csr_matrix(A - sigma * B)
        return w, V, (lambda: _factor_solver(C, "dense", None)[0])

    blocked = backend == "cholmod" and coords is not None
    if blocked:
        # a shift near the spectrum's low end keeps the constant mode's μ = 1/|σ| from
        # flooding the Rayleigh-Ritz matrix with round-off (see block_lanczos)
        sigma = min(sigma, linear_rayleigh_shift(A, B, coords))
    if backend == "lobpcg":
        return _solve_block_amg(A, B, lam_target, ntotal, sigma, nev_guess, quiet, timings)
    C = sp.csr_matrix(A - sigma * B)
    t0 = time.perf_counter()
    solve, _ = _factor_solver(C, backend, coords)
    timings["factorization"] = timings.get("factorization", 0.0) + time.perf_counter() - t0
    nev = max(1, min(nev_guess, ntotal))
    while True:
        t0 = time.perf_counter()
        if blocked and nev < n - 16:
            w, V, _ = block_shift_invert_eigsh(A, B, nev, solve, sigma)
        else:
            w, V = _arpack(A, B, nev, sigma, solve)
        timings["eigensolve"] = timings.get("eigensolve", 0.0) + time.perf_counter() - t0
        if w[-1] >= lam_target or nev >= ntotal:
            break
        nev = _next_nev(nev, float(w[-1]), lam_target, ntotal)
        if not quiet:
            print(f"  eigensolver: {w.size} pairs reach λ = {w[-1]:.4g}, retrying with {nev}")
    keep = w <= lam_target if math.isfinite(lam_target) else np.ones(w.size, bool)
    return w[keep], V[:, keep], (lambda: solve)


def _next_nev(nev: int, lam_reached: float, lam_target: float, cap: int) -> int:
    """Pairs to ask for next when ``nev`` pairs reached only ``lam_reached`` < ``lam_target``
    (Weyl: the count grows like λ^{3/2}; at most 4× per retry, at least 8 more)."""
    grow = (lam_target / max(lam_reached, 1e-300)) ** 1.5 if lam_reached > 0 else 2.0
    return int(min(cap, max(nev + 8, math.ceil(nev * min(grow, 4.0) * 1.1))))


def _solve_block_amg(A, B, lam_target, ntotal, sigma, nev_guess, quiet, timings):
    """Eigenpairs ≤ lam_target by LOBPCG with a block AMG cycle (no factorization); the
    cycle (an SPD approximation of (A − σB)⁻¹) preconditions the adjoint."""
    n = A.shape[0]
    nev = max(1, min(nev_guess, ntotal))
    amg, V = None, None
    while True:
        t0 = time.perf_counter()
        w, V, info = lobpcg_amg(A, B, nev, tol=1e-10, X0=V, amg=amg, quiet=quiet)
        amg = info["amg"]
        timings["eigensolve"] = timings.get("eigensolve", 0.0) + time.perf_counter() - t0
        if w[-1] >= lam_target or nev >= ntotal or nev >= n - 2:
            break
        nev = _next_nev(nev, float(w[-1]), lam_target, min(ntotal, n - 2))
        if not quiet:
            print(f"  eigensolver: {w.size} pairs reach λ = {w[-1]:.4g}, retrying with {nev}")
    keep = w <= lam_target if math.isfinite(lam_target) else np.ones(w.size, bool)
    if amg is None:  # solved densely (small pencil): precondition the adjoint by dense LU
        C = sp.csr_matrix(A - sigma * B)
        return w[keep], V[:, keep], (lambda: _factor_solver(C, "dense", None)[0])
    return w[keep], V[:, keep], (lambda: amg.apply)


def _arpack(A, B, nev, sigma, solve):
    n = A.shape[0]
    if nev >= n - 1:
        raise SolverError(f"ARPACK needs nev < n - 1, got nev = {nev} for n = {n}")
    op = spla.LinearOperator((n, n), matvec=solve, dtype=np.float64)
    ncv = min(n - 1, max(2 * nev + 1, nev + 20))
    v0 = np.ones(n) + 0.1 * np.random.default_rng(0).standard_normal(n)
    w, V = spla.eigsh(A, k=nev, M=B, sigma=sigma, which="LM", OPinv=op, ncv=ncv, tol=0.0, v0=v0)
    order = np.argsort(w)
    return w[order], V[:, order]


def _choose_backend(backend: str, n: int, nev: int | None = None) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend = {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "cholmod" and not cholmod_available():
        raise ValueError(
            "backend = 'cholmod' needs scikit-sparse (apt-get install libsuitesparse-dev; "
            "pip install scikit-sparse==0.4.16)"
        )
    if backend == "lobpcg" and importlib.util.find_spec("pyamg") is None:
        raise ValueError("backend = 'lobpcg' needs pyamg (pip install pyamg)")
    if backend != "auto":
        return backend
    # dense when small, or when a sizable part of the spectrum is wanted (measured: ARPACK
    # with 50 pairs of a 2.5k-dof pencil takes 2 s, dense eigh 9 s; 280 pairs: 22 s vs 7 s)
    if n <= 500 or (n <= _DENSE_MAX and (nev is None or 8 * nev >= n)):
        return "dense"
    if cholmod_available():
        return "cholmod"
    if n <= _SPLU_MAX or importlib.util.find_spec("pyamg") is None:
        return "splu"
    return "lobpcg"


def _cut_index(w: np.ndarray, k: int, rtol: float) -> int:
    """Largest k' ≤ k such that w[k'-1] and w[k'] are not in one cluster."""
    scale = max(float(np.abs(w).max()) if w.size else 1.0, 1e-300)
    while 0 < k < w.size and (w[k] - w[k - 1]) <= rtol * scale:
        k -= 1
    return k


def _numeric_forward(
    A: sp.csr_matrix,
    B: sp.csr_matrix,
    *,
    lam_max: float,
    nmax: int,
    sigma: float,
    backend: str,
    groups: Sequence[np.ndarray] | None,
    coords: np.ndarray | None,
    nev_guess: Sequence[int] | None,
    buffer: float,
    nbuffer: int,
    cluster_rtol: float,
    quiet: bool,
) -> tuple[np.ndarray, np.ndarray, int, bool, Callable[[], _ShiftInvert], EigInfo]:
    n = A.shape[0]
    timings: dict[str, float] = {}
    if groups is None or len(groups) <= 1:
        groups_ = [np.arange(n)]
    else:
        groups_ = [np.asarray(g, dtype=np.int64) for g in groups]
    lam_target = lam_max * buffer if math.isfinite(lam_max) else math.inf
    ntotal = nmax + nbuffer
    ws, Vs, makers, used = [], [], [], set()
    complete_upto = math.inf  # every eigenvalue up to here is among the computed ones
    for gi, g in enumerate(groups_):
        Ag = A[g][:, g].tocsr()
        Bg = B[g][:, g].tocsr()
        guess = ntotal if nev_guess is None else int(nev_guess[gi])
        be = _choose_backend(backend, g.size, min(guess, ntotal))
        used.add(be)
        w, V, make = _solve_block(
            Ag,
            Bg,
            lam_target,
            ntotal,
            sigma,
            be,
            None if coords is None else coords[g],
            max(guess, 1),
            quiet,
            timings,
        )
        if w.size >= min(ntotal, g.size) and not (w.size and w[-1] >= lam_target):
            complete_upto = min(complete_upto, float(w[-1]) if w.size else -math.inf)
        ws.append(w)
        Vs.append((g, V))
        makers.append(make)
    w_all = np.concatenate(ws)
    if math.isfinite(complete_upto):
        for i, w in enumerate(ws):
            keep = w <= complete_upto
            ws[i] = w[keep]
            Vs[i] = (Vs[i][0], Vs[i][1][:, keep])
        w_all = np.concatenate(ws)
    order = np.argsort(w_all, kind="stable")
    w_all = w_all[order]
    V_all = np.zeros((n, w_all.size))
    col = 0
    cols = []
    for _g, V in Vs:
        cols.append(np.arange(col, col + V.shape[1]))
        col += V.shape[1]
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)
    for (g, V), c in zip(Vs, cols):
        V_all[np.ix_(g, inv[c])] = V
    # B-normalize (ARPACK/LOBPCG return B-orthonormal vectors up to round-off)
    bn = np.sqrt(np.einsum("ij,ij->j", V_all, B @ V_all))
    V_all = V_all / bn
    # sign convention: largest-magnitude entry positive (reproducible)
    idx = np.abs(V_all).argmax(0)
    V_all = V_all * np.sign(V_all[idx, np.arange(V_all.shape[1])])
    nbelow = int((w_all <= lam_max).sum()) if math.isfinite(lam_max) else w_all.size
    k = min(nbelow, nmax)
    capped = nbelow > nmax or (math.isfinite(lam_max) and complete_upto < lam_max)
    k = _cut_index(w_all, k, cluster_rtol)
    if k == 0:
        raise SolverError(
            f"no eigenpair found below lam_max = {lam_max:g} (computed {w_all.size}, lowest "
            f"{w_all[:1]})"
        )

    def make_precond() -> _ShiftInvert:
        return _ShiftInvert([m() for m in makers], None if len(groups_) == 1 else groups_)

    info = EigInfo(
        backend="+".join(sorted(used)),
        ncomputed=int(w_all.size),
        nreturned=k,
        capped=bool(capped),
        lam_max=float(lam_max),
        timings=timings,
    )
    return w_all, V_all, k, capped, make_precond, info


# ---------------------------------------------------------------------------------- backward
def _complement_solve(
    A: sp.csr_matrix,
    B: sp.csr_matrix,
    Phi: np.ndarray,
    BPhi: np.ndarray,
    lam: np.ndarray,
    R: np.ndarray,
    ref: np.ndarray,
    precond: _ShiftInvert,
    tol: float,
    maxiter: int,
) -> tuple[np.ndarray, int]:
    """Column-wise PCG for ``(A − λ_n B) z_n = r_n`` on the B-orthogonal complement of Phi.

    R must satisfy ``Phiᵀ R = 0``; ``ref`` (k,) are the norms the residuals are measured
    against (those of the unprojected right-hand sides). Returns Z (n, k) with
    ``Phiᵀ B Z = 0`` and the number of iterations.
    """

    def proj_z(X):
        return X - Phi @ (BPhi.T @ X)

    def proj_r(X):
        return X - BPhi @ (Phi.T @ X)

    Z = np.zeros_like(R)
    ref = np.where(ref > 0, ref, 1.0)
    active = np.flatnonzero(np.linalg.norm(R, axis=0) > tol * ref)
    if active.size == 0:
        return Z, 0
    r = R[:, active].copy()
    lam_a = lam[active]
    y = proj_z(precond(r))
    p = y.copy()
    ry = np.einsum("ij,ij->j", r, y)
    it = 0
    res = np.linalg.norm(r, axis=0) / ref[active]
    for it in range(1, maxiter + 1):  # noqa: B007
        Ap = proj_r(A @ p - (B @ p) * lam_a)
        pAp = np.einsum("ij,ij->j", p, Ap)
        bad = pAp <= 0
        if bad.any():
            if np.any(res[bad] > np.sqrt(tol)):
                raise SolverError(
                    "adjoint eigenvector solve met a non-positive curvature: the computed "
                    "eigenpairs do not contain every eigenvalue below the buffer"
                )
            pAp = np.where(bad, 1.0, pAp)  # round-off level residual: stop that column
        alpha = np.where(bad, 0.0, ry / pAp)
        Z[:, active] += p * alpha
        r -= Ap * alpha
        res = np.linalg.norm(r, axis=0) / ref[active]
        done = (res <= tol) | bad
        if done.all():
            break
        if done.any():
            keep = ~done
            active, r, p, ry, lam_a = active[keep], r[:, keep], p[:, keep], ry[keep], lam_a[keep]
            res = res[keep]
        y = proj_z(precond(r))
        ry_new = np.einsum("ij,ij->j", r, y)
        beta = ry_new / ry
        p = y + p * beta
        ry = ry_new
    else:
        warnings.warn(
            f"adjoint eigenvector CG stopped after {maxiter} iterations (relative residual "
            f"{float(res.max()):.2e} > {tol:g}); gradients may be inaccurate",
            SpinDoctorWarning,
            stacklevel=4,
        )
    return proj_z(Z), it


class _GenEig(torch.autograd.Function):
    """(values of A, values of B) → (λ (k,), Φ (n, k)); see the module docstring."""

    @staticmethod
    def forward(ctx, a_values, b_values, pattern, state):
        dev, dt = a_values.device, a_values.dtype
        lam = torch.as_tensor(state.values[: state.k], dtype=dt, device=dev)
        phi = torch.as_tensor(state.vectors[:, : state.k], dtype=dt, device=dev)
        ctx.pattern = pattern
        ctx.state = state
        ctx.save_for_backward(a_values, b_values)
        return lam, phi

    @staticmethod
    def backward(ctx, g_lam, g_phi):
        a_values, b_values = ctx.saved_tensors
        st: _State = ctx.state
        pattern: SparsePattern = ctx.pattern
        dev, dt = a_values.device, a_values.dtype
        t0 = time.perf_counter()
        k = st.k
        lam_all = st.values
        lam = lam_all[:k]
        V = st.vectors
        Phi = V[:, :k]
        Phib = V[:, k:]
        lam_b = lam_all[k:]
        n = Phi.shape[0]
        UA = np.zeros((n, k))
        UB = np.zeros((n, k))
        if g_lam is not None:
            gl = g_lam.detach().cpu().numpy().astype(np.float64)
            UA += Phi * gl
            UB -= Phi * (gl * lam)
        if g_phi is not None:
            G = g_phi.detach().cpu().numpy().astype(np.float64)
            H = Phi.T @ G
            Hs = 0.5 * (H + H.T)
            Ha = 0.5 * (H - H.T)
            gap = lam[None, :] - lam[:, None]  # λ_n − λ_m
            scale = max(float(np.abs(lam_all).max()), 1e-300)
            ok = np.abs(gap) > st.cluster_rtol * scale
            W = np.where(ok, Ha / np.where(ok, gap, 1.0), 0.0)  # symmetric
            lavg = 0.5 * (lam[None, :] + lam[:, None])
            UA += Phi @ W
            UB -= Phi @ (0.5 * Hs + W * lavg)
            if Phib.shape[1]:
                Hb = Phib.T @ G  # (b, k)
                Y = Hb / (lam[None, :] - lam_b[:, None])
                UA += Phib @ Y
                UB -= Phib @ (Y * lam[None, :])
            # complement
            A = sp.csr_matrix(
                (
                    a_values.detach().cpu().numpy(),
                    pattern.cols.cpu().numpy(),
                    pattern.crow_indices().cpu().numpy(),
                ),
                shape=(n, n),
            )
            B = sp.csr_matrix(
                (
                    b_values.detach().cpu().numpy(),
                    pattern.cols.cpu().numpy(),
                    pattern.crow_indices().cpu().numpy(),
                ),
                shape=(n, n),
            )
            A = 0.5 * (A + A.T)
            BV = B @ V
            Rhs = G - BV @ (V.T @ G)
            if st.precond is None:
                st.precond = st.make_precond()
            ref = np.linalg.norm(G, axis=0)
            Z, its = _complement_solve(
                A, B, V, BV, lam, Rhs, ref, st.precond, st.cg_tol, st.cg_maxiter
            )
            if st.info is not None:
                st.info.timings["cg_iterations"] = float(its)
            UA -= Z
            UB += Z * lam
        U_A = torch.as_tensor(UA, dtype=dt, device=dev)
        U_B = torch.as_tensor(UB, dtype=dt, device=dev)
        P = torch.as_tensor(Phi, dtype=dt, device=dev)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = _symmetrize(pattern, sddmm(pattern, U_A, P))
        if ctx.needs_input_grad[1]:
            gb = _symmetrize(pattern, sddmm(pattern, U_B, P))
        if st.info is not None:
            st.info.timings["backward"] = time.perf_counter() - t0
        return ga, gb, None, None


def sparse_eigsh(
    A: SparseMatrix,
    B: SparseMatrix,
    *,
    lam_max: float = math.inf,
    nmax: int = 300,
    sigma: float = -1e-8,
    backend: str = "auto",
    groups: Sequence[np.ndarray] | None = None,
    coords: np.ndarray | None = None,
    nev_guess: Sequence[int] | None = None,
    buffer: float = 1.25,
    nbuffer: int | None = None,
    cluster_rtol: float = 1e-8,
    cg_tol: float = 1e-10,
    cg_maxiter: int = 500,
    precomputed: tuple[np.ndarray, np.ndarray, int] | None = None,
    quiet: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, EigInfo]:
    """Lowest eigenpairs of ``A φ = λ B φ``, differentiable in ``A.values`` and ``B.values``.

    Parameters
    ----------
    A : SparseMatrix, symmetric (its symmetric part is used)
    B : SparseMatrix on the same pattern, symmetric positive definite
    lam_max : float
        Return the eigenpairs with λ ≤ lam_max (all of them, up to ``nmax``).
    nmax : int
        At most this many pairs are returned (never cutting a cluster of equal eigenvalues).
    sigma : float
        Shift of the shift-invert operator ``(A − σB)⁻¹`` (slightly negative for a Neumann
        Laplacian, whose lowest eigenvalue is 0).
    backend : {"auto", "dense", "splu", "cholmod", "lobpcg"}
    groups : list of (n_g,) int arrays, optional
        Independent diagonal blocks of the pencil (A and B have no entries between groups):
        each is solved separately.
    coords : (n, 3) array, optional
        Dof coordinates (for the nested-dissection ordering of the ``splu`` backend).
    nev_guess : list of int, optional
        First number of pairs to ask each group's iterative solver for (it grows if the
        pairs do not reach ``lam_max·buffer``).
    buffer : float
        Pairs up to ``buffer·lam_max`` are also computed (not returned): they make the
        adjoint solve well conditioned.
    nbuffer : int, optional
        At most this many buffer pairs (default ``max(10, nmax // 4)``).
    cluster_rtol : float
        Eigenvalues closer than ``cluster_rtol·max|λ|`` form a cluster.
    cg_tol, cg_maxiter : adjoint solve tolerance (relative residual) and iteration cap
    precomputed : (values, vectors, k), optional
        Skip the eigensolve (e.g. loaded from a cache); the backward still works.
    quiet : bool

    Returns
    -------
    values : (k,) tensor, ascending
    vectors : (n, k) tensor, B-orthonormal
    info : EigInfo

    Raises
    ------
    ValueError
        Matrices on different patterns, complex values, bad backend or parameters.
    SolverError
        Nothing found below ``lam_max``; an adjoint solve that cannot proceed.
    """
    if A.pattern is not B.pattern:
        raise ValueError("A and B must share one SparsePattern")
    if A.values.is_complex() or B.values.is_complex():
        raise TypeError("sparse_eigsh needs real matrices")
    if nmax < 1:
        raise ValueError(f"nmax must be a positive integer, got {nmax}")
    if not (buffer >= 1.0):
        raise ValueError(f"buffer must be ≥ 1, got {buffer}")
    if not (lam_max > 0):
        raise ValueError(f"lam_max must be positive, got {lam_max}")
    n = A.pattern.n
    nb = max(10, nmax // 4) if nbuffer is None else int(nbuffer)
    st = _State()
    st.cluster_rtol, st.cg_tol, st.cg_maxiter = cluster_rtol, cg_tol, cg_maxiter
    Asym = A.to_scipy()
    Asym = sp.csr_matrix(0.5 * (Asym + Asym.T))
    Bs = B.to_scipy()
    if precomputed is not None:
        w, V, k = precomputed
        st.values, st.vectors, st.k = np.asarray(w), np.asarray(V), int(k)

        def make():
            gs = [np.arange(n)] if groups is None else [np.asarray(g) for g in groups]
            sol = []
            for g in gs:
                bg = _choose_backend(backend, g.size)
                C = sp.csr_matrix(Asym[g][:, g] - sigma * Bs[g][:, g])
                sol.append(_factor_solver(C, bg, None if coords is None else coords[g])[0])
            return _ShiftInvert(sol, None if groups is None or len(gs) == 1 else gs)

        st.make_precond = make
        st.info = EigInfo("cache", int(w.size), int(k), False, float(lam_max), {}, {})
    else:
        w, V, k, capped, make, info = _numeric_forward(
            Asym,
            Bs,
            lam_max=lam_max,
            nmax=nmax,
            sigma=sigma,
            backend=backend,
            groups=groups,
            coords=coords,
            nev_guess=nev_guess,
            buffer=buffer,
            nbuffer=nb,
            cluster_rtol=cluster_rtol,
            quiet=quiet,
        )
        st.values, st.vectors, st.k = w, V, k
        st.make_precond = make
        st.info = info
    lam, phi = _GenEig.apply(A.values, B.values, A.pattern, st)
    st.info.extra["state"] = st
    return lam, phi, st.info
