"""Experiment tables, validation, gradients, and the direction sets.

References: hand formulas b = q²∫F², q = γg with ∫F² from spindoctor-notes §1.2 (δ²(Δ − δ/3),
δ³/(4π²n²)), SpinDoctor's example b = 1000 s/mm² with PGSE(2000, 6000) (q ≈ 2.165e-4,
g ≈ 0.809 T/m), and geometric properties of the direction sets.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spindoctor_torch.experiment import Experiment, half_sphere, unit_circle, unit_sphere
from spindoctor_torch.sequences import PGSE, CosOGSE, Waveform3D
from spindoctor_torch.units import GAMMA

SEQS = [PGSE(2000.0, 6000.0), CosOGSE(5000.0, 8000.0, 2)]


def f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


BNQ = f64([2000.0**2 * (6000.0 - 2000.0 / 3), 5000.0**3 / (16 * math.pi**2)])
X = [[1.0, 0.0, 0.0]]


def test_known_value_b1000_pgse() -> None:
    exp = Experiment(SEQS[0], bvalues=[0.0, 1000.0], directions=X)
    assert float(exp.qvalues[1, 0]) == pytest.approx(2.165e-4, rel=1e-3)
    assert float(exp.qvalues[1, 0]) == pytest.approx(math.sqrt(4.6875e-8), rel=1e-14)
    assert float(exp.gvalues[1, 0]) == pytest.approx(0.809, rel=1e-3)
    assert float(exp.qvalues[0, 0]) == 0.0


@pytest.mark.parametrize("kind", ["b", "q", "g"])
def test_tables_from_each_value_type(kind: str) -> None:
    b = torch.tensor([0.0, 100.0, 1000.0, 4000.0], dtype=torch.float64)
    q = torch.sqrt(b[:, None] / BNQ)  # (namplitude, nsequence) from the hand formula
    given = {"b": b, "q": q[:, 0], "g": q[:, 0] / GAMMA}[kind]
    exp = Experiment(SEQS, **{f"{kind}values": given}, directions=X)
    assert (exp.namplitude, exp.nsequence, exp.ndirection) == (4, 2, 1)
    assert exp.values_type == kind
    for table in (exp.bvalues, exp.qvalues, exp.gvalues):
        assert table.shape == (4, 2) and table.dtype == torch.float64
    torch.testing.assert_close(exp.bvalues, exp.bvalue_no_q * exp.qvalues**2, rtol=1e-14, atol=0)
    torch.testing.assert_close(exp.gvalues, exp.qvalues / GAMMA, rtol=1e-15, atol=0)
    torch.testing.assert_close(exp.bvalue_no_q, BNQ, rtol=1e-14, atol=0)
    if kind == "b":
        torch.testing.assert_close(exp.bvalues, b[:, None].expand(4, 2))
        torch.testing.assert_close(exp.qvalues, q, rtol=1e-14, atol=0)
    else:  # the same q for both sequences, so the b-values differ by the ratio of ∫F²
        torch.testing.assert_close(exp.qvalues[:, 1], q[:, 0], rtol=1e-14, atol=0)
        torch.testing.assert_close(exp.bvalues[:, 1], b * BNQ[1] / BNQ[0], rtol=1e-13, atol=0)


def test_gradients_flow_to_amplitudes_and_directions() -> None:
    q = torch.tensor([1e-5, 2e-4], dtype=torch.float64, requires_grad=True)
    exp = Experiment(SEQS, qvalues=q, directions=X)
    (grad,) = torch.autograd.grad(exp.bvalues.sum(), q)
    torch.testing.assert_close(grad, 2 * q.detach() * BNQ.sum(), rtol=1e-14, atol=0)

    b = torch.tensor([500.0, 2000.0], dtype=torch.float64, requires_grad=True)
    exp = Experiment(SEQS, bvalues=b, directions=X)
    (grad,) = torch.autograd.grad(exp.gvalues.sum(), b)
    want = (1 / (2 * torch.sqrt(b.detach()[:, None] * BNQ)) / GAMMA).sum(1)
    torch.testing.assert_close(grad, want, rtol=1e-13, atol=0)

    d = torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64, requires_grad=True)
    exp = Experiment(SEQS, bvalues=[1000.0], directions=d)
    (grad,) = torch.autograd.grad(exp.directions[0, 0], d)
    # ∂(x/|d|)/∂d = (e_x − u_x u)/|d| with u = (0.6, 0.8, 0), |d| = 5
    torch.testing.assert_close(grad, f64([[0.64, -0.48, 0.0]]) / 5)


def test_zero_b_with_grad_warns() -> None:
    b = torch.tensor([0.0, 1000.0], dtype=torch.float64, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="dq/db is infinite at b = 0"):
        Experiment(SEQS, bvalues=b, directions=X)


def test_directions_normalized() -> None:
    exp = Experiment(SEQS, bvalues=[1000.0], directions=[[2.0, 0, 0], [1.0, 1.0, 1.0]])
    s = 1 / math.sqrt(3)
    torch.testing.assert_close(
        exp.directions, torch.tensor([[1.0, 0, 0], [s, s, s]], dtype=torch.float64)
    )
    assert Experiment(SEQS, bvalues=[1.0], directions=[0, 0, 5.0]).directions.shape == (1, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"bvalues": [1.0], "directions": [[1, 0, 0], [0, 0, 0]]}, ValueError, r"directions\[1\]"),
        ({"bvalues": [1.0], "directions": [[1, 0]]}, ValueError, r"shape \(ndirection, 3\)"),
        ({"bvalues": [1.0], "directions": [[1, float("nan"), 0]]}, ValueError, "finite"),
        ({"bvalues": [1.0]}, ValueError, "directions is required"),
        ({"directions": X}, ValueError, "exactly one of bvalues, qvalues, gvalues; got none"),
        ({"bvalues": [1.0], "qvalues": [1e-5], "directions": X}, ValueError, "bvalues, qvalues"),
        ({"bvalues": [], "directions": X}, ValueError, "at least one value"),
        ({"bvalues": [[1.0, 2.0]], "directions": X}, ValueError, "1-D"),
        ({"bvalues": [-10.0], "directions": X}, ValueError, "bvalues must be >= 0, got -10.0"),
        ({"bvalues": [1e9], "directions": X}, ValueError, "s/m²"),
        ({"gvalues": [31.0, 253.0], "directions": X}, ValueError, "mT/m"),
        ({"qvalues": [float("inf")], "directions": X}, ValueError, "qvalues must be finite"),
        ({"bvalues": "1000", "directions": X}, TypeError, "bvalues must be numeric"),
    ],
)
def test_bad_inputs(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Experiment(SEQS, **kwargs)


def test_bad_sequences() -> None:
    with pytest.raises(ValueError, match="at least one sequence"):
        Experiment([], bvalues=[1.0], directions=X)
    with pytest.raises(TypeError, match=r"sequences\[1\] must be a Sequence, got float"):
        Experiment([SEQS[0], 3.0], bvalues=[1.0], directions=X)


def test_waveform3d_in_experiment() -> None:
    wave = Waveform3D(["cos(2*pi*t/5000)", "sin(2*pi*t/5000)", "0*t"], 5000.0)
    exp = Experiment([wave], bvalues=[1000.0])
    assert exp.ndirection == 1 and exp.has_waveform3d
    # trace of the b-matrix: ∫F_x² + ∫F_y² = T/(2ω²) + 3T/(2ω²) with ω = 2π/T
    bnq = 2 * 5000.0 / (2 * math.pi / 5000.0) ** 2
    assert float(exp.qvalues[0, 0]) == pytest.approx(math.sqrt(1000.0 / bnq), rel=1e-12)
    qv = exp.q_vector(torch.tensor([0.0, 1250.0], dtype=torch.float64), 0)
    assert qv.shape == (1, 1, 2, 3)
    q = float(exp.qvalues[0, 0])
    torch.testing.assert_close(qv[0, 0, :, :2], f64([[q, 0.0], [0.0, q]]))
    with pytest.raises(ValueError, match="exactly one direction, got 2"):
        Experiment([SEQS[0], wave], bvalues=[1000.0], directions=[[1, 0, 0], [0, 1, 0]])
    mixed = Experiment([SEQS[0], wave], bvalues=[1000.0], directions=[[0, 1.0, 0]])
    assert mixed.nsequence == 2


def test_q_vector_scalar_sequence() -> None:
    exp = Experiment(SEQS[0], gvalues=[0.0, 0.5], directions=[[0, 0, 1.0], [1.0, 0, 0]])
    t = torch.tensor([[1000.0, 4000.0, 7000.0]], dtype=torch.float64)
    qv = exp.q_vector(t, 0)
    assert qv.shape == (2, 2, 1, 3, 3)
    q = 0.5 * GAMMA
    torch.testing.assert_close(qv[1, 0, 0, :, 2], f64([q, 0.0, -q]))
    torch.testing.assert_close(qv[1, 1, 0, :, 0], f64([q, 0.0, -q]))
    assert float(qv[0].abs().max()) == 0.0 and float(qv[1, 0, 0, :, :2].abs().max()) == 0.0


def test_dict_round_trip_and_repr() -> None:
    exp = Experiment(SEQS, gvalues=[0.1, 0.2], directions=unit_sphere(5))
    again = Experiment.from_dict(exp.to_dict())
    assert again.sequences == exp.sequences and again.values_type == "g"
    torch.testing.assert_close(again.bvalues, exp.bvalues, rtol=1e-15, atol=0)
    torch.testing.assert_close(again.directions, exp.directions, rtol=1e-15, atol=1e-16)
    assert repr(exp).startswith("Experiment(sequences=[PGSE(delta=2000.0, Delta=6000.0), CosOGSE")
    with pytest.raises(ValueError, match="values_type must be one of"):
        Experiment.from_dict({**exp.to_dict(), "values_type": "x"})


# --------------------------------------------------------------------------------------------
# direction sets
# --------------------------------------------------------------------------------------------


def _min_angle(p: torch.Tensor, antipodal: bool) -> float:
    c = p @ p.T
    if antipodal:
        c = c.abs()
    c.fill_diagonal_(-1.0)
    return float(torch.arccos(c.max().clamp(-1, 1)))


def _covering_angle(p: torch.Tensor, antipodal: bool) -> float:
    gen = torch.Generator().manual_seed(1)
    probe = torch.nn.functional.normalize(torch.randn(20000, 3, generator=gen).double(), dim=1)
    c = probe @ p.T
    if antipodal:
        c = c.abs()
    return float(torch.arccos(c.max(1).values.clamp(-1, 1)).max())


@pytest.mark.parametrize("n", [16, 64, 256])
def test_unit_sphere_near_uniform(n: int) -> None:
    """Packing and covering radii within constant factors of the optimal ~sqrt(4π/n).

    Measured (×√n): min angle 3.10-3.17, covering 2.64-2.72; random points give min angles of
    0.05-0.5/√n and coverings of several/√n, so the bounds fail for a poor set.
    """
    p = unit_sphere(n)
    assert p.shape == (n, 3) and p.dtype == torch.float64
    torch.testing.assert_close(p.norm(dim=1), torch.ones(n).double(), rtol=0, atol=1e-15)
    assert _min_angle(p, False) >= 2.9 / math.sqrt(n)
    assert _covering_angle(p, False) <= 3.0 / math.sqrt(n)
    assert float(p.mean(0).norm()) <= 2.0 / n  # balanced (no net direction)


def test_unit_sphere_seed_rotates_rigidly() -> None:
    p, r1, r1b, r2 = (
        unit_sphere(30),
        unit_sphere(30, seed=1),
        unit_sphere(30, seed=1),
        unit_sphere(30, seed=2),
    )
    torch.testing.assert_close(r1, r1b, rtol=0, atol=0)
    torch.testing.assert_close(r1 @ r1.T, p @ p.T, rtol=0, atol=1e-14)  # same geometry
    assert float((r1 - r2).abs().max()) > 0.1 and float((r1 - p).abs().max()) > 0.1


@pytest.mark.parametrize("n", [16, 64, 256])
def test_half_sphere(n: int) -> None:
    """Upper hemisphere, unique up to sign; measured (×√n): min angle 1.31-1.53 modulo sign,
    covering 1.93-1.97 of the projective plane."""
    p = half_sphere(n)
    assert p.shape == (n, 3)
    torch.testing.assert_close(p.norm(dim=1), torch.ones(n).double(), rtol=0, atol=1e-15)
    assert float(p[:, 2].min()) > 0
    assert _min_angle(p, True) >= 1.2 / math.sqrt(n)
    assert _covering_angle(p, True) <= 2.2 / math.sqrt(n)


def test_unit_circle() -> None:
    p = unit_circle(4)
    want = f64([[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0], [0, -1.0, 0]])
    torch.testing.assert_close(p, want, rtol=0, atol=1e-15)
    h = unit_circle(6, half=True, normal=(1.0, 1.0, 1.0))
    nrm = torch.ones(3).double() / math.sqrt(3)
    torch.testing.assert_close(h.norm(dim=1), torch.ones(6).double(), rtol=0, atol=1e-15)
    torch.testing.assert_close(h @ nrm, torch.zeros(6).double(), rtol=0, atol=1e-15)
    angles = torch.arccos((h[0] * h).sum(1).clamp(-1, 1))
    torch.testing.assert_close(angles, torch.arange(6).double() * math.pi / 6, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="normal .* has zero length"):
        unit_circle(3, normal=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        unit_sphere(0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        half_sphere(np.float64(3.0))
