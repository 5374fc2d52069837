"""Time-stepping schemes of the Bloch-Torrey solver and their discrete adjoints.

Semi-discrete problem, for every column j of a batch (see :mod:`._btpde_system`):

    M y' = −A(t) y,   A(t) = A0 + i q_j Σ_m φ_m(t) G_m,   y(0) = ρ.

θ-method (piecewise-constant profiles; θ = 1/2 Crank-Nicolson, θ = 1 implicit Euler), on an
interval with constant φ and step dt:

    (M + θ dt A) y_{n+1} = (M − (1−θ) dt A) y_n.

Adaptive ESDIRK (any profile): stiffly accurate, explicit first stage, diagonal γ; step h from
t with t_i = t + c_i h, A_i = A(t_i), Y_1 = y_n:

    (M + γ h A_i) Y_i = M Y_1 − h Σ_{l<i} a_il A_l Y_l   (i = 2 … s),   y_{n+1} = Y_s.

Tableaus: ``esdirk3`` (default), Kennedy & Carpenter's ESDIRK3(2)4L[2]SA (the implicit part of
ARK3(2)4L[2]SA; third order, L-stable, second-order embedded pair), and ``trbdf2`` (Bank et al.
1985 in the ESDIRK form of Hosea & Shampine 1996: γ = 2 − √2, a = [[0], [d, d], [w, w, d]],
d = γ/2, w = √2/4, third-order embedded pair). The error estimate is filtered through the
stage matrix, ``e = (M + γ h A_s)⁻¹ · (−h Σ_i (b_i − b̂_i) A_i Y_i)``; a step is accepted
when ``max |e| / (atol + rtol·max(|y_n|, |y_{n+1}|)) ≤ 1`` (the max norm of ode15s) and the next
step is scaled by ``0.9·err^(−1/3)`` (clipped to [0.2, 5]). Steps restart at the sequence
breakpoints. On a CosOGSE test ESDIRK3 needed half the steps of TR-BDF2 at equal error.

Discrete adjoint. For a step ``L y_{n+1} = R y_n`` and ``g = ∂ℓ/∂ȳ_{n+1}`` (torch's
convention), ``μ = L⁻ᴴ g``, ``∂ℓ/∂ȳ_n = Rᴴ μ`` and the gradient of every matrix entering L (R)
is ``−μ y_{n+1}ᴴ`` (``+μ y_nᴴ``) restricted to the pattern. The gradients of the matrix values
are accumulated with sampled dense-dense products (``torch.sparse.sampled_addmm``: O(nnz·k),
no n×n matrix). The backward sweep reuses the forward factorizations/preconditioners, the
step sequence of adaptive runs is frozen, and the states are checkpointed: every K-th state
is kept in the forward sweep, the states of one segment are recomputed in the backward sweep.

References
----------
C. A. Kennedy, M. H. Carpenter, "Additive Runge-Kutta schemes for convection-diffusion-reaction
equations", Appl. Numer. Math. 44 (2003) 139-181, doi:10.1016/S0168-9274(02)00138-1.
R. E. Bank et al., "Transient simulation of silicon devices and circuits", IEEE Trans. CAD 4
(1985) 436-451, doi:10.1109/TCAD.1985.1270142.
M. E. Hosea, L. F. Shampine, "Analysis and implementation of TR-BDF2", Appl. Numer. Math. 20
(1996) 21-37, doi:10.1016/0168-9274(95)00115-8.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import SetupError, SolverError
from ..linalg.solve import sparse_csr
from ._btpde_system import BTSystem

__all__ = ["GradientAccumulator", "ThetaScheme", "ESDIRKScheme", "Tableau", "TABLEAUS", "Sweep"]


# --------------------------------------------------------------------------- gradients
class GradientAccumulator:
    """Sums of ``Re(μ yᴴ)`` at the nonzeros (and the q contractions) over the steps.

    Attributes
    ----------
    gM, gA0 : (nnz,) real; gG : (nG, nnz) real; gq : (k,) real
    """

    def __init__(self, system: BTSystem):
        self.sys = system
        nnz = system.pattern.nnz
        rd, dev = system.real_dtype, system.device
        self.gM = torch.zeros(nnz, dtype=rd, device=dev)
        self.gA0 = torch.zeros(nnz, dtype=rd, device=dev)
        self.gG = torch.zeros(len(system.G), nnz, dtype=rd, device=dev)
        self.gq = torch.zeros(system.k, dtype=rd, device=dev)
        p = system.pattern
        self._template = sparse_csr(
            system.M.crow_indices(),
            system.M.col_indices(),
            torch.zeros(nnz, dtype=system.dtype, device=dev),
            (p.n, p.n),
        )

    def _sampled(self, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Re Σ_j a[row, j] conj(y[col, j]) at every nonzero, (nnz,) real."""
        out = torch.sparse.sampled_addmm(
            self._template, a.contiguous(), y.conj().T.contiguous(), beta=0.0
        )
        return out.values().clone().real  # (.real of a CSR values view fails in torch 2.13)

    def mass(self, mu: torch.Tensor, y: torch.Tensor) -> None:
        """Add ``Re(μ yᴴ)`` to the gradient of M."""
        self.gM += self._sampled(mu, y)

    def stiff(self, mu: torch.Tensor, terms: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Add ``μ yᴴ`` as the gradient of ``A(φ)`` for each (y, φ) in ``terms``."""
        total = terms[0][0]
        for y, _ in terms[1:]:
            total = total + y
        self.gA0 += self._sampled(mu, total)
        s = self.sys
        for y, phi in terms:
            for m, cols in enumerate(s.columns):
                ph = float(phi[m])
                if ph == 0.0:
                    continue
                mu_c = mu[:, cols]
                y_c = y[:, cols]
                w = (-1j * ph) * s.q[cols].to(mu.dtype)
                self.gG[m] += self._sampled(mu_c * w, y_c)
                yr = torch.view_as_real(y_c.conj().resolve_conj().contiguous())
                gy = s.G[m] @ yr.reshape(s.n, -1)
                gy = torch.view_as_complex(gy.reshape(s.n, -1, 2).contiguous())
                self.gq[cols] += ((-1j * ph) * (mu_c * gy).sum(0)).real


# ------------------------------------------------------------------------------ schemes
@dataclass
class _Piece:
    """Constant-profile interval of the θ-method."""

    t0: float
    t1: float
    nsteps: int
    phi: torch.Tensor  # (nG,)

    @property
    def dt(self) -> float:
        return (self.t1 - self.t0) / self.nsteps


class ThetaScheme:
    """θ-method on piecewise-constant profiles (fixed steps per interval)."""

    name = "theta"

    def __init__(self, pieces: list[_Piece], theta: float):
        self.pieces = pieces
        self.theta = float(theta)
        self.step_piece: list[int] = []
        self.times: list[float] = [pieces[0].t0]
        for i, pc in enumerate(pieces):
            for s in range(pc.nsteps):
                self.step_piece.append(i)
                self.times.append(pc.t0 + (s + 1) * pc.dt if s + 1 < pc.nsteps else pc.t1)

    @property
    def nsteps(self) -> int:
        return len(self.step_piece)

    def progress_total(self) -> float:
        return float(self.nsteps)

    def progress_units(self, n: int) -> float:
        return 1.0

    def step(self, sys: BTSystem, n: int, y: torch.Tensor, y_prev: torch.Tensor | None):
        pc = self.pieces[self.step_piece[n]]
        dt = pc.dt
        cl, cr = self.theta * dt, (1.0 - self.theta) * dt
        rhs = sys.apply_M(y)
        if cr != 0.0:
            rhs = rhs - cr * sys.apply_A(pc.phi, y)
        same = y_prev is not None and n > 0 and self.step_piece[n - 1] == self.step_piece[n]
        x0 = 2.0 * y - y_prev if same else y
        return sys.solve(cl, pc.phi, rhs, x0=x0), None

    def adjoint_step(self, sys, n, y, aux, y_next, g, acc, mu_guess):
        pc = self.pieces[self.step_piece[n]]
        dt = pc.dt
        cl, cr = self.theta * dt, (1.0 - self.theta) * dt
        mu = sys.solve_adjoint(cl, pc.phi, g, x0=mu_guess)
        g_prev = sys.apply_M(mu)
        if cr != 0.0:
            g_prev = g_prev - cr * sys.apply_AH(pc.phi, mu)
        if acc is not None:
            acc.mass(mu, y - y_next)
            acc.stiff(mu, [(-(cl * y_next + cr * y), pc.phi)])
        return g_prev, mu

    def run(self, sys: BTSystem, y0: torch.Tensor, record: Callable, progress) -> torch.Tensor:
        y, y_prev = y0, None
        for n in range(self.nsteps):
            y_next, aux = self.step(sys, n, y, y_prev)
            record(n, y, aux, y_next)
            y_prev, y = y, y_next
            progress(1.0)
        return y


@dataclass(frozen=True)
class Tableau:
    """Stiffly accurate ESDIRK tableau (explicit first stage, diagonal ``gamma``).

    Attributes
    ----------
    name : str
    a : (s, s) nested tuples, lower triangular, ``a[i][i] = gamma`` for i ≥ 1, ``a[0] = 0``
    bhat : (s,) embedded weights (the step result is the last stage: ``b = a[-1]``)
    """

    name: str
    a: tuple
    bhat: tuple

    @property
    def s(self) -> int:
        return len(self.a)

    @property
    def gamma(self) -> float:
        return self.a[-1][-1]

    @property
    def c(self) -> tuple:
        return tuple(sum(row) for row in self.a)

    @property
    def error_weights(self) -> tuple:
        """b − b̂."""
        return tuple(b - bh for b, bh in zip(self.a[-1], self.bhat))


def _trbdf2() -> Tableau:
    g = 2.0 - math.sqrt(2.0)
    d, w = g / 2.0, math.sqrt(2.0) / 4.0
    return Tableau(
        name="TR-BDF2",
        a=((0.0, 0.0, 0.0), (d, d, 0.0), (w, w, d)),
        bhat=((1.0 - w) / 3.0, (3.0 * w + 1.0) / 3.0, d / 3.0),
    )


def _esdirk32() -> Tableau:
    g = 1767732205903 / 4055673282236
    return Tableau(
        name="ESDIRK3(2)4L[2]SA",
        a=(
            (0.0, 0.0, 0.0, 0.0),
            (g, g, 0.0, 0.0),
            (2746238789719 / 10658868560708, -640167445237 / 6845629431997, g, 0.0),
            (
                1471266399579 / 7840856788654,
                -4482444167858 / 7529755066697,
                11266239266428 / 11593286722821,
                g,
            ),
        ),
        bhat=(
            2756255671327 / 12835298489170,
            -10771552573575 / 22201958757719,
            9247589265047 / 10645013368117,
            2193209047091 / 5459859503100,
        ),
    )


TABLEAUS = {"trbdf2": _trbdf2(), "esdirk3": _esdirk32()}


class ESDIRKScheme:
    """Adaptive stiffly accurate ESDIRK with embedded error control; steps frozen after the
    forward run.

    For stages i ≥ 2 (explicit first stage Y_1 = y_n, t_i = t + c_i h, A_i = A(t_i)):
    ``(M + γ h A_i) Y_i = M Y_1 − h Σ_{l<i} a_il A_l Y_l``; ``y_{n+1} = Y_s``.
    """

    name = "adaptive"

    def __init__(
        self,
        intervals: list[tuple[float, float]],
        phi: Callable[[float, float, float], torch.Tensor],
        rtol: float,
        atol: float,
        tableau: Tableau,
        error_rtol: float = 1e-3,
        norm: str = "max",
        frozen_times: list[float] | None = None,
    ):
        self.intervals = intervals
        self.phi = phi  # phi(t, interval_start, interval_end) -> (nG,)
        self.rtol, self.atol = float(rtol), float(atol)
        self.tableau = tableau
        self.error_rtol = error_rtol
        self.norm = norm
        self.steps: list[tuple[float, float, int]] = []  # (t, h, interval)
        self.rejected = 0
        self.times: list[float] = [intervals[0][0]]
        self.frozen = frozen_times is not None
        if self.frozen:
            self._freeze(list(frozen_times))

    def _freeze(self, times: list[float]) -> None:
        """Replay a step sequence (no error control), e.g. ``Result.info["step_times"]``."""
        t0, te = self.intervals[0][0], self.intervals[-1][1]
        tol = 1e-9 * te
        if len(times) < 2 or abs(times[0] - t0) > tol or abs(times[-1] - te) > tol:
            raise SetupError(f"step_times must run from {t0:g} to {te:g} µs")
        if any(b <= a for a, b in zip(times[:-1], times[1:])):
            raise SetupError("step_times must be strictly increasing")
        for a, _ in self.intervals[1:]:
            if min(abs(t - a) for t in times) > tol:
                raise SetupError(f"step_times must contain the breakpoint {a:g} µs")
        for t, t1 in zip(times[:-1], times[1:]):
            mid = 0.5 * (t + t1)
            k = next(i for i, (a, b) in enumerate(self.intervals) if a - tol <= mid <= b + tol)
            self.steps.append((t, t1 - t, k))
        self.times = list(times)

    @property
    def nsteps(self) -> int:
        return len(self.steps)

    def progress_total(self) -> float:
        return self.intervals[-1][1] - self.intervals[0][0]

    def progress_units(self, n: int) -> float:
        return self.steps[n][1]

    def _phis(self, t: float, h: float, k: int) -> list[torch.Tensor]:
        a, b = self.intervals[k]
        return [self.phi(t + ci * h, a, b) for ci in self.tableau.c]

    def _stages(self, sys: BTSystem, t: float, h: float, k: int, y1: torch.Tensor):
        """Stage values Y (list of s) and products A_i Y_i (list of s)."""
        tab = self.tableau
        phis = self._phis(t, h, k)
        gh = tab.gamma * h
        my1 = sys.apply_M(y1)
        ys, ays = [y1], [sys.apply_A(phis[0], y1)]
        c = tab.c
        for i in range(1, tab.s):
            rhs = my1
            for l in range(i):
                rhs = rhs - (h * tab.a[i][l]) * ays[l]
            if i == 1:
                guess = y1
            else:
                guess = ys[0] + (ys[-1] - ys[0]) * (c[i] / c[i - 1])
            yi = sys.solve(gh, phis[i], rhs, x0=guess)
            ys.append(yi)
            if i < tab.s - 1:
                ays.append(sys.apply_A(phis[i], yi))
        return ys, ays, phis

    def step(self, sys: BTSystem, n: int, y: torch.Tensor, y_prev: torch.Tensor | None):
        t, h, k = self.steps[n]
        ys, _, _ = self._stages(sys, t, h, k, y)
        return ys[-1], ys[1:-1]

    def adjoint_step(self, sys, n, y1, inner, ys_last, g_last, acc, mu_guess):
        tab = self.tableau
        t, h, k = self.steps[n]
        phis = self._phis(t, h, k)
        ys = [y1, *inner, ys_last]
        s, gh = tab.s, tab.gamma * h
        g = [None] * s
        g[s - 1] = g_last
        mus = [None] * s
        nu = [None] * s  # ν_l = Σ_i w_il μ_i: the adjoint weight of A_l Y_l
        for i in range(s - 1, 0, -1):
            mus[i] = sys.solve_adjoint(gh, phis[i], g[i], x0=mu_guess if i == s - 1 else None)
            nu[i] = -gh * mus[i] if nu[i] is None else nu[i] - gh * mus[i]
            for l in range(i):
                w = -h * tab.a[i][l]
                if w == 0.0:
                    continue
                nu[l] = w * mus[i] if nu[l] is None else nu[l] + w * mus[i]
            if i - 1 >= 1:  # every stage above i−1 is done: its gradient is complete
                g[i - 1] = sys.apply_AH(phis[i - 1], nu[i - 1])
        msum = mus[1]
        for i in range(2, s):
            msum = msum + mus[i]
        g_first = sys.apply_M(msum) + sys.apply_AH(phis[0], nu[0])
        if acc is not None:
            acc.mass(msum, ys[0])
            for l in range(1, s):
                acc.mass(-mus[l], ys[l])
            for l in range(s):
                acc.stiff(nu[l], [(ys[l], phis[l])])
        return g_first, mus[s - 1]

    def run(self, sys: BTSystem, y0: torch.Tensor, record: Callable, progress) -> torch.Tensor:
        if self.frozen:
            y = y0
            for n in range(self.nsteps):
                y_next, aux = self.step(sys, n, y, None)
                record(n, y, aux, y_next)
                progress(self.steps[n][1])
                y = y_next
            return y
        tab = self.tableau
        ew = tab.error_weights
        y = y0
        total = self.progress_total()
        h = None
        n = 0
        expo = -1.0 / 3.0
        for k, (a, b) in enumerate(self.intervals):
            length = b - a
            if h is None:
                h = length * min(1.0, 0.5 * self.rtol ** (1.0 / 3.0))
            t = a
            while b - t > 1e-12 * total:
                h = min(h, length)
                last = t + h >= b - 1e-9 * length
                hs = b - t if last else h
                ys, ays, phis = self._stages(sys, t, hs, k, y)
                ays = ays + [sys.apply_A(phis[-1], ys[-1])]
                est = None
                for wi, ay in zip(ew, ays):
                    if wi != 0.0:
                        est = (-hs * wi) * ay if est is None else est - (hs * wi) * ay
                e = sys.solve(tab.gamma * hs, phis[-1], est, x0=None, rtol=self.error_rtol)
                scale = self.atol + self.rtol * torch.maximum(y.abs(), ys[-1].abs())
                ratio = e.abs() / scale
                err = float(ratio.max() if self.norm == "max" else ratio.square().mean().sqrt())
                if not math.isfinite(err):
                    raise SolverError(f"{tab.name}: non-finite error estimate at t = {t:g} µs")
                if err <= 1.0:
                    self.steps.append((t, hs, k))
                    self.times.append(b if last else t + hs)
                    record(n, y, ys[1:-1], ys[-1])
                    n += 1
                    progress(hs)
                    y = ys[-1]
                    t = b if last else t + hs
                    fac = min(5.0, 0.9 * err**expo) if err > 0 else 5.0
                    fac = max(0.2, fac)
                    h = hs * fac if not last else max(h, hs * fac)
                else:
                    self.rejected += 1
                    h = hs * max(0.2, 0.9 * err**expo)
                if h < 1e-12 * total:
                    raise SolverError(
                        f"{tab.name}: step size underflow at t = {t:g} µs (h = {h:g} µs); "
                        f"rtol = {self.rtol:g}, atol = {self.atol:g} may be too strict"
                    )
        return y


# ------------------------------------------------------------------------------- sweep
class Sweep:
    """Forward sweep with checkpoints and snapshots; backward (adjoint) sweep.

    Parameters
    ----------
    system : BTSystem
    scheme : ThetaScheme or ESDIRKScheme
    store : bool, keep checkpoints for a backward sweep
    checkpoint : int or None, keep every K-th state (None: every state while the stored
        states fit ``memory_budget`` bytes, then thinned by halving)
    snapshot_times : sequence of float (µs) or None
    progress : callable(float) advancing a progress bar
    """

    def __init__(
        self, system, scheme, *, store, checkpoint, memory_budget, snapshot_times, progress
    ):
        self.sys = system
        self.scheme = scheme
        self.store = store
        self.fixed_k = checkpoint
        self.k = 1 if checkpoint is None else int(checkpoint)
        state_bytes = system.n * system.k * (16 if system.dtype == torch.complex128 else 8)
        per_step = state_bytes * (scheme.tableau.s - 1 if isinstance(scheme, ESDIRKScheme) else 1)
        self.max_states = max(4, int(memory_budget // max(per_step, 1)))
        self.checkpoints: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.snapshot_times = sorted(float(t) for t in (snapshot_times or []))
        self.snapshots: dict[float, torch.Tensor] = {}
        self.progress = progress
        self.peak_states = 0

    def _record(self, n, y, aux, y_next):
        if self.store and n % self.k == 0:
            self.checkpoints[n] = (y, aux if self.k == 1 else None)
            if self.fixed_k is None and len(self.checkpoints) > self.max_states:
                self.k *= 2
                self.checkpoints = {
                    m: (v[0], None) for m, v in self.checkpoints.items() if m % self.k == 0
                }
            self.peak_states = max(self.peak_states, len(self.checkpoints))
        if self.snapshot_times:
            t0, t1 = self.scheme.times[n], self.scheme.times[n + 1]
            for ts in self.snapshot_times:
                if ts in self.snapshots:
                    continue
                if ts <= t0 and n == 0:
                    self.snapshots[ts] = y.detach().clone()
                elif t0 < ts <= t1:
                    w = (ts - t0) / (t1 - t0)
                    self.snapshots[ts] = ((1.0 - w) * y + w * y_next).detach().clone()

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        y = self.scheme.run(self.sys, y0, self._record, self.progress)
        self.final = y
        return y

    def backward(self, g: torch.Tensor, need_matrix_grads: bool, progress):
        """Adjoint sweep. Returns (accumulator or None, ∂ℓ/∂ȳ0)."""
        if not self.store:
            raise RuntimeError("the forward sweep kept no checkpoints (store=False)")
        acc = GradientAccumulator(self.sys) if need_matrix_grads else None
        scheme = self.scheme
        nsteps = scheme.nsteps
        starts = sorted(self.checkpoints)
        mu = None
        for si in range(len(starts) - 1, -1, -1):
            s = starts[si]
            e = starts[si + 1] if si + 1 < len(starts) else nsteps
            y_s, aux_s = self.checkpoints[s]
            states = [y_s]
            auxes = []
            stored_end = self.checkpoints[e][0] if e in self.checkpoints else self.final
            if e - s == 1 and (aux_s is not None or isinstance(scheme, ThetaScheme)):
                states.append(stored_end)
                auxes.append(aux_s)
            else:
                # Recompute the segment; the θ-method needs no stage values, so its last
                # state is the stored one (K − 1 recomputed solves per K steps).
                last = e - 1 if isinstance(scheme, ThetaScheme) else e
                y_prev = None
                for n in range(s, last):
                    y_next, aux = scheme.step(self.sys, n, states[-1], y_prev)
                    y_prev = states[-1]
                    states.append(y_next)
                    auxes.append(aux)
                if last < e:
                    states.append(stored_end)
                    auxes.append(None)
            self.peak_states = max(self.peak_states, len(self.checkpoints) + len(states))
            for n in range(e - 1, s - 1, -1):
                i = n - s
                g, mu = scheme.adjoint_step(
                    self.sys, n, states[i], auxes[i], states[i + 1], g, acc, mu
                )
                progress(scheme.progress_units(n))
            del states, auxes
        return acc, g
