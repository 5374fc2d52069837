"""Independent references for the Bloch-Torrey solver tests (no spindoctor_torch code).

* :func:`interval_signal`: the exact 1-D Bloch-Torrey signal of a Neumann interval [0, L] by the
  cosine-series matrix formalism (eigenfunctions cos(nπx/L), eigenvalues D(nπ/L)², first-moment
  matrix X_mn = ∫x φ_m φ_n in closed form), exact in time for piecewise-constant profiles
  (matrix exponentials), and integrated by DOP853 at tight tolerances for any other profile.
* :func:`box_signal`: a box [0,Lx]×[0,Ly]×[0,Lz] separates: S/S0 = Π_d S_1D(L_d, q·u_d).
* :func:`two_interval_signal`: two intervals [0, L1] ∪ [L1, L1+L2] with diffusivities D1, D2
  and a permeable membrane κ (flux D∂u/∂n = κ(u_other − u_self)), fine 1-D P1 finite elements in
  space (the membrane node doubled), exact in time (matrix exponentials).
* :func:`gpa_adc_sphere`, :func:`gpa_adc_cylinder`: the Gaussian-phase (Murday-Cotts /
  Neuman, van Gelderen) ADC of PGSE in a sphere / infinite cylinder, exact as b → 0.

Profiles are given as pieces ``[(t0, t1, f), ...]`` (µs, dimensionless), units as the package:
µm, µs, µm²/µs, q in rad/(µs·µm).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.integrate import solve_ivp
from scipy.linalg import expm
from scipy.optimize import brentq
from scipy.special import jvp, spherical_jn

Pieces = Sequence[tuple[float, float, float]]


def pgse_pieces(delta: float, Delta: float) -> list[tuple[float, float, float]]:
    """PGSE: +1 on [0, δ], 0 on [δ, Δ], −1 on [Δ, Δ+δ]."""
    out = [(0.0, delta, 1.0)]
    if Delta > delta:
        out.append((delta, Delta, 0.0))
    out.append((Delta, Delta + delta, -1.0))
    return out


def _cosine_basis(length: float, nmodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (π n / L)² and the first-moment matrix X (L-normalized basis)."""
    n = np.arange(nmodes)
    lam = (np.pi * n / length) ** 2
    m_, n_ = np.meshgrid(n, n, indexing="ij")
    X = np.zeros((nmodes, nmodes))
    # φ_0 = 1/√L, φ_n = √(2/L) cos(nπx/L).
    X[0, 0] = length / 2
    diag = n[1:]
    X[diag, diag] = length / 2
    k = n[1:]
    X[0, 1:] = math.sqrt(2) * length / (np.pi * k) ** 2 * ((-1.0) ** k - 1)
    X[1:, 0] = X[0, 1:]
    off = (m_ > 0) & (n_ > 0) & (m_ != n_)
    d, s = (m_ - n_)[off], (m_ + n_)[off]
    X[off] = length / np.pi**2 * (((-1.0) ** d - 1) / d**2 + ((-1.0) ** s - 1) / s**2)
    return lam, X


def interval_signal(
    length: float,
    diffusivity: float,
    q: float,
    pieces: Pieces | None = None,
    profile: Callable[[float], float] | None = None,
    breakpoints: Sequence[float] = (),
    echotime: float | None = None,
    nmodes: int = 80,
) -> complex:
    """Normalized signal ∫u(TE)/L of ``u_t = D u_xx − i q f(t) x u`` on [0, L], u_x = 0 at the
    ends, u(0) = 1. Either ``pieces`` (exact exponentials) or ``profile`` f(t) with its
    ``breakpoints`` and ``echotime`` (DOP853, rtol 1e-11)."""
    lam, X = _cosine_basis(length, nmodes)
    Lam = np.diag(diffusivity * lam)
    c = np.zeros(nmodes, dtype=complex)
    c[0] = 1.0
    if pieces is not None:
        for t0, t1, f in pieces:
            c = expm(-(t1 - t0) * (Lam + 1j * q * f * X)) @ c
        return complex(c[0])
    assert profile is not None and echotime is not None
    times = [0.0, *sorted(breakpoints), echotime]
    for t0, t1 in zip(times[:-1], times[1:]):

        def rhs(t, y):
            return -(Lam @ y + 1j * q * profile(t) * (X @ y))

        sol = solve_ivp(rhs, (t0, t1), c, method="DOP853", rtol=1e-11, atol=1e-13)
        c = sol.y[:, -1]
    return complex(c[0])


def box_signal(
    sides: Sequence[float],
    diffusivity: float,
    q: float,
    direction: Sequence[float],
    pieces: Pieces | None = None,
    **profile_kwargs,
) -> complex:
    """Normalized signal of the box [0, Lx]×[0, Ly]×[0, Lz] (product of 1-D factors)."""
    u = np.asarray(direction, dtype=float)
    u = u / np.linalg.norm(u)
    out = 1.0 + 0j
    for length, ud in zip(sides, u):
        if ud != 0.0:
            out *= interval_signal(length, diffusivity, q * ud, pieces, **profile_kwargs)
    return out


