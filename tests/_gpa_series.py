"""Independent Gaussian-phase-approximation (GPA) ADC series, for test references only.

For restricted diffusion in a domain with Neumann walls, the GPA (= HADC) apparent diffusion
coefficient along u is

    ADC = Σ_n w_n · j(λ_n),      λ_n = D α_n²,

with the Laplace eigenvalues and weights w_n = (∫ (u·x) φ_n)² / |Ω| (normalized φ_n):

* slab of width L along u: α_n = nπ/L, w_n = 8 L² / (nπ)⁴ for odd n, 0 for even n;
* sphere of radius R (Murday & Cotts 1968): α_m R = roots of j₁'(x) = 0,
  w_m = 2 R² / (x_m² (x_m² − 2));
* cylinder of radius R, u ⊥ axis (Neuman 1974): α_m R = roots of J₁'(x) = 0,
  w_m = 2 R² / (x_m² (x_m² − 1));

and j(λ) = λ ∫₀^TE F(t) ∫₀ᵗ e^{−λ(t−s)} f(s) ds dt / ∫₀^TE F². For a PGSE (δ, Δ) this is
j(λ) = [2λδ − 2 + 2e^{−λδ} + 2e^{−λΔ} − e^{−λ(Δ−δ)} − e^{−λ(Δ+δ)}] / (λ² δ² (Δ − δ/3)).
For a cosine OGSE :func:`j_cos_ogse` evaluates the definition semi-analytically with SciPy
quadrature (no code of the package is used).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.special import jvp, spherical_jn

_NROOT = 120


def _roots(fun: Callable[[float], float], n: int, step: float = 0.05) -> np.ndarray:
    out = []
    x = 1e-3
    while len(out) < n:
        if fun(x) * fun(x + step) < 0:
            out.append(brentq(fun, x, x + step, xtol=1e-15))
        x += step
    return np.array(out)


SPHERE_ROOTS = _roots(lambda x: spherical_jn(1, x, derivative=True), _NROOT)
CYLINDER_ROOTS = _roots(lambda x: jvp(1, x), _NROOT)


def j_pgse(lam: np.ndarray, delta: float, Delta: float) -> np.ndarray:
    """j(λ) of a PGSE in closed form (λ > 0, 1/µs)."""
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


def j_cos_ogse(lam: np.ndarray, delta: float, Delta: float, nperiod: int) -> np.ndarray:
    """j(λ) of a cosine OGSE (f = cos(ωt) on [0, δ), −cos(ω(t−Δ)) on [Δ, Δ+δ), ω = 2πn/δ).

    The inner integral y(t) = ∫₀ᵗ e^{−λ(t−s)} f(s) ds is written in closed form on each piece
    (y = [λ cos ωτ + ω sin ωτ − λ e^{−λτ}]/(λ² + ω²) for a cosine lobe starting at rest,
    plus the decaying carry-over), then j = λ ∫ F y dt / ∫ F² by adaptive quadrature.
    """
    w = 2 * np.pi * nperiod / delta
    te = Delta + delta

    def big_f(t):
        if t < delta:
            return np.sin(w * t) / w
        if t < Delta:
            return 0.0
        return -np.sin(w * (t - Delta)) / w

    def lobe(tau, lm):
        return (lm * np.cos(w * tau) + w * np.sin(w * tau) - lm * np.exp(-lm * tau)) / (
            lm**2 + w**2
        )

    int_f2 = quad(lambda t: big_f(t) ** 2, 0, delta, limit=400, epsabs=0, epsrel=1e-13)[0]
    int_f2 += quad(lambda t: big_f(t) ** 2, Delta, te, limit=400, epsabs=0, epsrel=1e-13)[0]
    out = []
    for lm in np.atleast_1d(np.asarray(lam, dtype=np.float64)):
        y_delta = lobe(delta, lm)
        y_Delta = y_delta * np.exp(-lm * (Delta - delta))

        def y(t, lm=lm, y_Delta=y_Delta):
            if t < delta:
                return lobe(t, lm)
            tau = t - Delta
            return y_Delta * np.exp(-lm * tau) - lobe(tau, lm)

        opts = dict(limit=400, epsabs=0, epsrel=1e-10)
        val = quad(lambda t: big_f(t) * y(t), 0, delta, **opts)[0]
        val += quad(lambda t: big_f(t) * y(t), Delta, te, **opts)[0]
        out.append(lm * val / int_f2)
    return np.array(out)


def _series(lam: np.ndarray, w: np.ndarray, j: Callable[[np.ndarray], np.ndarray]) -> float:
    return float(np.sum(w * j(lam)))


def gpa_adc_slab(
    width: float, D: float, j: Callable[[np.ndarray], np.ndarray], nterm: int = 400
) -> float:
    """GPA ADC across a slab of width ``width`` (µm), µm²/µs."""
    n = np.arange(1, 2 * nterm, 2, dtype=np.float64)
    return _series(D * (n * np.pi / width) ** 2, 8 * width**2 / (n * np.pi) ** 4, j)


def gpa_adc_sphere(
    radius: float, D: float, j: Callable[[np.ndarray], np.ndarray], nroot: int = _NROOT
) -> float:
    """GPA ADC in a sphere of radius ``radius`` (µm), µm²/µs (Murday-Cotts)."""
    x = SPHERE_ROOTS[:nroot]
    return _series(D * (x / radius) ** 2, 2 * radius**2 / (x**2 * (x**2 - 2)), j)


def gpa_adc_cylinder(
    radius: float, D: float, j: Callable[[np.ndarray], np.ndarray], nroot: int = _NROOT
) -> float:
    """GPA ADC perpendicular to a cylinder of radius ``radius`` (µm), µm²/µs (Neuman)."""
    x = CYLINDER_ROOTS[:nroot]
    return _series(D * (x / radius) ** 2, 2 * radius**2 / (x**2 * (x**2 - 1)), j)
