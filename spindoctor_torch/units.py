"""Physical constants, b <-> q <-> g conversions and unit sanity checks.

spindoctor_torch uses SpinDoctor's unit system throughout:

=====================  ============================  =====================
quantity               unit                          typical value
=====================  ============================  =====================
length                 µm                            radius 1-10
time                   µs                            delta 2500-10000
diffusivity D          µm²/µs (= mm²/s)              0.002 (= 2e-9 m²/s)
permeability κ         µm/µs (= m/s)                 1e-5 ... 1e-3
T2                     µs                            inf, 20e3, 80e3
b-value                s/mm² (= µs/µm²)              0 ... 10000
q = γ·g                rad/(µs·µm)                   1e-5 ... 1e-3
gradient amplitude g   T/m                           0.01 ... 1
=====================  ============================  =====================

and ``b = q² · bvalue_no_q`` where ``bvalue_no_q = ∫₀^TE F(t)² dt`` (µs³) is a property of the
time profile (see :mod:`spindoctor_torch.sequences`).

The ``check_*`` helpers catch values that are obviously in other units (D = 2e-9 is m²/s,
delta = 0.01 is seconds) and raise a :class:`ValueError` naming the field, the value and the
likely fix; borderline values give a :class:`UnitWarning`. Every public entry point that takes a
physical quantity should call the matching check.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

__all__ = [
    "GAMMA",
    "GAMMA_MATLAB_MT",
    "UnitWarning",
    "b_from_q",
    "check_bvalue",
    "check_diffusivity",
    "check_gradient_amplitude",
    "check_length",
    "check_permeability",
    "check_time",
    "g_from_q",
    "g_matlab_from_q",
    "q_from_b",
    "q_from_g",
    "q_from_g_matlab",
]

GAMMA: float = 2.67513e-4
"""Gyromagnetic ratio of ¹H in rad/(µs·µm·T/m), i.e. 2.67513e8 rad s⁻¹ T⁻¹ with the µs and µm
factors folded in, so that ``q = GAMMA * g`` with g in T/m gives q in rad/(µs·µm).
This is SpinDoctor.jl's value."""

GAMMA_MATLAB_MT: float = 0.2675222005
"""SpinDoctor (MATLAB) gyromagnetic ratio in rad/(µs·mT). MATLAB takes g in **mT/m** and uses
``q = GAMMA_MATLAB_MT * g / 1e6``. Its last digits differ from :data:`GAMMA` (2.675222 vs
2.67513): use :func:`q_from_g_matlab` to reproduce MATLAB's q from its g-values exactly."""

T = TypeVar("T", float, torch.Tensor)


class UnitWarning(UserWarning):
    """A physical value is legal but unusual for its unit: it may be in other units."""


# --------------------------------------------------------------------------------------------
# b <-> q <-> g
# --------------------------------------------------------------------------------------------


def _values_for_check(value: object, name: str) -> torch.Tensor:
    """Detached float64 CPU view of ``value`` used only for validation."""
    if isinstance(value, bool | str | bytes):
        raise TypeError(f"{name} must be a number or a tensor, got {value!r}")
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must be real, got a complex tensor")
        return value.detach().to(device="cpu", dtype=torch.float64)
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number or a tensor, got {value!r}") from err


def _first(mask: torch.Tensor, values: torch.Tensor) -> float:
    return float(values[mask].reshape(-1)[0])


def _check_finite(v: torch.Tensor, name: str, *, allow_inf: bool = False) -> None:
    bad = torch.isnan(v) if allow_inf else ~torch.isfinite(v)
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite, got {_first(bad, v)!r}")


def _check_nonnegative(v: torch.Tensor, name: str) -> None:
    neg = v < 0
    if bool(neg.any()):
        raise ValueError(f"{name} must be >= 0, got {_first(neg, v)!r}")