def _p1_interval(x: np.ndarray, diffusivity: float):
    """P1 mass, stiffness and first-moment matrices on the nodes x (dense)."""
    n = x.size
    M, K, X = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    for e in range(n - 1):
        a, b = x[e], x[e + 1]
        h = b - a
        idx = np.ix_([e, e + 1], [e, e + 1])
        M[idx] += h / 6 * np.array([[2, 1], [1, 2]])
        K[idx] += diffusivity / h * np.array([[1, -1], [-1, 1]])
        # ∫ x φ_k φ_l, exact (x linear): h/12 [[3a+b, a+b], [a+b, a+3b]]
        X[idx] += h / 12 * np.array([[3 * a + b, a + b], [a + b, a + 3 * b]])
    return M, K, X


def two_interval_signal(
    lengths: tuple[float, float],
    diffusivities: tuple[float, float],
    kappa: float,
    q: float,
    pieces: Pieces,
    nelem: int = 200,
) -> tuple[complex, complex]:
    """Normalized signals (∫_Ω1 u, ∫_Ω2 u) / (L1 + L2) of two intervals with a membrane of
    permeability κ at x = L1 (equal densities: D1 u1' = D2 u2' = κ(u2 − u1) at the membrane),
    Neumann outer ends, u(0) = 1; P1 elements (``nelem`` per interval), exact in time."""
    l1, l2 = lengths
    x1 = np.linspace(0.0, l1, nelem + 1)
    x2 = np.linspace(l1, l1 + l2, nelem + 1)
    M1, K1, X1 = _p1_interval(x1, diffusivities[0])
    M2, K2, X2 = _p1_interval(x2, diffusivities[1])
    n1, n = x1.size, x1.size + x2.size
    M, K, X = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    for blk, (Mb, Kb, Xb) in zip((slice(0, n1), slice(n1, n)), ((M1, K1, X1), (M2, K2, X2))):
        M[blk, blk], K[blk, blk], X[blk, blk] = Mb, Kb, Xb
    i, j = n1 - 1, n1  # the two membrane nodes
    K[i, i] += kappa
    K[j, j] += kappa
    K[i, j] -= kappa
    K[j, i] -= kappa
    Minv = np.linalg.inv(M)
    u = np.ones(n, dtype=complex)
    for t0, t1, f in pieces:
        u = expm(-(t1 - t0) * (Minv @ (K + 1j * q * f * X))) @ u
    w = M @ np.ones(n)
    total = l1 + l2
    return complex(w[:n1] @ u[:n1]) / total, complex(w[n1:] @ u[n1:]) / total


def _roots(fun: Callable[[float], float], count: int) -> np.ndarray:
    """First ``count`` positive roots of ``fun`` by scanning and bisection."""
    roots = []
    x, step = 1e-3, 1e-2
    fx = fun(x)
    while len(roots) < count:
        y = x + step
        fy = fun(y)
        if fx * fy < 0:
            roots.append(brentq(fun, x, y, xtol=1e-14))
        x, fx = y, fy
    return np.asarray(roots)


def _gpa_adc(alpha_r: np.ndarray, shape: float, radius, diffusivity, delta, Delta) -> float:
    """ADC = −ln E / b of the Gaussian-phase series (Murday & Cotts 1968; Neuman 1974)."""
    a2 = (alpha_r / radius) ** 2
    ad = a2 * diffusivity
    bracket = (
        2 * delta / ad
        - (
            2
            + np.exp(-ad * (Delta - delta))
            - 2 * np.exp(-ad * delta)
            - 2 * np.exp(-ad * Delta)
            + np.exp(-ad * (Delta + delta))
        )
        / ad**2
    )
    lnE_over_q2 = -2 * np.sum(bracket / (a2 * (alpha_r**2 - shape)))
    return float(-lnE_over_q2 / (delta**2 * (Delta - delta / 3)))


def gpa_adc_sphere(radius, diffusivity, delta, Delta, nroots: int = 60) -> float:
    """Murday-Cotts ADC (µm²/µs) of a sphere, PGSE(δ, Δ); roots of j1'(x) = 0."""
    alpha_r = _roots(lambda x: spherical_jn(1, x, derivative=True), nroots)
    return _gpa_adc(alpha_r, 2.0, radius, diffusivity, delta, Delta)


def gpa_adc_cylinder(radius, diffusivity, delta, Delta, nroots: int = 60) -> float:
    """Neuman / van Gelderen ADC (µm²/µs) of an infinite cylinder, gradient perpendicular to
    the axis, PGSE(δ, Δ); roots of J1'(x) = 0."""
    alpha_r = _roots(lambda x: jvp(1, x), nroots)
    return _gpa_adc(alpha_r, 1.0, radius, diffusivity, delta, Delta)
