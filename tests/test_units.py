"""Units: γ, b <-> q <-> g conversions and the unit sanity checks.

References: hand-computed numbers (stated inline) and SpinDoctor's published example
(b = 1000 s/mm² with PGSE(2000, 6000) µs needs q ≈ 2.165e-4 rad/(µs·µm), g ≈ 0.809 T/m).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from spindoctor_torch.units import (
    GAMMA,
    GAMMA_MATLAB_MT,
    UnitWarning,
    b_from_q,
    check_bvalue,
    check_diffusivity,
    check_gradient_amplitude,
    check_length,
    check_permeability,
    check_time,
    g_from_q,
    g_matlab_from_q,
    q_from_b,
    q_from_g,
    q_from_g_matlab,
)

BNQ_PGSE = 2000.0**2 * (6000.0 - 2000.0 / 3)  # ∫F² of PGSE(2000, 6000) in µs³


def test_constants() -> None:
    assert GAMMA == 2.67513e-4
    assert GAMMA_MATLAB_MT == 0.2675222005
    # both are 2.675e8 rad/(s·T) with the unit factors folded in; they differ in the 5th digit
    assert GAMMA * 1e12 == pytest.approx(GAMMA_MATLAB_MT * 1e9, rel=4e-5)


def test_known_pgse_value() -> None:
    """b = 1000 s/mm², PGSE(2000, 6000): q = sqrt(1000 / 2.1333e10) = sqrt(4.6875e-8)."""
    q = q_from_b(1000.0, BNQ_PGSE)
    assert q == pytest.approx(math.sqrt(4.6875e-8), rel=1e-14)
    assert q == pytest.approx(2.165e-4, rel=1e-3)
    assert g_from_q(q) == pytest.approx(0.809, rel=1e-3)
    # MATLAB: g in mT/m, q = γ g / 1e6 → about 809.3 mT/m
    assert g_matlab_from_q(q) == pytest.approx(q * 1e6 / 0.2675222005, rel=1e-15)
    assert g_matlab_from_q(q) == pytest.approx(809.3, rel=1e-3)


def test_round_trips_float_and_tensor() -> None:
    for b in (0.0, 1.0, 1000.0, 10000.0):
        assert b_from_q(q_from_b(b, BNQ_PGSE), BNQ_PGSE) == pytest.approx(b, rel=1e-14, abs=0)
    b = torch.tensor([0.0, 500.0, 3000.0], dtype=torch.float64)
    bnq = torch.tensor([[1e10], [3e9]], dtype=torch.float64)
    q = q_from_b(b, bnq)
    assert q.shape == (2, 3)
    torch.testing.assert_close(b_from_q(q, bnq), b.expand(2, 3), rtol=1e-14, atol=0)
    g = torch.tensor([0.0, 0.04, 0.8], dtype=torch.float64)
    torch.testing.assert_close(g_from_q(q_from_g(g)), g, rtol=1e-15, atol=0)
    assert q_from_g(1.0) == GAMMA
    assert q_from_g_matlab(1e6) == GAMMA_MATLAB_MT
    assert q_from_g_matlab(g_matlab_from_q(2e-4)) == pytest.approx(2e-4, rel=1e-15)


def test_conversions_keep_the_graph() -> None:
    """dq/db = 1/(2 sqrt(b · bnq)) (hand derivative of q = sqrt(b/bnq))."""
    b = torch.tensor([250.0, 1000.0], dtype=torch.float64, requires_grad=True)
    q = q_from_b(b, BNQ_PGSE)
    (grad,) = torch.autograd.grad(q.sum(), b)
    torch.testing.assert_close(
        grad, 1 / (2 * torch.sqrt(b.detach() * BNQ_PGSE)), rtol=1e-14, atol=0
    )
    g = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(b_from_q(q_from_g(g), BNQ_PGSE).sum(), g)
    torch.testing.assert_close(grad, 2 * GAMMA**2 * BNQ_PGSE * g.detach(), rtol=1e-14, atol=0)


def test_conversion_errors() -> None:
    with pytest.raises(ValueError, match="b must be >= 0, got -1.0"):
        q_from_b(-1.0, BNQ_PGSE)
    with pytest.raises(ValueError, match="bvalue_no_q must be > 0, got 0.0"):
        q_from_b(1000.0, 0.0)
    with pytest.raises(ValueError, match="b must be finite, got nan"):
        q_from_b(torch.tensor([1.0, float("nan")]), BNQ_PGSE)
    with pytest.raises(ValueError, match="q must be finite"):
        g_from_q(float("inf"))
    with pytest.raises(TypeError, match="g must be a number or a tensor, got True"):
        q_from_g(True)


def _no_warning(check, *args, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check(*args, **kwargs)


def test_check_diffusivity() -> None:
    _no_warning(check_diffusivity, 0.002)
    _no_warning(check_diffusivity, [0.002, 0.0, 0.003], "diffusivity_in")
    tensor = torch.diag(torch.tensor([0.002, 0.001, 0.0005], dtype=torch.float64))
    tensor[0, 1] = tensor[1, 0] = 1e-12  # tiny off-diagonals are legitimate
    _no_warning(check_diffusivity, tensor)
    with pytest.raises(ValueError, match=r"diffusivity = 2e-09 .*m²/s.*-> 0\.002"):
        check_diffusivity(2e-9)
    with pytest.raises(ValueError, match=r"D_out = 2 .*µm²/ms.*-> 0\.002"):
        check_diffusivity(torch.tensor([0.002, 2.0]), "D_out")
    with pytest.raises(ValueError, match="diffusivity must be >= 0, got -0.002"):
        check_diffusivity(-0.002)
    with pytest.raises(ValueError, match="must be finite"):
        check_diffusivity(float("nan"))
    with pytest.raises(ValueError, match="m²/s"):
        check_diffusivity(torch.eye(3, dtype=torch.float64) * 3e-9)
    with pytest.warns(UnitWarning, match="unusually small"):
        check_diffusivity(5e-6)


def test_check_time() -> None:
    _no_warning(check_time, 10000.0, "delta")
    _no_warning(check_time, 0.0, "tpause")
    _no_warning(check_time, float("inf"), "T2", allow_inf=True)
    with pytest.raises(ValueError, match=r"delta = 0\.01 µs looks like seconds.*10000 µs"):
        check_time(0.01, "delta")
    with pytest.warns(UnitWarning, match="T2 = 80 µs.*milliseconds.*80000 µs"):
        check_time(80.0, "T2", allow_inf=True)
    with pytest.raises(ValueError, match="T2 must be finite, got inf"):
        check_time(float("inf"), "T2")
    with pytest.raises(ValueError, match="Delta must be >= 0, got -5.0"):
        check_time(-5.0, "Delta")
    with pytest.raises(ValueError, match="dt must be nonzero"):
        check_time(0.0, "dt", allow_zero=False)


def test_check_length_permeability_b_g() -> None:
    _no_warning(check_length, 5.0, "radius")
    with pytest.raises(ValueError, match=r"radius = 5e-06 µm looks like metres.*-> 5 µm"):
        check_length(5e-6, "radius")
    with pytest.raises(ValueError, match="nanometres"):
        check_length(5e6, "height")
    with pytest.raises(ValueError, match="radius must be nonzero"):
        check_length(0.0, "radius")
    _no_warning(check_permeability, [0.0, 1e-4, 1e-3])
    with pytest.raises(ValueError, match="kappa = 50 .*implausibly large"):
        check_permeability(50.0, "kappa")
    _no_warning(check_bvalue, torch.tensor([0.0, 1000.0, 10000.0]))
    with pytest.raises(ValueError, match=r"bvalues = 1e\+09 s/mm² looks like s/m².*-> 1000"):
        check_bvalue([0.0, 1e9])
    with pytest.raises(ValueError, match="bvalues must be >= 0, got -3.0"):
        check_bvalue([-3.0])
    _no_warning(check_gradient_amplitude, [-0.5, 0.0, 0.809])
    with pytest.raises(ValueError, match=r"gvalues = 253 T/m looks like mT/m.*-> 0\.253 T/m"):
        check_gradient_amplitude([31.0, 253.0])
