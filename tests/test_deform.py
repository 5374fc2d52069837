"""Bend and twist maps: exact values at known points, an independent numpy transcription of
SpinDoctor's ``deform_domain``, volume preservation (Jacobian determinant 1), gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spindoctor_torch.errors import MeshError
from spindoctor_torch.mesh.deform import bend, bend_twist, extents, twist


def _cloud(n: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([4.0, 3.0, 10.0])
    return p - torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)


def _deform_domain_numpy(p: np.ndarray, a_bend: float, a_twist: float) -> np.ndarray:
    """SpinDoctor's deform_domain written out independently in numpy (3 x N convention)."""
    p = p.T.copy()
    height = p[2].max() - p[2].min()
    width = p[0].max() - p[0].min()
    zc = (p[2].max() + p[2].min()) / 2
    p[0] = p[0] + a_bend * 30.0 * width * ((p[2] - zc) / height) ** 2
    th = p[2] / height * a_twist
    center = (p[:2].max(axis=1) + p[:2].min(axis=1)) / 2
    x, y = p[0] - center[0], p[1] - center[1]
    p[0] = np.cos(th) * x - np.sin(th) * y + center[0]
    p[1] = np.sin(th) * x + np.cos(th) * y + center[1]
    return p.T


def test_bend_exact_values():
    # x' = x + a·30·W·((z − zc)/H)²: a=0.1, W=2, H=4, zc=0 -> shift 6·(z/4)².
    p = torch.tensor([[1.0, 2.0, 2.0], [1.0, 2.0, 0.0], [-3.0, 0.5, -4.0]], dtype=torch.float64)
    out = bend(p, 0.1, width=2.0, height=4.0, zcenter=0.0)
    expected = torch.tensor([[2.5, 2.0, 2.0], [1.0, 2.0, 0.0], [3.0, 0.5, -4.0]])
    torch.testing.assert_close(out, expected.double(), rtol=0, atol=1e-14)


def test_twist_exact_values():
    # θ = a·z/H: quarter turn at z = H about (0, 0); half turn at z = 2H about (1, 1).
    p = torch.tensor([[1.0, 0.0, 1.0], [2.0, 1.0, 2.0], [3.0, -1.0, 0.0]], dtype=torch.float64)
    out = twist(p, math.pi / 2, height=1.0, center=(0.0, 0.0))
    expected = torch.tensor([[0.0, 1.0, 1.0], [-2.0, -1.0, 2.0], [3.0, -1.0, 0.0]])
    torch.testing.assert_close(out, expected.double(), rtol=0, atol=1e-14)
    out = twist(p[1:2], math.pi / 4, height=1.0, center=(1.0, 1.0))  # θ = π/2 at z = 2
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0, 2.0]]).double(), rtol=0, atol=1e-14)


def test_bend_twist_matches_spindoctor_formula():
    p = _cloud()
    out = bend_twist(p, 0.03, math.pi / 6)
    ref = _deform_domain_numpy(p.numpy(), 0.03, math.pi / 6)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12)


def test_zero_deformation_is_identity():
    p = _cloud()
    torch.testing.assert_close(bend_twist(p, 0.0, 0.0), p, rtol=0, atol=1e-15)


def test_maps_preserve_volume():
    """Bend is a shear (x += f(z)) and twist a z-dependent rotation: det(∂φ/∂x) = 1."""
    pts = _cloud(5)
    for fn in (
        lambda q: bend(q, 0.2, width=4.0, height=10.0, zcenter=0.0),
        lambda q: twist(q, 1.3, height=10.0, center=(0.5, -0.5)),
    ):
        for q in pts:
            jac = torch.autograd.functional.jacobian(lambda x, f=fn: f(x[None])[0], q)
            assert abs(float(torch.linalg.det(jac)) - 1.0) < 1e-12


def test_extents():
    p = _cloud()
    w, h, zc = extents(p)
    assert float(w) == pytest.approx(float(p[:, 0].max() - p[:, 0].min()), abs=0)
    assert float(h) == pytest.approx(float(p[:, 2].max() - p[:, 2].min()), abs=0)
    assert float(zc) == pytest.approx(float(p[:, 2].max() + p[:, 2].min()) / 2, abs=0)


def test_gradcheck_points_and_amounts():
    p = _cloud(12).requires_grad_(True)
    a = torch.tensor(0.04, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    # Extents from the points themselves (SpinDoctor's behaviour, max/min subgradients).
    assert torch.autograd.gradcheck(lambda q, x: bend(q, x), (p, a))
    assert torch.autograd.gradcheck(lambda q, x: twist(q, x), (p, t))
    assert torch.autograd.gradcheck(bend_twist, (p, a, t))
    # Fixed extents.
    assert torch.autograd.gradcheck(
        lambda q, x: bend(q, x, width=3.0, height=9.0, zcenter=0.1), (p, a)
    )


def test_bad_input():
    p = _cloud()
    with pytest.raises(MeshError, match=r"points must have shape \(N, 3\)"):
        bend(p[:, :2], 0.1)
    with pytest.raises(TypeError, match="floating torch tensor"):
        twist(p.numpy(), 0.1)
    with pytest.raises(MeshError, match="bend = nan must be finite"):
        bend(p, float("nan"))
    flat = p.clone()
    flat[:, 2] = 1.0
    with pytest.raises(MeshError, match="height = 0.0 must be positive to twist"):
        twist(flat, 0.3)
    with pytest.raises(MeshError, match="center must be an"):
        twist(p, 0.3, center=(0.0, 0.0, 0.0))
