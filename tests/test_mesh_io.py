"""Mesh I/O: read_mesh / write_mesh for gmsh, VTK, TetGen and npz files.

References: SpinDoctor's own sphere mesh (TetGen output, npz and text arrays, and the volume
and area SpinDoctor computed on it), meshes written by gmsh's own API, hand-written TetGen
files with analytically known volumes, and exact equality for round trips.
"""

from __future__ import annotations

import json

import meshio
import numpy as np
import pytest

from spindoctor_torch.errors import MeshError
from spindoctor_torch.mesh.io import mesh_formats, read_mesh, write_mesh
from spindoctor_torch.mesh.structured import structured_slabs
from spindoctor_torch.mesh.tetmesh import TetMesh

# Every round trip below is exact: float64 coordinates are stored in binary or with 17
# significant digits, connectivity and labels are integers.
ROUND_TRIPS = [
    ("x.msh", {}),  # gmsh MSH 4.1 binary
    ("x.msh", {"version": 2.2}),
    ("x.msh", {"version": 2.2, "binary": False}),
    ("x.vtu", {}),
    ("x.vtk", {}),
    ("x.1.node", {}),  # TetGen .node/.ele/.face
    ("x.npz", {}),
]

TOPOLOGY_FIELDS = [
    "facets",
    "facet_boundary",
    "boundary_compartments",
    "compartment_labels",
    "dof_node",
    "compartment_dof_offsets",
]


@pytest.fixture(scope="module")
def sphere_dir(reference_dir):
    return reference_dir / "meshes"


@pytest.fixture(scope="module")
def sphere(sphere_dir) -> TetMesh:
    return read_mesh(sphere_dir / "sphere_r5.npz")


@pytest.fixture(scope="module")
def slabs() -> TetMesh:
    """Three compartments (labels 0, 1, 2), tets shuffled so that compartments interleave,
    interface (0, 1) labelled 7 in the input and every other boundary found from faces."""
    base = structured_slabs([1.0, 0.5, 0.5], (1.0, 1.0), h=0.25, jitter=0.2, seed=3)
    topo = base.topology
    perm = np.random.default_rng(0).permutation(topo.ntet)
    labels = topo.compartment_labels[topo.tet_compartment]
    interface = topo.facets[topo.facet_boundary == 0]
    return TetMesh(
        base.points,
        topo.tets_array[perm],
        labels[perm],
        interface,
        np.full(interface.shape[0], 7),
    )


def assert_same_mesh(got: TetMesh, want: TetMesh, tet_order=None) -> None:
    """Bit-exact equality of points, tets, labels and boundaries (tets in ``tet_order``)."""
    g, w = got.topology, want.topology
    order = np.arange(w.ntet) if tet_order is None else tet_order
    assert got.points.dtype == want.points.dtype
    assert np.array_equal(got.points.numpy(), want.points.numpy())
    assert np.array_equal(g.tets_array, w.tets_array[order])
    assert np.array_equal(g.tet_compartment, w.tet_compartment[order])
    assert np.array_equal(g.tet_dofs, w.tet_dofs[order])
    assert np.array_equal(order[g.facet_tet], w.facet_tet)
    for name in TOPOLOGY_FIELDS:
        assert np.array_equal(getattr(g, name), getattr(w, name)), name


