r"""ADC, kurtosis and diffusion-tensor fits (SpinDoctor ``fit_signal`` and ``fit_tensor``).

* :func:`fit_signal`: SpinDoctor's adaptive polynomial fit (MATLAB ``process_signal_poly``) of
  ``log|S|`` against b, ``log|S| ≈ c₀ + c₁ b + c₂ b² + …``, raising the degree from 1 until the
  fit is converged and stable; ``ADC = −c₁``, ``kurtosis = 6 c₂ / ADC²``, ``S0 = exp(c₀)``
  (the cumulant expansion ``log S = log S0 − b·ADC + b²·ADC²·K/6 + O(b³)``).
* :func:`fit_adc_small_b`: the straight-line (monoexponential) fit.
* :func:`fit_tensor`: least squares of the six unique components of a symmetric tensor on the
  directional ADCs, ``ADC(u) = uᵀ D u``.

All fits are vectorized over any number of trailing (batch) dimensions and differentiable with
respect to the signal (and the b-values).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..errors import SpinDoctorWarning

__all__ = ["SignalFit", "fit_adc_small_b", "fit_signal", "fit_tensor"]

# SpinDoctor's stopping criteria (process_signal_poly.m)
_RESIDUAL_RTOL = 1e-3  # max |poly(b) − log S| ≤ 1e-3 · max |log S|
_ADC_RTOL = 0.05  # |ADC − ADC_old| ≤ 5 % |ADC_old| ...
_ADC_ATOL = 1e-6  # ... or ≤ 1e-6 µm²/µs
_KURTOSIS_TOL = 0.15  # K_old ≤ 0.15, or |K − K_old| < 0.15 |K_old|, or < 0.15


@dataclass
class SignalFit:
    """Result of :func:`fit_signal`; every field has the signal's shape without the b axis.

    Attributes
    ----------
    adc : tensor, µm²/µs (= mm²/s, the inverse unit of b)
    kurtosis : tensor, dimensionless (0 when the accepted degree is 1)
    S0 : tensor, unit of the signal
        exp(c₀), the extrapolated b = 0 magnitude.
    degree : int64 tensor
        Polynomial degree accepted.
    converged : bool tensor
        False where SpinDoctor's criteria were never met (the highest degree is returned);
        True for two b-values (the straight line through both).
    """

    adc: torch.Tensor
    kurtosis: torch.Tensor
    S0: torch.Tensor
    degree: torch.Tensor
    converged: torch.Tensor


def _prepare(bvalues, signal, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate; return (b, log|S|) with the b axis moved last and broadcast together."""
    if not isinstance(signal, torch.Tensor):
        signal = torch.as_tensor(signal)
    if not (signal.is_floating_point() or signal.is_complex()):
        signal = signal.to(torch.float64)
    if signal.ndim == 0:
        raise ValueError("signal must have a b-value axis, got a scalar")
    axis = axis % signal.ndim
    namp = signal.shape[axis]
    real_dtype = signal.real.dtype if signal.is_complex() else signal.dtype
    if not isinstance(bvalues, torch.Tensor):
        bvalues = torch.as_tensor(bvalues, dtype=real_dtype)
    if bvalues.is_complex():
        raise TypeError("bvalues must be real, got a complex tensor")
    b = bvalues.to(dtype=real_dtype, device=signal.device)
    if b.ndim == 1:
        if b.shape[0] != namp:
            raise ValueError(
                f"bvalues has {b.shape[0]} entries, signal has {namp} along axis {axis}"
            )
        shape = [1] * signal.ndim
        shape[axis] = namp
        b = b.reshape(shape)
    try:
        b = torch.broadcast_to(b, signal.shape)
    except RuntimeError as err:
        raise ValueError(
            f"bvalues of shape {tuple(bvalues.shape)} do not broadcast to the signal shape "
            f"{tuple(signal.shape)}"
        ) from err
    if namp < 2:
        raise ValueError(f"cannot fit an ADC from {namp} b-value; give at least 2")
    if not bool(torch.isfinite(b).all()):
        raise ValueError("bvalues must be finite")
    mag = signal.abs()
    if not bool(torch.isfinite(mag).all()):
        raise ValueError("signal contains NaN or infinite values")
    if bool((mag == 0).any()):
        raise ValueError("signal contains zeros: log|S| is undefined there")
    b = b.movedim(axis, -1)
    bs = torch.sort(b.detach(), dim=-1).values
    if bool((bs[..., 1:] == bs[..., :-1]).any()):
        raise ValueError("bvalues must be distinct along the b axis")
    return b, torch.log(mag).movedim(axis, -1)


