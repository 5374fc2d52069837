"""Sequences: closed forms and quadrature against independent adaptive quadrature.

References are plain-Python profiles (written here from SpinDoctor's definitions, not from the
code under test) integrated with scipy's adaptive QUADPACK ``quad``, nested where the quantity is
a double integral. Tolerances: 1e-8 relative unless stated; the references themselves are
converged to ~1e-12 (epsrel 1e-12 / 1e-13, breakpoints and boundary layers passed as ``points``).
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from spindoctor_torch.sequences import (
    PGSE,
    CosOGSE,
    CustomProfile,
    DoublePGSE,
    Sequence,
    SinOGSE,
    Waveform3D,
)

RTOL = 1e-8  # brief's target for closed forms vs quadrature

# --------------------------------------------------------------------------------------------
# independent reference profiles and quadrature
# --------------------------------------------------------------------------------------------

CASES = {
    "PGSE": (PGSE, (2000.0, 6000.0)),
    "PGSE_short": (PGSE, (500.0, 20000.0)),
    "PGSE_equal": (PGSE, (3000.0, 3000.0)),
    "DoublePGSE": (DoublePGSE, (2000.0, 6000.0, 1000.0)),
    "DoublePGSE_nopause": (DoublePGSE, (2500.0, 4000.0, 0.0)),
    "CosOGSE": (CosOGSE, (5000.0, 8000.0, 2)),
    "SinOGSE": (SinOGSE, (5000.0, 8000.0, 2)),
    "SinOGSE_n3": (SinOGSE, (6000.0, 15000.0, 3)),
}


def ref_profile(kind: str, params: tuple) -> tuple:
    """Plain-Python f(t), breakpoints, TE for each sequence type (SpinDoctor definitions)."""
    if kind == "PGSE":
        d, dd = params
        te = dd + d

        def f(t: float) -> float:
            return (1.0 if 0 <= t < d else 0.0) - (1.0 if dd <= t <= te else 0.0)

        return f, sorted({0.0, d, dd, te}), te
    if kind == "DoublePGSE":
        d, dd, p = params
        t2 = p + dd + d
        te = t2 + dd + d

        def f(t: float) -> float:
            out = 0.0
            out += 1.0 if 0 <= t < d else 0.0
            out -= 1.0 if dd <= t < dd + d else 0.0
            out += 1.0 if t2 <= t < t2 + d else 0.0
            out -= 1.0 if t2 + dd <= t <= te else 0.0
            return out

        return f, sorted({0.0, d, dd, dd + d, t2, t2 + d, t2 + dd, te}), te
    d, dd, n = params
    te = dd + d
    w = 2 * math.pi * n / d
    lobe = math.cos if kind == "CosOGSE" else math.sin

    def f(t: float) -> float:
        out = lobe(w * t) if 0 <= t < d else 0.0
        return out - (lobe(w * (t - dd)) if dd <= t <= te else 0.0)

    return f, sorted({0.0, d, dd, te}), te


def _quad(g, a: float, b: float, points=(), epsrel: float = 1e-13) -> float:
    pts = sorted({p for p in points if a < p < b})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # QUADPACK round-off notes at epsrel ~ 1e-13
        return quad(g, a, b, points=pts or None, limit=500, epsabs=0.0, epsrel=epsrel)[0]


class Reference:
    def __init__(self, case: str) -> None:
        cls, params = CASES[case]
        self.f, self.pts, self.te = ref_profile(cls.__name__, params)

    def F(self, t: float) -> float:
        return _quad(self.f, 0.0, t, self.pts) if t > 0 else 0.0

    @functools.cached_property
    def int_F2(self) -> float:
        return _quad(lambda t: self.F(t) ** 2, 0.0, self.te, self.pts, 1e-12)

    @functools.cached_property
    def sta(self) -> float:
        """C = −½ ∬ f(s) f(t) |t−s|^{3/2} / ∫F² (inner integral split at s = t)."""

        def inner(t: float) -> float:
            return _quad(lambda s: self.f(s) * abs(t - s) ** 1.5, 0.0, self.te, [*self.pts, t])

        return (
            -0.5
            * _quad(lambda t: self.f(t) * inner(t), 0.0, self.te, self.pts, 1e-12)
            / (self.int_F2)
        )

    def j(self, lam: float) -> float:
        """j(λ) from its definition λ ∫F(t) G(t) dt / ∫F², G(t) = ∫₀ᵗ e^{−λ(t−s)} f(s) ds.

        For λ·TE > 50 the definition cancels to ~(λTE)⁻¹ of its terms, so the equivalent
        ∫ f(t) G(t) dt / ∫F² (one integration by parts, F(0) = F(TE) = 0) is used; the boundary
        layers of width 1/λ after each breakpoint (outer) and before s = t (inner) are passed
        to QUADPACK as points.
        """
        layer = 40.0 / lam

        def G(t: float) -> float:
            pts = [*self.pts, t - layer]
            return _quad(lambda s: math.exp(-lam * (t - s)) * self.f(s), 0.0, t, pts)

        outer_pts = [*self.pts, *(p + layer for p in self.pts)]
        if lam * self.te <= 50:
            val = lam * _quad(lambda t: self.F(t) * G(t), 0.0, self.te, outer_pts, 1e-12)
        else:
            val = _quad(lambda t: self.f(t) * G(t), 0.0, self.te, outer_pts, 1e-12)
        return val / self.int_F2


@functools.cache
def reference(case: str) -> Reference:
    return Reference(case)


def build(case: str) -> Sequence:
    cls, params = CASES[case]
    return cls(*params)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# --------------------------------------------------------------------------------------------
# closed forms against quadrature
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_bvalue_no_q_matches_quadrature(case: str) -> None:
    seq, ref = build(case), reference(case)
    assert rel(seq.bvalue_no_q, ref.int_F2) < 1e-10, (case, seq.bvalue_no_q, ref.int_F2)


def test_bvalue_no_q_table_values() -> None:
    """The closed forms of spindoctor-notes §1.2 at δ = 5000, Δ = 8000, n = 2."""
    d, dd, n = 5000.0, 8000.0, 2
    assert PGSE(d, dd).bvalue_no_q == pytest.approx(d**2 * (dd - d / 3), rel=1e-15)
    assert DoublePGSE(d, dd, 700.0).bvalue_no_q == pytest.approx(2 * d**2 * (dd - d / 3), rel=1e-15)
    assert CosOGSE(d, dd, n).bvalue_no_q == pytest.approx(d**3 / (4 * math.pi**2 * n**2))
    assert SinOGSE(d, dd, n).bvalue_no_q == pytest.approx(3 * d**3 / (4 * math.pi**2 * n**2))


@pytest.mark.parametrize("case", list(CASES))
def test_F_matches_quadrature_and_refocuses(case: str) -> None:
    seq, ref = build(case), reference(case)
    te = ref.te
    times = [0.0, 0.13 * te, 0.37 * te, 0.5 * te, 0.81 * te, 0.97 * te]
    got = seq.F(torch.tensor(times, dtype=torch.float64))
    want = torch.tensor([ref.F(t) for t in times], dtype=torch.float64)
    scale = max(abs(w) for w in want.tolist())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-11 * scale)
    # refocused: F(TE) = 0 and F stays 0 after TE (closed form, so to round-off)
    end = seq.F(torch.tensor([te, 1.5 * te], dtype=torch.float64))
    assert end.abs().max() <= 1e-12 * scale, end


@pytest.mark.parametrize("case", list(CASES))
def test_f_profile_values(case: str) -> None:
    seq, ref = build(case), reference(case)
    t = np.linspace(-100.0, ref.te + 100.0, 397)
    got = seq.f(torch.as_tensor(t))
    want = torch.tensor([ref.f(x) if 0 <= x <= ref.te else 0.0 for x in t], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)


@pytest.mark.parametrize("case", list(CASES))
def test_diffusion_time_sta_matches_quadrature(case: str) -> None:
    seq, ref = build(case), reference(case)
    assert rel(seq.diffusion_time_sta, ref.sta**2) < RTOL, (case, seq.diffusion_time_sta)


def test_pgse_sta_matches_mitra_formula() -> None:
    """spindoctor-notes §1.2: C = (4/35)[(Δ+δ)^{7/2} + (Δ−δ)^{7/2} − 2Δ^{7/2} − 2δ^{7/2}]/∫F²."""
    d, dd = 2000.0, 6000.0
    c = 4 / 35 * ((dd + d) ** 3.5 + (dd - d) ** 3.5 - 2 * dd**3.5 - 2 * d**3.5)
    c /= d**2 * (dd - d / 3)
    assert rel(PGSE(d, dd).diffusion_time_sta, c**2) < 1e-12


def test_diffusion_times() -> None:
    """SpinDoctor's conventions; PGSE's equals ∫F²/δ² (quadrature)."""
    assert rel(PGSE(2000.0, 6000.0).diffusion_time, reference("PGSE").int_F2 / 2000.0**2) < 1e-10
    assert PGSE(2000.0, 6000.0).diffusion_time == pytest.approx(6000 - 2000 / 3, rel=1e-15)
    assert DoublePGSE(2000.0, 6000.0, 1000.0).diffusion_time == pytest.approx(
        2 * (6000 - 2000 / 3), rel=1e-15
    )
    assert CosOGSE(5000.0, 8000.0, 2).diffusion_time == pytest.approx(5000 / 16, rel=1e-15)
    assert SinOGSE(5000.0, 8000.0, 2).diffusion_time == pytest.approx(3 * 5000 / 16, rel=1e-15)


J_LAMBDAS = [1e-9, 1e-3, 10.0]


@pytest.mark.parametrize("case", ["PGSE", "PGSE_short", "DoublePGSE", "CosOGSE", "SinOGSE"])
@pytest.mark.parametrize("lam", J_LAMBDAS)
def test_j_matches_quadrature(case: str, lam: float) -> None:
    seq, ref = build(case), reference(case)
    got = float(seq.j(torch.tensor(lam, dtype=torch.float64)))
    want = ref.j(lam)
    assert rel(got, want) < RTOL, (case, lam, got, want)


@pytest.mark.parametrize("case", list(CASES))
def test_j_small_and_zero(case: str) -> None:
    """j(0) = 0 exactly and j(λ) = λ(1 + O(λ·TE)) (Taylor limit of the definition)."""
    seq = build(case)
    lam = torch.tensor([0.0, 1e-15, 1e-12], dtype=torch.float64)
    j = seq.j(lam)
    assert j[0] == 0.0
    torch.testing.assert_close(j[1:], lam[1:], rtol=1e-7, atol=0.0)


@pytest.mark.parametrize("case", ["PGSE", "DoublePGSE", "CosOGSE", "SinOGSE"])
def test_j_gradient(case: str) -> None:
    """dj/dλ = 1 at λ = 0 (limit of the definition) and matches central differences."""
    seq = build(case)
    lam = torch.tensor([0.0, 1e-6, 1e-3, 0.05, 10.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(seq.j(lam).sum(), lam)
    assert torch.isfinite(grad).all(), grad
    assert float(grad[0]) == pytest.approx(1.0, abs=1e-12)
    with torch.no_grad():
        x = lam[1:].detach()
        h = 1e-4 * x
        fd = (seq.j(x + h) - seq.j(x - h)) / (2 * h)
    # central differences: truncation O(h²·j''') and round-off ~1e-16·j/h, both < 1e-6 here
    torch.testing.assert_close(grad[1:], fd, rtol=1e-6, atol=1e-12)


def test_j_broadcasts_and_keeps_dtype() -> None:
    seq = PGSE(2000.0, 6000.0)
    lam = torch.linspace(0, 1e-2, 6, dtype=torch.float64).reshape(2, 3)
    assert seq.j(lam).shape == (2, 3)
    assert seq.j(lam.float()).dtype == torch.float32
    assert seq.j(1e-3).dtype == torch.float64
    torch.testing.assert_close(seq.j(lam.float()), seq.j(lam).float(), rtol=1e-5, atol=1e-12)


# --------------------------------------------------------------------------------------------
# intervals and pieces
# --------------------------------------------------------------------------------------------


def test_intervals() -> None:
    assert PGSE(2000.0, 6000.0).intervals == [0.0, 2000.0, 6000.0, 8000.0]
    assert PGSE(3000.0, 3000.0).intervals == [0.0, 3000.0, 6000.0]
    assert CosOGSE(3000.0, 3000.0, 1).intervals == [0.0, 3000.0, 6000.0]
    assert DoublePGSE(2000.0, 6000.0, 1000.0).intervals == [
        0.0,
        2000.0,
        6000.0,
        8000.0,
        9000.0,
        11000.0,
        15000.0,
        17000.0,
    ]
    assert DoublePGSE(2000.0, 2000.0, 0.0).intervals == [0.0, 2000.0, 4000.0, 6000.0, 8000.0]
    assert PGSE(2000.0, 6000.0).is_constant and DoublePGSE(1.0e3, 2.0e3).is_constant
    assert not CosOGSE(5000.0, 8000.0, 2).is_constant


@pytest.mark.parametrize("case", ["PGSE", "PGSE_equal", "DoublePGSE", "DoublePGSE_nopause"])
def test_constant_pieces_cover_profile(case: str) -> None:
    seq, ref = build(case), reference(case)
    pieces = seq.constant_pieces()
    assert pieces[0][0] == 0.0 and pieces[-1][1] == ref.te
    for (_, b, _), (a, _, _) in zip(pieces, pieces[1:]):
        assert a == b
    for a, b, v in pieces:
        assert b > a
        for x in np.linspace(a, b, 7)[1:-1]:
            assert ref.f(float(x)) == v


def test_constant_pieces_rejected_for_ogse() -> None:
    with pytest.raises(ValueError, match="not piecewise constant"):
        CosOGSE(5000.0, 8000.0, 2).constant_pieces()


# --------------------------------------------------------------------------------------------
# custom profiles
# --------------------------------------------------------------------------------------------


def _pgse_lambda(d: float, dd: float):
    def f(t: torch.Tensor) -> torch.Tensor:
        return ((t >= 0) & (t < d)).double() - ((t >= dd) & (t <= dd + d)).double()

    return f


@pytest.fixture(scope="module")
def custom_pgse() -> CustomProfile:
    return CustomProfile(_pgse_lambda(2000.0, 6000.0), 8000.0, breakpoints=[2000.0, 6000.0])


def test_custom_profile_reproduces_pgse(custom_pgse: CustomProfile) -> None:
    """Quadrature path against the PGSE closed forms (themselves checked against quad above).

    rtol 1e-10: 16-point Gauss panels are exact for a constant profile; what remains is the
    graded quadrature of the autocorrelation against e^{−λu} and u^{3/2}.
    """
    pgse = PGSE(2000.0, 6000.0)
    assert rel(custom_pgse.bvalue_no_q, pgse.bvalue_no_q) < 1e-12
    assert rel(custom_pgse.diffusion_time, pgse.diffusion_time) < 1e-12
    assert rel(custom_pgse.diffusion_time_sta, pgse.diffusion_time_sta) < 1e-10
    t = torch.linspace(-10.0, 8100.0, 41, dtype=torch.float64)
    torch.testing.assert_close(custom_pgse.F(t), pgse.F(t), rtol=0, atol=1e-9)
    lam = torch.tensor([0.0, 1e-9, 1e-5, 1e-3, 0.05, 10.0, 1e3], dtype=torch.float64)
    torch.testing.assert_close(custom_pgse.j(lam), pgse.j(lam), rtol=1e-10, atol=0.0)
    lam.requires_grad_(True)
    (grad,) = torch.autograd.grad(custom_pgse.j(lam[:1]).sum(), lam)
    assert float(grad[0]) == pytest.approx(1.0, rel=1e-10)


def test_custom_expression_reproduces_cos_ogse() -> None:
    """An expression-string profile against the CosOGSE closed forms (rtol 1e-9)."""
    expr = "cos(2*pi*2*t/5000) * (t < 5000) - cos(2*pi*2*(t - 8000)/5000) * (t >= 8000)"
    custom = CustomProfile(expr, 13000.0, breakpoints=[5000.0, 8000.0], name="cos")
    cos = CosOGSE(5000.0, 8000.0, 2)
    assert rel(custom.bvalue_no_q, cos.bvalue_no_q) < 1e-12
    assert rel(custom.diffusion_time_sta, cos.diffusion_time_sta) < 1e-9
    lam = torch.tensor([1e-9, 1e-4, 1e-2, 10.0], dtype=torch.float64)
    torch.testing.assert_close(custom.j(lam), cos.j(lam), rtol=1e-9, atol=0.0)
    again = Sequence.from_dict(custom.to_dict())
    assert again == custom and again.name == "cos"


def test_custom_profile_needs_refocusing() -> None:
    custom = CustomProfile("1.0 + 0*t", 1000.0)
    assert custom.bvalue_no_q == pytest.approx(1000.0**3 / 3, rel=1e-13)  # ∫₀^T t² dt
    with pytest.raises(ValueError, match=r"refocused.*F\(TE\) = 1000"):
        custom.j(1e-3)
    with pytest.raises(ValueError, match="refocused"):
        _ = custom.diffusion_time_sta


def test_custom_profile_validation() -> None:
    with pytest.raises(TypeError, match="callable"):
        CustomProfile(3.0, 1000.0)
    with pytest.raises(ValueError, match="breakpoints"):
        CustomProfile("t", 1000.0, breakpoints=[1500.0])
    with pytest.raises(ValueError, match="shape"):
        CustomProfile(lambda t: torch.zeros(3), 1000.0)
    with pytest.raises(ValueError, match="not finite"):
        CustomProfile(lambda t: 1.0 / (t - t), 1000.0)
    with pytest.raises(ValueError, match="echotime = 0.008.*seconds"):
        CustomProfile("t", 0.008)
    bad_expressions = (
        "__import__('os')",
        "t.real",
        "open('x')",
        "[t]",
        "lambda: 1",
        "t in t",
        "sin",
    )
    for bad in bad_expressions:
        with pytest.raises(ValueError, match="expression|unknown name|is a function"):
            CustomProfile(bad, 1000.0)
    with pytest.raises(TypeError, match="cannot be serialized"):
        CustomProfile(lambda t: torch.cos(t), 1000.0).to_dict()


def test_expression_semantics() -> None:
    custom = CustomProfile("where(t < 10, 1, 2) * (100 <= t < 200) + ~(t > 500) * 0", 1000.0)
    t = torch.tensor([5.0, 50.0, 150.0, 250.0], dtype=torch.float64)
    torch.testing.assert_close(custom.f(t), torch.tensor([0.0, 0.0, 2.0, 0.0], dtype=torch.float64))
    custom = CustomProfile("sqrt(t) - clamp(t, 0, 4)", 1000.0)
    torch.testing.assert_close(
        custom.f(torch.tensor([9.0]).double()), torch.tensor([-1.0]).double()
    )


# --------------------------------------------------------------------------------------------
# Waveform3D
# --------------------------------------------------------------------------------------------


def test_waveform3d_from_scalar_profile_has_rank_one_bmatrix() -> None:
    u = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) / 3
    pgse = PGSE(2000.0, 6000.0)
    wave = Waveform3D(lambda t: pgse.f(t)[..., None] * u, 8000.0, breakpoints=[2000.0, 6000.0])
    want = reference("PGSE").int_F2 * torch.outer(u, u)
    torch.testing.assert_close(wave.bmatrix_no_q, want, rtol=1e-12, atol=1e-12 * want.abs().max())
    assert rel(wave.bvalue_no_q, reference("PGSE").int_F2) < 1e-12
    assert wave.is_vector and wave.f(torch.zeros(4, 5)).shape == (4, 5, 3)


def test_waveform3d_samples_match_quadrature() -> None:
    """Piecewise-linear samples: trace of the b-matrix and F against quad of np.interp."""
    times = np.array([0.0, 300.0, 1700.0, 2000.0, 4000.0, 4300.0, 5700.0, 6000.0])
    gx = np.array([0.0, 1.0, 1.0, 0.0, 0.0, -1.0, -1.0, 0.0])
    gy = np.array([0.0, 0.5, -0.5, 0.0, 0.0, 0.5, -0.5, 0.0])
    gz = np.array([0.0, 0.2, 0.4, 0.0, 0.0, -0.1, -0.5, 0.0])
    values = np.stack([gx, gy, gz], axis=1)
    wave = Waveform3D((times, values), echotime=6500.0)

    def comp_F(c: int, t: float) -> float:
        return _quad(lambda s: np.interp(s, times, values[:, c]), 0.0, min(t, 6000.0), times)

    bmat = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            bmat[a, b] = bmat[b, a] = _quad(
                lambda t, a=a, b=b: comp_F(a, t) * comp_F(b, t), 0.0, 6500.0, times, 1e-11
            )
    torch.testing.assert_close(
        wave.bmatrix_no_q, torch.as_tensor(bmat), rtol=1e-9, atol=1e-9 * np.abs(bmat).max()
    )
    t = [150.0, 1000.0, 3000.0, 5000.0, 6200.0]
    want = torch.tensor([[comp_F(c, x) for c in range(3)] for x in t], dtype=torch.float64)
    torch.testing.assert_close(
        wave.F(torch.tensor(t, dtype=torch.float64)), want, rtol=1e-11, atol=1e-9
    )
    assert Sequence.from_dict(wave.to_dict()) == wave


def test_waveform3d_expressions_rotating_gradient() -> None:
    """g = (cos ωt, sin ωt, 0) on [0, T], one full turn (Julia's GeneralGradient example).

    F = (sin ωt/ω, (1 − cos ωt)/ω, 0): ∫F_x² = T/(2ω²), ∫F_y² = 3T/(2ω²), ∫F_x F_y = 0.
    """
    te = 5000.0
    w = 2 * math.pi / te
    wave = Waveform3D(["cos(2*pi*t/5000)", "sin(2*pi*t/5000)", "0*t"], te)
    want = torch.diag(
        torch.tensor([te / (2 * w**2), 3 * te / (2 * w**2), 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(wave.bmatrix_no_q, want, rtol=0, atol=1e-12 * float(want.max()))
    assert Sequence.from_dict(wave.to_dict()) == wave
    with pytest.raises(NotImplementedError, match="vector profile"):
        wave.j(1e-3)


def test_waveform3d_validation() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Waveform3D(([0.0, 10.0, 10.0], np.zeros((3, 3))))
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        Waveform3D(([0.0, 100.0, 200.0], np.zeros((3, 2))))
    with pytest.raises(ValueError, match="echotime is required"):
        Waveform3D(lambda t: torch.zeros(*t.shape, 3))
    with pytest.raises(TypeError, match="cannot be serialized"):
        Waveform3D(lambda t: torch.zeros(*t.shape, 3), 1000.0).to_dict()


# --------------------------------------------------------------------------------------------
# validation and value semantics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: PGSE(7000.0, 6000.0), "delta must be <= Delta.*7000"),
        (lambda: PGSE(0.0, 6000.0), "delta must be > 0 µs, got 0.0"),
        (lambda: PGSE(-5.0, 6000.0), "delta must be > 0"),
        (lambda: PGSE(float("nan"), 6000.0), "delta must be finite, got nan"),
        (lambda: PGSE(2000.0, float("inf")), "Delta must be finite"),
        (lambda: PGSE(0.01, 0.04), "delta = 0.01 µs looks like seconds"),
        (lambda: CosOGSE(5000.0, 8000.0, 2.5), "nperiod must be a positive integer, got 2.5"),
        (lambda: SinOGSE(5000.0, 8000.0, 0), "nperiod must be a positive integer, got 0"),
        (lambda: SinOGSE(5000.0, 8000.0, True), "nperiod must be a positive integer"),
        (lambda: DoublePGSE(2000.0, 6000.0, -1.0), "tpause must be >= 0 µs, got -1.0"),
        (lambda: DoublePGSE(2000.0, 1000.0), "delta must be <= Delta"),
    ],
)
def test_bad_parameters(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_millisecond_times_warn() -> None:
    from spindoctor_torch.units import UnitWarning

    with pytest.warns(UnitWarning, match="delta = 10 µs.*milliseconds"):
        PGSE(10.0, 400.0)


def test_equality_hash_repr_and_dicts() -> None:
    a, b = PGSE(2000, 6000), PGSE(2000.0, 6000.0)
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a != PGSE(2000.0, 6001.0) and a != CosOGSE(2000.0, 6000.0, 1)
    assert repr(a) == "PGSE(delta=2000.0, Delta=6000.0)"
    assert repr(CosOGSE(5000.0, 8000.0, 2)) == "CosOGSE(delta=5000.0, Delta=8000.0, nperiod=2)"
    for seq in (a, DoublePGSE(2000.0, 6000.0, 100.0), SinOGSE(5000.0, 8000.0, 3)):
        data = seq.to_dict()
        assert Sequence.from_dict(data) == seq and type(Sequence.from_dict(data)) is type(seq)
    assert PGSE(2000.0, 6000.0).to_dict() == {"type": "PGSE", "delta": 2000.0, "Delta": 6000.0}
    with pytest.raises(ValueError, match="unknown sequence type 'TRSE'"):
        Sequence.from_dict({"type": "TRSE"})
    with pytest.raises(ValueError, match="'type'"):
        Sequence.from_dict({"delta": 1.0})
