r"""Gaussian-phase-approximation (GPA) ADC of PGSE in a sphere, a cylinder and a slab.

Private helper of :mod:`spindoctor_torch.solvers.analytical` (where the functions are public).

In the Gaussian phase approximation (the second cumulant of the phase, exact as b -> 0) the
PGSE signal of a closed domain with reflecting walls is ``ln E = -b ADC`` with

.. math::

   \mathrm{ADC} = \frac{1}{2\,\delta^2(\Delta-\delta/3)} \sum_k B_k^2\, I(\lambda_k), \qquad
   I(\lambda) = \iint f(t_1) f(t_2)\, e^{-\lambda|t_1-t_2|}\,dt_1\,dt_2
              = \frac{4}{\lambda^2}\left[\lambda\delta - 1 + e^{-\lambda\delta}
                 - e^{-\lambda\Delta}(\cosh\lambda\delta - 1)\right],

where ``lambda_k`` are the Neumann eigenvalues of the Laplacian (times D) whose eigenfunctions
``u_k`` carry a first moment along the gradient, and ``B_k = |Omega|^{-1/2} \int x u_k``:

* sphere (Murday & Cotts 1968): ``lambda_k = D x_k^2 / R^2``, ``x_k`` the zeros of ``j_1'``,
  ``B_k^2 = 2 R^2 / (x_k^2 (x_k^2 - 2))``;
* cylinder, gradient perpendicular to the axis (Neuman 1974): ``x_k`` the zeros of ``J_1'``,
  ``B_k^2 = 2 R^2 / (x_k^2 (x_k^2 - 1))``;
* slab of thickness L, gradient normal to the plates: odd ``k``, ``lambda_k = D (k pi / L)^2``,
  ``B_k^2 = 8 L^2 / (k pi)^4``.

``sum_k B_k^2`` is the variance of the position (R^2/5, R^2/4, L^2/12) and the free limit
``sum_k B_k^2 lambda_k = D`` holds term by term as ``lambda delta -> 0``. The bracket in I is
evaluated without cancellation: for ``x = lambda delta < 1`` as
``-expm1(-lambda Delta) 2 sinh^2(x/2) - (sinh x - x)`` (the last term by its series), else
directly.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy import optimize, special

from ..units import check_diffusivity, check_length, check_time

__all__ = ["gpa_adc_cylinder", "gpa_adc_slab", "gpa_adc_sphere"]

_NTERM = 1000  # series terms: the tail is O(nterm**-5) relative


@functools.lru_cache(maxsize=16)
def _sphere_roots(nterm: int) -> np.ndarray:
    """First ``nterm`` positive zeros of ``j_1'(x)``, i.e. of ``(x^2 - 2) sin x + 2 x cos x``.

    The k-th zero lies in ``((k - 1/2) pi, k pi)`` (the function changes sign there).
    """

    def h(x: float) -> float:
        return (x * x - 2.0) * math.sin(x) + 2.0 * x * math.cos(x)

    k = np.arange(1, nterm + 1)
    return np.array(
        [optimize.brentq(h, (kk - 0.5) * math.pi, kk * math.pi, xtol=1e-15) for kk in k]
    )


@functools.lru_cache(maxsize=16)
def _cylinder_roots(nterm: int) -> np.ndarray:
    """First ``nterm`` positive zeros of ``J_1'(x)``."""
    return special.jnp_zeros(1, nterm)


def _sinh_minus_x(x: torch.Tensor) -> torch.Tensor:
    """``sinh(x) - x`` for ``0 <= x <= 1`` by its Taylor series (12 terms: error < 1e-30)."""
    x2 = x * x
    term = x * x2 / 6.0
    out = term
    for k in range(2, 14):
        term = term * x2 / ((2 * k) * (2 * k + 1))
        out = out + term
    return out


def _pgse_bracket(lam: torch.Tensor, delta: torch.Tensor, Delta: torch.Tensor) -> torch.Tensor:
    """``lambda delta - 1 + exp(-lambda delta) - exp(-lambda Delta)(cosh(lambda delta) - 1)``."""
    x = lam * delta
    small = x < 1.0
    xs = torch.where(small, x, torch.zeros_like(x))
    ys = torch.where(small, lam * Delta, torch.zeros_like(x))
    low = -torch.expm1(-ys) * 2.0 * torch.sinh(0.5 * xs) ** 2 - _sinh_minus_x(xs)
    xl = torch.where(small, torch.ones_like(x), x)
    yl = torch.where(small, torch.ones_like(x), lam * Delta)
    high = (
        xl
        - 1.0
        + torch.exp(-xl)
        - 0.5 * (torch.exp(-(yl - xl)) + torch.exp(-(yl + xl)))
        + torch.exp(-yl)
    )
    return torch.where(small, low, high)


def _as_tensor(x: float | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.float64)
    return torch.as_tensor(x, dtype=torch.float64)


