"""Free diffusion: S = Σ ρ_i |Ω_i| exp(−b uᵀD_i u), exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spindoctor_torch.errors import SetupError
from spindoctor_torch.experiment import Experiment
from spindoctor_torch.mesh.structured import structured_box, structured_slabs
from spindoctor_torch.model import Model
from spindoctor_torch.sequences import PGSE, CosOGSE, Waveform3D
from spindoctor_torch.solvers.free import free_diffusion


def test_single_compartment_is_exp_minus_bd():
    """q-values given: b = q²δ²(Δ−δ/3) written out here; normalized signal = exp(−bD) to
    round-off (rtol 1e-14), b = 0 gives exactly 1."""
    mesh = structured_box((2.0, 3.0, 4.0), (2, 3, 4))
    d = 0.0021
    seq = PGSE(5000.0, 20000.0)
    q = np.array([0.0, 1e-5, 3e-5, 6e-5])
    exp = Experiment([seq], qvalues=q, directions=[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    res = free_diffusion(Model(mesh, diffusivity=d), exp)
    b = q**2 * 5000.0**2 * (20000.0 - 5000.0 / 3)
    assert res.signal.shape == (1, 4, 1, 2) and res.signal.is_complex()
    expect = np.exp(-b * d)[:, None].repeat(2, axis=1)
    np.testing.assert_allclose(res.normalized()[:, 0].real.numpy(), expect, rtol=1e-14)
    np.testing.assert_allclose(res.normalized()[0].abs().numpy(), 1.0, rtol=1e-15)
    assert float(res.initial_signal) == pytest.approx(24.0, rel=1e-14)
    assert res.method == "free"


def test_compartments_anisotropy_and_relaxation():
    """Two compartments (ρ, |Ω|, D differ; one anisotropic tensor), two sequences: each
    compartment's signal is ρ|Ω| exp(−b uᵀDu) [· exp(−TE/T2)], the total their sum."""
    mesh = structured_slabs([2.0, 3.0], (1.0, 1.0), h=0.5)
    dten = np.array([[2e-3, 3e-4, 0.0], [3e-4, 1e-3, 0.0], [0.0, 0.0, 1.5e-3]])
    diff = torch.stack([torch.eye(3, dtype=torch.float64) * 1e-3, torch.tensor(dten)])
    model = Model(mesh, diffusivity=diff, density=[1.0, 0.5], relaxation=[40e3, 80e3])
    seqs = [PGSE(2000.0, 6000.0), CosOGSE(4000.0, 6000.0, 2)]
    dirs = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    b = np.array([0.0, 500.0, 2000.0])
    exp = Experiment(seqs, bvalues=b, directions=dirs)
    u = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    adc = np.stack([np.full(3, 1e-3), np.einsum("nd,de,ne->n", u, dten, u)])
    s0 = np.array([1.0 * 2.0, 0.5 * 3.0])
    expect = s0[:, None, None, None] * np.exp(-b[None, :, None, None] * adc[:, None, None, :])
    expect = np.broadcast_to(expect, (2, 3, 2, 3))
    res = free_diffusion(model, exp)
    np.testing.assert_allclose(res.signal.real.numpy(), expect, rtol=1e-13)
    np.testing.assert_allclose(res.signal_allcmpts.real.numpy(), expect.sum(0), rtol=1e-13)
    np.testing.assert_allclose(res.info["adc"].numpy(), adc, rtol=1e-14)
    te = np.array([8000.0, 10000.0])
    t2 = np.array([40e3, 80e3])
    decay = np.exp(-te[None, :] / t2[:, None])  # (ncmpt, nseq)
    res_r = free_diffusion(model, exp, relaxation=True)
    np.testing.assert_allclose(
        res_r.signal.real.numpy(), expect * decay[:, None, :, None], rtol=1e-13
    )


def test_gradient_in_diffusivity_and_points():
    """∂S/∂D = −b S and, on a box scaled by s, ∂S/∂s = 3 S/s (volume ∝ s³)."""
    mesh = structured_box((1.0, 1.0, 1.0), (1, 1, 1))
    d = torch.tensor(0.002, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    model = Model(mesh.with_points(mesh.points * scale), diffusivity=d)
    exp = Experiment([PGSE(1000.0, 3000.0)], bvalues=[700.0], directions=[0.0, 0.0, 1.0])
    s = free_diffusion(model, exp).signal_allcmpts.real.sum()
    gd, gs = torch.autograd.grad(s, [d, scale])
    expect_s = 8.0 * math.exp(-700.0 * 0.002)
    assert s.item() == pytest.approx(expect_s, rel=1e-14)
    assert float(gd) == pytest.approx(-700.0 * expect_s, rel=1e-12)
    assert float(gs) == pytest.approx(3 * expect_s / 2.0, rel=1e-12)


def test_bad_input():
    model = Model(structured_box((1.0, 1.0, 1.0), (1, 1, 1)))
    exp = Experiment([PGSE(1000.0, 2000.0)], bvalues=[10.0], directions=[1.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="model"):
        free_diffusion("model", exp)
    with pytest.raises(TypeError, match="experiment"):
        free_diffusion(model, None)
    wave = Waveform3D(([0.0, 500.0, 1000.0], [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0, 0]]))
    with pytest.raises(SetupError, match="Waveform3D"):
        free_diffusion(model, Experiment([wave], bvalues=[10.0]))