def q_from_b(b: T, bvalue_no_q: float | torch.Tensor) -> T:
    """Gradient amplitude q from the b-value: ``q = sqrt(b / bvalue_no_q)``.

    Parameters
    ----------
    b : float or tensor, s/mm² (= µs/µm²)
        b-values, >= 0. Tensors keep their autograd graph.
    bvalue_no_q : float or tensor, µs³
        ``∫₀^TE F(t)² dt`` of the sequence (:attr:`Sequence.bvalue_no_q`), > 0; broadcasts
        against ``b``.

    Returns
    -------
    q : same type as ``b``, rad/(µs·µm)

    Notes
    -----
    ``dq/db = 1 / (2 q bvalue_no_q)`` is infinite at b = 0; optimize over q or g instead of b
    when zero amplitudes take part in the loss.
    """
    _check_positive_bnq(bvalue_no_q)
    vb = _values_for_check(b, "b")
    _check_finite(vb, "b")
    _check_nonnegative(vb, "b")
    if isinstance(b, torch.Tensor):
        return torch.sqrt(b / bvalue_no_q)
    if isinstance(bvalue_no_q, torch.Tensor):
        return torch.sqrt(b / bvalue_no_q)
    return math.sqrt(float(b) / float(bvalue_no_q))


def b_from_q(q: T, bvalue_no_q: float | torch.Tensor) -> T:
    """b-value from the gradient amplitude: ``b = bvalue_no_q * q²``.

    Parameters
    ----------
    q : float or tensor, rad/(µs·µm)
    bvalue_no_q : float or tensor, µs³, > 0

    Returns
    -------
    b : same type as ``q``, s/mm²
    """
    _check_positive_bnq(bvalue_no_q)
    _check_finite(_values_for_check(q, "q"), "q")
    if isinstance(q, torch.Tensor) or isinstance(bvalue_no_q, torch.Tensor):
        return bvalue_no_q * q**2
    return float(bvalue_no_q) * float(q) ** 2


def q_from_g(g: T) -> T:
    """``q = GAMMA * g``: g in T/m to q in rad/(µs·µm)."""
    _check_finite(_values_for_check(g, "g"), "g")
    return GAMMA * g


def g_from_q(q: T) -> T:
    """``g = q / GAMMA``: q in rad/(µs·µm) to g in T/m."""
    _check_finite(_values_for_check(q, "q"), "q")
    return q / GAMMA


def q_from_g_matlab(g_mt_per_m: T) -> T:
    """SpinDoctor MATLAB's conversion ``q = GAMMA_MATLAB_MT * g / 1e6`` with g in **mT/m**."""
    _check_finite(_values_for_check(g_mt_per_m, "g"), "g")
    return GAMMA_MATLAB_MT * g_mt_per_m / 1e6


def g_matlab_from_q(q: T) -> T:
    """Inverse of :func:`q_from_g_matlab`: g in **mT/m** from q in rad/(µs·µm)."""
    _check_finite(_values_for_check(q, "q"), "q")
    return q * 1e6 / GAMMA_MATLAB_MT


def _check_positive_bnq(bvalue_no_q: float | torch.Tensor) -> None:
    v = _values_for_check(bvalue_no_q, "bvalue_no_q")
    _check_finite(v, "bvalue_no_q")
    nonpos = v <= 0
    if bool(nonpos.any()):
        raise ValueError(
            f"bvalue_no_q must be > 0, got {_first(nonpos, v)!r} "
            "(a sequence with F(t) = 0 everywhere encodes no diffusion)"
        )