def _polyfit(b: torch.Tensor, y: torch.Tensor, degree: int) -> torch.Tensor:
    """Least-squares coefficients (..., degree+1), lowest power first, in units of b."""
    scale = b.detach().abs().amax(dim=-1, keepdim=True)
    x = b / scale
    powers = torch.arange(degree + 1, device=b.device)
    vander = x[..., None] ** powers  # (..., namp, degree+1)
    q, r = torch.linalg.qr(vander)
    rhs = q.transpose(-1, -2) @ y[..., None]
    coef = torch.linalg.solve_triangular(r, rhs, upper=True)[..., 0]
    return coef / scale**powers


def fit_signal(bvalues, signal, *, axis: int = 0) -> SignalFit:
    """Adaptive-degree polynomial fit of log|S| against b (SpinDoctor ``fit_signal``).

    Parameters
    ----------
    bvalues : (namplitude,) tensor, or a tensor broadcastable to ``signal``; s/mm² (µs/µm²)
        Distinct b-values along ``axis``.
    signal : tensor (real or complex), b-values along ``axis``, any trailing dimensions
        Signals (any unit), e.g. ``Result.signal_allcmpts`` [namplitude, nsequence,
        ndirection] with ``bvalues = experiment.bvalues[:, :, None]``.
    axis : int
        The b-value axis of ``signal`` (default 0).

    Returns
    -------
    SignalFit
        ``adc`` (µm²/µs), ``kurtosis``, ``S0``, ``degree``, ``converged``, each of the signal's
        shape without ``axis``.

    Raises
    ------
    ValueError
        Fewer than 2 b-values, repeated b-values, shapes that do not match, zero / NaN signals.

    Warns
    -----
    SpinDoctorWarning
        With only two b-values (a straight line through both: make sure they are small), and
        where the criteria are never met ("kurtosis may not be accurate").

    Notes
    -----
    Degrees 1, 2, …, namplitude−1 are fitted in turn; degree p is accepted when (SpinDoctor's
    criteria, with the previous degree's ADC and kurtosis as "old" values, and ADC_old =
    K_old = 1 before degree 1, so that degree 1 is accepted only for two b-values)

    * ``max |poly_p(b) − log|S|| ≤ 1e-3 · max |log|S||``,
    * ``|ADC − ADC_old| ≤ 1e-6`` µm²/µs or ``≤ 0.05 |ADC_old|``,
    * ``K_old ≤ 0.15`` or ``|K − K_old| < 0.15 |K_old|`` or ``|K − K_old| < 0.15``.

    SpinDoctor fits ``log(real(S))``; the magnitude is used here (identical for the real,
    positive signals of symmetric geometries, and defined for any complex signal).
    """
    b, y = _prepare(bvalues, signal, axis)
    namp = b.shape[-1]
    if namp == 2:
        warnings.warn(
            "fitting the ADC from two b-values: make sure both are small",
            SpinDoctorWarning,
            stacklevel=2,
        )
    tol = _RESIDUAL_RTOL * y.detach().abs().amax(dim=-1)
    adcs, kurts, s0s, oks = [], [], [], []
    adc_old = torch.ones_like(tol)
    kur_old = torch.ones_like(tol)
    for degree in range(1, namp):
        coef = _polyfit(b, y, degree)
        adc = -coef[..., 1]
        kur = 6.0 * coef[..., 2] / adc**2 if degree >= 2 else torch.zeros_like(adc)
        powers = torch.arange(degree + 1, device=b.device)
        resid = ((b.detach()[..., None] ** powers) @ coef.detach()[..., None])[..., 0]
        resid = (resid - y.detach()).abs().amax(dim=-1)
        a, k = adc.detach(), kur.detach()
        dadc = (a - adc_old).abs()
        dkur = (k - kur_old).abs()
        ok = (
            (resid <= tol)
            & ((dadc <= _ADC_ATOL) | (dadc <= _ADC_RTOL * adc_old.abs()))
            & (
                (kur_old <= _KURTOSIS_TOL)
                | (dkur < _KURTOSIS_TOL * kur_old.abs())
                | (dkur < _KURTOSIS_TOL)
            )
        )
        adcs.append(adc)
        kurts.append(kur)
        s0s.append(torch.exp(coef[..., 0]))
        oks.append(ok)
        adc_old, kur_old = a, k
    ok = torch.stack(oks)  # (ndegree, ...)
    if namp == 2:  # the straight line through both points is the answer (warned above)
        ok = torch.ones_like(ok)
    converged = ok.any(dim=0)
    first = torch.where(converged, ok.to(torch.int64).argmax(dim=0), len(oks) - 1)
    if not bool(converged.all()):
        warnings.warn(
            f"kurtosis may not be accurate: the polynomial fit did not converge for "
            f"{int((~converged).sum())} of {converged.numel()} signals (highest degree used)",
            SpinDoctorWarning,
            stacklevel=2,
        )

    def pick(values: list[torch.Tensor]) -> torch.Tensor:
        return torch.gather(torch.stack(values), 0, first[None])[0]

    return SignalFit(
        adc=pick(adcs),
        kurtosis=pick(kurts),
        S0=pick(s0s),
        degree=first + 1,
        converged=converged,
    )