# ---------------------------------------------------------------------------------- SpinDoctor
def test_spindoctor_sphere_tetgen_npz_and_text_agree(sphere_dir, reference_dir):
    """TetGen's .node/.ele/.face (1-based), SpinDoctor's npz (0-based) and the text arrays
    give the same mesh; volume and area match SpinDoctor's own (rtol 1e-12: same mesh, only
    summation order differs)."""
    folder = sphere_dir / "sphere_r5"
    from_tetgen = read_mesh(folder / "tetgen_sphere_r5.1")
    from_node = read_mesh(folder / "tetgen_sphere_r5.1.node")
    from_npz = read_mesh(sphere_dir / "sphere_r5.npz")
    text = {
        k: np.loadtxt(folder / f"{k}.txt", dtype=dtype)
        for k, dtype in [
            ("points", float),
            ("tetrahedra", np.int64),
            ("tet_labels", np.int64),
            ("facets", np.int64),
            ("facet_labels", np.int64),
            ("cmpt1_point_map", np.int64),
        ]
    }
    from_text = TetMesh(
        text["points"], text["tetrahedra"], text["tet_labels"], text["facets"], text["facet_labels"]
    )
    for other in (from_node, from_npz, from_text):
        assert_same_mesh(other, from_tetgen)
        assert np.array_equal(other.topology.boundary_labels, from_tetgen.topology.boundary_labels)

    ref = json.loads((reference_dir / "fem_sphere_r5.json").read_text())["mesh"]
    assert (
        (from_tetgen.npoint, from_tetgen.ntet)
        == (2686, 10638)
        == (
            ref["npoint_global"],
            ref["nelement_global"],
        )
    )
    assert from_tetgen.nfacet == ref["nfacet_global_labelled"] == 3696
    assert from_tetgen.ncompartment == 1 and from_tetgen.nboundary == 1
    assert from_tetgen.topology.compartment_labels.tolist() == [1]
    assert from_tetgen.topology.boundary_labels.tolist() == [1]
    vol = float(from_tetgen.compartment_volumes()[0])
    area = float(from_tetgen.boundary_areas()[0])
    assert vol == pytest.approx(ref["volumes_um3"][0], rel=1e-12)
    assert vol == pytest.approx(513.5105743543198, rel=1e-12)
    assert area == pytest.approx(ref["surface_areas_um2"][0], rel=1e-12)
    assert area == pytest.approx(310.9014190352137, rel=1e-12)
    # SpinDoctor's local node order of compartment 1 is our point_map.
    assert np.array_equal(from_tetgen.topology.point_map(0), text["cmpt1_point_map"])


# ---------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name,options", ROUND_TRIPS, ids=lambda v: str(v))
def test_round_trip_multi_compartment(tmp_path, slabs, name, options):
    path = tmp_path / name
    write_mesh(slabs, path, **options)
    back = read_mesh(path)
    topo = slabs.topology
    # MSH 4.1 stores tets entity by entity (one per compartment): grouped, stable order.
    msh41 = name.endswith(".msh") and options.get("version", 4.1) == 4.1
    order = np.argsort(topo.tet_compartment, kind="stable") if msh41 else None
    assert_same_mesh(back, slabs, order)
    assert topo.compartment_labels.tolist() == [0, 1, 2]
    assert topo.boundary_labels.tolist() == [7, -1, -1, -1, -1]
    # npz keeps the file labels; other formats tag generated boundaries after the largest label.
    expected = [7, -1, -1, -1, -1] if name.endswith(".npz") else [7, 8, 9, 10, 11]
    assert back.topology.boundary_labels.tolist() == expected
    assert np.allclose(back.compartment_volumes().numpy(), [1.0, 0.5, 0.5], rtol=0, atol=1e-14)
    # Writing the read-back mesh again gives the same mesh once more.
    write_mesh(back, tmp_path / f"again_{name}", **options)
    again = read_mesh(tmp_path / f"again_{name}")
    assert_same_mesh(again, back)
    assert np.array_equal(again.topology.boundary_labels, back.topology.boundary_labels)


@pytest.mark.parametrize(
    "name,options", [rt for rt in ROUND_TRIPS if rt[1].get("binary", True)], ids=lambda v: str(v)
)
def test_round_trip_spindoctor_sphere(tmp_path, sphere, name, options):
    path = tmp_path / name
    write_mesh(sphere, path, **options)
    back = read_mesh(path)
    assert_same_mesh(back, sphere)
    assert back.topology.boundary_labels.tolist() == [1]
    assert float(back.volume()) == pytest.approx(513.5105743543198, rel=1e-12)


def test_tetgen_basename_and_format_argument(tmp_path, slabs):
    write_mesh(slabs, tmp_path / "cell.1", format="tetgen")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cell.1.ele",
        "cell.1.face",
        "cell.1.node",
    ]
    for name in ("cell.1", "cell.1.node", "cell.1.ele", "cell.1.face"):
        assert_same_mesh(read_mesh(tmp_path / name), slabs)


def test_npz_keeps_name_and_float32_points(tmp_path, slabs):
    """np.savez would append '.npz' to other names; float32 points are stored as float64."""
    write_mesh(slabs, tmp_path / "mesh.data", format="npz")
    assert (tmp_path / "mesh.data").is_file()
    assert_same_mesh(read_mesh(tmp_path / "mesh.data", format="npz"), slabs)
    single = slabs.to(dtype=__import__("torch").float32)
    write_mesh(single, tmp_path / "single.npz")
    back = read_mesh(tmp_path / "single.npz")
    assert np.array_equal(back.points.numpy(), single.points.numpy().astype(np.float64))


