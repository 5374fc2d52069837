"""STA ADC: closed form on boxes, SpinDoctor's numbers on its sphere, gradients, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from spindoctor_torch.errors import SetupError, SpinDoctorWarning
from spindoctor_torch.experiment import Experiment
from spindoctor_torch.mesh import TetMesh
from spindoctor_torch.mesh.structured import structured_box, structured_slabs
from spindoctor_torch.model import Model
from spindoctor_torch.sequences import PGSE, Waveform3D
from spindoctor_torch.solvers.sta import compute_adc_sta

DIRS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 2.0, 3.0]])
DIRS_UNIT = DIRS / np.linalg.norm(DIRS, axis=1, keepdims=True)


def _t_sta_pgse(delta: float, Delta: float) -> float:
    """Squared finite-pulse Mitra factor of a PGSE, written out from the closed form."""
    c = (
        4.0
        / 35.0
        * ((Delta + delta) ** 3.5 + (Delta - delta) ** 3.5 - 2 * Delta**3.5 - 2 * delta**3.5)
        / (delta**2 * (Delta - delta / 3))
    )
    return c**2


def _mitra(d0: np.ndarray, area_u: np.ndarray, volume: float, t_sta: float) -> np.ndarray:
    return d0 * (1 - 4.0 / 3.0 * np.sqrt(d0 / math.pi) * area_u / volume * math.sqrt(t_sta))


def test_box_closed_form_with_anisotropic_tensor():
    """Jittered box (faces stay planar, so volumes and areas are exact): the projected area is
    A_u = 2(LyLz u_x² + LxLz u_y² + LxLy u_z²); float64 round-off only (rtol 1e-12)."""
    sides = np.array([3.0, 4.0, 5.0])
    mesh = structured_box(tuple(sides), (3, 4, 5), jitter=0.2)
    dten = np.array([[2e-3, 2e-4, 0.0], [2e-4, 1e-3, 1e-4], [0.0, 1e-4, 1.5e-3]])
    model = Model(mesh, diffusivity=torch.tensor(dten))
    seqs = [PGSE(100.0, 300.0), PGSE(200.0, 600.0)]
    res = compute_adc_sta(model, Experiment(seqs, bvalues=[100.0], directions=DIRS))
    lx, ly, lz = sides
    face = np.array([ly * lz, lx * lz, lx * ly])
    area_u = 2 * (DIRS_UNIT**2) @ face
    d0 = np.einsum("nd,de,ne->n", DIRS_UNIT, dten, DIRS_UNIT)
    for s, seq in enumerate(seqs):
        expect = _mitra(d0, area_u, sides.prod(), _t_sta_pgse(seq.delta, seq.Delta))
        np.testing.assert_allclose(res.adc[0, s].numpy(), expect, rtol=1e-12)
    np.testing.assert_allclose(res.adc_allcmpts.numpy(), res.adc[0].numpy(), rtol=1e-14)


def test_interfaces_count_for_both_compartments():
    """Two slabs of widths w = 2 and 3 µm, 3 × 3 µm cross-section: the shared interface is
    part of both compartments' surfaces, so along x each has A_u = 2·9 µm² (its two faces ⊥ x),
    along y A_u = 2·3w; adc_allcmpts is the ρ|Ω|-weighted mean."""
    mesh = structured_slabs([2.0, 3.0], (3.0, 3.0), h=0.5)
    model = Model(mesh, diffusivity=[0.002, 0.001], density=[1.0, 2.0], permeability=1e-5)
    seq = PGSE(100.0, 300.0)
    exp = Experiment([seq], bvalues=[100.0], directions=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    res = compute_adc_sta(model, exp)
    t_sta = _t_sta_pgse(100.0, 300.0)
    for i, (width, d) in enumerate([(2.0, 0.002), (3.0, 0.001)]):
        expect = _mitra(np.array([d, d]), np.array([18.0, 6.0 * width]), 9.0 * width, t_sta)
        np.testing.assert_allclose(res.adc[i, 0].numpy(), expect, rtol=1e-12)
    w = np.array([18.0 * 1.0, 27.0 * 2.0])
    np.testing.assert_allclose(
        res.adc_allcmpts[0].numpy(), (w / w.sum()) @ res.adc[:, 0].numpy(), rtol=1e-14
    )


def test_spindoctor_sphere_numbers(reference_dir):
    """SpinDoctor's sphere mesh, PGSE(10000, 43100): SpinDoctor's STA ADCs (negative, the
    approximation does not hold there, recorded as computed) to 1e-12 (measured 7e-15), with
    the negativity warning."""
    ref = json.loads((reference_dir / "fem_sphere_r5.json").read_text())
    data = np.load(reference_dir / "meshes" / "sphere_r5.npz")
    mesh = TetMesh(data["points"], data["tetrahedra"], data["tet_labels"])
    model = Model(mesh, diffusivity=ref["pde"]["diffusivity_um2_per_us"])
    seq = PGSE(ref["sequence"]["delta_us"], ref["sequence"]["Delta_us"])
    exp = Experiment([seq], bvalues=ref["bvalues"], directions=ref["directions"])
    with pytest.warns(SpinDoctorWarning, match="negative"):
        res = compute_adc_sta(model, exp)
    expect = np.array(ref["sta"]["adc_per_compartment_per_direction"]).T  # (ncmpt, ndir)
    np.testing.assert_allclose(res.adc[:, 0].numpy(), expect, rtol=1e-12)
    np.testing.assert_allclose(
        res.adc_allcmpts[0].numpy(), ref["sta"]["adc_allcmpts_per_direction"], rtol=1e-12
    )


def test_gradient_matches_central_differences():
    """d(Σ adc)/d(points, D) by autograd equals central differences (rtol 1e-7)."""
    base = structured_slabs([2.0, 3.0], (2.0, 2.0), h=1.0, jitter=0.2)
    exp = Experiment([PGSE(100.0, 300.0)], bvalues=[100.0], directions=DIRS)
    p0 = base.points.detach().clone()
    d0 = torch.tensor([0.002, 0.001], dtype=torch.float64)
    dp = torch.randn(p0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(points, diff):
        res = compute_adc_sta(Model(base.with_points(points), diffusivity=diff), exp)
        return 1e3 * (res.adc.sum() + res.adc_allcmpts.sum())

    p = p0.clone().requires_grad_(True)
    d = d0.clone().requires_grad_(True)
    loss(p, d).backward()
    eps = 1e-6
    fd = (loss(p0 + eps * dp, d0) - loss(p0 - eps * dp, d0)) / (2 * eps)
    assert (p.grad * dp).sum().item() == pytest.approx(fd.item(), rel=1e-7)
    dd = torch.tensor([1.0, -0.5], dtype=torch.float64)
    eps = 1e-9
    fd = (loss(p0, d0 + eps * dd) - loss(p0, d0 - eps * dd)) / (2 * eps)
    assert (d.grad * dd).sum().item() == pytest.approx(fd.item(), rel=1e-7)


def test_bad_input():
    model = Model(structured_box((1.0, 1.0, 1.0), (1, 1, 1)))
    exp = Experiment([PGSE(100.0, 200.0)], bvalues=[10.0], directions=[1.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="model"):
        compute_adc_sta(None, exp)
    with pytest.raises(TypeError, match="experiment"):
        compute_adc_sta(model, {"bvalues": [1.0]})
    wave = Waveform3D(([0.0, 50.0, 100.0], [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0, 0]]))
    with pytest.raises(SetupError, match="vector"):
        compute_adc_sta(model, Experiment([wave], bvalues=[10.0]))