# --------------------------------------------------------------------------------------------
# unit sanity checks
# --------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _check_range(
    value: object,
    name: str,
    *,
    allow_zero: bool,
    allow_inf: bool,
    allow_negative: bool = False,
    too_small: list[tuple[float, Callable[[float], str], bool]],
    too_large: list[tuple[float, Callable[[float], str], bool]],
    scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Shared engine of the ``check_*`` helpers.

    ``too_small`` holds ``(threshold, message(x), is_error)`` rules applied to magnitudes
    ``0 < |x| < threshold`` (most severe first); ``too_large`` rules apply to ``|x| > threshold``.
    """
    v = _values_for_check(value, name)
    _check_finite(v, name, allow_inf=allow_inf)
    if not allow_negative:
        _check_nonnegative(v, name)
    if scale is not None:
        v = scale(v)
    mag = v.abs().reshape(-1)
    mag = mag[torch.isfinite(mag)]
    zero = mag == 0
    if not allow_zero and bool(zero.any()):
        raise ValueError(f"{name} must be nonzero, got 0.0")
    mag = mag[~zero]
    if mag.numel() == 0:
        return
    lo, hi = float(mag.min()), float(mag.max())
    for threshold, message, is_error in too_small:
        if lo < threshold:
            text = f"{name} = {_fmt(lo)} {message(lo)}"
            if is_error:
                raise ValueError(text)
            warnings.warn(text, UnitWarning, stacklevel=3)
            break
    for threshold, message, is_error in too_large:
        if hi > threshold:
            text = f"{name} = {_fmt(hi)} {message(hi)}"
            if is_error:
                raise ValueError(text)
            warnings.warn(text, UnitWarning, stacklevel=3)
            break


def check_diffusivity(value: object, name: str = "diffusivity") -> None:
    """Check that a diffusivity is in µm²/µs (typical 0.002 = 2e-9 m²/s = 2e-3 mm²/s).

    Parameters
    ----------
    value : float, array-like or tensor
        Scalars, per-compartment values, or (..., 3, 3) tensors (then the mean diagonal,
        trace/3, of each tensor is checked; off-diagonal entries may legitimately be tiny).
    name : str
        Field name used in the messages.

    Raises
    ------
    ValueError
        Non-finite or negative values; 0 < D < 1e-6 (looks like m²/s or cm²/s);
        D > 1 (looks like µm²/ms).
    """

    def trace_scale(v: torch.Tensor) -> torch.Tensor:
        if v.ndim >= 2 and tuple(v.shape[-2:]) == (3, 3):
            return torch.diagonal(v, dim1=-2, dim2=-1).mean(-1)
        return v

    v = _values_for_check(value, name)
    if v.ndim >= 2 and tuple(v.shape[-2:]) == (3, 3):
        _check_finite(v, name)
        diag = torch.diagonal(v, dim1=-2, dim2=-1)
        _check_nonnegative(diag, f"{name} (diagonal)")
        value = v
        allow_negative = True  # off-diagonals may be negative
    else:
        allow_negative = False
    _check_range(
        value,
        name,
        allow_zero=True,
        allow_inf=False,
        allow_negative=allow_negative,
        scale=trace_scale,
        too_small=[
            (
                1e-6,
                lambda x: (
                    "µm²/µs looks like m²/s (or cm²/s): spindoctor_torch uses µm²/µs; "
                    f"multiply m²/s by 1e6 (e.g. {_fmt(x)} m²/s -> {_fmt(x * 1e6)})"
                ),
                True,
            ),
            (
                1e-5,
                lambda x: "µm²/µs is unusually small (free water is 0.003); check the units",
                False,
            ),
        ],
        too_large=[
            (
                1.0,
                lambda x: (
                    "µm²/µs looks like µm²/ms: spindoctor_torch uses µm²/µs; "
                    f"divide by 1000 (e.g. {_fmt(x)} µm²/ms -> {_fmt(x / 1000)})"
                ),
                True,
            ),
            (
                0.1,
                lambda x: "µm²/µs is unusually large (free water is 0.003); check the units",
                False,
            ),
        ],
    )


def check_time(
    value: object,
    name: str = "time",
    *,
    allow_zero: bool = True,
    allow_inf: bool = False,
) -> None:
    """Check that a time (delta, Delta, TE, T2, a time step, ...) is in µs.

    Parameters
    ----------
    value : float, array-like or tensor, µs
    name : str
        Field name used in the messages.
    allow_zero : bool, default True
    allow_inf : bool, default False
        True for T2 (infinite = no relaxation).

    Raises
    ------
    ValueError
        Non-finite (unless ``allow_inf``) or negative values; 0 < t < 1 (looks like seconds).

    Warns
    -----
    UnitWarning
        1 <= t < 100 (looks like milliseconds).
    """
    _check_range(
        value,
        name,
        allow_zero=allow_zero,
        allow_inf=allow_inf,
        too_small=[
            (
                1.0,
                lambda x: (
                    "µs looks like seconds: spindoctor_torch uses µs; "
                    f"multiply seconds by 1e6 (e.g. {_fmt(x)} s -> {_fmt(x * 1e6)} µs)"
                ),
                True,
            ),
            (
                100.0,
                lambda x: (
                    "µs is unusually short and may be in milliseconds: spindoctor_torch uses "
                    f"µs (e.g. {_fmt(x)} ms -> {_fmt(x * 1e3)} µs)"
                ),
                False,
            ),
        ],
        too_large=[
            (
                1e8,
                lambda x: "µs (100 s) is implausibly long; times are in µs",
                True,
            )
        ],
    )


def check_length(
    value: object,
    name: str = "length",
    *,
    allow_zero: bool = False,
    allow_negative: bool = False,
) -> None:
    """Check that a characteristic length (radius, height, mesh size, ℓ) is in µm.

    Not meant for raw coordinates, which may be arbitrarily close to 0.

    Raises
    ------
    ValueError
        Non-finite values; zero (unless ``allow_zero``) or negative (unless
        ``allow_negative``); 0 < |L| < 1e-3 (looks like metres or millimetres);
        |L| > 1e6 (looks like nanometres).

    Warns
    -----
    UnitWarning
        |L| > 1e4 (1 cm).
    """
    _check_range(
        value,
        name,
        allow_zero=allow_zero,
        allow_inf=False,
        allow_negative=allow_negative,
        too_small=[
            (
                1e-3,
                lambda x: (
                    "µm looks like metres or millimetres: spindoctor_torch uses µm "
                    f"(e.g. {_fmt(x)} m -> {_fmt(x * 1e6)} µm, {_fmt(x)} mm -> "
                    f"{_fmt(x * 1e3)} µm)"
                ),
                True,
            )
        ],
        too_large=[
            (
                1e6,
                lambda x: (
                    f"µm looks like nanometres: divide by 1000 ({_fmt(x)} nm -> "
                    f"{_fmt(x / 1000)} µm)"
                ),
                True,
            ),
            (1e4, lambda x: "µm (1 cm) is unusually large; lengths are in µm", False),
        ],
    )


def check_permeability(value: object, name: str = "permeability") -> None:
    """Check a permeability or surface relaxivity in µm/µs (= m/s), typical 1e-5 ... 1e-3.

    Raises
    ------
    ValueError
        Non-finite or negative values; κ > 10 (m/s: far beyond any membrane; likely µm/ms or
        µm/s).

    Warns
    -----
    UnitWarning
        0.1 < κ <= 10.
    """
    _check_range(
        value,
        name,
        allow_zero=True,
        allow_inf=False,
        too_small=[],
        too_large=[
            (
                10.0,
                lambda x: "µm/µs (= m/s) is implausibly large; permeabilities are in µm/µs",
                True,
            ),
            (0.1, lambda x: "µm/µs (= m/s) is unusually large; check the units", False),
        ],
    )


def check_bvalue(value: object, name: str = "bvalues") -> None:
    """Check b-values in s/mm² (= µs/µm²), typical 0 ... 10000.

    Raises
    ------
    ValueError
        Non-finite or negative values; b > 1e6 (looks like s/m²: 1000 s/mm² = 1e9 s/m²).

    Warns
    -----
    UnitWarning
        0 < b < 1e-3 (looks like ms/µm², where 1 ms/µm² = 1000 s/mm²).
    """
    _check_range(
        value,
        name,
        allow_zero=True,
        allow_inf=False,
        too_small=[
            (
                1e-3,
                lambda x: (
                    "s/mm² is tiny and may be in ms/µm²: multiply by 1000 "
                    f"({_fmt(x)} ms/µm² -> {_fmt(x * 1e3)} s/mm²)"
                ),
                False,
            )
        ],
        too_large=[
            (
                1e6,
                lambda x: (
                    "s/mm² looks like s/m²: spindoctor_torch uses s/mm²; divide by 1e6 "
                    f"({_fmt(x)} s/m² -> {_fmt(x / 1e6)} s/mm²)"
                ),
                True,
            )
        ],
    )


def check_gradient_amplitude(value: object, name: str = "gvalues") -> None:
    """Check gradient amplitudes in T/m (typical 0.01 ... 1; SpinDoctor MATLAB uses mT/m).

    Raises
    ------
    ValueError
        Non-finite values; |g| > 20 T/m (looks like mT/m).
    """
    _check_range(
        value,
        name,
        allow_zero=True,
        allow_inf=False,
        allow_negative=True,
        too_small=[],
        too_large=[
            (
                20.0,
                lambda x: (
                    "T/m looks like mT/m (SpinDoctor MATLAB's unit): spindoctor_torch uses "
                    f"T/m; divide by 1000 ({_fmt(x)} mT/m -> {_fmt(x / 1000)} T/m)"
                ),
                True,
            )
        ],
    )
