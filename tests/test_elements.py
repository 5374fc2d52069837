"""Element integrals of :mod:`spindoctor_torch.fem.elements` against independent references.

Every name in ``elements.__all__`` is checked:

* ``TET_PAIRS``: the 10 upper-triangle pairs of a 4x4 matrix, each once, diagonal first.
* ``tet_geometry``: signed volume against ``numpy.linalg.det`` of the edge matrix / 6, basis
  gradients against the solution of the 4x4 barycentric system (``numpy.linalg.inv``), and its
  autograd derivative against central finite differences (``torch.autograd.gradcheck``).
* ``tet_mass``, ``tet_first_moments``, ``triangle_mass``: against quadrature of the products of
  P1 basis functions, the basis evaluated at the quadrature points by solving the barycentric
  system (not from the closed forms under test).
* ``tet_stiffness``: against V·GᵀDG with G the gradients from ``numpy.linalg.inv``, for
  isotropic (M,) and full (M, 3, 3) diffusivities.

Quadrature rule (implemented here, independent of the λ-monomial formula the module uses):
the collapsed-coordinate (Duffy / Stroud conical product) rule. The unit cube maps onto the
reference tet by x = u, y = v(1 − u), z = w(1 − u)(1 − v) with Jacobian (1 − u)²(1 − v); a
polynomial of total degree d in (x, y, z) becomes a polynomial of degree ≤ d + 2 in u,
≤ d + 1 in v and ≤ d in w, so an n-point Gauss–Legendre rule in each direction (exact to degree
2n − 1) integrates it exactly when 2n − 1 ≥ d + 2. The integrands are of degree 2 (mass) and
3 (first moments), so n = 3 (exact to degree 5 ≥ 3 + 2) suffices; n = 4 is used for margin.
Triangles use the 2D analogue x = u, y = v(1 − u), Jacobian (1 − u), degree ≤ d + 1 in u.
An affine map to the physical element multiplies by |det E| (edge matrix E) and preserves
polynomial degree, so the physical integrals are exact up to round-off as well.

Tolerances: all float64 comparisons use 1e-12 relative to the largest entry of the reference.
The tets are drawn with a shape-quality floor (condition number of the edge matrix ≤ 50), so
the inverse / cross-product gradients lose at most ~cond·eps ≈ 1e-14; quadrature sums of
64 terms add ~1e-15. 1e-12 is round-off level with two orders of margin, yet any wrong
coefficient (e.g. V/10 instead of V/20) would fail by O(1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spindoctor_torch.fem import elements
from spindoctor_torch.fem.elements import (
    TET_PAIRS,
    tet_first_moments,
    tet_geometry,
    tet_mass,
    tet_stiffness,
    triangle_mass,
)

RTOL = 1e-12  # round-off level, see module docstring
N_TETS = 12


# ---------------------------------------------------------------------------------------------
# independent references (numpy)
# ---------------------------------------------------------------------------------------------


def _random_tets(rng: np.random.Generator, m: int, scale: float = 3.0) -> np.ndarray:
    """(m, 4, 3) random non-degenerate tets (both orientations), edge-matrix condition ≤ 50."""
    out = []
    while len(out) < m:
        p = rng.normal(size=(4, 3)) * scale + rng.normal(size=3) * 10.0
        e = p[1:] - p[0]
        if np.linalg.cond(e) <= 50.0:
            out.append(p)
    return np.stack(out)


def _random_triangles(rng: np.random.Generator, m: int) -> np.ndarray:
    """(m, 3, 3) random non-degenerate triangles in 3D (edge cross product not tiny)."""
    out = []
    while len(out) < m:
        p = rng.normal(size=(3, 3)) * 2.0 + rng.normal(size=3) * 5.0
        e1, e2 = p[1] - p[0], p[2] - p[0]
        if np.linalg.norm(np.cross(e1, e2)) > 0.2 * np.linalg.norm(e1) * np.linalg.norm(e2):
            out.append(p)
    return np.stack(out)


def _random_spd(rng: np.random.Generator, m: int) -> np.ndarray:
    """(m, 3, 3) random symmetric positive definite diffusion tensors, µm²/µs scale."""
    a = rng.normal(size=(m, 3, 3))
    return 1e-3 * (a @ a.transpose(0, 2, 1) + 0.5 * np.eye(3))


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _bary_inverse(p: np.ndarray) -> np.ndarray:
    """Inverse of the barycentric system [1 1 1 1; p_0 p_1 p_2 p_3] for one tet (4, 3).

    λ(x) = A⁻¹ [1; x], so row k of A⁻¹ is (constant, ∇λ_k).
    """
    a = np.vstack([np.ones(4), p.T])
    return np.linalg.inv(a)


def _tet_rule(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Collapsed Gauss–Legendre rule on the reference tet: points (n³, 3), weights (n³,)."""
    t, w = np.polynomial.legendre.leggauss(n)
    t, w = 0.5 * (t + 1.0), 0.5 * w  # on [0, 1]
    u, v, s = np.meshgrid(t, t, t, indexing="ij")
    wu, wv, ws = np.meshgrid(w, w, w, indexing="ij")
    x = u
    y = v * (1.0 - u)
    z = s * (1.0 - u) * (1.0 - v)
    wt = wu * wv * ws * (1.0 - u) ** 2 * (1.0 - v)
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1), wt.ravel()