# ---------------------------------------------------------------------------------- TetGen
NODE = """# five nodes, {base}-based
5 3 0 0
{i0} 0 0 0
{i1} 1 0 0
{i2} 0 1 0
{i3} 0 0 1
{i4} 0 0 -1
"""
ELE = """2 4 1
{i0} {a} {b} {c} {d} 10
{i1} {a} {b} {c} {e} 20  # region attributes 10 and 20
"""
FACE = """3 1
{i0} {a} {b} {c} 3
{i1} {a} {b} {d} 0
{i2} {a} {c} {e} 5
"""


@pytest.mark.parametrize("base", [0, 1])
def test_tetgen_index_base_from_node_file(tmp_path, base):
    """Two unit right tetrahedra (volume 1/6 each) glued on the triangle z = 0 (area 1/2)."""
    i = {f"i{k}": k + base for k in range(5)}
    v = {key: k + base for k, key in enumerate("abcde")}
    (tmp_path / "t.1.node").write_text(NODE.format(base=base, **i))
    (tmp_path / "t.1.ele").write_text(ELE.format(**i, **v))
    (tmp_path / "t.1.face").write_text(FACE.format(**i, **v))
    mesh = read_mesh(tmp_path / "t.1")
    topo = mesh.topology
    assert topo.compartment_labels.tolist() == [10, 20]
    assert np.allclose(mesh.compartment_volumes().numpy(), [1 / 6, 1 / 6], rtol=0, atol=1e-15)
    # Marker 3 (interface), marker 5 (a wall face of the second tet); marker 0 = unmarked.
    assert topo.boundary_labels.tolist() == [3, 5, -1, -1]
    assert topo.boundary_compartments.tolist() == [[0, 1], [1, -1], [0, -1], [1, -1]]
    slanted = np.sqrt(3) / 2  # the face x + y ± z = 1
    areas = [0.5, 0.5, 1.0 + slanted, 0.5 + slanted]
    assert np.allclose(mesh.boundary_areas().numpy(), areas, rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------- gmsh files
def _two_boxes_msh(path, version: float, physical: bool, surface_group: bool) -> None:
    """Two unit cubes side by side, fragmented so that they share the face x = 1."""
    import gmsh

    gmsh.initialize(readConfigFiles=False, interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("two_boxes")
        occ = gmsh.model.occ
        a, b = occ.addBox(0, 0, 0, 1, 1, 1), occ.addBox(1, 0, 0, 1, 1, 1)
        occ.fragment([(3, a)], [(3, b)])
        occ.synchronize()
        if physical:
            gmsh.model.addPhysicalGroup(3, [a], tag=5)
            gmsh.model.addPhysicalGroup(3, [b], tag=7)
        if surface_group:
            up = {s: gmsh.model.getAdjacencies(2, s)[0] for _, s in gmsh.model.getEntities(2)}
            shared = [s for s, vols in up.items() if len(vols) == 2]
            gmsh.model.addPhysicalGroup(2, shared, tag=3)
        gmsh.option.setNumber("Mesh.MeshSizeMax", 0.5)
        gmsh.model.mesh.generate(3)
        gmsh.option.setNumber("Mesh.MshFileVersion", version)
        gmsh.write(str(path))
    finally:
        gmsh.finalize()


@pytest.mark.parametrize("version", [2.2, 4.1])
@pytest.mark.parametrize("physical,surface_group", [(True, False), (True, True), (False, False)])
def test_gmsh_api_file_two_physical_volumes(tmp_path, version, physical, surface_group):
    """Volumes exact (1e-12: a union of tets tiles each cube exactly, round-off only)."""
    path = tmp_path / "two.msh"
    _two_boxes_msh(path, version, physical, surface_group)
    mesh = read_mesh(path)
    topo = mesh.topology
    assert mesh.ncompartment == 2
    assert len(mesh.interfaces) == 1
    assert topo.compartment_labels.tolist() == ([5, 7] if physical else [1, 2])
    assert np.allclose(mesh.compartment_volumes().numpy(), [1.0, 1.0], rtol=0, atol=1e-12)
    (b, i, j) = mesh.interfaces[0]
    assert (i, j) == (0, 1)
    assert float(mesh.boundary_areas()[b]) == pytest.approx(1.0, rel=1e-12)
    # Without surface groups, the interface and the two outer walls are found from faces.
    assert topo.boundary_compartments.tolist() == [[0, 1], [0, -1], [1, -1]]
    assert topo.boundary_labels.tolist() == ([3, -1, -1] if surface_group else [-1, -1, -1])
    assert np.allclose(mesh.boundary_areas().numpy(), [1.0, 5.0, 5.0], rtol=1e-12)
    mesh.check()


def test_written_msh_opens_in_gmsh(tmp_path, slabs):
    """gmsh itself reads our file: 3 physical volumes named after the labels."""
    import gmsh

    write_mesh(slabs, tmp_path / "s.msh")
    gmsh.initialize(readConfigFiles=False, interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.open(str(tmp_path / "s.msh"))
        groups = gmsh.model.getPhysicalGroups(3)
        names = sorted(gmsh.model.getPhysicalName(3, t) for _, t in groups)
        tets, _ = gmsh.model.mesh.getElementsByType(4)
    finally:
        gmsh.finalize()
    assert names == ["compartment 0", "compartment 1", "compartment 2"]
    assert len(tets) == slabs.ntet


# ---------------------------------------------------------------------------------- VTK arrays
def test_vtu_array_choice_and_missing_compartment_array(tmp_path, slabs):
    topo = slabs.topology
    cells = [("tetra", topo.tets_array)]
    region = [topo.compartment_labels[topo.tet_compartment] + 1]
    path = tmp_path / "region.vtu"
    meshio.Mesh(slabs.points.numpy(), cells, cell_data={"region": region}).write(path)
    with pytest.raises(MeshError, match=r"no cell-data array 'compartment'.*\['region'\]"):
        read_mesh(path)
    mesh = read_mesh(path, compartment_array="region")
    assert mesh.topology.compartment_labels.tolist() == [1, 2, 3]
    assert np.allclose(mesh.compartment_volumes().numpy(), [1.0, 0.5, 0.5], atol=1e-14)
    single = read_mesh(path, compartment_array=None)
    assert single.ncompartment == 1
    assert float(single.volume()) == pytest.approx(2.0, rel=1e-14)
    fractional = [region[0] + 0.5]
    meshio.Mesh(slabs.points.numpy(), cells, cell_data={"compartment": fractional}).write(path)
    with pytest.raises(MeshError, match="must hold integers; entry 0 is 1.5"):
        read_mesh(path)


# ---------------------------------------------------------------------------------- bad input
def test_bad_input_messages(tmp_path, slabs):
    assert {"gmsh", "vtu", "vtk", "tetgen", "npz"} <= set(mesh_formats())
    (tmp_path / "x.foo").write_text("")
    with pytest.raises(ValueError, match=r"extension '\.foo'.*gmsh \(\.msh\)"):
        read_mesh(tmp_path / "x.foo")
    with pytest.raises(ValueError, match=r"extension '\.foo'.*tetgen \(\.node, \.ele, \.face\)"):
        write_mesh(slabs, tmp_path / "y.foo")
    with pytest.raises(ValueError, match="format = 'stl' is unknown; pick one of"):
        read_mesh(tmp_path / "x.foo", format="stl")
    with pytest.raises(FileNotFoundError, match="mesh file not found: .*missing.msh"):
        read_mesh(tmp_path / "missing.msh")
    (tmp_path / "half.1.node").write_text("1 3 0 0\n1 0 0 0\n")
    with pytest.raises(FileNotFoundError, match=r"half\.1\.ele"):
        read_mesh(tmp_path / "half.1")
    with pytest.raises(TypeError, match="mesh must be a TetMesh, got ndarray"):
        write_mesh(np.zeros(3), tmp_path / "z.npz")
    tri = meshio.Mesh(np.eye(3), [("triangle", np.array([[0, 1, 2]]))])
    tri.write(tmp_path / "surface.msh", file_format="gmsh22")
    with pytest.raises(MeshError, match=r"holds no tetrahedra \(element types: \['triangle'\]\)"):
        read_mesh(tmp_path / "surface.msh")
    np.savez(tmp_path / "junk.npz", a=np.zeros(3))
    with pytest.raises(MeshError, match=r"not a mesh npz.*found \['a'\]"):
        read_mesh(tmp_path / "junk.npz")
    (tmp_path / "short.1.node").write_text("3 3 0 0\n1 0 0 0\n2 1 0 0\n")
    (tmp_path / "short.1.ele").write_text("0 4 0\n")
    with pytest.raises(MeshError, match="header announces 3 rows, found 2 rows"):
        read_mesh(tmp_path / "short.1")
    with pytest.raises(ValueError, match="written as MSH 4.1 or 2.2"):
        write_mesh(slabs, tmp_path / "v3.msh", version=3.0)
