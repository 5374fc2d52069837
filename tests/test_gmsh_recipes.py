"""gmsh recipes: volumes and areas against closed forms, convergence in h, boundary
numbering, in-memory reading of physical groups, session hygiene, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spindoctor_torch.errors import MeshError
from spindoctor_torch.mesh.gmsh_recipes import (
    box,
    cylinder,
    gmsh_session,
    mesh_size,
    slabs,
    soma_dendrites,
    sphere,
    tetmesh_from_gmsh,
)


def _ball(r: float) -> float:
    return 4.0 / 3.0 * math.pi * r**3


def _rate(hs, errs) -> float:
    """Least-squares slope of log(err) against log(h)."""
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


# ------------------------------------------------------------------ exact planar shapes
def test_box_volume_and_area_exact():
    mesh = box((3.0, 2.0, 1.5), h=0.6, origin=(1.0, -2.0, 0.5))
    # Planar faces are meshed exactly: only round-off (1e-12 relative).
    assert abs(float(mesh.volume()) - 9.0) < 1e-12 * 9.0
    assert mesh.ncompartment == 1 and mesh.nboundary == 1
    area = 2 * (3.0 * 2.0 + 2.0 * 1.5 + 3.0 * 1.5)
    assert abs(float(mesh.boundary_areas()[0]) - area) < 1e-12 * area
    bb = mesh.bounding_box()
    torch.testing.assert_close(
        bb,
        torch.tensor([[1.0, -2.0, 0.5], [4.0, 0.0, 2.0]], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )
    assert mesh.points.dtype == torch.float64
    mesh.check()


def test_slabs_compartments_and_interfaces_exact():
    mesh = slabs([1.0, 2.0, 1.5], (2.0, 1.0), h=0.5)
    # Compartments from x = 0; exact planar volumes w·Ly·Lz (round-off only).
    torch.testing.assert_close(
        mesh.compartment_volumes(),
        torch.tensor([2.0, 4.0, 3.0], dtype=torch.float64),
        rtol=1e-12,
        atol=0,
    )
    assert mesh.boundary_compartments.tolist() == [[0, 1], [1, 2], [0, -1], [1, -1], [2, -1]]
    walls = [2 * (2.0 + 1.0 + 2.0) * 1.0, 2 * 2.0 * (2.0 + 1.0), 2 * 1.5 * (2.0 + 1.0) + 2.0]
    walls[0] = 2 * 1.0 * (2.0 + 1.0) + 2.0  # slab 0: four sides + the x = 0 face
    expected = [2.0, 2.0, *walls]
    torch.testing.assert_close(
        mesh.boundary_areas(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0
    )
    mesh.check()  # conformal interfaces: no hanging nodes


# ------------------------------------------------------------------ curved shapes
def test_sphere_volume_default_size():
    mesh = sphere(5.0)
    # P1 inscribed polyhedron: relative volume deficit ≈ 0.35·(h/R)² ≈ 0.55 % at h = R/8.
    err = abs(float(mesh.volume()) / _ball(5.0) - 1.0)
    assert err < 0.01
    assert abs(float(mesh.boundary_areas()[0]) / (4 * math.pi * 25) - 1.0) < 0.01
    # Centre and extent: every boundary node lies on the sphere (gmsh projects onto it).
    wall = mesh.facets.reshape(-1)
    r = torch.linalg.vector_norm(mesh.points[wall], dim=1)
    assert float((r - 5.0).abs().max()) < 1e-6


def test_sphere_volume_converges_second_order():
    # Above h ≈ 1.6 gmsh's minimum points per circle take over, so sizes start below that.
    hs = [1.5, 1.1, 0.8]
    errs = [abs(float(sphere(5.0, h=h).volume()) / _ball(5.0) - 1.0) for h in hs]
    assert errs[0] > errs[1] > errs[2], errs
    # Boundary interpolation error of P1 is O(h²); allow 1.5..2.5 (three coarse meshes).
    assert 1.5 < _rate(hs, errs) < 2.5, (errs, _rate(hs, errs))


def test_cylinder_volume_default_and_convergence():
    exact = math.pi * 25.0 * 10.0
    mesh = cylinder(5.0, 10.0)
    assert abs(float(mesh.volume()) / exact - 1.0) < 0.01
    hs = [1.5, 1.1, 0.8]
    errs = [abs(float(cylinder(5.0, 10.0, h=h).volume()) / exact - 1.0) for h in hs]
    assert errs[0] > errs[1] > errs[2], errs
    assert 1.5 < _rate(hs, errs) < 2.5, (errs, _rate(hs, errs))
    # Axis along z, z in [-H/2, H/2].
    bb = mesh.bounding_box()
    assert float(bb[0, 2]) == pytest.approx(-5.0, abs=1e-9)
    assert float(bb[1, 2]) == pytest.approx(5.0, abs=1e-9)


def test_layered_sphere_each_layer_within_one_percent():
    radii = [2.0, 3.5, 5.0]
    mesh = sphere(5.0, layers=radii[:2])
    exact = [_ball(2.0), _ball(3.5) - _ball(2.0), _ball(5.0) - _ball(3.5)]
    vols = mesh.compartment_volumes().tolist()
    for v, e in zip(vols, exact):
        assert abs(v / e - 1.0) < 0.01, (vols, exact)
    # Boundaries: interfaces inner-to-outer, then the outer wall (SpinDoctor order).
    assert mesh.boundary_compartments.tolist() == [[0, 1], [1, 2], [2, -1]]
    areas = mesh.boundary_areas().tolist()
    for a, r in zip(areas, radii):
        assert abs(a / (4 * math.pi * r**2) - 1.0) < 0.01, areas
    mesh.check()


def test_cylinder_layers_and_caps_are_separate_boundaries():
    mesh = cylinder(3.0, 4.0, h=0.6, layers=[1.5])
    # [side interface][outer side wall][caps of compartment 0][caps of compartment 1]
    assert mesh.boundary_compartments.tolist() == [[0, 1], [1, -1], [0, -1], [1, -1]]
    expected = [
        2 * math.pi * 1.5 * 4.0,
        2 * math.pi * 3.0 * 4.0,
        2 * math.pi * 1.5**2,
        2 * math.pi * (3.0**2 - 1.5**2),
    ]
    areas = mesh.boundary_areas().tolist()
    for a, e in zip(areas, expected):
        assert abs(a / e - 1.0) < 0.01, (areas, expected)  # polygonal circles, O(h²)
    # Caps are flat at z = ±2 (normal ±z); side facets have their nodes on their cylinder.
    nz = mesh.facet_normals()[:, 2].abs()
    cap = (mesh.facet_boundary == 2) | (mesh.facet_boundary == 3)
    assert float((nz[cap] - 1.0).abs().max()) < 1e-12
    for b, r in [(0, 1.5), (1, 3.0)]:
        nodes = mesh.facets[mesh.facet_boundary == b].reshape(-1)
        rho = torch.linalg.vector_norm(mesh.points[nodes, :2], dim=1)
        assert float((rho - r).abs().max()) < 1e-6


def test_refinement_converts_to_regular_tet_edge():
    h = mesh_size(None, 1.0, 99.0)
    # A regular tetrahedron of edge a has volume a³/(6√2).
    assert h**3 / (6.0 * math.sqrt(2.0)) == pytest.approx(1.0, rel=1e-14)
    assert mesh_size(None, None, 0.7) == 0.7
    assert mesh_size(0.3, None, 0.7) == 0.3
    # The refinement is honoured: mean tet volume of a box is below and near the cap.
    mesh = box((4.0, 4.0, 4.0), refinement=0.125)
    mean_vol = float(mesh.volume()) / mesh.ntet
    assert 0.125 / 8 < mean_vol < 0.125


def test_soma_dendrites_volume_and_stl(tmp_path):
    import trimesh

    stl = tmp_path / "neuron.stl"
    mesh = soma_dendrites(
        soma_radius=4.0, dendrite_length=12.0, dendrite_radii=(1.5, 0.75), h=0.75, stl_path=stl
    )
    assert mesh.ncompartment == 1 and mesh.nboundary == 1
    # Independent reference: Monte Carlo volume of sphere ∪ truncated cones (seeded).
    rng = np.random.default_rng(1)
    lo, hi = np.array([-12.0, -4.0, -4.0]), np.array([16.0, 14.0, 4.0])
    x = lo + (hi - lo) * rng.random((1_000_000, 3))
    inside = np.linalg.norm(x, axis=1) <= 4.0
    for d in np.array([[1.0, 0.0, 0.0], [-0.6, 0.8, 0.0]]):
        t = x @ d
        radial = np.linalg.norm(x - t[:, None] * d, axis=1)
        rad = 1.5 + (0.75 - 1.5) * t / 16.0
        inside |= (t >= 0) & (t <= 16.0) & (radial <= rad)
    v_mc = inside.mean() * np.prod(hi - lo)
    # MC standard error ≈ 0.3 %; mesh deficit ≈ 1 % at h = 0.75 on radius-0.75 tips.
    assert abs(float(mesh.volume()) / v_mc - 1.0) < 0.03
    surf = trimesh.load(stl)
    assert surf.is_watertight
    # The same triangles, stored as float32 in binary STL (relative rounding 6e-8).
    assert abs(surf.volume / float(mesh.volume()) - 1.0) < 1e-6


# ------------------------------------------------------------------ reading gmsh models
def _two_box_model(ses, with_surfaces: bool):
    a = ses.occ.addBox(0, 0, 0, 1, 1, 1)
    b = ses.occ.addBox(1, 0, 0, 1, 1, 1)
    ses.occ.fragment([(3, a)], [(3, b)])
    ses.occ.synchronize()
    ses.model.addPhysicalGroup(3, [a], tag=7)
    ses.model.addPhysicalGroup(3, [b], tag=9)
    if with_surfaces:
        surfs = [t for _, t in ses.model.getEntities(2)]
        ses.model.addPhysicalGroup(2, surfs, tag=1)
    ses.option("Mesh.MeshSizeMax", 0.4)
    ses.model.mesh.generate(3)
    return tetmesh_from_gmsh(ses)


@pytest.mark.parametrize("with_surfaces", [False, True])
def test_two_physical_volumes_give_two_compartments_one_interface(with_surfaces):
    with gmsh_session() as ses:
        mesh = _two_box_model(ses, with_surfaces)
    assert mesh.ncompartment == 2
    assert mesh.topology.compartment_labels.tolist() == [7, 9]
    assert len(mesh.interfaces) == 1
    b, i, j = mesh.interfaces[0]
    assert (i, j) == (0, 1)
    assert abs(float(mesh.boundary_areas()[b]) - 1.0) < 1e-12  # the unit square x = 1
    torch.testing.assert_close(
        mesh.compartment_volumes(),
        torch.tensor([1.0, 1.0], dtype=torch.float64),
        rtol=1e-12,
        atol=0,
    )
    mesh.check()


def test_recipe_mesh_matches_file_written_by_gmsh(tmp_path):
    from spindoctor_torch.mesh.io import read_mesh

    path = tmp_path / "layered.msh"
    mesh = cylinder(2.0, 3.0, h=0.6, layers=[1.0], msh_path=path)
    back = read_mesh(path)
    assert back.ntet == mesh.ntet and back.npoint == mesh.npoint
    torch.testing.assert_close(
        back.compartment_volumes(), mesh.compartment_volumes(), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(back.boundary_areas(), mesh.boundary_areas(), rtol=1e-12, atol=0)


# ------------------------------------------------------------------ session hygiene
def test_session_leaves_no_state_and_converts_errors():
    import gmsh

    assert not gmsh.isInitialized()
    sphere(1.0, h=0.5)
    assert not gmsh.isInitialized()  # we initialized, we finalized

    # A user's own gmsh state survives: current model and options are restored.
    gmsh.initialize(readConfigFiles=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("user_model")
        gmsh.option.setNumber("Mesh.MeshSizeMax", 123.0)
        models = gmsh.model.list()
        box((1.0, 1.0, 1.0), h=0.5)
        assert gmsh.isInitialized()
        assert gmsh.model.getCurrent() == "user_model"
        assert gmsh.option.getNumber("Mesh.MeshSizeMax") == 123.0
        assert gmsh.option.getNumber("General.Terminal") == 0
        assert gmsh.model.list() == models
    finally:
        gmsh.finalize()

    with pytest.raises(MeshError, match="gmsh failed"):
        with gmsh_session() as ses:
            ses.model.getBoundingBox(3, 12345)  # no such entity: gmsh raises
    assert not gmsh.isInitialized()


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sphere(-1.0, h=0.5), r"radius = -1.0 must be a positive number"),
        (lambda: sphere(5.0, h=-0.5), r"h = -0.5 must be a positive finite mesh size"),
        (lambda: sphere(5.0, layers=[6.0]), r"layers radius 6.0 must lie strictly inside"),
        (lambda: sphere(5.0, layers=[3.0, 2.0]), r"must be strictly increasing"),
        (lambda: cylinder(1.0, 0.0), r"height = 0.0 must be a positive number"),
        (lambda: box((1.0, 2.0)), r"sides = .* must be three finite numbers"),
        (lambda: box((1.0, 1.0, 1.0), h=0.5, refinement=0.1), r"give either h = 0.5 or"),
        (lambda: slabs([1.0, -1.0], (1.0, 1.0)), r"widths\[1\] = -1.0 must be a positive"),
        (lambda: mesh_size(None, float("inf"), 1.0), r"refinement = inf must be a positive"),
        (lambda: soma_dendrites(soma_radius=1.0), r"dendrite_radii = .* must be smaller"),
    ],
)
def test_bad_input_messages(call, message):
    with pytest.raises(MeshError, match=message):
        call()


# ------------------------------------------------------------------ shipped samples
SAMPLES = {
    # file: (ncompartment, nboundary, exact total volume or None for curved shapes)
    "sphere.msh": (1, 1, None),
    "box.msh": (1, 1, 480.0),
    "slab_two_compartments.msh": (2, 3, 288.0),
    "cylinder_myelin_ecs.msh": (3, 5, 7.8 * 7.8 * 6.0),  # box ECS: exact
    "spheres5_ecs.msh": (6, 6, None),
    "neuron.msh": (1, 1, None),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_meshes_ship_and_read(name):
    from pathlib import Path

    from spindoctor_torch.mesh.io import read_mesh

    path = Path(__file__).resolve().parents[1] / "meshes" / name
    assert path.stat().st_size < 1_000_000
    mesh = read_mesh(path)
    ncmpt, nbdry, volume = SAMPLES[name]
    assert (mesh.ncompartment, mesh.nboundary) == (ncmpt, nbdry)
    if volume is not None:
        assert abs(float(mesh.volume()) / volume - 1.0) < 1e-12
    mesh.check()
