"""Parameterizations, losses, metrics and the fit loop on problems with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spindoctor_torch import SetupError
from spindoctor_torch.mesh.structured import structured_box
from spindoctor_torch.optimize import (
    Affine,
    BendTwist,
    Chain,
    FreeForm,
    PhysicalParameters,
    QualityGuard,
    RadialMap,
    chamfer_distance,
    fit,
    hausdorff_distance,
    log_mse_loss,
    mse_loss,
    rician_nll_loss,
    sample_surface,
    surface_smoothness,
)


@pytest.fixture(scope="module")
def cube():
    return structured_box((2.0, 2.0, 2.0), (4, 4, 4), origin=(-1.0, -1.0, -1.0), jitter=0.1)


def test_affine_scaling_volume(cube):
    par = Affine(cube, "anisotropic")
    with torch.no_grad():
        par.parameters["scale"].copy_(torch.tensor([1.5, 0.5, 2.0]))
    assert abs(float(par.mesh().volume().detach()) - 8.0 * 1.5) < 1e-12
    full = Affine(cube, "affine", translate=True)
    with torch.no_grad():
        full.parameters["matrix"].copy_(torch.tensor([[1.0, 0.3, 0], [0, 1, 0], [0, 0, 1]]))
    assert abs(float(full.mesh().volume().detach()) - 8.0) < 1e-12  # a shear keeps the volume


def test_radial_map_piecewise_linear(cube):
    par = RadialMap(cube, knots=[0.5, 1.0], axis=(0, 0, 1), fixed_outer=1.5)
    with torch.no_grad():
        par.parameters["radii"].copy_(torch.tensor([0.6, 1.2]))
    p0 = cube.points
    p = par.points()
    r0 = torch.linalg.vector_norm(p0[:, :2], dim=1)
    r = torch.linalg.vector_norm(p[:, :2], dim=1)
    expected = torch.where(
        r0 <= 0.5,
        r0 * 1.2,
        torch.where(r0 <= 1.0, 0.6 + (r0 - 0.5) * 1.2, 1.2 + (r0 - 1.0) * (0.3 / 0.5)),
    )
    expected = torch.where(r0 >= 1.5, r0, expected)
    assert torch.allclose(r, expected, atol=1e-12)
    assert torch.allclose(p[:, 2], p0[:, 2])  # axial coordinate untouched
    with pytest.raises(SetupError, match="increasing"):
        RadialMap(cube, knots=[1.0, 0.5])


def test_parameterizations_gradcheck(cube):
    par = Chain(RadialMap(cube, knots=[0.7], axis=None), BendTwist(cube, 0.01, 0.2))
    params = list(par.parameters.values())

    def f(*vals):
        with torch.no_grad():
            for t, v in zip(params, vals):
                t.copy_(v)
        return par.mesh().volume()

    # Check the chained map by comparing autograd with central differences.
    vol = par.mesh().volume()
    grads = torch.autograd.grad(vol, params)
    for k, t in enumerate(params):
        h = 1e-6
        with torch.no_grad():
            t += h
        up = float(par.mesh().volume())
        with torch.no_grad():
            t -= 2 * h
        dn = float(par.mesh().volume())
        with torch.no_grad():
            t += h
        fd = (up - dn) / (2 * h)
        assert abs(float(grads[k]) - fd) <= 1e-6 * max(1.0, abs(fd)), (k, float(grads[k]), fd)


def test_freeform_is_smooth_and_differentiable(cube):
    par = FreeForm(cube, smoothing=10.0)
    z = par.parameters["z"]
    with torch.no_grad():
        z[0] = torch.tensor([0.2, 0.0, 0.0])
    disp = par.displacement()
    # A point impulse is spread over neighbours by (I + λL)⁻¹ and extended inside.
    surf = disp[torch.as_tensor(par.surface_nodes)]
    assert float(surf[:, 0].abs().max()) < 0.2
    assert int((surf[:, 0].abs() > 1e-6).sum()) > 5
    assert float(disp[torch.as_tensor(par.interior_nodes)].abs().max()) > 0
    # Gradient of a linear functional equals the transposed map (central differences).
    w = torch.randn_like(disp, generator=torch.Generator().manual_seed(1))
    (g,) = torch.autograd.grad((w * par.displacement()).sum(), z)
    k = 3
    h = 1e-4
    with torch.no_grad():
        z[k, 1] += h
    up = float((w * par.displacement()).sum())
    with torch.no_grad():
        z[k, 1] -= 2 * h
    dn = float((w * par.displacement()).sum())
    with torch.no_grad():
        z[k, 1] += h
    assert abs(float(g[k, 1]) - (up - dn) / (2 * h)) < 1e-8


def test_losses_known_values():
    a = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    b = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)
    assert abs(float(mse_loss(a, b)) - (0.01 + 0 + 0.01) / 3) < 1e-15
    assert abs(float(log_mse_loss(a, b)) - (math.log(0.9) ** 2 + math.log(2.0) ** 2) / 3) < 1e-15
    # Rician NLL is minimised near the measured magnitude for high SNR.
    m = torch.tensor([0.5], dtype=torch.float64)
    grid = torch.linspace(0.3, 0.7, 401, dtype=torch.float64)
    nll = torch.stack([rician_nll_loss(torch.tensor([g]), m, 0.02) for g in grid])
    assert abs(float(grid[torch.argmin(nll)]) - 0.5) < 2e-3
    with pytest.raises(SetupError, match="sigma"):
        rician_nll_loss(a, b, 0.0)


def test_chamfer_and_hausdorff_on_concentric_spheres():
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    a = sample_surface(torch.tensor(s.vertices), torch.tensor(s.faces), 4000, seed=1)
    b = sample_surface(torch.tensor(s.vertices) * 1.1, torch.tensor(s.faces), 4000, seed=2)
    # Distance between concentric spheres of radius 1 and 1.1 is 0.1 (+ sampling error).
    assert abs(float(chamfer_distance(a, b)) - 0.1) < 0.01
    assert 0.1 <= float(hausdorff_distance(a, b)) < 0.16


def test_surface_smoothness_zero_for_flat_box_faces(cube):
    # Every facet of a box lies in a face plane: only the 12 box edges contribute (1 each).
    assert abs(float(surface_smoothness(cube)) - 12 * 4) < 1e-9


def test_fit_recovers_scale_and_quality_guard(cube, tmp_path):
    """Fit an isotropic scale to a target volume; the guard blocks an inverting step."""
    par = Affine(cube, "isotropic")
    target = 8.0 * 1.3**3

    def objective():
        return (par.mesh().volume() / target - 1.0) ** 2

    hist = fit(
        objective,
        par,
        optimizer="lbfgs",
        lr=1.0,
        maxiter=10,
        quiet=True,
        checkpoint=tmp_path / "ck.pt",
        checkpoint_every=2,
    )
    assert abs(float(par.parameters["scale"]) - 1.3) < 1e-6
    assert hist.loss[-1] < 1e-12
    # Resume continues from the saved state.
    par2 = Affine(cube, "isotropic")
    h2 = fit(
        objective,
        par2,
        optimizer="lbfgs",
        maxiter=12,
        quiet=True,
        checkpoint=tmp_path / "ck.pt",
        resume=True,
    )
    assert h2.niter == 12 and "resumed" in h2.events[0]

    # A free-form step that would push a vertex through the mesh is halved until valid.
    ff = FreeForm(cube, smoothing=0.0)
    k = int(torch.argmax(cube.points[torch.as_tensor(ff.surface_nodes), 0]))  # on x = +1

    def crush():
        return (ff.parameters["z"][k, 0] + 3.0) ** 2  # wants the vertex at x = -2

    hist = fit(
        crush,
        ff,
        optimizer="adam",
        lr=2.0,
        maxiter=3,
        quiet=True,
        guard=QualityGuard(max_backtracks=8),
    )
    assert bool((ff.mesh().tet_signed_volumes() > 0).all())
    assert any("halved" in e or "stopped" in e for e in hist.events), hist.events


def test_physical_parameters_log_space():
    pp = PhysicalParameters(diffusivity=0.002, permeability=1e-4)
    assert abs(float(pp.value("diffusivity")) - 0.002) < 1e-15
    with pytest.raises(SetupError, match="unknown physical parameter"):
        pp.value("T2")
    with pytest.raises(SetupError, match="positive"):
        PhysicalParameters(permeability=0.0)
    np.testing.assert_allclose(np.exp(pp.values()["log_permeability"]), 1e-4)
