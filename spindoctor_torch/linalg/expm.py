"""Batched actions of reduced matrix exponentials and matrix functions of diagonal matrices.

Catalogue
---------
ColumnOperator      a batch of complex symmetric matrices, one per column,
                    ``K_n = diag(d) + Σ_j c_jn M_j`` with shared real ``M_j``: all products of
                    a step are one real matrix-matrix product over all columns
GroupedOperator     the same with one real matrix per group of columns,
                    ``K_gj = diag(d) + F + i s_gj M_g``: one batched product per step, a third
                    of the arithmetic (derivative-free)
expmv_chebyshev     ``exp(−τ K) v`` for a whole batch of small complex matrices K given only
                    through a batched product, by a Chebyshev series of fixed degree on an
                    ellipse enclosing the field of values; differentiable by autograd, with
                    derivatives as accurate as the values (hand-written backward for a
                    :class:`ColumnOperator`); an in-place recurrence, in cache-sized blocks,
                    when no derivative is needed
chebyshev_coefficients  the series coefficients and its degree
diag_matrix_function ``f(S)`` for a symmetric S that is diagonal up to round-off, with the exact
                    first-order (Daleckii-Krein) backward, divided differences included

Why a polynomial action: the matrix-formalism operator ``K = L + T + i q A(u)`` (k ≈ 300)
differs for every (amplitude, sequence, direction) pair. A dense ``torch.linalg.matrix_exp``
costs ~0.2 s per 300×300 complex matrix here (~200 s for 1000 pairs) and a complex ``eig``
~0.35 s; the action on the few vectors that matter needs ~sqrt(τ·λ_max) batched products, which
run as real matrix-matrix products over all pairs at once.

Why no Krylov method (measured on the MF benchmark: ball, 300 modes, δ = 10 ms, 1000 pairs,
Arnoldi needs ~40 products against the series' 89): complex-symmetric Lanczos (bilinear form
xᵀy) nears breakdown in ~10% of the columns within 40 steps (Lanczos vectors with vᵀv ≈ 0,
tridiagonal entries up to 300× ‖K‖, Ritz values with negative real part), and its tridiagonal
matrices have fields of values far outside K's (imaginary extent ~160× larger), so their
small exponentials can be neither certified nor computed cheaply: ``matrix_exp`` of 1000
40×40 complex matrices alone costs ~0.75 s; a Hermitian three-term (incomplete) orthogonalization
converges far slower (4e-9 after 60 steps); Arnoldi's per-column orthogonalization is a
memory-bound batched product (~0.1 s per step for 1000 columns). The fixed polynomial keeps the
Crouzeix bound, exact derivatives and one GEMM-shaped product per step.

References
----------
Tal-Ezer, H., Kosloff, R. (1984). An accurate and efficient scheme for propagating the time
dependent Schrödinger equation. J. Chem. Phys. 81, 3967. doi:10.1063/1.448136
Crouzeix, M., Palencia, C. (2017). The numerical range is a (1+√2)-spectral set. SIAM J. Matrix
Anal. Appl. 38, 649-655. doi:10.1137/17M1116672
Higham, N. J. (2008). Functions of Matrices, §3.2 (Daleckii-Krein). SIAM.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.special as ss
import torch

from ..errors import SolverError

__all__ = [
    "ColumnOperator",
    "GroupedOperator",
    "expmv_chebyshev",
    "chebyshev_coefficients",
    "diag_matrix_function",
]

_CACHE_BLOCK_BYTES = 4 * 2**20  # group matrices per thread in an in-place series block


def _half_width(lo: float, hi: float) -> float:
    """Half-width of the Chebyshev interval [lo, hi], kept positive for a point spectrum."""
    return max(0.5 * (hi - lo), 1e-12 * max(abs(hi), 1.0), 1e-300)


def _ellipse_rho(d: float, h: float) -> float:
    """Smallest ρ > 1 whose Bernstein ellipse (foci ±d) contains the rectangle [−d, d]×[−h, h]."""
    h = max(h, 1e-3 * d)

    def inside(rho: float) -> bool:
        a = 0.5 * d * (rho + 1.0 / rho)
        b = 0.5 * d * (rho - 1.0 / rho)
        return (d / a) ** 2 + (h / b) ** 2 <= 1.0

    lo, hi = 1.0, 2.0
    while not inside(hi):
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if inside(mid) else (mid, hi)
    return hi


def chebyshev_coefficients(
    tau: float, lo: float, hi: float, imag: float, tol: float, max_degree: int = 5000
) -> tuple[np.ndarray, float, float]:
    """Chebyshev coefficients of ``exp(−τ z)`` for z in the rectangle [lo, hi]×[−imag, imag].

    ``exp(−τz) = Σ_k a_k T_k((z − c)/d)`` with c, d the centre and half-width of [lo, hi]:
    ``a_k = ε_k (−1)^k e^{−τc} I_k(τd)`` (ε_0 = 1, else 2). The series is cut where its tail on
    the Bernstein ellipse enclosing the rectangle is below ``tol`` (times e^{−τ·lo}).

    Returns
    -------
    coefficients (m+1,), centre c, half-width d
    """
    c = 0.5 * (lo + hi)
    d = _half_width(lo, hi)
    rho = _ellipse_rho(d, imag)
    x = tau * d
    # I_k(x) is negligible beyond k ≈ x + 30√x (+ a margin for the ellipse factor ρ^k)
    kmax = int(min(max_degree, x + 40.0 * math.sqrt(x + 1.0) + 80.0 / max(math.log(rho), 0.05)))
    k = np.arange(kmax + 1)
    ive = ss.ive(k, x)
    with np.errstate(divide="ignore"):
        log_i = np.where(ive > 0, np.log(np.where(ive > 0, ive, 1.0)), -np.inf) + x  # log I_k
    log_a = log_i - tau * c + np.log(np.where(k == 0, 1.0, 2.0))
    log_term = log_a + k * math.log(rho)
    scale = -tau * lo
    tail = np.logaddexp.accumulate((log_term - scale)[::-1])[::-1]
    ok = np.flatnonzero(tail < math.log(tol))
    if ok.size == 0:
        raise SolverError(
            f"exp(−τK): Chebyshev degree > {max_degree} needed (τ·spread = {tau * (hi - lo):.3g})"
        )
    m = max(int(ok[0]) - 1, 1)
    a = np.exp(log_a[: m + 1]) * np.where(k[: m + 1] % 2 == 0, 1.0, -1.0)
    return a, c, d


class _BatchOperator:
    """What :class:`ColumnOperator` and :class:`GroupedOperator` share: the size k of the
    matrices and whether any of their defining tensors (:meth:`_tensors`) needs a gradient."""

    diag: torch.Tensor

    def _tensors(self) -> tuple[torch.Tensor | None, ...]:
        raise NotImplementedError

    @property
    def size(self) -> int:
        return int(self.diag.shape[0])

    @property
    def requires_grad(self) -> bool:
        return any(t is not None and t.requires_grad for t in self._tensors())


class ColumnOperator(_BatchOperator):
    r"""A batch of complex symmetric matrices, one per column of the vectors it acts on.

    .. math::  K_n = \operatorname{diag}(d) + \sum_j c_{jn} M_j, \qquad n = 0, \dots, N-1,

    with real (k,) ``d``, real symmetric (k, k) ``M_j`` shared by all columns and complex
    (N,) coefficient rows ``c_j``. ``K x`` for x (k, N) is one real matrix-matrix product
    ``[M_1 … M_p] @ [c_1⊙x; …; c_p⊙x]`` of size (k × p·k)·(p·k × 2N) (real and imaginary parts
    as adjacent columns) plus the diagonal: no complex temporaries besides the (p·k, N) buffer.

    Parameters
    ----------
    diag : (k,) real tensor
    blocks : (p, k, k) real tensor (p ≥ 0)
    coefs : (p, N) complex tensor
    ghost : (k, k) real tensor, optional
        A block that is zero up to round-off: skipped in every product, but its first-order
        sensitivity ``ghost_scale·Re(Ȳ Xᴴ)`` is kept in the backward pass (the off-diagonal
        of a reduced matrix that is diagonal in value).
    ghost_scale : float, default 1

    Notes
    -----
    In the matrix formalism ``d`` = diag(L + T), ``M`` = (Φᵀ J_x Φ, Φᵀ J_y Φ, Φᵀ J_z Φ) and
    ``c_dn = i q_n u_nd``; the off-diagonal part of L + T is one more block with coefficient
    1 when it is not negligible, the ghost block when it is.
    """

    def __init__(
        self,
        diag: torch.Tensor,
        blocks: torch.Tensor,
        coefs: torch.Tensor,
        ghost: torch.Tensor | None = None,
        *,
        ghost_scale: float = 1.0,
        _stack: torch.Tensor | None = None,
    ):
        if diag.ndim != 1 or diag.is_complex():
            raise ValueError(
                f"diag must be a real (k,) tensor, got {diag.dtype} {tuple(diag.shape)}"
            )
        k = diag.shape[0]
        if blocks.ndim != 3 or blocks.shape[1:] != (k, k) or blocks.is_complex():
            raise ValueError(
                f"blocks must be a real (p, {k}, {k}) tensor, got {blocks.dtype} "
                f"{tuple(blocks.shape)}"
            )
        if coefs.ndim != 2 or coefs.shape[0] != blocks.shape[0] or not coefs.is_complex():
            raise ValueError(
                f"coefs must be a complex ({blocks.shape[0]}, N) tensor, got {coefs.dtype} "
                f"{tuple(coefs.shape)}"
            )
        if ghost is not None and (ghost.shape != (k, k) or ghost.is_complex()):
            raise ValueError(f"ghost must be a real ({k}, {k}) tensor, got {tuple(ghost.shape)}")
        self.diag = diag
        self.blocks = blocks
        self.coefs = coefs
        self.ghost = ghost
        self.ghost_scale = float(ghost_scale)
        p = blocks.shape[0]
        # [M_1 … M_p], (k, p·k): built once and shared by shifted copies
        self.stack = blocks.permute(1, 0, 2).reshape(k, p * k) if _stack is None else _stack
        self._buf: torch.Tensor | None = None

    @property
    def ncol(self) -> int:
        return int(self.coefs.shape[1])

    def _tensors(self):
        return (self.diag, self.stack, self.coefs, self.ghost)

    def shifted(self, shift: float, scale: float) -> ColumnOperator:
        """``scale·(K − shift·I)``, sharing the blocks (the coefficients are scaled)."""
        return ColumnOperator(
            scale * (self.diag - shift),
            self.blocks,
            scale * self.coefs,
            self.ghost,
            ghost_scale=scale * self.ghost_scale,
            _stack=self.stack,
        )

    def to_internal(self, v: torch.Tensor) -> torch.Tensor:
        """The layout of :meth:`matvec_`: (k, N) complex, contiguous (a new tensor)."""
        return v.resolve_conj().clone(memory_format=torch.contiguous_format)

    def from_internal(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def column_norms(self, x: torch.Tensor) -> torch.Tensor:
        """Euclidean norm of every column of x (internal layout), (N,)."""
        return torch.linalg.vector_norm(x, dim=0)

    def cache_blocks(self) -> list[tuple[ColumnOperator, slice]]:
        """Column blocks for :func:`expmv_chebyshev`'s in-place series: all columns at once
        (the stacked product is compute-bound; smaller blocks measured no faster)."""
        return [(self, slice(None))]

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape != (self.size, self.ncol) or not x.is_complex():
            raise ValueError(
                f"x must be a complex ({self.size}, {self.ncol}) tensor, got {x.dtype} "
                f"{tuple(x.shape)}"
            )

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``K x`` for x (k, N) complex; differentiable in every tensor involved."""
        self._check(x)
        k, n = x.shape
        p = self.coefs.shape[0]
        y = self.diag.to(x.dtype)[:, None] * x
        if p:
            buf = (self.coefs[:, None, :] * x[None]).reshape(p * k, n)
            prod = self.stack @ torch.view_as_real(buf).reshape(p * k, 2 * n)
            y = y + torch.view_as_complex(prod.reshape(k, n, 2))
        if self.ghost is not None:
            y = y + _GhostMatmul.apply(self.ghost, x, self.ghost_scale)
        return y

    def matvec_(self, x: torch.Tensor, out: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
        """``out ← K x + beta·out`` in place, without autograd. ``out`` must be a contiguous
        (k, N) complex tensor distinct from x."""
        with torch.no_grad():
            buf = self._buf
            p, (k, n) = self.coefs.shape[0], x.shape
            if buf is None or buf.shape != (p, k, n) or buf.dtype != x.dtype:
                buf = self._buf = torch.empty((p, k, n), dtype=x.dtype, device=x.device)
            _column_product_(self.diag, self.stack, self.coefs, x, out, beta, buf)
        return out


def _column_product_(diag, stack, coefs, x, out, beta, buf) -> None:
    """``out ← (diag(d) + Σ_j c_j M_j) x + beta·out`` in place; buf (p, k, N) complex."""
    k, n = x.shape
    p = coefs.shape[0]
    out_r = torch.view_as_real(out).view(k, 2 * n)
    if p:
        torch.mul(x[None], coefs[:, None, :], out=buf)
        buf_r = torch.view_as_real(buf).view(p * k, 2 * n)
        if beta == 0.0:
            torch.mm(stack, buf_r, out=out_r)
        else:
            out_r.addmm_(stack, buf_r, beta=beta)
    elif beta == 0.0:
        out_r.zero_()
    else:
        out_r.mul_(beta)
    torch.view_as_real(out).addcmul_(diag[:, None, None], torch.view_as_real(x))


class _GhostMatmul(torch.autograd.Function):
    """``scale·E @ X`` for an E that is zero up to round-off and X (k, N) complex: the forward
    returns zeros (skipping the product), the backward keeps ``Ē = scale·Re(Ȳ Xᴴ)``."""

    @staticmethod
    def forward(ctx, E, X, scale):
        ctx.save_for_backward(X)
        ctx.scale = scale
        return torch.zeros_like(X)

    @staticmethod
    def backward(ctx, gY):
        (X,) = ctx.saved_tensors
        gE = None
        if ctx.needs_input_grad[0]:
            gE = ctx.scale * (gY @ X.conj().T).real
        return gE, None, None


class _ChebyshevSeries(torch.autograd.Function):
    """``y = Σ_j a_j T_j(B) v`` with ``2B = diag(d) + Σ_i c_i M_i`` (+ a ghost block), i.e.
    ``t_0 = v, t_1 = B v, t_{j+1} = 2B t_j − t_{j−1}``, with a hand-written backward.

    The forward stores only the vectors t_0 … t_{m−1} (the inputs of the products): m·k·N
    complex numbers instead of every temporary of an autograd graph. The backward runs the
    adjoint three-term recurrence (Clenshaw-like, from j = m down):
    ``G_m = a_m ȳ``, ``G_j = a_j ȳ + w_j (2B)ᴴ G_{j+1} − G_{j+2}`` (w_0 = ½, else 1), and
    ``v̄ = G_0``, while each product ``t_{j+1} ← w_j 2B t_j`` adds to the parameter gradients
    d̄ += w_j Re Σ_n G_{j+1} ⊙ conj(t_j), M̄_i += w_j Re(G_{j+1} (c_i ⊙ t_j)ᴴ),
    c̄_i += w_j Σ_k (M_i G_{j+1}) ⊙ conj(t_j), Ē += w_j scale Re(G_{j+1} t_jᴴ).
    One (p·k × k)·(k × 2N) product per step gives both (2B)ᴴ G and the M_i G.
    """

    @staticmethod
    def forward(ctx, diag2, stack, coefs2, ghost, ghost_scale, v, a):
        m = a.size - 1
        k, n = v.shape
        p = coefs2.shape[0]
        buf = torch.empty((p, k, n), dtype=v.dtype, device=v.device)
        T = torch.empty((m, k, n), dtype=v.dtype, device=v.device)
        T[0] = v
        y = v * float(a[0])
        t1 = T[1] if m > 1 else torch.empty_like(v)
        _column_product_(diag2, stack, coefs2, T[0], t1, 0.0, buf)
        t1.mul_(0.5)
        y.add_(t1, alpha=float(a[1]))
        last = torch.empty_like(v)
        for j in range(2, m + 1):
            out = T[j] if j < m else last
            out.copy_(T[j - 2])
            _column_product_(diag2, stack, coefs2, T[j - 1], out, -1.0, buf)
            y.add_(out, alpha=float(a[j]))
        ctx.save_for_backward(diag2, stack, coefs2, ghost, T)
        ctx.a, ctx.ghost_scale = a, ghost_scale
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        diag2, stack, coefs2, ghost, T = ctx.saved_tensors
        a = ctx.a
        m = a.size - 1
        k, n = gy.shape
        p = coefs2.shape[0]
        need_d, need_s, need_c, need_e, _, need_v, _ = ctx.needs_input_grad
        gy = gy.resolve_conj()
        gd = torch.zeros_like(diag2) if need_d else None
        gs = torch.zeros_like(stack) if need_s else None
        gc = torch.zeros_like(coefs2) if need_c else None
        ge = torch.zeros_like(ghost) if need_e else None
        buf = torch.empty((p, k, n), dtype=gy.dtype, device=gy.device) if need_s else None
        cconj = coefs2.conj().resolve_conj()
        g_next2 = torch.zeros_like(gy)  # G_{j+2}
        g_next = gy * float(a[m])  # G_{j+1}, starting at G_m
        for j in range(m - 1, -1, -1):
            w = 0.5 if j == 0 else 1.0
            t = T[j]
            g_r = torch.view_as_real(g_next).view(k, 2 * n)
            if p:
                P = torch.view_as_complex((stack.T @ g_r).view(p, k, n, 2))  # M_i G_{j+1}
                if need_c:
                    gc.add_(torch.linalg.vecdot(t[None], P, dim=1), alpha=w)  # Σ_k conj(t) P
                if need_s:
                    torch.mul(t[None], coefs2[:, None, :], out=buf)
                    gs.addmm_(g_r, torch.view_as_real(buf).view(p * k, 2 * n).T, alpha=w)
            t_r = torch.view_as_real(t).view(k, 2 * n)
            if need_d:
                gd.add_((g_r * t_r).sum(1), alpha=w)
            if need_e:
                ge.addmm_(g_r, t_r.T, alpha=w * ctx.ghost_scale)
            # G_j = a_j ȳ + w (2B)ᴴ G_{j+1} − G_{j+2}
            g = diag2.to(gy.dtype)[:, None] * g_next
            for i in range(p):
                g.addcmul_(P[i], cconj[i])
            g.mul_(w).sub_(g_next2).add_(gy, alpha=float(a[j]))
            g_next2, g_next = g_next, g
        return gd, gs, gc, ge, None, (g_next if need_v else None), None


class GroupedOperator(_BatchOperator):
    r"""A batch of complex symmetric matrices whose columns come in groups sharing a matrix.

    .. math::  K_{gj} = \operatorname{diag}(d) + F + i\, s_{gj} M_g,
        \qquad g = 0, \dots, G-1,\; j = 0, \dots, m-1,

    with real (k,) ``d``, an optional real symmetric (k, k) ``F`` shared by all columns, real
    symmetric (k, k) ``M_g`` per group and real scales ``s`` (G, m); column ``n = g·m + j`` of
    a (k, G·m) vector. In the matrix formalism a group is a direction u_g (``M_g = A(u_g)``)
    and its columns are the amplitudes (and compartments): ``s = q f``.

    Only the in-place, derivative-free product :meth:`matvec_` is provided; it works on an
    internal real layout (G, 2, m, k) (real and imaginary parts as separate rows), where the
    products with the M_g are one batched ``(2m × k)·(k × k)`` product per group: a third of
    the arithmetic of the three stacked products of :class:`ColumnOperator`, and the faster
    layout measured here from m = 4 columns per group on (k = 300, 100 groups).
    Use :class:`ColumnOperator` when a derivative is needed or when groups have few columns.

    Parameters
    ----------
    diag : (k,) real tensor
    mats : (G, k, k) real tensor
    scales : (G, m) real tensor
    shared : (k, k) real tensor, optional
    """

    def __init__(
        self,
        diag: torch.Tensor,
        mats: torch.Tensor,
        scales: torch.Tensor,
        shared: torch.Tensor | None = None,
    ):
        if diag.ndim != 1 or diag.is_complex():
            raise ValueError(
                f"diag must be a real (k,) tensor, got {diag.dtype} {tuple(diag.shape)}"
            )
        k = diag.shape[0]
        if mats.ndim != 3 or mats.shape[1:] != (k, k) or mats.is_complex():
            raise ValueError(
                f"mats must be a real (G, {k}, {k}) tensor, got {mats.dtype} {tuple(mats.shape)}"
            )
        if scales.ndim != 2 or scales.shape[0] != mats.shape[0] or scales.is_complex():
            raise ValueError(
                f"scales must be a real ({mats.shape[0]}, m) tensor, got {scales.dtype} "
                f"{tuple(scales.shape)}"
            )
        if shared is not None and (shared.shape != (k, k) or shared.is_complex()):
            raise ValueError(f"shared must be a real ({k}, {k}) tensor, got {tuple(shared.shape)}")
        self.diag = diag
        self.mats = mats
        self.scales = scales
        self.shared = shared
        self._buf: torch.Tensor | None = None

    @property
    def ncol(self) -> int:
        return int(self.scales.numel())

    def _tensors(self):
        return (self.diag, self.mats, self.scales, self.shared)

    def shifted(self, shift: float, scale: float) -> GroupedOperator:
        """``scale·(K − shift·I)``, sharing the group matrices (the scales are scaled)."""
        return GroupedOperator(
            scale * (self.diag - shift),
            self.mats,
            scale * self.scales,
            None if self.shared is None else scale * self.shared,
        )

    def to_internal(self, v: torch.Tensor) -> torch.Tensor:
        """(k, G·m) complex → (G, 2, m, k) real (a new tensor)."""
        G, m = self.scales.shape
        vr = torch.view_as_real(v.resolve_conj()).reshape(self.size, G, m, 2)
        return vr.permute(1, 3, 2, 0).contiguous()

    def cache_blocks(self) -> list[tuple[GroupedOperator, slice]]:
        """Blocks of groups whose matrices take ≤ 4 MiB per thread, for
        :func:`expmv_chebyshev`'s in-place series: a block runs through all terms while its
        M_g stay in cache (the batched product with few rows per group is bound by streaming
        the M_g; measured 1.3-1.5x faster than all groups at once, k = 300, 100 groups of
        20 rows, 1 and 2 threads)."""
        G = self.mats.shape[0]
        nt = torch.get_num_threads()  # per thread, and a multiple of the threads
        per = nt * _CACHE_BLOCK_BYTES // (self.size**2 * self.mats.element_size()) // nt * nt
        per = max(nt, per)
        shared = self.shared
        return [
            (
                GroupedOperator(
                    self.diag, self.mats[g : g + per], self.scales[g : g + per], shared
                ),
                slice(g, g + per),
            )
            for g in range(0, G, per)
        ]

    def from_internal(self, x: torch.Tensor) -> torch.Tensor:
        """(G, 2, m, k) real → (k, G·m) complex (a new tensor)."""
        G, m = self.scales.shape
        return torch.view_as_complex(x.permute(3, 0, 2, 1).contiguous()).reshape(self.size, G * m)

    def column_norms(self, x: torch.Tensor) -> torch.Tensor:
        """Euclidean norm of every column of x (internal layout (G, 2, m, k)), (G, m)."""
        return torch.linalg.vector_norm(x, dim=(1, 3))

    def matvec_(self, x: torch.Tensor, out: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
        """``out ← K x + beta·out`` in place, both in the internal layout (G, 2, m, k)."""
        G, m = self.scales.shape
        k = self.size
        with torch.no_grad():
            buf = self._buf
            if buf is None or buf.shape != x.shape or buf.dtype != x.dtype:
                buf = self._buf = torch.empty_like(x)
            s = self.scales[:, :, None]
            torch.mul(x[:, 1], -s, out=buf[:, 0])  # i s x = −s x_im + i s x_re
            torch.mul(x[:, 0], s, out=buf[:, 1])
            rows, brows = out.view(G, 2 * m, k), buf.view(G, 2 * m, k)
            # rows·M_g = (M_g x)ᵀ (M_g symmetric); M_gᵀ as the operand: the faster packing
            mt = self.mats.transpose(1, 2)
            if beta == 0.0:
                torch.bmm(brows, mt, out=rows)
            else:
                rows.baddbmm_(brows, mt, beta=beta)
            if self.shared is not None:
                out.view(-1, k).addmm_(x.view(-1, k), self.shared)
            out.addcmul_(self.diag, x)
        return out


def expmv_chebyshev(
    matvec: Callable[[torch.Tensor], torch.Tensor] | ColumnOperator | GroupedOperator,
    v: torch.Tensor,
    tau: float,
    lo: float,
    hi: float,
    imag: float,
    *,
    tol: float = 1e-10,
    adaptive: bool = True,
) -> torch.Tensor:
    """``exp(−τ K) v`` for a batch of matrices K = H + iN with H, N Hermitian, by Chebyshev
    series of fixed degree (in substeps where one series would lose digits to round-off).

    Parameters
    ----------
    matvec : callable, ColumnOperator or GroupedOperator
        ``matvec(x) = K x`` for x of the shape of v (every column may have its own K); an
        operator with v of shape (k, N). A :class:`GroupedOperator` only without derivatives.
    v : complex tensor, (G, k, C) for a callable, (k, N) for an operator
    tau : float ≥ 0
    lo, hi : float, bounds of the spectrum of every H (the stiff, real part)
    imag : float ≥ 0, bound on ‖N‖₂ (the imaginary part)
    tol : float, error target relative to ‖v‖ (uniform on the field of values, Crouzeix)
    adaptive : bool, default True
        Without derivatives, end the series a posteriori: after the first term j at which
        the tail ``Σ_{n>j} |a_n| ρ^{n−j}`` times max(1, ‖T_i(B)v‖/‖v‖) over the last two
        terms i and all columns is below ``tol`` (ρ: the ellipse's growth factor per term; an
        estimate, not a bound: it trusts the observed growth). The a priori
        degree assumes the worst growth ‖T_n(B)‖ ≤ ρⁿ from the first term on; the vectors of
        the matrix formalism hardly grow (‖T_n(B)v‖ ≈ ‖v‖), which ends the series ~15 % earlier
        (a posteriori termination as in Al-Mohy & Higham's ``expm_multiply``). The derivative
        path always uses the fixed degree (its derivative is that of one polynomial).

    Returns
    -------
    complex tensor of the shape of v.

    Notes
    -----
    The polynomial is fixed by (τ, lo, hi, imag, tol) alone, so autograd differentiates
    ``p(K)v`` exactly and ``p`` approximates exp on a neighbourhood of the field of values:
    the gradient is as accurate as the value, in every direction of K. (A Krylov/Arnoldi
    approximation adapts its polynomial to v and stops as soon as the value has converged; its
    autograd derivative misses directions that leave the Krylov space - e.g. exactly the
    coupling between impermeable compartments - and is not used here.) Cost: ~sqrt(τ(hi−lo)·
    ln(1/tol)) products; about 75 for τ(hi−lo) = 200 and tol = 1e-10. With an operator and
    no derivative needed (grad mode off, or no input requiring one) the three-term recurrence
    runs in place on two buffers; with a derivative needed a :class:`ColumnOperator` runs a
    hand-written backward (adjoint recurrence; memory: the m Chebyshev vectors, m·k·N complex
    numbers).

    Round-off: the series' terms reach max |exp(−τz)| on the Bernstein ellipse, e^{τ(a−d)}
    times the result's scale (a, d: the ellipse's and the interval's half-widths). Where that
    factor times the machine epsilon would exceed tol/10 (strongly oscillatory actions: large
    cells, high b) the action is split into s equal substeps ``exp(−(τ/s)K)^s`` (each a
    contraction, tolerance tol/s each). A non-finite result raises :class:`SolverError`.
    """
    op = matvec if isinstance(matvec, ColumnOperator | GroupedOperator) else None
    if op is not None:
        if v.ndim != 2 or v.shape != (op.size, op.ncol) or not v.is_complex():
            raise ValueError(
                f"v must be a complex ({op.size}, {op.ncol}) tensor, got {v.dtype} {tuple(v.shape)}"
            )
    elif v.ndim != 3 or not v.is_complex():
        raise ValueError(f"v must be a complex (G, k, C) tensor, got {v.dtype} {tuple(v.shape)}")
    if tau < 0:
        raise ValueError(f"tau must be non-negative, got {tau}")
    if tau == 0:
        return v
    tau, lo, hi, imag = float(tau), float(lo), float(hi), float(imag)
    eps = torch.finfo(v.real.dtype if v.is_complex() else v.dtype).eps
    nsub = _substeps(tau, lo, hi, imag, tol, eps)
    y = v
    for _ in range(nsub):  # exp(−τK) = exp(−(τ/s)K)^s, each factor a contraction
        y = _expmv_series(matvec, op, y, tau / nsub, lo, hi, imag, tol / nsub, adaptive)
    bad = ~torch.isfinite(y.detach())
    if bool(bad.any()):
        raise SolverError(
            f"exp(−τK)v: {int(bad.sum())} non-finite entries (τ = {tau:.4g}, spectrum "
            f"[{lo:.4g}, {hi:.4g}], imaginary bound {imag:.4g}); check the inputs for inf/NaN"
        )
    return y


def _substeps(tau: float, lo: float, hi: float, imag: float, tol: float, eps: float) -> int:
    """Number s of equal substeps that keeps the series' round-off below ``tol``.

    The series' terms are as large as max |exp(−τz)| on the Bernstein ellipse around the
    field of values, which reaches left of ``lo`` by a − d (a = d(ρ + 1/ρ)/2): relative to
    the result's scale e^{−τ·lo} that is e^{τ(a − d)}, and the round-off is ``eps`` times it.
    For strongly oscillatory actions (large q·‖A‖·τ: large cells, high b) one series would
    lose every digit; s substeps of length τ/s bring the factor down to e^{τ(a−d)/s} ≤
    tol/(10·eps) each (the factors are contractions, so their errors add up)."""
    d = _half_width(lo, hi)
    rho = _ellipse_rho(d, imag)
    excess = tau * d * (0.5 * (rho + 1.0 / rho) - 1.0)
    budget = max(math.log(tol / (10.0 * eps)), 1.0)
    return max(1, math.ceil(excess / budget))


def _expmv_series(matvec, op, v, tau, lo, hi, imag, tol, adaptive) -> torch.Tensor:
    """One Chebyshev series for ``exp(−τK) v`` (see :func:`expmv_chebyshev`)."""
    a, c, d = chebyshev_coefficients(tau, lo, hi, imag, tol)
    if op is not None:
        op2 = op.shifted(c, 2.0 / d)  # 2B = 2(K − c)/d
        if not (torch.is_grad_enabled() and (v.requires_grad or op2.requires_grad)):
            stop = None
            if adaptive:
                # |a_n| is scaled to the series' tolerance unit e^{−τ·lo}; the Chebyshev
                # vectors of K grow by at most ρ per term (the enclosing Bernstein ellipse)
                growth = _ellipse_rho(d, imag)
                stop = (_tail_factors(a, growth), tol * math.exp(-tau * lo))
            return _chebyshev_inplace(op2, v, a, stop)
        if isinstance(op2, GroupedOperator):
            raise ValueError("GroupedOperator has no derivative: use a ColumnOperator")
        return _ChebyshevSeries.apply(
            op2.diag, op2.stack, op2.coefs, op2.ghost, op2.ghost_scale, v.resolve_conj(), a
        )

    def b2(x):
        return 2.0 * (matvec(x) - c * x) / d

    t_prev = v
    y = float(a[0]) * v
    t_cur = 0.5 * b2(v)
    y = y + float(a[1]) * t_cur
    for j in range(2, a.size):
        t_next = b2(t_cur) - t_prev
        y = y + float(a[j]) * t_next
        t_prev, t_cur = t_cur, t_next
    return y


def _tail_factors(a: np.ndarray, growth: float) -> np.ndarray:
    """``τ_j = Σ_{n>j} |a_n| growth^{n−j}`` for j = 0 … m (τ_m = 0): the series' tail after
    term j when the Chebyshev vectors grow by at most ``growth`` per term from there on."""
    m = a.size - 1
    tail = np.zeros(m + 1)
    for j in range(m - 1, -1, -1):  # τ_j = growth·(|a_{j+1}| + τ_{j+1}); m ≲ 10³ terms
        tail[j] = growth * (abs(float(a[j + 1])) + tail[j + 1])
    return tail


def _chebyshev_inplace(
    op2: ColumnOperator | GroupedOperator,
    v: torch.Tensor,
    a: np.ndarray,
    stop: tuple[np.ndarray, float] | None = None,
) -> torch.Tensor:
    """Σ a_j T_j(B) v with ``op2`` = 2B, on two rotating buffers (no autograd), in the
    operator's internal layout, one cache-sized block of columns after the other.
    ``stop`` = (tail factors, tolerance): a posteriori termination per block (see
    :func:`expmv_chebyshev`)."""
    with torch.no_grad():
        x = op2.to_internal(v)
        for sub, idx in op2.cache_blocks():
            x[idx] = _chebyshev_recurrence(sub, x[idx], a, stop)
        return op2.from_internal(x)


def _chebyshev_recurrence(
    op2, t_prev: torch.Tensor, a: np.ndarray, stop: tuple[np.ndarray, float] | None = None
) -> torch.Tensor:
    """The series for one block; ``t_prev`` (the start, internal layout) is overwritten.

    With ``stop = (tail, tol)`` the series ends after the first term j ≥ 2 at which
    ``tail[j]·max(1, r_{j−1}, r_j) ≤ tol``, r_i = max over columns of ‖t_i‖/‖t_0‖ (the norms
    are taken only from the first j with ``tail[j] ≤ tol`` on: a few terms)."""
    if stop is not None:
        tail, tol = stop
        v_norm = op2.column_norms(t_prev)
        v_norm = v_norm.clamp_min(float(v_norm.max()) * 1e-150 + 1e-300)
    y = t_prev * float(a[0])
    t_cur = op2.matvec_(t_prev, torch.empty_like(t_prev)).mul_(0.5)
    y.add_(t_cur, alpha=float(a[1]))
    r_last = None
    for j in range(2, a.size):
        op2.matvec_(t_cur, t_prev, beta=-1.0)  # t_prev ← 2B t_cur − t_prev
        t_prev, t_cur = t_cur, t_prev
        y.add_(t_cur, alpha=float(a[j]))
        if stop is not None and tail[j] <= tol:
            if r_last is None:
                r_last = float((op2.column_norms(t_prev) / v_norm).max())
            r = float((op2.column_norms(t_cur) / v_norm).max())
            if tail[j] * max(1.0, r_last, r) <= tol:
                break
            r_last = r
    return y


class _DiagMatrixFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, S, f, df, rtol):
        lam = torch.diagonal(S.detach())
        with torch.enable_grad():
            lam_ = lam.clone().requires_grad_(True)
            fl = f(lam_)
            (dfl,) = torch.autograd.grad(fl.sum(), lam_) if df is None else (df(lam),)
        fl = fl.detach()
        ctx.save_for_backward(lam, fl, dfl.detach())
        ctx.rtol = rtol
        return torch.diag_embed(fl)

    @staticmethod
    def backward(ctx, g):
        lam, fl, dfl = ctx.saved_tensors
        dl = lam[:, None] - lam[None, :]
        scale = lam.abs().max().clamp_min(torch.finfo(lam.dtype).tiny)
        close = dl.abs() <= ctx.rtol * scale
        dd = torch.where(
            close,
            0.5 * (dfl[:, None] + dfl[None, :]),
            (fl[:, None] - fl[None, :]) / torch.where(close, torch.ones_like(dl), dl),
        )
        gs = 0.5 * (g + g.transpose(-1, -2))
        return gs * dd, None, None, None


def diag_matrix_function(
    S: torch.Tensor,
    f: Callable[[torch.Tensor], torch.Tensor],
    df: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    rtol: float = 1e-6,
) -> torch.Tensor:
    """``f(S)`` for a real symmetric (k, k) S that is diagonal up to round-off.

    The value is ``diag(f(diag S))``; the backward is the exact first-order derivative of the
    matrix function at a diagonal point, ``S̄ = sym(Ḡ) ∘ Γ`` with the divided differences
    ``Γ_mn = (f(λ_m) − f(λ_n))/(λ_m − λ_n)`` and ``(f'(λ_m) + f'(λ_n))/2`` for eigenvalues
    closer than ``rtol·max|λ|`` (degenerate clusters included, where off-diagonal
    perturbations matter through f'). ``f`` must be elementwise and torch-differentiable
    (``df`` is its derivative; by autograd when omitted).
    """
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"S must be a square matrix, got shape {tuple(S.shape)}")
    off = S.detach() - torch.diag_embed(torch.diagonal(S.detach()))
    dscale = torch.diagonal(S.detach()).abs().max().clamp_min(1e-300)
    if float(off.abs().max()) > 1e-8 * float(dscale):
        raise SolverError(
            f"diag_matrix_function needs a (numerically) diagonal matrix; off-diagonal "
            f"{float(off.abs().max()):.3g} vs diagonal {float(dscale):.3g}"
        )
    return _DiagMatrixFunction.apply(S, f, df, rtol)
