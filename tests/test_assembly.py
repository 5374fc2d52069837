"""FEM assembly: exact identities, an independent loop-per-element reference, gradients.

References here never come from spindoctor_torch.fem: closed-form integrals of polynomials
over polyhedra, and a plainly written per-element assembly using quadrature rules.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from spindoctor_torch import Model, SetupError, assemble
from spindoctor_torch.mesh.structured import structured_box, structured_slabs

RTOL_IDENTITY = 1e-10  # the bound; observed errors are ~1e-15 (round-off)


@pytest.fixture(scope="module")
def slab_mesh():
    """Three compartments along x, jittered interior nodes (not just cubes)."""
    return structured_slabs([1.0, 1.5, 0.5], (1.0, 1.25), h=0.25, jitter=0.2, seed=3)


def _model(mesh, **kw):
    args = dict(
        diffusivity=[0.001, 0.002, 0.003],
        permeability={(0, 1): 2e-4, (1, 2): 5e-4},
        relaxivity=[1e-5, 2e-5, 3e-5],
        relaxation=[2e4, 5e4, float("inf")],
        density=[1.0, 2.0, 1.5],
    )
    args.update(kw)
    return Model(mesh, **args)


def rel(a, b):
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-300)


def test_mass_and_stiffness_identities(slab_mesh):
    mats = assemble(_model(slab_mesh))
    one = torch.ones(slab_mesh.ndof, dtype=torch.float64)
    vol = slab_mesh.compartment_volumes()
    # 1ᵀM1 = |Ω| (exact: boxes of volume 1·1.25·{1, 1.5, 0.5}).
    assert rel(mats.M.bilinear(one, one), 3.0 * 1.25) < RTOL_IDENTITY
    assert np.allclose(vol.numpy(), [1.25, 1.875, 0.625], rtol=RTOL_IDENTITY)
    # K·1 = 0 (constants are in the kernel of the stiffness).
    assert float((mats.K @ one).abs().max()) < 1e-15 * float(mats.K.values.abs().max()) * 100
    # xᵀKx = Σ D_i |Ω_i| for the linear function x_d (∇x_d = e_d).
    x = slab_mesh.points[mats.fem.dof_node]
    expected = float((torch.tensor([0.001, 0.002, 0.003], dtype=torch.float64) * vol).sum())
    for d in range(3):
        assert rel(mats.K.bilinear(x[:, d], x[:, d]), expected) < RTOL_IDENTITY


def test_first_moment_identity(slab_mesh):
    """1ᵀJ_d1 = ∫Ω x_d, computed exactly for a polyhedron as Σ V_tet · centroid_d."""
    mats = assemble(_model(slab_mesh))
    one = torch.ones(slab_mesh.ndof, dtype=torch.float64)
    p = slab_mesh.points[slab_mesh.tets]
    exact = (slab_mesh.tet_volumes()[:, None] * p.mean(1)).sum(0)
    # Independent of the mesh too: the box [0,3]x[0,1]x[0,1.25] has centroid (1.5, .5, .625).
    assert np.allclose(exact.numpy(), np.array([1.5, 0.5, 0.625]) * 3.75, rtol=1e-12)
    for d in range(3):
        assert rel(mats.J[d].bilinear(one, one), exact[d]) < RTOL_IDENTITY


def test_tensor_diffusivity_quadratic_form():
    mesh = structured_box((1.0, 2.0, 1.5), (3, 4, 3), jitter=0.2, seed=1)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    dten = 1e-3 * (a @ a.T + np.eye(3))
    mats = assemble(Model(mesh, diffusivity=torch.tensor(dten)))
    x = mesh.points[mats.fem.dof_node]
    for u in (np.array([1.0, 0, 0]), np.array([1.0, -2.0, 0.5])):
        f = x @ torch.tensor(u)
        expected = u @ dten @ u * 3.0
        assert rel(mats.K.bilinear(f, f), expected) < RTOL_IDENTITY


def test_interface_facet_mass_area(slab_mesh):
    """1ᵀ(interface facet mass)1 = interface area, read off Q with κ = 1 on one interface."""
    model = Model(slab_mesh, permeability={(0, 1): 1e-3, (1, 2): 0.0}, relaxivity=0.0)
    mats = assemble(model)
    ndof = slab_mesh.ndof
    side0 = (mats.fem.dof_compartment == 0).to(torch.float64)
    # Q restricted to the (0,0) block holds κ·(facet mass of Γ_01): area 1 x 1.25.
    assert rel(mats.Q.bilinear(side0, side0) / 1e-3, 1.25) < RTOL_IDENTITY
    one = torch.ones(ndof, dtype=torch.float64)
    # Equal density: flux conservation, Q·1 = 0 without walls.
    assert float((mats.Q @ one).abs().max()) < 1e-18


def test_outer_wall_relaxivity_area():
    mesh = structured_box((1.0, 2.0, 3.0), (2, 3, 4), jitter=0.15)
    mats = assemble(Model(mesh, relaxivity=1e-4))
    one = torch.ones(mesh.ndof, dtype=torch.float64)
    assert rel(mats.Q.bilinear(one, one), 1e-4 * 22.0) < RTOL_IDENTITY


def test_weighted_coupling_keeps_equilibrium_density(slab_mesh):
    """With c_ij = 2ρ_i/(ρ_i+ρ_j) the stepwise-constant equilibrium ρ is stationary."""
    model = _model(slab_mesh, relaxivity=0.0)
    mats = assemble(model)
    rho = model.initial_magnetization()
    assert float((mats.Q @ rho).abs().max()) < 1e-18
    sym = assemble(_model(slab_mesh, relaxivity=0.0, coupling="symmetric"))
    assert float((sym.Q @ rho).abs().max()) > 1e-6  # symmetric coupling is not balanced


# ---------------------------------------------------------------- independent reference
# Keast degree-3 rule on the reference tet (weights sum to 1, relative to the volume).
_KEAST_BARY = np.array(
    [[0.25] * 4] + [list(p) for p in set(itertools.permutations([0.5, 1 / 6, 1 / 6, 1 / 6]))]
)
_KEAST_W = np.array([-0.8] + [0.45] * 4)
# Edge-midpoint rule on triangles (degree 2 exact).
_TRI_BARY = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])
_TRI_W = np.full(3, 1 / 3)


def _reference_assembly(mesh, dvals, kappas_pair, relax_cmpt, t2, rho, coupling):
    """Loop per element: P1 basis from the inverse of [1 x y z], quadrature integrals."""
    pts = mesh.points.detach().numpy()
    tets = mesh.topology.tets_array
    lab = mesh.topology.tet_compartment
    ncmpt = lab.max() + 1
    # Independent dof split: per compartment, sorted nodes.
    maps = [np.unique(tets[lab == c]) for c in range(ncmpt)]
    offs = np.cumsum([0] + [len(m) for m in maps])
    local = [dict(zip(m.tolist(), range(len(m)))) for m in maps]

    def dof(c, node):
        return offs[c] + local[c][node]

    n = offs[-1]
    mats = {k: sp.lil_matrix((n, n)) for k in ("M", "K", "R", "Jx", "Jy", "Jz", "Q")}
    for t, c in zip(tets, lab):
        x = pts[t]
        a = np.hstack([np.ones((4, 1)), x])
        coef = np.linalg.inv(a)  # column k: coefficients of basis k
        grads = coef[1:, :].T  # (4, 3)
        vol = abs(np.linalg.det(a)) / 6.0
        qx = _KEAST_BARY @ x  # quadrature points
        phi = _KEAST_BARY  # basis values at the points = barycentric coordinates
        d = [dof(c, v) for v in t]
        for k in range(4):
            for l in range(4):
                m = vol * np.sum(_KEAST_W * phi[:, k] * phi[:, l])
                mats["M"][d[k], d[l]] += m
                mats["R"][d[k], d[l]] += m / t2[c]
                mats["K"][d[k], d[l]] += vol * grads[k] @ dvals[c] @ grads[l]
                for ax, name in enumerate(("Jx", "Jy", "Jz")):
                    mats[name][d[k], d[l]] += vol * np.sum(
                        _KEAST_W * qx[:, ax] * phi[:, k] * phi[:, l]
                    )
    # Boundary faces by counting, with the compartments on each side.
    faces = {}
    for t, c in zip(tets, lab):
        for skip in range(4):
            f = tuple(sorted(np.delete(t, skip).tolist()))
            faces.setdefault(f, []).append(c)
    for f, cs in faces.items():
        x = pts[list(f)]
        area = 0.5 * np.linalg.norm(np.cross(x[1] - x[0], x[2] - x[0]))
        fm = np.array(
            [
                [area * np.sum(_TRI_W * _TRI_BARY[:, k] * _TRI_BARY[:, l]) for l in range(3)]
                for k in range(3)
            ]
        )
        if len(cs) == 1:
            kap = relax_cmpt[cs[0]]
            for k in range(3):
                for l in range(3):
                    mats["Q"][dof(cs[0], f[k]), dof(cs[0], f[l])] += kap * fm[k, l]
        elif cs[0] != cs[1]:
            i, j = sorted(cs)
            kap = kappas_pair[(i, j)]
            if coupling == "weighted":
                cij, cji = 2 * rho[i] / (rho[i] + rho[j]), 2 * rho[j] / (rho[i] + rho[j])
            else:
                cij = cji = 1.0
            for k in range(3):
                for l in range(3):
                    mats["Q"][dof(i, f[k]), dof(i, f[l])] += kap * cji * fm[k, l]
                    mats["Q"][dof(i, f[k]), dof(j, f[l])] -= kap * cij * fm[k, l]
                    mats["Q"][dof(j, f[k]), dof(j, f[l])] += kap * cij * fm[k, l]
                    mats["Q"][dof(j, f[k]), dof(i, f[l])] -= kap * cji * fm[k, l]
    return {k: v.toarray() for k, v in mats.items()}


def _assemble_against_loop(mesh, dvals, coupling, names):
    """``assemble`` of a three-compartment model (diffusion tensors ``dvals``, two permeable
    interfaces, Robin walls, T2, densities) against :func:`_reference_assembly`: every matrix
    in ``names`` to 1e-12 relative (round-off of the loop sums). Returns the matrices."""
    kappas = {(0, 1): 3e-4, (1, 2): 7e-4}
    relax, t2, rho = [1e-5, 0.0, 4e-5], [3e4, 6e4, 9e4], [1.0, 0.5, 2.0]
    model = Model(
        mesh,
        diffusivity=torch.tensor(np.array(dvals)),
        permeability=kappas,
        relaxivity=relax,
        relaxation=t2,
        density=rho,
        coupling=coupling,
    )
    mats = assemble(model)
    ref = _reference_assembly(mesh, dvals, kappas, relax, t2, rho, coupling)
    ours = {"M": mats.M, "K": mats.K, "R": mats.R, "Q": mats.Q}
    ours.update({f"J{x}": J for x, J in zip("xyz", mats.J)})
    for name in names:
        err = np.abs(ours[name].to_dense().numpy() - ref[name]).max() / np.abs(ref[name]).max()
        assert err <= 1e-12, f"{name}: max relative deviation {err:.2e} ({coupling})"
    return mats


@pytest.mark.parametrize("coupling", ["weighted", "symmetric"])
def test_matches_independent_loop_assembly(coupling):
    mesh = structured_slabs([0.5, 0.75, 0.5], (0.5, 0.5), h=0.25, jitter=0.2, seed=7)
    rng = np.random.default_rng(1)
    dvals = []
    for _ in range(3):
        a = rng.normal(size=(3, 3))
        dvals.append(1e-3 * (a @ a.T + np.eye(3)))
    _assemble_against_loop(mesh, dvals, coupling, ("M", "K", "R", "Q", "Jx", "Jy", "Jz"))


def test_boundary_vectors_G_against_normals():
    """G rows sum, per compartment, to ∮ n dA = 0 (closed surface), and on a box the
    x-component of G over the face x = 0 is −area/1 (outward normal −e_x)."""
    mesh = structured_slabs([1.0, 1.0], (1.0, 1.0), h=0.5, jitter=0.1)
    mats = assemble(Model(mesh))
    for c in range(2):
        g = mats.G[mats.fem.dof_compartment == c].sum(0)
        assert float(g.abs().max()) < 1e-14
    x = mesh.points[mats.fem.dof_node]
    left = (x[:, 0] < 1e-12) & (mats.fem.dof_compartment == 0)
    assert rel(mats.G[left, 0].sum(), -1.0) < 1e-12


# ---------------------------------------------------------------- gradients
def test_gradcheck_volume_quadratic_forms_and_q():
    mesh0 = structured_slabs([0.5, 0.5], (0.5, 0.5), h=0.25, jitter=0.15, seed=2)
    pts0 = mesh0.points.detach().clone()
    rng = np.random.default_rng(5)
    w = torch.tensor(rng.normal(size=mesh0.ndof))

    def f(points, dval, kappa, t2, rho):
        mesh = mesh0.with_points(points)
        model = Model(
            mesh,
            diffusivity=dval,
            permeability=kappa,
            relaxation=t2,
            density=rho,
            relaxivity=1e-4,
        )
        m = assemble(model)
        return (
            mesh.volume(),
            m.K.bilinear(w, w),
            m.M.bilinear(w, w),
            m.Q.bilinear(w, w),
            m.R.bilinear(w, w),
            m.J[1].bilinear(w, w),
            m.G.sum(),
        )

    args = (
        pts0.requires_grad_(True),
        torch.tensor([0.002, 0.001], dtype=torch.float64, requires_grad=True),
        torch.tensor(3e-4, dtype=torch.float64, requires_grad=True),
        torch.tensor([2e4, 4e4], dtype=torch.float64, requires_grad=True),
        torch.tensor([1.0, 1.7], dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(f, args, eps=1e-7, atol=1e-9, rtol=1e-6)


def test_gradcheck_full_tensor_diffusivity_and_first_moments():
    """The analytic backward of the volume terms w.r.t. points and a full tensor D."""
    mesh0 = structured_slabs([0.5, 0.5], (0.5, 0.5), h=0.25, jitter=0.15, seed=4)
    w = torch.tensor(np.random.default_rng(2).normal(size=mesh0.ndof))
    a = np.random.default_rng(3).normal(size=(2, 3, 3))
    dten = torch.tensor(1e-3 * (a @ a.transpose(0, 2, 1) + np.eye(3)), requires_grad=True)

    def f(points, d):
        m = assemble(Model(mesh0.with_points(points), diffusivity=(d + d.transpose(1, 2)) / 2))
        return m.K.bilinear(w, w), m.J[2].bilinear(w, w), m.M.bilinear(w, w)

    pts = mesh0.points.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (pts, dten), eps=1e-7, atol=1e-9, rtol=1e-6)


def test_reassembly_after_vertex_move_reuses_pattern():
    mesh = structured_box((1, 1, 1), (3, 3, 3), jitter=0.1)
    a = assemble(Model(mesh))
    moved = mesh.with_points(mesh.points * 1.1)
    b = assemble(Model(moved))
    assert a.fem is b.fem  # same cached pattern object
    # Scaling by s multiplies M by s³ and K by s.
    assert torch.allclose(b.M.values, a.M.values * 1.1**3, rtol=1e-12)
    assert torch.allclose(b.K.values, a.K.values * 1.1, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64(dtype):
    mesh = structured_box((1, 1, 1), (3, 3, 3), jitter=0.1).to(dtype=dtype)
    mats = assemble(Model(mesh))
    assert mats.M.values.dtype == dtype
    one = torch.ones(mesh.ndof, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert rel(mats.M.bilinear(one, one), 1.0) < tol


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(diffusivity=-0.002), "positive semi-definite"),
        (dict(diffusivity=2e-9), "looks like m²/s"),
        (dict(diffusivity=2.0), "µm²/ms"),
        (
            dict(diffusivity=torch.tensor([[1e-3, 2e-3, 0], [0, 1e-3, 0], [0, 0, 1e-3]])),
            "symmetric",
        ),
        (dict(diffusivity=torch.diag(torch.tensor([1e-3, -1e-3, 1e-3]))), "semi-definite"),
        (dict(permeability={(0, 2): 1e-4}), r"interface \(0, 2\).*does not exist"),
        (dict(permeability=-1e-4), "non-negative"),
        (dict(relaxation=0.05), "looks like seconds"),
        (dict(relaxation=[1e4, 2e4]), "one value per compartment"),
        (dict(density=-1.0), "non-negative"),
        (dict(coupling="sym"), "coupling"),
    ],
)
def test_bad_model_input(kwargs, match, slab_mesh):
    with pytest.raises(SetupError, match=match):
        Model(slab_mesh, **kwargs)


# ---------------------------------------------------------------- blocked volume assembly
def _small_blocks(mesh, block, monkeypatch, workers=3):
    """The FEM pattern of ``mesh``; for the rest of the test the volume terms are processed in
    blocks of ``block`` tets shared among ``workers`` threads."""
    import spindoctor_torch.fem.tet_assembly as ta
    from spindoctor_torch.fem.pattern import fem_pattern

    monkeypatch.setattr(ta, "_CACHE_BLOCK", block)
    monkeypatch.setattr(ta, "_SERIAL_BLOCK", block)
    monkeypatch.setattr(ta, "_num_workers", lambda: workers)
    monkeypatch.setattr(ta, "_PER_PAIR_MIN", block // 2)  # full blocks per pair, short ones not
    chunks = ta._schedule(mesh.ntet, mesh.points.device)
    assert len(chunks) == min(workers, -(-mesh.ntet // block))
    return fem_pattern(mesh)


def _random_spd(rng, n):
    a = rng.normal(size=(n, 3, 3))
    return 1e-3 * (a @ a.transpose(0, 2, 1) + np.eye(3))


def test_pattern_matches_plain_construction():
    """Pattern = all tet dof pairs ∪ interface cross pairs (both orders), built here with
    np.unique; the upper-triangle maps point at (min, max) of each pair."""
    mesh = structured_slabs([0.5, 0.75, 0.5], (0.5, 0.5), h=0.25, jitter=0.2, seed=11)
    from spindoctor_torch.fem.pattern import fem_pattern

    fp = fem_pattern(mesh)
    topo = mesh.topology
    n = topo.ndof
    td = topo.tet_dofs
    keys = [(td[:, :, None] * n + td[:, None, :]).ravel()]
    fd = topo.facet_dofs[topo.facet_dofs[:, 1, 0] >= 0]
    for s, t in ((0, 1), (1, 0)):
        keys.append((fd[:, s, :, None] * n + fd[:, t, None, :]).ravel())
    ref = np.unique(np.concatenate(keys))
    rows, cols = fp.pattern.rows.numpy(), fp.pattern.cols.numpy()
    assert np.array_equal(rows * n + cols, ref)
    up = rows <= cols
    assert fp.nupper == int(up.sum())
    u2f = fp.upper_to_full.numpy()
    upper_keys = (rows * n + cols)[up]
    assert np.array_equal(upper_keys[u2f], np.minimum(rows, cols) * n + np.maximum(rows, cols))
    # upper_map against the tets' own (min, max) dof pairs.
    pk, pl = np.array([0, 1, 2, 3, 0, 0, 0, 1, 1, 2]), np.array([0, 1, 2, 3, 1, 2, 3, 2, 3, 3])
    a, b = td[:, pk].T, td[:, pl].T
    um = fp.upper_map.numpy()
    assert np.array_equal(upper_keys[um], np.minimum(a, b) * n + np.maximum(a, b))
    un = fp.upper_nodes.numpy()
    assert np.array_equal(un, topo.dof_node[np.stack([rows[up], cols[up]])])


@pytest.mark.parametrize("dkind", ["isotropic", "anisotropic"])
def test_blocked_assembly_matches_independent_loop(dkind, monkeypatch):
    """Several tet blocks (the last one partial) give the loop reference's matrices; both
    stiffness paths (isotropic fast path, full tensors)."""
    mesh = structured_slabs([0.5, 0.75, 0.5], (0.5, 0.5), h=0.25, jitter=0.2, seed=7)
    fp = _small_blocks(mesh, 23, monkeypatch)
    assert mesh.ntet % 23 != 0 and mesh.ntet > 6 * 23  # several blocks per worker
    rng = np.random.default_rng(4)
    if dkind == "isotropic":
        dvals = [d * np.eye(3) for d in (1e-3, 2.5e-3, 0.7e-3)]
    else:
        dvals = list(_random_spd(rng, 3))
    mats = _assemble_against_loop(mesh, dvals, "weighted", ("M", "K", "R", "Jx", "Jy", "Jz"))
    assert mats.fem is fp
    # Compartment volumes from the same pass: the slabs are 0.5 x 0.5 x {0.5, 0.75, 0.5}.
    assert np.allclose(mats.volumes.numpy(), [0.125, 0.1875, 0.125], rtol=1e-12)


def _volume_terms_probe(mesh0, fp, seed):
    """Scalar probes Σ r_c · values_c of the five matrices (random r_c: every entry counts)
    and the compartment volumes, as a function of (points, D)."""
    from spindoctor_torch.fem.tet_assembly import assemble_volume_terms

    gen = torch.Generator().manual_seed(seed)
    r = torch.rand(5, fp.pattern.nnz, generator=gen, dtype=torch.float64) - 0.5

    def f(points, d, outputs=range(6)):
        out = assemble_volume_terms(mesh0.with_points(points), d, fp)
        probes = [(r[c] * out[c]).sum() if c < 5 else out[5] for c in outputs]
        return tuple(probes)

    return f


@pytest.mark.parametrize(
    "dkind, wrt",
    [
        ("isotropic", "both"),
        ("anisotropic", "both"),
        ("nonsymmetric", "both"),
        ("isotropic", "points"),
        ("anisotropic", "diffusivity"),
    ],
)
def test_volume_terms_gradcheck_blocked(dkind, wrt, monkeypatch):
    """Analytic backward of the blocked volume terms against finite differences, for the
    isotropic fast path (finite differences leave isotropy, so they run the full-tensor
    path), full tensors, and a non-symmetric D (the function uses (D + Dᵀ)/2)."""
    mesh0 = structured_slabs([0.5, 0.5], (0.5, 0.5), h=0.25, jitter=0.15, seed=5)
    fp = _small_blocks(mesh0, 13, monkeypatch)
    rng = np.random.default_rng(8)
    if dkind == "isotropic":
        d = torch.tensor([2e-3, 1e-3], dtype=torch.float64)[:, None, None] * torch.eye(3)
    elif dkind == "anisotropic":
        d = torch.tensor(_random_spd(rng, 2))
    else:
        d = torch.tensor(_random_spd(rng, 2) + 4e-4 * rng.normal(size=(2, 3, 3)))
    pts = mesh0.points.detach().clone()
    f = _volume_terms_probe(mesh0, fp, seed=1)
    pts.requires_grad_(wrt in ("both", "points"))
    d.requires_grad_(wrt in ("both", "diffusivity"))
    # eps = 1e-6 µm: central differences are exact to ~1e-12 here (M, J polynomial, K rational
    # in x; K linear in D), and round-off stays ~1e-16·|f|/eps ≲ 1e-10 < atol.
    assert torch.autograd.gradcheck(f, (pts, d), eps=1e-6, atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("outputs", [(3, 5), (1,), (0, 4)])
def test_volume_terms_gradcheck_some_outputs(outputs, monkeypatch):
    """Backward with gradients for some outputs only (the others None)."""
    mesh0 = structured_slabs([0.5, 0.5], (0.5, 0.5), h=0.25, jitter=0.15, seed=6)
    fp = _small_blocks(mesh0, 29, monkeypatch)
    d = torch.tensor(_random_spd(np.random.default_rng(9), 2), requires_grad=True)
    pts = mesh0.points.detach().clone().requires_grad_(True)
    f = _volume_terms_probe(mesh0, fp, seed=2)
    assert torch.autograd.gradcheck(
        lambda p, dd: f(p, dd, outputs), (pts, d), eps=1e-6, atol=1e-9, rtol=1e-6
    )


def test_volume_terms_float32_matches_float64(monkeypatch):
    """Values and gradients in float32 agree with float64 to float32 round-off (5e-5 of the
    largest magnitude: ~1e3 ulp, sums of ~10 terms with cancellation in K)."""
    mesh = structured_slabs([0.5, 0.5], (0.5, 0.5), h=0.25, jitter=0.15, seed=3)
    fp = _small_blocks(mesh, 17, monkeypatch)
    from spindoctor_torch.fem.tet_assembly import assemble_volume_terms

    d = _random_spd(np.random.default_rng(10), 2)
    res = {}
    for dtype in (torch.float32, torch.float64):
        pts = mesh.points.detach().to(dtype).clone().requires_grad_(True)
        dd = torch.tensor(d, dtype=dtype, requires_grad=True)
        out = assemble_volume_terms(mesh.with_points(pts), dd, fp)
        assert all(o.dtype == dtype for o in out)
        gp, gd = torch.autograd.grad(sum(o.sum() for o in out), (pts, dd))
        assert gp.dtype == dtype and gd.dtype == dtype
        res[dtype] = [o.detach().double() for o in out] + [gp.double(), gd.double()]
    for a, b in zip(res[torch.float32], res[torch.float64]):
        assert float((a - b).abs().max()) <= 5e-5 * float(b.abs().max())