def fit_adc_small_b(bvalues, signal, *, axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Monoexponential least-squares fit ``log|S| ≈ log S0 − b·ADC`` (for small b-values).

    Parameters
    ----------
    bvalues, signal, axis
        As in :func:`fit_signal`.

    Returns
    -------
    adc : tensor, µm²/µs
    S0 : tensor, unit of the signal
    """
    b, y = _prepare(bvalues, signal, axis)
    coef = _polyfit(b, y, 1)
    return -coef[..., 1], torch.exp(coef[..., 0])


def fit_tensor(directions, adc) -> torch.Tensor:
    """Symmetric tensor D with ``uᵀ D u ≈ adc(u)`` in the least-squares sense.

    Parameters
    ----------
    directions : (ndirection, 3) tensor
        Gradient directions (normalized here), at least 6 and not all in a degenerate set
        (the 6 × ndirection design [u_x², u_y², u_z², 2u_xu_y, 2u_xu_z, 2u_yu_z] must have rank 6).
    adc : (..., ndirection) tensor, µm²/µs
        Directional ADCs, any leading (batch) dimensions.

    Returns
    -------
    (..., 3, 3) tensor, µm²/µs

    Raises
    ------
    ValueError
        Wrong shapes, fewer than 6 directions, zero-length or degenerate directions, or
        non-finite values.

    Notes
    -----
    SpinDoctor's MATLAB ``fit_tensor`` uses the columns u_xu_y, … without the factor 2 and
    stores the fitted coefficient as the off-diagonal entry, which doubles the off-diagonal
    components; the correct design is used here (the two agree for diagonal tensors).
    """
    if not isinstance(adc, torch.Tensor):
        adc = torch.as_tensor(adc, dtype=torch.float64)
    if not adc.is_floating_point():
        adc = adc.to(torch.float64)
    u = torch.as_tensor(directions).to(dtype=adc.dtype, device=adc.device)
    if u.ndim != 2 or u.shape[1] != 3:
        raise ValueError(f"directions must have shape (ndirection, 3), got {tuple(u.shape)}")
    if adc.ndim == 0 or adc.shape[-1] != u.shape[0]:
        raise ValueError(
            f"adc must have shape (..., {u.shape[0]}) to match the directions, got "
            f"{tuple(adc.shape)}"
        )
    if u.shape[0] < 6:
        raise ValueError(f"fit_tensor needs at least 6 directions, got {u.shape[0]}")
    if not bool(torch.isfinite(u).all()) or not bool(torch.isfinite(adc).all()):
        raise ValueError("directions and adc must be finite")
    norm = torch.linalg.vector_norm(u, dim=1, keepdim=True)
    if bool((norm <= 1e-12).any()):
        raise ValueError("directions contain a zero vector")
    u = u / norm
    x, y, z = u.unbind(1)
    design = torch.stack([x * x, y * y, z * z, 2 * x * y, 2 * x * z, 2 * y * z], dim=1)
    sv = torch.linalg.svdvals(design.detach())
    if float(sv[-1]) <= 1e-10 * float(sv[0]):
        raise ValueError(
            "the directions do not determine a 3-D tensor (degenerate direction set, e.g. all "
            "in one plane or repeated); give at least 6 well-spread directions"
        )
    q, r = torch.linalg.qr(design)  # (ndir, 6), (6, 6)
    rhs = adc @ q  # (..., 6)
    comp = torch.linalg.solve_triangular(r, rhs[..., None], upper=True)[..., 0]
    dxx, dyy, dzz, dxy, dxz, dyz = comp.unbind(-1)
    rows = [
        torch.stack([dxx, dxy, dxz], -1),
        torch.stack([dxy, dyy, dyz], -1),
        torch.stack([dxz, dyz, dzz], -1),
    ]
    return torch.stack(rows, -2)
