r"""Independent one-dimensional references for the validation suite (NumPy/SciPy only).

Nothing here uses the package's FEM, solvers or sequence classes: these are the yardsticks.

Slab (interval) with Neumann walls
----------------------------------
On ``[0, L]`` with diffusivity D the Neumann Laplace eigenpairs are
``φ_0 = 1/√L``, ``φ_n = √(2/L) cos(nπx/L)``, ``λ_n = D (nπ/L)²``. In that basis the
Bloch-Torrey equation ``∂ξ/∂t = D ξ'' − i q f(t) x ξ`` becomes the matrix-formalism system
(Grebenkov 2007; SpinDoctor's MF)

.. math::

    \dot\nu = -(\Lambda + i q f(t) B)\,\nu, \qquad
    B_{mn} = \int_0^L (x - L/2)\, φ_m φ_n\,dx,

with, for ``m ≠ n``, ``B_mn = (L/π²)((−1)^{m+n} − 1)(1/(m−n)² + 1/(m+n)²)`` (``m, n ≥ 1``),
``B_0n = (√2 L/π²)((−1)^n − 1)/n²`` and ``B_nn = 0`` (centred coordinate: the shift by L/2
only multiplies the signal by ``exp(−i q (L/2) ∫f)`` = 1 for refocused profiles). For a
piecewise-constant profile the solution is a product of matrix exponentials, exact up to the
truncation of the series (checked by doubling the number of modes). A box
``[0,Lx]×[0,Ly]×[0,Lz]`` separates: ``E(q u) = Π_k E_k(q u_k)``.

Permeable slab stacks
---------------------
A P1 finite-element discretization of the interval stack on a fine uniform grid (nodes
duplicated at the interfaces, the membrane law ``D ∂_n ξ_i = κ (ξ_j − ξ_i)`` as a 2×2 coupling
block, T2 as ``M/T2``) is propagated *exactly in time* (dense matrix exponentials of the small
reduced system), at two grid sizes, and Richardson-extrapolated (P1 error ∝ h²). The
difference between the extrapolated and the fine value is returned as the reference's own
uncertainty.

Gaussian-phase (GPA = HADC) ADC series
--------------------------------------
``ADC(u) = Σ_n w_n j(λ_n)`` with ``w_n = (∫ (u·x) φ_n)² / |Ω|`` and
``j(λ) = λ ∫F(t)∫₀ᵗ e^{−λ(t−s)} f(s) ds dt / ∫F²``; for a PGSE
``j(λ) = [2λδ − 2 + 2e^{−λδ} + 2e^{−λΔ} − e^{−λ(Δ−δ)} − e^{−λ(Δ+δ)}] / (λ²δ²(Δ − δ/3))``.
Interval: ``w_n = 8L²/(nπ)⁴`` for odd n. Sphere (Murday & Cotts 1968): ``α_m R`` the roots of
``j₁'``, ``w_m = 2R²/(x_m²(x_m² − 2))``. Cylinder ⊥ axis (Neuman 1974): roots of ``J₁'``,
``w_m = 2R²/(x_m²(x_m² − 1))``.

Units: µm, µs, µm²/µs, µm/µs, q in rad/(µs·µm).

References
----------
* D. S. Grebenkov, "NMR survey of reflected Brownian motion", Rev. Mod. Phys. 79 (2007) 1077.
* J. S. Murday, R. M. Cotts, J. Chem. Phys. 48 (1968) 4938; C. H. Neuman, J. Chem. Phys. 60
  (1974) 4508.
* P. P. Mitra, P. N. Sen, L. M. Schwartz, Phys. Rev. B 47 (1993) 8565.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import linalg, optimize, special
from scipy.integrate import solve_ivp

__all__ = [
    "Profile",
    "pgse",
    "double_pgse",
    "cos_ogse",
    "j_pgse",
    "sta_time_pgse",
    "interval_modes",
    "interval_attenuation",
    "box_attenuation",
    "slab_stack_signal",
    "gpa_adc_interval",
    "gpa_adc_sphere",
    "gpa_adc_cylinder",
]


# ------------------------------------------------------------------------------ profiles
@dataclass(frozen=True)
class Profile:
    """Effective gradient profile f(t) on [0, TE] (µs), written independently of
    :mod:`spindoctor_torch.sequences`.

    ``pieces`` lists ``(duration, value)`` for piecewise-constant profiles; ``f`` is the
    profile function for the others.
    """

    echotime: float
    pieces: tuple[tuple[float, float], ...] | None = None
    f: Callable[[float], float] | None = None
    breakpoints: tuple[float, ...] = ()


def pgse(delta: float, Delta: float) -> Profile:
    """PGSE: +1 on [0, δ), 0 on [δ, Δ), −1 on [Δ, Δ+δ) (µs)."""
    pieces = [(delta, 1.0), (Delta - delta, 0.0), (delta, -1.0)]
    return Profile(Delta + delta, tuple((d, v) for d, v in pieces if d > 0))


def double_pgse(delta: float, Delta: float, tpause: float = 0.0) -> Profile:
    """Two PGSE blocks separated by ``tpause`` µs (SpinDoctor's DoublePGSE without t1)."""
    one = [(delta, 1.0), (Delta - delta, 0.0), (delta, -1.0)]
    pieces = one + [(tpause, 0.0)] + one
    return Profile(2 * (Delta + delta) + tpause, tuple((d, v) for d, v in pieces if d > 0))


def cos_ogse(delta: float, Delta: float, nperiod: int) -> Profile:
    """Cosine OGSE: cos(2πnt/δ) on [0, δ), −cos(2πn(t−Δ)/δ) on [Δ, Δ+δ) (µs)."""
    w = 2.0 * math.pi * nperiod / delta

    def f(t: float) -> float:
        if t < delta:
            return math.cos(w * t)
        if Delta <= t < Delta + delta:
            return -math.cos(w * (t - Delta))
        return 0.0

    return Profile(Delta + delta, None, f, (0.0, delta, Delta, Delta + delta))


def j_pgse(lam: np.ndarray, delta: float, Delta: float) -> np.ndarray:
    """j(λ) of a PGSE, closed form (λ > 0 in 1/µs; j(λ) ≈ λ for small λ)."""
    lam = np.asarray(lam, dtype=np.float64)
    num = (
        2 * lam * delta
        - 2
        + 2 * np.exp(-lam * delta)
        + 2 * np.exp(-lam * Delta)
        - np.exp(-lam * (Delta - delta))
        - np.exp(-lam * (Delta + delta))
    )
    return num / (lam**2 * delta**2 * (Delta - delta / 3))


def sta_time_pgse(delta: float, Delta: float) -> float:
    """Squared finite-pulse STA factor C² of a PGSE (µs; Mitra with Schiavi's correction)."""
    c = (
        (4.0 / 35.0)
        * ((Delta + delta) ** 3.5 + (Delta - delta) ** 3.5 - 2 * Delta**3.5 - 2 * delta**3.5)
        / (delta**2 * (Delta - delta / 3))
    )
    return c * c


# ------------------------------------------------------------------------ mode propagation
def _propagate_pieces(
    lam: np.ndarray, B: np.ndarray, q: np.ndarray, profile: Profile, nu0: np.ndarray
) -> np.ndarray:
    """ν(TE) for every q (rows) by products of exact matrix exponentials."""
    q = np.asarray(q, dtype=np.float64).reshape(-1)
    nu = np.broadcast_to(nu0.astype(np.complex128), (q.size, nu0.size)).copy()
    for tau, v in profile.pieces:
        if v == 0.0:
            nu = nu * np.exp(-tau * lam)[None, :]
            continue
        mats = -tau * (np.diag(lam)[None] + 1j * v * q[:, None, None] * B[None])
        nu = np.einsum("kij,kj->ki", linalg.expm(mats), nu)
    return nu


def _propagate_ode(
    lam: np.ndarray, B: np.ndarray, q: np.ndarray, profile: Profile, nu0: np.ndarray
) -> np.ndarray:
    """ν(TE) for a general profile: DOP853 at rtol 1e-11 between the breakpoints."""
    n = lam.size
    out = []
    for qq in np.asarray(q, dtype=np.float64).reshape(-1):
        y = np.concatenate([nu0.real, nu0.imag]).astype(np.float64)
        bps = list(profile.breakpoints) or [0.0, profile.echotime]
        for a, b in zip(bps[:-1], bps[1:]):
            if b <= a:
                continue

            def rhs(t, y, qq=qq, a=a, b=b):
                tc = min(max(t, a + 1e-12 * (b - a)), b - 1e-12 * (b - a))
                z = y[:n] + 1j * y[n:]
                dz = -(lam * z + 1j * qq * profile.f(tc) * (B @ z))
                return np.concatenate([dz.real, dz.imag])

            sol = solve_ivp(rhs, (a, b), y, method="DOP853", rtol=1e-11, atol=1e-13)
            y = sol.y[:, -1]
        out.append(y[:n] + 1j * y[n:])
    return np.array(out)


def propagate(lam, B, q, profile: Profile, nu0) -> np.ndarray:
    """ν(TE), shape (nq, nmode), of ``ν' = −(Λ + i q f(t) B) ν`` from ``nu0``."""
    if profile.pieces is not None:
        return _propagate_pieces(lam, B, q, profile, nu0)
    return _propagate_ode(lam, B, q, profile, nu0)


# ------------------------------------------------------------------------------ interval
@lru_cache(maxsize=32)
def _interval_B(nmode: int) -> np.ndarray:
    """B of the unit interval (L = 1), centred coordinate."""
    m = np.arange(nmode)[:, None].astype(np.float64)
    n = np.arange(nmode)[None, :].astype(np.float64)
    odd = ((m + n) % 2 == 1).astype(np.float64)  # (−1)^{m+n} − 1 = −2 for odd sums
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = -2.0 * odd * (1.0 / (m - n) ** 2 + 1.0 / (m + n) ** 2) / math.pi**2
    B = np.where((m >= 1) & (n >= 1) & (m != n), inner, 0.0)
    k = np.arange(1, nmode, dtype=np.float64)
    b0 = math.sqrt(2.0) * (-2.0 * (k % 2 == 1)) / (math.pi**2 * k**2)
    B[0, 1:] = b0
    B[1:, 0] = b0
    return B


def interval_modes(length: float, diffusivity: float, nmode: int) -> tuple[np.ndarray, np.ndarray]:
    """Neumann eigenvalues (1/µs) and centred position matrix B (µm) of ``[0, length]``."""
    n = np.arange(nmode, dtype=np.float64)
    lam = diffusivity * (n * math.pi / length) ** 2
    return lam, length * _interval_B(nmode)


def interval_attenuation(
    length: float, diffusivity: float, q, profile: Profile, nmode: int = 60
) -> np.ndarray:
    """Normalized signal E(q) = S/|Ω| of the interval ``[0, length]`` (complex, (nq,))."""
    lam, B = interval_modes(length, diffusivity, nmode)
    nu0 = np.zeros(nmode)
    nu0[0] = 1.0  # ρ = 1: ν_0 = ∫φ_0 = √L; signal = √L ν_0(TE) / L = ν_0(TE)/ν_0(0)
    return propagate(lam, B, q, profile, nu0)[:, 0]


def box_attenuation(
    sides: Sequence[float], diffusivity: float, q, direction, profile: Profile, nmode: int = 60
) -> np.ndarray:
    """Normalized signal of the box ``Π [0, L_k]`` for unit ``direction``: product of the three
    interval attenuations at ``q·u_k`` (complex, (nq,))."""
    q = np.asarray(q, dtype=np.float64).reshape(-1)
    u = np.asarray(direction, dtype=np.float64)
    u = u / np.linalg.norm(u)
    out = np.ones(q.size, dtype=np.complex128)
    for L, uk in zip(sides, u):
        if abs(uk) > 0:
            out = out * interval_attenuation(L, diffusivity, q * uk, profile, nmode)
    return out


# ----------------------------------------------------------------------- permeable stacks
def _stack_fem(widths, diffusivity, permeability, relaxation, density, h):
    """P1 matrices of the 1-D stack: M, A = K + Q + R (both (n, n)), X (nodal x), layer id of
    every node and ρ at every node."""
    widths = np.asarray(widths, dtype=np.float64)
    nlayer = widths.size
    edges = np.concatenate([[0.0], np.cumsum(widths)])
    nodes, layer = [], []
    for i in range(nlayer):
        ncell = max(2, int(round(widths[i] / h)))
        nodes.append(np.linspace(edges[i], edges[i + 1], ncell + 1))
        layer.append(np.full(ncell + 1, i))
    x = np.concatenate(nodes)
    lay = np.concatenate(layer)
    n = x.size
    M = np.zeros((n, n))
    A = np.zeros((n, n))
    start = 0
    for i in range(nlayer):
        m = nodes[i].size
        idx = np.arange(start, start + m)
        hl = np.diff(nodes[i])
        a, b = idx[:-1], idx[1:]
        for (r, c), wm in (((a, a), 2.0), ((b, b), 2.0), ((a, b), 1.0), ((b, a), 1.0)):
            np.add.at(M, (r, c), wm * hl / 6.0)
            sign = 1.0 if wm == 2.0 else -1.0
            np.add.at(A, (r, c), sign * diffusivity[i] / hl)
        start += m
    if np.isfinite(relaxation).any():
        rate = np.where(np.isfinite(relaxation), 1.0 / relaxation, 0.0)[lay]
        A = A + M * rate[:, None]  # M is block-diagonal per layer: R = diag(rate) M
    rho = np.asarray(density, dtype=np.float64)[lay]
    # Interfaces: last node of layer i and first node of layer i+1; ρ-weighted coupling.
    ends = np.cumsum([nd.size for nd in nodes])
    for i in range(nlayer - 1):
        p, s = ends[i] - 1, ends[i]
        k = permeability[i]
        ci = 2 * rho[p] / (rho[p] + rho[s]) if rho[p] + rho[s] > 0 else 1.0
        cj = 2 * rho[s] / (rho[p] + rho[s]) if rho[p] + rho[s] > 0 else 1.0
        # Flux into i: κ (c_ij u_j − c_ji u_i) with c_ij = 2ρ_i/(ρ_i+ρ_j).
        A[p, p] += k * cj
        A[p, s] -= k * ci
        A[s, s] += k * ci
        A[s, p] -= k * cj
    return M, A, x, lay, rho


def _stack_propagate(widths, diffusivity, permeability, relaxation, density, q, profile, h):
    """Per-layer signals (nq, nlayer) of the 1-D stack on grid h, exact in time."""
    if profile.pieces is None:
        raise ValueError("slab_stack_signal supports piecewise-constant profiles only")
    M, A, x, lay, rho = _stack_fem(widths, diffusivity, permeability, relaxation, density, h)
    J = _first_moment(M, x, x - 0.5 * float(np.sum(widths)))
    # Reduce with the M-orthonormal eigenbasis of the symmetric part of A: an exact change of
    # basis (all modes kept), in which the pause pieces are nearly diagonal.
    _, phi = linalg.eigh(0.5 * (A + A.T), M)
    Ar = phi.T @ A @ phi
    Br = phi.T @ J @ phi
    nu0 = phi.T @ (M @ rho)
    weights = np.stack([phi.T @ (M @ (lay == i).astype(np.float64)) for i in range(len(widths))])
    q = np.asarray(q, dtype=np.float64).reshape(-1)
    nu = np.broadcast_to(nu0.astype(np.complex128), (q.size, nu0.size)).copy()
    for tau, v in profile.pieces:
        mats = -tau * (Ar[None] + 1j * v * q[:, None, None] * Br[None])
        nu = np.einsum("kij,kj->ki", linalg.expm(mats), nu)
    return nu @ weights.T


def _first_moment(M: np.ndarray, x: np.ndarray, xc: np.ndarray) -> np.ndarray:
    """Exact P1 matrix ∫ (x − c) φ_i φ_j on the same grid as M (element-wise formula)."""
    n = x.size
    J = np.zeros((n, n))
    # Element e = [a, b] exists where M[a, b] ≠ 0 with b = a + 1.
    a = np.nonzero(np.abs(np.diag(M, 1)) > 0)[0]
    b = a + 1
    hl = x[b] - x[a]
    xa, xb = xc[a], xc[b]
    # ∫ x φ_a² = h(3xa + xb)/12, ∫ x φ_b² = h(xa + 3xb)/12, ∫ x φ_a φ_b = h(xa + xb)/12.
    np.add.at(J, (a, a), hl * (3 * xa + xb) / 12)
    np.add.at(J, (b, b), hl * (xa + 3 * xb) / 12)
    np.add.at(J, (a, b), hl * (xa + xb) / 12)
    np.add.at(J, (b, a), hl * (xa + xb) / 12)
    return J


def slab_stack_signal(
    widths: Sequence[float],
    diffusivity: Sequence[float],
    permeability: Sequence[float],
    q,
    profile: Profile,
    *,
    relaxation: Sequence[float] | None = None,
    density: Sequence[float] | None = None,
    h: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer signals of a permeable 1-D stack per unit cross-section (µm, complex).

    Returns ``(signal, uncertainty)``: ``signal`` (nq, nlayer) is the Richardson extrapolation
    of the grids h and h/2, ``uncertainty`` (nq, nlayer) the absolute difference between that
    and the h/2 value (an upper estimate of the remaining discretization error).
    """
    widths = np.asarray(widths, dtype=np.float64)
    nl = widths.size
    D = np.broadcast_to(np.asarray(diffusivity, dtype=np.float64), (nl,))
    kappa = np.broadcast_to(np.asarray(permeability, dtype=np.float64), (max(nl - 1, 0),))
    T2 = (
        np.full(nl, np.inf)
        if relaxation is None
        else np.broadcast_to(np.asarray(relaxation, dtype=np.float64), (nl,))
    )
    rho = (
        np.ones(nl)
        if density is None
        else np.broadcast_to(np.asarray(density, dtype=np.float64), (nl,))
    )
    coarse = _stack_propagate(widths, D, kappa, T2, rho, q, profile, h)
    fine = _stack_propagate(widths, D, kappa, T2, rho, q, profile, h / 2)
    extrap = fine + (fine - coarse) / 3.0
    return extrap, np.abs(extrap - fine)


# -------------------------------------------------------------------------- GPA ADC series
def gpa_adc_interval(
    length: float, diffusivity: float, delta: float, Delta: float, nterm: int = 4000
) -> float:
    """GPA (= HADC) ADC of ``[0, length]`` along its axis for a PGSE (µm²/µs)."""
    n = np.arange(1, 2 * nterm, 2, dtype=np.float64)
    lam = diffusivity * (n * math.pi / length) ** 2
    w = 8.0 * length**2 / (n * math.pi) ** 4
    return float(np.sum(w * j_pgse(lam, delta, Delta)))


def _derivative_roots(fun: Callable[[np.ndarray], np.ndarray], count: int) -> np.ndarray:
    """The first ``count`` positive zeros of ``fun`` (vectorized sign scan, brentq polish)."""
    step, x0, out = 0.05, 1e-3, np.empty(0)
    while out.size < count:
        x = x0 + step * np.arange(4 * count * 16 + 1)  # zeros are ~π apart: ample grid
        v = fun(x)
        k = np.nonzero(v[:-1] * v[1:] < 0)[0]
        out = np.array([optimize.brentq(fun, x[i], x[i + 1], xtol=1e-15) for i in k])
        step *= 2.0 if out.size < count else 1.0
    return out[:count]


@lru_cache(maxsize=4)
def _sphere_roots(count: int) -> np.ndarray:
    return _derivative_roots(lambda x: special.spherical_jn(1, x, derivative=True), count)


@lru_cache(maxsize=4)
def _cylinder_roots(count: int) -> np.ndarray:
    return _derivative_roots(lambda x: special.jvp(1, x), count)


def gpa_adc_sphere(
    radius: float, diffusivity: float, delta: float, Delta: float, nroot: int = 300
) -> float:
    """Murday-Cotts GPA ADC of a sphere for a PGSE (µm²/µs)."""
    x = _sphere_roots(nroot)
    w = 2.0 * radius**2 / (x**2 * (x**2 - 2.0))
    lam = diffusivity * (x / radius) ** 2
    return float(np.sum(w * j_pgse(lam, delta, Delta)))


def gpa_adc_cylinder(
    radius: float, diffusivity: float, delta: float, Delta: float, nroot: int = 300
) -> float:
    """Neuman GPA ADC of a cylinder, gradient ⊥ axis, for a PGSE (µm²/µs)."""
    x = _cylinder_roots(nroot)
    w = 2.0 * radius**2 / (x**2 * (x**2 - 1.0))
    lam = diffusivity * (x / radius) ** 2
    return float(np.sum(w * j_pgse(lam, delta, Delta)))