def _gpa_adc(
    weights: np.ndarray,
    rates: np.ndarray,
    size: torch.Tensor,
    diffusivity: torch.Tensor,
    delta: torch.Tensor,
    Delta: torch.Tensor,
) -> torch.Tensor:
    """``sum_k B_k^2 I(lambda_k) / (2 delta^2 (Delta - delta/3))`` with
    ``B_k^2 = weights_k size^2`` and ``lambda_k = rates_k D / size^2`` (broadcast)."""
    size, diffusivity, delta, Delta = torch.broadcast_tensors(size, diffusivity, delta, Delta)
    ref = size
    w = torch.as_tensor(weights, dtype=ref.dtype, device=ref.device)
    c = torch.as_tensor(rates, dtype=ref.dtype, device=ref.device)
    s, d, dl, dL = (v[..., None] for v in (size, diffusivity, delta, Delta))
    lam = c * d / s**2
    bracket = _pgse_bracket(lam, dl, dL)
    # B^2 I / 2 = weights size^2 * 2 bracket / lambda^2
    terms = w * s**2 * 2.0 * bracket / lam**2
    return terms.sum(-1) / (delta**2 * (Delta - delta / 3.0))


def _check(radius, diffusivity, delta, Delta, length_name: str) -> tuple[torch.Tensor, ...]:
    r, d, dl, dL = (_as_tensor(v) for v in (radius, diffusivity, delta, Delta))
    check_length(r.detach(), length_name)
    check_diffusivity(d.detach(), "diffusivity")
    if bool((d.detach() <= 0).any()):
        raise ValueError(f"diffusivity must be > 0 µm²/µs, got {d.detach().min().item()!r}")
    check_time(dl.detach(), "delta", allow_zero=False)
    check_time(dL.detach(), "Delta", allow_zero=False)
    if bool((dl.detach() > dL.detach()).any()):
        raise ValueError("delta must be <= Delta")
    return r, d, dl, dL


def gpa_adc_sphere(
    radius: float | torch.Tensor,
    diffusivity: float | torch.Tensor,
    delta: float | torch.Tensor,
    Delta: float | torch.Tensor,
    *,
    nterm: int = _NTERM,
) -> torch.Tensor:
    """PGSE ADC of a reflecting sphere in the Gaussian phase approximation (Murday-Cotts).

    Parameters
    ----------
    radius : float or tensor, µm
    diffusivity : float or tensor, µm²/µs
    delta, Delta : float or tensor, µs
        Pulse duration and pulse separation of the PGSE, ``delta <= Delta``.
    nterm : int, default 1000
        Terms of the series (relative truncation error ~ nterm**-5).

    Returns
    -------
    tensor, µm²/µs
        The broadcast shape of the inputs; differentiable in every input. ``-ln E / b`` of the
        exact signal tends to this value as ``b -> 0``.

    References
    ----------
    J. S. Murday, R. M. Cotts, J. Chem. Phys. 48 (1968) 4938, doi:10.1063/1.1668160.
    """
    r, d, dl, dL = _check(radius, diffusivity, delta, Delta, "radius")
    x = _sphere_roots(int(nterm))
    return _gpa_adc(2.0 / (x**2 * (x**2 - 2.0)), x**2, r, d, dl, dL)


def gpa_adc_cylinder(
    radius: float | torch.Tensor,
    diffusivity: float | torch.Tensor,
    delta: float | torch.Tensor,
    Delta: float | torch.Tensor,
    *,
    nterm: int = _NTERM,
) -> torch.Tensor:
    """PGSE ADC perpendicular to a reflecting cylinder, Gaussian phase approximation (Neuman).

    Parameters and returns as :func:`gpa_adc_sphere` (``radius`` of the cylinder, µm).

    References
    ----------
    C. H. Neuman, J. Chem. Phys. 60 (1974) 4508, doi:10.1063/1.1680931.
    """
    r, d, dl, dL = _check(radius, diffusivity, delta, Delta, "radius")
    x = _cylinder_roots(int(nterm))
    return _gpa_adc(2.0 / (x**2 * (x**2 - 1.0)), x**2, r, d, dl, dL)


def gpa_adc_slab(
    thickness: float | torch.Tensor,
    diffusivity: float | torch.Tensor,
    delta: float | torch.Tensor,
    Delta: float | torch.Tensor,
    *,
    nterm: int = _NTERM,
) -> torch.Tensor:
    """PGSE ADC normal to two reflecting plates a distance ``thickness`` apart (GPA).

    Parameters and returns as :func:`gpa_adc_sphere` (``thickness`` L of the slab, µm; the
    series runs over the first ``nterm`` odd cosine modes).

    References
    ----------
    C. H. Neuman, J. Chem. Phys. 60 (1974) 4508, doi:10.1063/1.1680931.
    """
    ell, d, dl, dL = _check(thickness, diffusivity, delta, Delta, "thickness")
    kpi = (2.0 * np.arange(nterm) + 1.0) * math.pi
    return _gpa_adc(8.0 / kpi**4, kpi**2, ell, d, dl, dL)
