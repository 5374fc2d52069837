"""TetMesh: topology, SpinDoctor's node split, differentiable geometry, quality and check()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spindoctor_torch import MeshError, TetMesh
from spindoctor_torch.mesh.quality import dihedral_angles, radius_ratios
from spindoctor_torch.mesh.structured import structured_box, structured_slabs

REGULAR_TET = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])


def test_box_volume_area_and_bbox_exact():
    mesh = structured_box((2.0, 3.0, 4.0), (4, 5, 6), jitter=0.2, seed=4)
    assert abs(float(mesh.volume()) - 24.0) < 1e-12 * 24
    assert abs(float(mesh.boundary_areas().sum()) - 52.0) < 1e-12 * 52
    assert torch.allclose(
        mesh.bounding_box(), torch.tensor([[0.0, 0, 0], [2.0, 3, 4]], dtype=torch.float64)
    )
    mesh.check()


def test_outward_normals_and_divergence_theorem():
    """∮ x·n dA = 3|Ω| for every compartment (normals oriented outward of compartment i)."""
    mesh = structured_slabs([1.0, 2.0], (1.0, 1.0), h=0.5, jitter=0.15)
    n = mesh.facet_normals()
    a = mesh.facet_areas()
    x = mesh.facet_centers()
    flux = (x * n).sum(1) * a  # exact for linear x on flat facets
    bc = mesh.boundary_compartments[mesh.facet_boundary]
    for c in range(2):
        out = flux[bc[:, 0] == c].sum() - flux[bc[:, 1] == c].sum()
        assert abs(float(out) - 3 * float(mesh.compartment_volumes()[c])) < 1e-12


def test_slab_topology_and_point_map():
    mesh = structured_slabs([1.0, 1.0, 1.0], (1.0, 1.0), h=0.5)
    topo = mesh.topology
    assert mesh.ncompartment == 3
    # Interfaces first (lexicographic), then outer walls (SpinDoctor.jl ordering).
    assert topo.boundary_compartments.tolist() == [[0, 1], [1, 2], [0, -1], [1, -1], [2, -1]]
    assert np.allclose(mesh.boundary_areas().numpy(), [1, 1, 4 + 1, 4, 4 + 1])
    # Interface nodes are duplicated: 3x3 nodes on each of the two interface planes.
    assert mesh.ndof == mesh.npoint + 2 * 9
    pm = mesh.point_map
    assert [len(p) for p in pm] == [27, 27, 27]
    shared = np.intersect1d(pm[0].numpy(), pm[1].numpy())
    assert np.allclose(mesh.points[shared, 0].numpy(), 1.0)
    # Coordinates of every compartment are gathered from the one points tensor.
    pts = mesh.points.clone().requires_grad_(True)
    moved = mesh.with_points(pts)
    moved.compartment_points(1).sum().backward()
    assert float(pts.grad.sum()) == 3 * 27


def test_facet_labels_are_kept_and_split_by_pair():
    mesh0 = structured_slabs([1.0, 1.0], (1.0, 1.0), h=0.5)
    facets = mesh0.topology.facets
    # One label 7 for every boundary facet: it spans three compartment pairs -> 3 boundaries.
    mesh = TetMesh(
        mesh0.points,
        mesh0.topology.tets_array,
        mesh0.topology.tet_compartment,
        facets=facets,
        facet_labels=np.full(len(facets), 7),
    )
    assert mesh.nboundary == 3
    assert set(mesh.topology.boundary_labels.tolist()) == {7}
    assert sorted(map(tuple, mesh.topology.boundary_compartments.tolist())) == [
        (0, -1),
        (0, 1),
        (1, -1),
    ]


def test_negative_tets_are_reoriented():
    tets = np.array([[0, 1, 2, 3]])
    pts = REGULAR_TET.copy()
    mesh = TetMesh(pts, tets[:, [0, 2, 1, 3]])
    assert float(mesh.tet_signed_volumes()[0]) > 0
    assert abs(float(mesh.volume()) - 8.0 / 3.0) < 1e-14  # regular tet of edge 2√2


def test_quality_measures_on_regular_tet():
    pts = torch.tensor(REGULAR_TET)
    tets = torch.tensor([[0, 1, 2, 3]])
    ang = dihedral_angles(pts, tets)
    assert torch.allclose(
        ang, torch.full((1, 6), np.degrees(np.arccos(1 / 3)), dtype=torch.float64), atol=1e-10
    )
    assert abs(float(radius_ratios(pts, tets)[0]) - 1.0) < 1e-12
    # Right-angle corner tet: dihedral angles 90° at the three axis edges.
    corner = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    a = dihedral_angles(corner, tets)[0]
    assert torch.allclose(a[:3], torch.full((3,), 90.0, dtype=torch.float64), atol=1e-10)


def test_geometry_is_differentiable():
    mesh = structured_box((1.0, 1.0, 1.0), (2, 2, 2), jitter=0.1)
    pts = mesh.points.clone().requires_grad_(True)

    def f(p):
        m = mesh.with_points(p)
        return m.volume(), m.boundary_areas(), m.facet_normals()[:5]

    assert torch.autograd.gradcheck(f, (pts,), eps=1e-7, atol=1e-8)


# ------------------------------------------------------------------ check() failures
def test_check_inverted_tet():
    mesh = structured_box((1.0, 1.0, 1.0), (2, 2, 2))
    p = mesh.points.clone()
    centre = int(torch.argmin(((p - 0.5) ** 2).sum(1)))
    p[centre] = torch.tensor([1.6, 0.5, 0.5], dtype=torch.float64)  # push through a face
    with pytest.raises(MeshError, match="inverted tetrahedra"):
        mesh.with_points(p).check()


def test_check_degenerate_tet():
    pts = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0.3, 0.3, 0.0], [0, 0, 1]])
    tets = np.array([[0, 1, 2, 4], [0, 1, 2, 3]])
    with pytest.raises(MeshError, match="degenerate tetrahedra"):
        TetMesh(pts, tets).check()


def test_check_nonmanifold_face():
    pts = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1], [0.2, 0.2, 1.0]])
    tets = np.array([[0, 1, 2, 3], [0, 1, 2, 4], [0, 1, 2, 5]])
    with pytest.raises(MeshError, match="shared by more than two tets"):
        TetMesh(pts, tets).check()


def test_check_hanging_nodes_between_compartments():
    """Two boxes meshed independently (2x2 vs 3x3 grids on the shared face x = 1)."""
    a = structured_box((1.0, 1.0, 1.0), (2, 2, 2))
    b = structured_box((1.0, 1.0, 1.0), (3, 3, 3), origin=(1.0, 0.0, 0.0))
    pts = np.vstack([a.points.numpy(), b.points.numpy()])
    tets = np.vstack([a.topology.tets_array, b.topology.tets_array + a.npoint])
    labels = np.r_[np.zeros(a.ntet), np.ones(b.ntet)]
    mesh = TetMesh(pts, tets, labels)
    with pytest.raises(MeshError, match="non-conformal interface"):
        mesh.check()


def test_bad_constructor_input():
    with pytest.raises(MeshError, match=r"points must have shape \(N, 3\)"):
        TetMesh(np.zeros((4, 2)), [[0, 1, 2, 3]])
    with pytest.raises(MeshError, match="outside the 4 points"):
        TetMesh(REGULAR_TET, [[0, 1, 2, 4]])
    with pytest.raises(MeshError, match="repeats a vertex"):
        TetMesh(REGULAR_TET, [[0, 1, 2, 2]])
    bad = REGULAR_TET.copy()
    bad[1, 0] = np.nan
    with pytest.raises(MeshError, match=r"points\[1\].*not finite"):
        TetMesh(bad, [[0, 1, 2, 3]])
    with pytest.raises(MeshError, match="interior face"):
        m = structured_box((1.0, 1.0, 1.0), (2, 2, 2))
        TetMesh(m.points, m.topology.tets_array, facets=_interior_face(m), facet_labels=[1])


def _interior_face(mesh):
    faces = mesh.topology.tets_array[:, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]]
    keys = {}
    for f in np.sort(faces.reshape(-1, 3), axis=1):
        keys[tuple(f)] = keys.get(tuple(f), 0) + 1
    return np.array([[*k] for k, v in keys.items() if v == 2][:1])


def test_with_points_shape_mismatch():
    mesh = structured_box((1.0, 1.0, 1.0), (2, 2, 2))
    with pytest.raises(MeshError, match="with_points"):
        mesh.with_points(torch.zeros(3, 3, dtype=torch.float64))
