"""SpinDoctor cell setups: validation messages, the packing's invariants and determinism,
and meshes of cells + layers + ECS checked against closed forms and geometric facts."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from spindoctor_torch.errors import MeshError, SetupError
from spindoctor_torch.geometry import (
    Cells,
    CellSetup,
    circle_hull,
    create_cells,
    create_geometry,
)


def _ball(r):
    return 4.0 / 3.0 * math.pi * np.asarray(r) ** 3


def _wall_nodes(mesh, compartment: int) -> torch.Tensor:
    """Nodes on the outer wall of ``compartment``."""
    bc = mesh.boundary_compartments
    walls = [b for b in range(mesh.nboundary) if bc[b, 0] == compartment and bc[b, 1] < 0]
    sel = torch.isin(mesh.facet_boundary, torch.tensor(walls))
    return mesh.points[torch.unique(mesh.facets[sel])]


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rmin=3.0, rmax=2.0), r"rmin = 3.0 must not exceed rmax = 2.0"),
        (dict(in_ratio=1.2), r"in_ratio = 1.2 must lie in \(0, 1\)"),
        (dict(in_ratio=0.0), r"in_ratio = 0.0 must lie in \(0, 1\)"),
        (dict(in_ratio=(0.6, 0.3)), r"in_ratio = \(0.6, 0.3\) must be strictly increasing"),
        (dict(h=-0.5), r"h = -0.5 must be positive"),
        (dict(refinement=0.0), r"refinement = 0.0 must be positive"),
        (dict(h=0.5, refinement=1.0), r"give either h = 0.5 or refinement = 1.0"),
        (dict(ncell=3), r"ncell = 3 needs an extracellular space.*got 'none'"),
        (dict(ecs_shape="sphere", ecs_ratio=0.3), r"ecs_shape = 'sphere' is unknown; pick one"),
        (dict(ecs_shape="box"), r"ecs_ratio is required with ecs_shape = 'box'"),
        (dict(ecs_shape="box", ecs_ratio=-1.0), r"ecs_ratio = -1.0 must be positive"),
        (dict(cell_shape="cube"), r"cell_shape = 'cube' is unknown"),
        (dict(cell_shape="cylinder"), r"height is required for cell_shape = 'cylinder'"),
        (dict(height=2.0), r"height = 2.0 is only used for cylinders"),
        (dict(dmin=0.5, dmax=0.2), r"dmin = 0.5 must not exceed dmax = 0.2"),
        (dict(ncell=0), r"ncell = 0 must be a positive integer"),
        (dict(bend=float("inf")), r"bend = inf must be finite"),
    ],
)
def test_setup_validation_messages(kwargs, message):
    with pytest.raises(SetupError, match=message):
        CellSetup(**kwargs)


def test_setup_derived_fields():
    s = CellSetup(
        cell_shape="cylinder",
        ncell=3,
        rmin=1.0,
        rmax=3.0,
        height=5.0,
        in_ratio=(0.3, 0.6),
        ecs_shape="no_ecs" if False else "box",
        ecs_ratio=0.5,
        refinement=1.0,
    )
    assert s.rmean == 2.0 and s.layers == (0.3, 0.6) and s.nlayer == 3
    assert s.ncompartment == 10 and s.nboundary == 2 * 3 * 3 + 1
    assert s.ecs_gap == 1.0
    assert s.mesh_size == pytest.approx((6 * math.sqrt(2)) ** (1 / 3), rel=1e-15)
    assert CellSetup(ecs_shape="no_ecs").ecs_shape == "none"


# ------------------------------------------------------------------ packing
@pytest.mark.parametrize("shape", ["sphere", "cylinder"])
def test_packing_invariants_and_determinism(shape):
    kw = dict(height=2.0) if shape == "cylinder" else {}
    s = CellSetup(
        cell_shape=shape,
        ncell=12,
        rmin=1.0,
        rmax=3.0,
        dmin=0.2,
        dmax=0.4,
        ecs_shape="box",
        ecs_ratio=0.2,
        seed=7,
        **kw,
    )
    a, b = create_cells(s), create_cells(s)
    np.testing.assert_array_equal(a.centers, b.centers)
    np.testing.assert_array_equal(a.radii, b.radii)
    other = create_cells(dataclasses.replace(s, seed=8))
    assert not np.array_equal(a.centers, other.centers)

    ndim = 3 if shape == "sphere" else 2
    c, r = a.centers, a.radii
    assert c.shape == (12, ndim) and r.shape == (12,)
    assert r[0] == 2.0  # the first cell has radius rmean
    assert np.all(r >= 1.0) and np.all(r <= 3.0)
    rmean = 2.0
    # Independent pairwise surface gaps (plain loops).
    gaps = np.full((12, 12), np.inf)
    for i in range(12):
        for j in range(12):
            if i != j:
                gaps[i, j] = math.dist(c[i], c[j]) - r[i] - r[j]
    assert gaps.min() >= 0.2 * rmean - 1e-12  # no two cells closer than dmin·rmean
    # Each cell, when placed, was within dmax·rmean of an earlier one.
    for k in range(1, 12):
        assert gaps[k, :k].min() <= 0.4 * rmean + 1e-12
    # Bounding box of the cells centred at the origin.
    np.testing.assert_allclose((c - r[:, None]).min(0) + (c + r[:, None]).max(0), 0, atol=1e-12)


def test_packing_failure_is_reported():
    # rmin = rmax and dmin = dmax leave a zero-measure set of admissible candidates.
    s = CellSetup(ncell=2, rmin=1.0, rmax=1.0, dmin=0.1, dmax=0.1, ecs_shape="box", ecs_ratio=0.1)
    with pytest.raises(SetupError, match=r"placed only 1 of ncell = 2 cells in 200000 trials"):
        create_cells(s)


# ------------------------------------------------------------------ meshes
def test_sphere_with_nucleus_interface_area():
    s = CellSetup(cell_shape="sphere", ncell=1, rmin=5.0, rmax=5.0, in_ratio=0.6)
    mesh = create_geometry(s, quiet=True)
    assert mesh.ncompartment == 2
    assert mesh.boundary_compartments.tolist() == [[0, 1], [1, -1]]
    area = float(mesh.boundary_areas()[0])
    # Default h = rmean/4 with 2π·rmean/h elements per 2π: area deficit ≈ 1.2 % < 2 %.
    assert abs(area / (4 * math.pi * 3.0**2) - 1.0) < 0.02
    exact = [_ball(3.0), _ball(5.0) - _ball(3.0)]
    vols = mesh.compartment_volumes().tolist()
    for v, e in zip(vols, exact):
        assert abs(v / e - 1.0) < 0.03, (vols, exact)  # volume deficit ≈ 2 % at this h
    mesh.check()


def test_spheres_in_box_ecs_volumes_and_ordering():
    cells = Cells(
        centers=np.array([[-3.0, 0.0, 0.0], [2.5, 0.5, 0.0], [0.0, 4.5, 1.0]]),
        radii=np.array([2.5, 2.0, 1.5]),
    )
    s = CellSetup(
        cell_shape="sphere",
        ncell=3,
        rmin=1.0,
        rmax=3.0,
        in_ratio=0.5,
        ecs_shape="box",
        ecs_ratio=0.5,
        h=0.8,
    )
    mesh = create_geometry(s, cells=cells, quiet=True)
    assert mesh.ncompartment == 7 and mesh.nboundary == 7
    # Compartments [in × 3, out × 3, ecs]; boundaries [in,out × 3][out,ecs × 3][ecs].
    assert mesh.boundary_compartments.tolist() == [
        [0, 3],
        [1, 4],
        [2, 5],
        [3, 6],
        [4, 6],
        [5, 6],
        [6, -1],
    ]
    # The ECS box: cells' bounding box inflated by ecs_ratio·rmean = 1.0 (planar: exact).
    lo = (cells.centers - cells.radii[:, None]).min(0) - 1.0
    hi = (cells.centers + cells.radii[:, None]).max(0) + 1.0
    torch.testing.assert_close(
        mesh.bounding_box(), torch.tensor(np.stack([lo, hi])), rtol=0, atol=1e-9
    )
    side = hi - lo
    assert abs(float(mesh.volume()) / np.prod(side) - 1.0) < 1e-12
    box_area = 2 * (side[0] * side[1] + side[1] * side[2] + side[0] * side[2])
    assert abs(float(mesh.boundary_areas()[6]) / box_area - 1.0) < 1e-12
    vols = mesh.compartment_volumes().numpy()
    r = cells.radii
    exact = np.r_[_ball(0.5 * r), _ball(r) - _ball(0.5 * r)]
    # 2π·rmean/h ≈ 16 elements per 2π at h = 0.8: deficit ≈ 5 %; cap at 8 %.
    np.testing.assert_array_less(np.abs(vols[:6] / exact - 1.0), 0.08)
    mesh.check()


def test_cylinders_with_myelin_and_box_ecs_caps():
    cells = Cells(centers=np.array([[-2.0, 0.0], [2.2, 0.3]]), radii=np.array([1.8, 2.0]))
    s = CellSetup(
        cell_shape="cylinder",
        ncell=2,
        rmin=1.0,
        rmax=3.0,
        height=3.0,
        in_ratio=0.5,
        ecs_shape="box",
        ecs_ratio=0.25,
        h=0.5,
    )
    mesh = create_geometry(s, cells=cells, quiet=True)
    # Boundaries: [in,out × 2][out,ecs × 2][in caps × 2][out caps × 2][ecs].
    assert mesh.boundary_compartments.tolist() == [
        [0, 2],
        [1, 3],
        [2, 4],
        [3, 4],
        [0, -1],
        [1, -1],
        [2, -1],
        [3, -1],
        [4, -1],
    ]
    r = cells.radii
    areas = mesh.boundary_areas().numpy()
    expected = np.r_[
        2 * np.pi * 0.5 * r * 3.0,  # axon-myelin sides
        2 * np.pi * r * 3.0,  # myelin-ECS sides
        2 * np.pi * (0.5 * r) ** 2,  # axon caps (two ends)
        2 * np.pi * (r**2 - (0.5 * r) ** 2),  # myelin caps
    ]
    # Inscribed polygons with 2π·rmean/h ≈ 26 sides for rmean: area deficit < 1 %.
    np.testing.assert_array_less(np.abs(areas[:8] / expected - 1.0), 0.01)
    # Prism ECS: the total volume is the box exactly.
    lo = (cells.centers - r[:, None]).min(0) - 0.5
    hi = (cells.centers + r[:, None]).max(0) + 0.5
    assert abs(float(mesh.volume()) / (np.prod(hi - lo) * 3.0) - 1.0) < 1e-12
    mesh.check()


def test_cylinder_convex_hull_contains_inflated_circles():
    s = CellSetup(
        cell_shape="cylinder",
        ncell=3,
        rmin=1.0,
        rmax=2.0,
        dmin=0.2,
        dmax=0.3,
        height=2.0,
        ecs_shape="convex_hull",
        ecs_ratio=0.4,
        h=0.5,
        seed=3,
    )
    cells = create_cells(s)
    mesh = create_geometry(s, cells=cells, quiet=True)
    poly = circle_hull(cells.centers, cells.radii, s.ecs_gap)
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))  # shoelace
    assert abs(float(mesh.volume()) / (area * 2.0) - 1.0) < 1e-12
    # Side facets of the ECS wall (the caps also touch the cells' cap circles).
    ecs_wall = mesh.facet_boundary == mesh.nboundary - 1
    side = ecs_wall & (mesh.facet_normals()[:, 2].abs() < 0.5)
    wall = mesh.points[torch.unique(mesh.facets[side])].numpy()
    d = np.linalg.norm(wall[:, None, :2] - cells.centers[None], axis=-1) - cells.radii
    assert d.min() >= s.ecs_gap - 1e-9  # the ECS keeps the full gap to every cell
    mesh.check()


def test_sphere_convex_hull_is_convex_and_clear_of_cells():
    from scipy.spatial import ConvexHull

    cells = Cells(centers=np.array([[-2.5, 0.0, 0.0], [2.0, 0.5, 0.5]]), radii=np.array([2.0, 1.8]))
    s = CellSetup(
        cell_shape="sphere",
        ncell=2,
        rmin=1.0,
        rmax=3.0,
        ecs_shape="convex_hull",
        ecs_ratio=0.5,
        h=1.0,
    )
    mesh = create_geometry(s, cells=cells, quiet=True)
    assert mesh.ncompartment == 3
    wall = _wall_nodes(mesh, 2).numpy()
    # Convex: the hull of the wall nodes has exactly the mesh volume.
    assert abs(ConvexHull(wall).volume / float(mesh.volume()) - 1.0) < 1e-9
    d = np.linalg.norm(wall[:, None] - cells.centers[None], axis=-1) - cells.radii
    assert d.min() >= 0.5 * s.ecs_gap - 1e-9


def test_tight_wrap_wall_is_at_ecs_gap():
    cells = Cells(centers=np.array([[-2.2, 0.0, 0.0], [2.0, 0.0, 0.3]]), radii=np.array([2.0, 1.7]))
    s = CellSetup(
        cell_shape="sphere",
        ncell=2,
        rmin=1.0,
        rmax=3.0,
        ecs_shape="tight_wrap",
        ecs_ratio=0.5,
        h=1.0,
    )
    mesh = create_geometry(s, cells=cells, quiet=True)
    wall = _wall_nodes(mesh, 2).numpy()
    # Every wall node lies on an inflated sphere: distance to the nearest cell = gap.
    d = (np.linalg.norm(wall[:, None] - cells.centers[None], axis=-1) - cells.radii).min(1)
    np.testing.assert_allclose(d, s.ecs_gap, atol=1e-6)
    assert mesh.boundary_compartments.tolist() == [[0, 2], [1, 2], [2, -1]]


def test_bend_twist_applied_to_vertices():
    base = dict(cell_shape="cylinder", ncell=1, rmin=2.0, rmax=2.0, height=6.0, h=0.8)
    flat = create_geometry(CellSetup(**base), quiet=True)
    bent = create_geometry(CellSetup(**base, bend=0.01, twist=math.pi / 3), quiet=True)
    assert bent.ntet == flat.ntet  # same meshing, only the vertices move
    p = flat.points.numpy()
    # SpinDoctor's formulas, written out: x += a·30·W·((z − zc)/H)², then twist by a_t·z/H.
    w, hgt = np.ptp(p[:, 0]), np.ptp(p[:, 2])
    x = p[:, 0] + 0.01 * 30 * w * (p[:, 2] / hgt) ** 2
    cx, cy = (x.max() + x.min()) / 2, (p[:, 1].max() + p[:, 1].min()) / 2
    th = p[:, 2] / hgt * math.pi / 3
    ref = np.stack(
        [
            cx + np.cos(th) * (x - cx) - np.sin(th) * (p[:, 1] - cy),
            cy + np.sin(th) * (x - cx) + np.cos(th) * (p[:, 1] - cy),
            p[:, 2],
        ],
        axis=1,
    )
    np.testing.assert_allclose(bent.points.numpy(), ref, rtol=0, atol=1e-12)
    bent.check()  # no tet inverted by the deformation


def test_folding_deformation_is_refused():
    # SpinDoctor's setup_cylinders_full_settings bends a 1 µm high stack by 0.05: the
    # parabola's curvature (≈ 0.05·30·W·2/H²) folds tets of edge ≈ 2 µm (refinement 1).
    s = CellSetup(
        cell_shape="cylinder",
        ncell=1,
        rmin=3.0,
        rmax=3.0,
        height=1.0,
        bend=0.05,
        refinement=1.0,
    )
    with pytest.raises(MeshError, match=r"bend = 0.05, twist = 0.0 invert \d+ of \d+ tetra"):
        create_geometry(s, quiet=True)


def test_cells_argument_is_checked():
    s = CellSetup(cell_shape="sphere", ncell=1, rmin=2.0, rmax=2.0)
    bad = Cells(centers=np.zeros((1, 2)), radii=np.ones(1))
    with pytest.raises(MeshError, match=r"cells have centres \(1, 2\)"):
        create_geometry(s, cells=bad, quiet=True)