def _tri_rule(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Collapsed Gauss–Legendre rule on the reference triangle: points (n², 2), weights (n²,)."""
    t, w = np.polynomial.legendre.leggauss(n)
    t, w = 0.5 * (t + 1.0), 0.5 * w
    u, v = np.meshgrid(t, t, indexing="ij")
    wu, wv = np.meshgrid(w, w, indexing="ij")
    return np.stack([u.ravel(), (v * (1.0 - u)).ravel()], axis=1), (wu * wv * (1.0 - u)).ravel()


def _tet_quadrature(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference (4,4) mass, (3,4,4) first moments and |V| of one tet by quadrature."""
    xi, w = _tet_rule()
    e = (p[1:] - p[0]).T  # columns are edges
    x = p[0] + xi @ e.T  # (Q, 3) physical points
    jac = abs(np.linalg.det(e))
    ainv = _bary_inverse(p)
    lam = (ainv @ np.vstack([np.ones(len(x)), x.T])).T  # (Q, 4) from the linear solve
    wq = w * jac
    mass = np.einsum("q,qk,ql->kl", wq, lam, lam)
    first = np.einsum("q,qd,qk,ql->dkl", wq, x, lam, lam)
    vol = wq.sum()
    return mass, first, vol


def _triangle_quadrature(p: np.ndarray) -> tuple[np.ndarray, float]:
    """Reference (3,3) mass and area of one triangle in 3D by quadrature."""
    xi, w = _tri_rule()
    e1, e2 = p[1] - p[0], p[2] - p[0]
    x = p[0] + xi[:, :1] * e1 + xi[:, 1:] * e2  # (Q, 3)
    area2 = np.linalg.norm(np.cross(e1, e2))  # Jacobian of the affine map
    # barycentrics by least squares on the (consistent) 4x3 system [1 1 1; p_0 p_1 p_2] λ = [1; x]
    a = np.vstack([np.ones(3), p.T])
    lam = np.linalg.lstsq(a, np.vstack([np.ones(len(x)), x.T]), rcond=None)[0].T  # (Q, 3)
    wq = w * area2
    return np.einsum("q,qk,ql->kl", wq, lam, lam), wq.sum()


def _assert_close(actual: torch.Tensor, expected: np.ndarray, rtol: float = RTOL) -> None:
    a = actual.detach().cpu().numpy()
    scale = np.abs(expected).max()
    err = np.abs(a - expected).max()
    assert a.shape == expected.shape, (a.shape, expected.shape)
    assert err <= rtol * scale, f"max error {err:.3e} > {rtol:.0e} x scale {scale:.3e}"


@pytest.fixture(scope="module")
def tets() -> np.ndarray:
    return _random_tets(np.random.default_rng(20240611), N_TETS)


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


def test_all_is_covered() -> None:
    # Guard: a new export must get a test here.
    assert set(elements.__all__) == {
        "TET_PAIRS",
        "tet_geometry",
        "tet_mass",
        "tet_stiffness",
        "tet_first_moments",
        "triangle_mass",
    }


def test_tet_pairs() -> None:
    rows, cols = TET_PAIRS
    pairs = list(zip(rows, cols))
    assert len(pairs) == 10
    assert set(pairs) == {(k, l) for k in range(4) for l in range(k, 4)}
    assert pairs[:4] == [(0, 0), (1, 1), (2, 2), (3, 3)]  # diagonal first, as documented


def test_quadrature_rule_is_exact() -> None:
    # Self-check of the reference rule on monomials with known integrals over the reference
    # simplex: ∫ x^a y^b z^c = a! b! c! / (a+b+c+3)!, up to total degree 5.
    from math import factorial

    xi, w = _tet_rule()
    for a in range(6):
        for b in range(6 - a):
            for c in range(6 - a - b):
                exact = factorial(a) * factorial(b) * factorial(c) / factorial(a + b + c + 3)
                got = np.sum(w * xi[:, 0] ** a * xi[:, 1] ** b * xi[:, 2] ** c)
                assert abs(got - exact) <= 1e-15 + 1e-13 * exact, (a, b, c)
    xi2, w2 = _tri_rule()
    for a in range(6):
        for b in range(6 - a):
            exact = factorial(a) * factorial(b) / factorial(a + b + 2)
            got = np.sum(w2 * xi2[:, 0] ** a * xi2[:, 1] ** b)
            assert abs(got - exact) <= 1e-15 + 1e-13 * exact, (a, b)


def test_tet_geometry_volume_and_gradients(tets: np.ndarray) -> None:
    vol, grads = tet_geometry(torch.from_numpy(tets))
    assert vol.dtype == torch.float64 and grads.dtype == torch.float64
    assert vol.shape == (N_TETS,) and grads.shape == (N_TETS, 4, 3)
    ref_vol = np.linalg.det(tets[:, 1:] - tets[:, :1]) / 6.0  # signed
    assert (ref_vol > 0).any() and (ref_vol < 0).any()  # both orientations exercised
    _assert_close(vol, ref_vol)
    ref_grads = np.stack([_bary_inverse(p)[:, 1:] for p in tets])
    for m in range(N_TETS):
        _assert_close(grads[m], ref_grads[m])
    # partition of unity: the gradients sum to zero (to round-off of their size)
    gsum = grads.sum(1).abs().max().item()
    assert gsum <= RTOL * grads.abs().max().item()


def test_tet_geometry_autograd_matches_finite_differences(tets: np.ndarray) -> None:
    # The module promises differentiable element matrices: gradcheck compares autograd with
    # central finite differences (its default eps 1e-6, atol 1e-5, rtol 1e-3 are FD-truncation
    # tolerances, far below the O(1) error of a wrong derivative).
    p = torch.from_numpy(tets[:2].copy()).requires_grad_(True)
    diff = torch.from_numpy(_random_spd(np.random.default_rng(1), 2))

    def f(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        v, g = tet_geometry(x)
        return v, g, tet_stiffness(v, g, diff), tet_first_moments(v, x)

    assert torch.autograd.gradcheck(f, (p,))


def test_tet_mass_and_first_moments_by_quadrature(tets: np.ndarray) -> None:
    vol, _ = tet_geometry(torch.from_numpy(tets))
    avol = vol.abs()
    mass = tet_mass(avol)
    first = tet_first_moments(avol, torch.from_numpy(tets))
    assert mass.shape == (N_TETS, 4, 4) and first.shape == (3, N_TETS, 4, 4)
    assert mass.dtype == torch.float64 and first.dtype == torch.float64
    for m in range(N_TETS):
        ref_mass, ref_first, ref_vol = _tet_quadrature(tets[m])
        assert abs(avol[m].item() - ref_vol) <= RTOL * ref_vol
        _assert_close(mass[m], ref_mass)
        _assert_close(first[:, m], ref_first)


@pytest.mark.parametrize("kind", ["isotropic", "tensor"])
def test_tet_stiffness(tets: np.ndarray, kind: str) -> None:
    rng = np.random.default_rng(7)
    vol, grads = tet_geometry(torch.from_numpy(tets))
    avol = vol.abs()
    if kind == "isotropic":
        d = rng.uniform(1e-3, 3e-3, size=N_TETS)
        dmat = d[:, None, None] * np.eye(3)
    else:
        d = dmat = _random_spd(rng, N_TETS)
    k = tet_stiffness(avol, grads, torch.from_numpy(d))
    assert k.shape == (N_TETS, 4, 4) and k.dtype == torch.float64
    for m in range(N_TETS):
        g = _bary_inverse(tets[m])[:, 1:]  # (4, 3) gradients from the linear solve
        ref = abs(np.linalg.det(tets[m, 1:] - tets[m, 0])) / 6.0 * g @ dmat[m] @ g.T
        _assert_close(k[m], ref)
        # constants are in the kernel: row sums vanish (to round-off of the entries)
        assert np.abs(ref.sum(1)).max() <= RTOL * np.abs(ref).max()


def test_triangle_mass_by_quadrature() -> None:
    tris = _random_triangles(np.random.default_rng(99), 8)
    areas = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    fm = triangle_mass(torch.from_numpy(areas))
    assert fm.shape == (8, 3, 3) and fm.dtype == torch.float64
    for m in range(8):
        ref, ref_area = _triangle_quadrature(tris[m])
        assert abs(areas[m] - ref_area) <= RTOL * ref_area
        _assert_close(fm[m], ref)


def test_rigid_motion_invariances(tets: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    rot = _rotation(rng)
    shift = np.array([7.5, -3.25, 12.0])
    moved = tets @ rot.T + shift
    dmat = _random_spd(rng, N_TETS)

    v0, g0 = tet_geometry(torch.from_numpy(tets))
    v1, g1 = tet_geometry(torch.from_numpy(moved))
    _assert_close(v1, v0.numpy())  # proper rotation keeps the signed volume
    a0, a1 = v0.abs(), v1.abs()
    m0 = tet_mass(a0)
    _assert_close(tet_mass(a1), m0.numpy())
    # gradients rotate: ∇λ' = R ∇λ
    _assert_close(g1, (g0.numpy() @ rot.T))
    # stiffness: isotropic D invariant; tensor D transforms as R D Rᵀ
    d_iso = torch.full((N_TETS,), 2e-3, dtype=torch.float64)
    _assert_close(tet_stiffness(a1, g1, d_iso), tet_stiffness(a0, g0, d_iso).numpy())
    d_rot = rot @ dmat @ rot.T
    _assert_close(
        tet_stiffness(a1, g1, torch.from_numpy(d_rot)),
        tet_stiffness(a0, g0, torch.from_numpy(dmat)).numpy(),
    )
    # first moments: J'(Rp + t)_d = Σ_e R_de J(p)_e + t_d M
    j0 = tet_first_moments(a0, torch.from_numpy(tets)).numpy()
    j1 = tet_first_moments(a1, torch.from_numpy(moved))
    ref = np.einsum("de,emkl->dmkl", rot, j0) + shift[:, None, None, None] * m0.numpy()[None]
    _assert_close(j1, ref)
    # pure translation alone: J shifts by t · M exactly
    jt = tet_first_moments(a0, torch.from_numpy(tets + shift))
    _assert_close(jt, j0 + shift[:, None, None, None] * m0.numpy()[None])


def test_float32_path(tets: np.ndarray) -> None:
    # float32 inputs stay float32; values agree with float64 to single-precision round-off
    # (1e-5 relative: ~cond(E)·eps32 ≈ 50 · 6e-8 = 3e-6 for the gradients, less elsewhere).
    p64 = torch.from_numpy(tets)
    p32 = p64.float()
    v32, g32 = tet_geometry(p32)
    v64, g64 = tet_geometry(p64)
    d_iso = torch.full((N_TETS,), 2e-3)
    d_ten = torch.from_numpy(_random_spd(np.random.default_rng(5), N_TETS))
    outs32 = [
        v32,
        g32,
        tet_mass(v32.abs()),
        tet_stiffness(v32.abs(), g32, d_iso),
        tet_stiffness(v32.abs(), g32, d_ten.float()),
        tet_first_moments(v32.abs(), p32),
        triangle_mass(v32.abs()),
    ]
    outs64 = [
        v64,
        g64,
        tet_mass(v64.abs()),
        tet_stiffness(v64.abs(), g64, d_iso.double()),
        tet_stiffness(v64.abs(), g64, d_ten),
        tet_first_moments(v64.abs(), p64),
        triangle_mass(v64.abs()),
    ]
    for o32, o64 in zip(outs32, outs64):
        assert o32.dtype == torch.float32
        _assert_close(o32, o64.numpy(), rtol=1e-5)
