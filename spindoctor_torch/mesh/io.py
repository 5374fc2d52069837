"""Reading and writing :class:`~spindoctor_torch.mesh.tetmesh.TetMesh` files.

:func:`read_mesh` and :func:`write_mesh` pick a format from the file extension through a
registry (:func:`register_format`, :func:`mesh_formats`); an unknown extension raises an
error that lists the known ones. Every format below round-trips points (float64, bit for
bit), tetrahedra, compartment labels and boundaries.

Formats
-------
``gmsh`` (``.msh``)
    Read: MSH 2.2 or 4.x, ASCII or binary, through meshio. Each physical volume is a
    compartment labelled by its physical tag, or by ``<label>`` when the group is named
    ``"compartment <label>"`` (the writer uses such names for labels < 1, which gmsh cannot
    use as tags). Without any physical group the elementary volume tags are the labels
    and triangles are ignored. Triangles carrying a physical tag become labelled boundary
    facets; boundary faces without one (or a file without surface groups) get boundaries
    found from the shared faces. Points and lines are ignored; quadratic elements refused.
    Write: MSH 4.1 binary by default, through gmsh's API (``binary=False``: ASCII, which
    gmsh rounds to 16 significant digits), or ``version=2.2`` through meshio (binary or
    ASCII, both exact). One elementary volume and physical volume per compartment, one
    elementary surface per boundary, in physical surfaces tagged with the boundary tags
    (below). MSH 4.1 stores elements entity by entity, so tetrahedra read back from it are
    grouped by compartment (original order inside each); MSH 2.2 keeps the order. meshio
    reads binary MSH 2.2 files written by gmsh slowly (one block per element, ~0.1 ms each).
``vtu`` / ``vtk`` (``.vtu``, ``.vtk``: VTK XML or legacy, through meshio)
    One unstructured grid with a ``tetra`` block carrying the integer cell-data array
    ``compartment`` (the labels) and, optionally, a ``triangle`` block of boundary facets
    carrying the array ``boundary`` (boundary tags). In files we write, the tets' entries
    of ``boundary`` are 0 and the triangles' entries of ``compartment`` hold the label of
    the compartment the facet normal points out of (for colouring in ParaView).
``tetgen`` (``.node`` + ``.ele`` [+ ``.face``], as SpinDoctor caches TetGen's output)
    ``read_mesh("x.1.node")``, ``"x.1.ele"``, ``"x.1.face"`` or the basename ``"x.1"``. The
    first region attribute of ``.ele`` is the compartment label (one compartment labelled 0
    without attributes), the ``.face`` boundary marker is the facet label (marker 0 means
    unmarked; the file is optional). Indices start at 0 or 1, as the ``.node`` file's first
    index says. Written 1-based with coordinates in 17 significant digits (exact).
``npz`` (``.npz``)
    Ours, lossless (the topology is rebuilt identically, including the file labels of
    boundaries and the tet order): ``points`` (N, 3) float64, ``tets`` (M, 4), ``tet_labels``
    (M,), ``facets`` (F, 3), ``facet_boundary`` (F,), ``boundary_labels`` (nboundary,) and the
    marker ``spindoctor_torch_mesh`` (format version). Also read: SpinDoctor's reference
    arrays (``points``, ``tetrahedra`` zero-based, ``tet_labels``, optional ``facets`` and
    ``facet_labels``) and any npz with ``points`` and ``tets``; one-based connectivity is
    recognised when the largest index equals the number of points.

Boundary tags
-------------
Files other than npz store boundary ``b`` under a positive integer tag: its label from the
file it was read from when that label is >= 1, otherwise (boundaries found from shared faces
have label -1) a new tag above the largest label. If those tags would not be in boundary
order they are replaced by ``b + 1`` (SpinDoctor's one-based boundary numbering). Reading a
written file therefore gives the same boundary numbering, and the same ``boundary_labels``
where they were >= 1. See :mod:`spindoctor_torch.mesh.topology` for the numbering itself.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MeshError
from .tetmesh import TetMesh
from .topology import Topology

__all__ = [
    "read_mesh",
    "write_mesh",
    "register_format",
    "mesh_formats",
    "boundary_tags",
    "NPZ_FORMAT_VERSION",
]

#: Version of our lossless npz layout (stored under the key ``spindoctor_torch_mesh``).
NPZ_FORMAT_VERSION = 1

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class _Format:
    name: str
    extensions: tuple[str, ...]
    reader: Callable[..., TetMesh] | None
    writer: Callable[..., None] | None
    description: str


_FORMATS: dict[str, _Format] = {}
_EXTENSIONS: dict[str, str] = {}


def register_format(
    name: str,
    extensions: tuple[str, ...] | list[str],
    reader: Callable[..., TetMesh] | None = None,
    writer: Callable[..., None] | None = None,
    description: str = "",
) -> None:
    """Register a mesh file format for :func:`read_mesh` / :func:`write_mesh`.

    Parameters
    ----------
    name : format name (``format=`` argument).
    extensions : file extensions with the dot, e.g. ``(".msh",)``; matched case-insensitively.
    reader : ``reader(path: Path, **options) -> TetMesh`` or None (write-only format).
    writer : ``writer(mesh: TetMesh, path: Path, **options) -> None`` or None (read-only).
    description : one line shown in error messages and :func:`mesh_formats`.
    """
    exts = tuple(e.lower() for e in extensions)
    for e in exts:
        if not e.startswith("."):
            raise ValueError(f"extension {e!r} of format {name!r} must start with '.'")
    _FORMATS[name] = _Format(name, exts, reader, writer, description)
    for e in exts:
        _EXTENSIONS[e] = name


def mesh_formats() -> dict[str, tuple[str, ...]]:
    """Registered formats: ``{name: extensions}``."""
    return {f.name: f.extensions for f in _FORMATS.values()}


def _known_formats_text() -> str:
    return "; ".join(
        f"{f.name} ({', '.join(f.extensions) or 'by name'}): {f.description}"
        for f in _FORMATS.values()
    )


def _get_format(name: str, purpose: str) -> _Format:
    fmt = _FORMATS.get(name)
    if fmt is None:
        raise ValueError(
            f"format = {name!r} is unknown; pick one of {sorted(_FORMATS)} "
            f"({_known_formats_text()})"
        )
    if getattr(fmt, purpose) is None:
        raise ValueError(f"format {name!r} cannot be used for {purpose[:-3]}ing")
    return fmt


def _tetgen_base(path: Path) -> Path | None:
    """Basename of a TetGen file set (``x.1`` for ``x.1.node``/``x.1.ele``/``x.1.face``)."""
    if path.suffix.lower() in (".node", ".ele", ".face"):
        return path.with_suffix("")
    return None


def _resolve(path: PathLike, format: str | None, purpose: str) -> tuple[_Format, Path]:
    path = Path(os.fspath(path)).expanduser()
    if format is not None:
        return _get_format(format, purpose), path
    ext = path.suffix.lower()
    name = _EXTENSIONS.get(ext)
    if name is None and purpose == "reader" and Path(f"{path}.node").exists():
        name = "tetgen"  # SpinDoctor-style basename "x.1" of x.1.node/.ele/.face
    if name is None:
        raise ValueError(
            f"cannot tell the mesh format of '{path}' from its extension {ext!r}; known "
            f"formats: {_known_formats_text()}. Pass format= one of {sorted(_FORMATS)}"
        )
    return _get_format(name, purpose), path


def read_mesh(path: PathLike, format: str | None = None, **options) -> TetMesh:
    """Read a tetrahedral mesh file into a :class:`TetMesh`.

    Parameters
    ----------
    path : file name; the format follows from its extension (see the module docstring), or,
        for TetGen output, may be the basename ``"x.1"`` of ``x.1.node``/``.ele``/``.face``.
    format : force a format: ``"gmsh"``, ``"vtu"``, ``"vtk"``, ``"tetgen"``, ``"npz"`` or any
        registered one.
    **options : passed to the format's reader (``vtu``/``vtk``: ``compartment_array``,
        ``boundary_array``).

    Returns
    -------
    TetMesh with float64 points (µm, as stored in the file; points used by no tetrahedron
    are kept, and carry no degree of freedom).

    Raises
    ------
    FileNotFoundError
        The file (or, for TetGen, the ``.node``/``.ele`` file) does not exist.
    ValueError
        Unknown format or extension (the message lists the known ones).
    MeshError
        The file holds no tetrahedra, lacks its compartment labels, or is malformed.

    Examples
    --------
    >>> mesh = read_mesh("cell.msh")  # doctest: +SKIP
    >>> mesh = read_mesh("spindoctor_cache/sphere.1")  # TetGen .node/.ele/.face  # doctest: +SKIP
    """
    fmt, p = _resolve(path, format, "reader")
    if fmt.name != "tetgen" and not p.is_file():
        raise FileNotFoundError(f"mesh file not found: '{p}'")
    return fmt.reader(p, **options)


def write_mesh(mesh: TetMesh, path: PathLike, format: str | None = None, **options) -> None:
    """Write a :class:`TetMesh` to a file; see the module docstring for each layout.

    Parameters
    ----------
    mesh : the mesh (its points are detached and written as float64).
    path : file name; the format follows from the extension. For TetGen, ``"x.1.node"`` (or
        ``"x.1"`` with ``format="tetgen"``) writes ``x.1.node``, ``x.1.ele`` and ``x.1.face``.
    format : force a format (see :func:`read_mesh`).
    **options : passed to the format's writer (``gmsh``: ``version`` 4.1 or 2.2, ``binary``;
        ``vtu``: ``binary``, ``compression``; ``vtk``: ``binary``; ``npz``: ``compressed``).

    Raises
    ------
    TypeError
        ``mesh`` is not a TetMesh.
    ValueError
        Unknown format or extension.
    """
    if not isinstance(mesh, TetMesh):
        raise TypeError(f"mesh must be a TetMesh, got {type(mesh).__name__}")
    fmt, p = _resolve(path, format, "writer")
    fmt.writer(mesh, p, **options)


# ---------------------------------------------------------------------------------- helpers
def _points_np(mesh: TetMesh) -> np.ndarray:
    return mesh.points.detach().cpu().numpy().astype(np.float64, copy=False)


def _tet_labels(topo: Topology) -> np.ndarray:
    return topo.compartment_labels[topo.tet_compartment].astype(np.int64)


def boundary_tags(topology: Topology) -> np.ndarray:
    """(nboundary,) positive integer tag under which each boundary is written to files.

    A boundary keeps its file label when that label is >= 1; the others (label -1: found from
    shared faces) get new tags above the largest label, in boundary order. If the result is
    not non-decreasing in boundary order (reading it back would renumber the boundaries), the
    tags are ``1 .. nboundary`` instead.
    """
    labels = np.asarray(topology.boundary_labels, dtype=np.int64)
    nb = labels.shape[0]
    tags = labels.copy()
    fresh = labels < 1
    top = int(labels[~fresh].max()) if np.any(~fresh) else 0
    tags[fresh] = top + 1 + np.arange(int(fresh.sum()), dtype=np.int64)
    if np.any(np.diff(tags) < 0):
        tags = np.arange(1, nb + 1, dtype=np.int64)
    return tags


def _integer_labels(values: np.ndarray, what: str) -> np.ndarray:
    """Integer-valued array -> int64, or MeshError naming the first non-integer value."""
    values = np.asarray(values).reshape(-1)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    if not np.issubdtype(values.dtype, np.floating):
        raise MeshError(f"{what} must hold integers, got dtype {values.dtype}")
    frac = values != np.round(values)
    if np.any(frac) or not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(frac | ~np.isfinite(values))[0])
        raise MeshError(f"{what} must hold integers; entry {bad} is {float(values[bad])!r}")
    return values.astype(np.int64)


# ---------------------------------------------------------------------------------- gmsh
_COMPARTMENT_NAME = re.compile(r"^\s*compartment\s+(-?\d+)\s*$")
_QUADRATIC = ("tetra10", "triangle6", "tetra20", "triangle10", "hexahedron", "wedge", "pyramid")


def _read_gmsh(path: Path) -> TetMesh:
    import meshio

    m = meshio.read(path, file_format="gmsh")
    if m.points.ndim != 2 or m.points.shape[1] != 3:
        raise MeshError(f"'{path}': points must be 3-D, got shape {m.points.shape}")
    types = [blk.type for blk in m.cells]
    unsupported = sorted({t for t in types if t in _QUADRATIC})
    if unsupported:
        raise MeshError(
            f"'{path}' holds {unsupported} elements; only linear tetrahedra (and triangles) "
            "are supported: export a first-order mesh (gmsh Mesh.ElementOrder = 1)"
        )
    if "tetra" not in types:
        raise MeshError(f"'{path}' holds no tetrahedra (element types: {sorted(set(types))})")

    nblock = len(m.cells)
    phys = m.cell_data.get("gmsh:physical")
    geom = m.cell_data.get("gmsh:geometrical")
    if phys is not None and len(phys) != nblock:
        raise MeshError(
            f"'{path}': only some element blocks belong to physical groups; put every volume "
            "in a physical group (or none), or save without Mesh.SaveAll"
        )
    # Physical tag -> label from names "compartment <label>" (written for labels < 1).
    name_label = {}
    for name, (tag, dim) in ((k, tuple(v[:2])) for k, v in m.field_data.items()):
        match = _COMPARTMENT_NAME.match(name)
        if match and int(dim) == 3:
            name_label[int(tag)] = int(match.group(1))

    def gather(kind: str, tags) -> tuple[np.ndarray, np.ndarray | None]:
        idx = [k for k in range(nblock) if types[k] == kind]
        conn = np.concatenate([m.cells[k].data for k in idx]).astype(np.int64)
        if tags is None:
            return conn, None
        return conn, np.concatenate([np.asarray(tags[k]).reshape(-1) for k in idx]).astype(np.int64)

    tets, tet_phys = gather("tetra", phys)
    use_phys = tet_phys is not None and np.any(tet_phys != 0)
    if use_phys:
        labels = tet_phys
        if name_label:
            lut_keys = np.array(sorted(name_label), dtype=np.int64)
            lut_vals = np.array([name_label[k] for k in lut_keys], dtype=np.int64)
            pos = np.clip(np.searchsorted(lut_keys, labels), 0, lut_keys.size - 1)
            hit = lut_keys[pos] == labels
            labels = np.where(hit, lut_vals[pos], labels)
        tri_tags = phys
    else:  # no physical groups: elementary volumes; elementary surfaces are not boundaries
        labels = gather("tetra", geom)[1] if geom is not None else None
        tri_tags = None
    facets = facet_labels = None
    if "triangle" in types and tri_tags is not None:
        tris, tri_lab = gather("triangle", tri_tags)
        keep = tri_lab != 0  # MSH 2 writes physical tag 0 for "no group"
        facets, facet_labels = tris[keep], tri_lab[keep]
    return TetMesh(np.asarray(m.points, dtype=np.float64), tets, labels, facets, facet_labels)


def _write_gmsh(mesh: TetMesh, path: Path, *, version: float = 4.1, binary: bool = True) -> None:
    if float(version) not in (2.2, 4.1):
        raise ValueError(f"version = {version!r}: gmsh files are written as MSH 4.1 or 2.2")
    topo = mesh.topology
    labels = topo.compartment_labels.astype(np.int64)
    # Physical tags must be >= 1; the names carry the labels when they are shifted.
    shift = 0 if labels.min() >= 1 else 1 - int(labels.min())
    btags = boundary_tags(topo)
    names = {f"compartment {int(lab)}": (int(lab) + shift, 3) for lab in labels}
    names.update({f"boundary {int(tag)}": (int(tag), 2) for tag in np.unique(btags)})
    if float(version) == 2.2:
        _write_msh22(mesh, path, labels + shift, btags, names, binary)
    else:
        _write_msh41(mesh, path, labels + shift, btags, names, binary)


def _write_msh22(mesh, path, ctags, btags, names, binary) -> None:
    """MSH 2.2 through meshio: one element block per type, tets in their original order."""
    import meshio

    topo = mesh.topology
    cells = [("tetra", topo.tets_array), ("triangle", topo.facets)]
    cell_data = {
        "gmsh:physical": [ctags[topo.tet_compartment], btags[topo.facet_boundary]],
        "gmsh:geometrical": [topo.tet_compartment + 1, topo.facet_boundary + 1],
    }
    field_data = {name: np.array(tag_dim) for name, tag_dim in names.items()}
    meshio.Mesh(_points_np(mesh), cells, cell_data=cell_data, field_data=field_data).write(
        path, file_format="gmsh22", binary=binary
    )


def _write_msh41(mesh, path, ctags, btags, names, binary) -> None:
    """MSH 4.1 through gmsh's API (meshio's 4.1 writer needs per-node entity data)."""
    from .gmsh_recipes import gmsh_session

    topo = mesh.topology
    ncmp, nb = topo.ncompartment, topo.nboundary
    bc = topo.boundary_compartments
    with gmsh_session("spindoctor_torch_write") as s:
        model = s.model
        for b in range(nb):
            model.addDiscreteEntity(2, b + 1)
        for c in range(ncmp):
            touching = np.flatnonzero((bc[:, 0] == c) | (bc[:, 1] == c)) + 1
            model.addDiscreteEntity(3, c + 1, touching.tolist())
        # All nodes in one block on volume 1, so readers see them in their original order.
        model.mesh.addNodes(3, 1, np.arange(1, topo.npoint + 1), _points_np(mesh).reshape(-1))
        tet_tags = np.arange(1, topo.ntet + 1, dtype=np.int64)
        for c in range(ncmp):
            sel = topo.tet_compartment == c
            conn = (topo.tets_array[sel] + 1).reshape(-1)
            model.mesh.addElementsByType(c + 1, 4, tet_tags[sel], conn)
        facet_tags = topo.ntet + 1 + np.arange(topo.facets.shape[0], dtype=np.int64)
        for b in range(nb):
            sel = topo.facet_boundary == b
            conn = (topo.facets[sel] + 1).reshape(-1)
            model.mesh.addElementsByType(b + 1, 2, facet_tags[sel], conn)
        by_name = {tag_dim: name for name, tag_dim in names.items()}
        for c in range(ncmp):
            tag = int(ctags[c])
            model.addPhysicalGroup(3, [c + 1], tag=tag, name=by_name[(tag, 3)])
        for tag in np.unique(btags):
            ents = (np.flatnonzero(btags == tag) + 1).tolist()
            model.addPhysicalGroup(2, ents, tag=int(tag), name=by_name[(int(tag), 2)])
        s.option("Mesh.MshFileVersion", 4.1)
        s.option("Mesh.Binary", 1 if binary else 0)
        s.option("Mesh.SaveAll", 0)
        s.gmsh.write(str(path))


# ---------------------------------------------------------------------------------- VTK
def _read_vtk_like(
    path: Path,
    *,
    file_format: str,
    compartment_array: str | None = "compartment",
    boundary_array: str | None = "boundary",
) -> TetMesh:
    import meshio

    m = meshio.read(path, file_format=file_format)
    types = [blk.type for blk in m.cells]
    if "tetra" not in types:
        raise MeshError(f"'{path}' holds no tetrahedra (cell types: {sorted(set(types))})")
    tet_blocks = [k for k, t in enumerate(types) if t == "tetra"]
    tets = np.concatenate([m.cells[k].data for k in tet_blocks]).astype(np.int64)
    labels = None
    if compartment_array is not None:
        arr = m.cell_data.get(compartment_array)
        if arr is None:
            raise MeshError(
                f"'{path}' has no cell-data array {compartment_array!r} with the compartment "
                f"of each tetrahedron (cell-data arrays: {sorted(m.cell_data)}); pass "
                "compartment_array=<name>, or compartment_array=None for one compartment"
            )
        labels = _integer_labels(
            np.concatenate([np.asarray(arr[k]).reshape(-1) for k in tet_blocks]),
            f"cell-data array {compartment_array!r} of '{path}'",
        )
    facets = facet_labels = None
    tri_blocks = [k for k, t in enumerate(types) if t == "triangle"]
    if boundary_array is not None and tri_blocks and boundary_array in m.cell_data:
        arr = m.cell_data[boundary_array]
        facets = np.concatenate([m.cells[k].data for k in tri_blocks]).astype(np.int64)
        facet_labels = _integer_labels(
            np.concatenate([np.asarray(arr[k]).reshape(-1) for k in tri_blocks]),
            f"cell-data array {boundary_array!r} of '{path}'",
        )
    return TetMesh(np.asarray(m.points, dtype=np.float64), tets, labels, facets, facet_labels)


def _write_vtk_like(mesh: TetMesh, path: Path, *, file_format: str, **kwargs) -> None:
    import meshio

    topo = mesh.topology
    side0 = topo.boundary_compartments[topo.facet_boundary, 0]
    cells = [("tetra", topo.tets_array), ("triangle", topo.facets)]
    cell_data = {
        "compartment": [_tet_labels(topo), topo.compartment_labels[side0].astype(np.int64)],
        "boundary": [
            np.zeros(topo.ntet, dtype=np.int64),
            boundary_tags(topo)[topo.facet_boundary],
        ],
    }
    meshio.Mesh(_points_np(mesh), cells, cell_data=cell_data).write(
        path, file_format=file_format, **kwargs
    )


def _read_vtu(path: Path, **options) -> TetMesh:
    return _read_vtk_like(path, file_format="vtu", **options)


def _read_vtk(path: Path, **options) -> TetMesh:
    return _read_vtk_like(path, file_format="vtk", **options)


def _write_vtu(mesh: TetMesh, path: Path, *, binary: bool = True, compression="zlib") -> None:
    _write_vtk_like(mesh, path, file_format="vtu", binary=binary, compression=compression)


def _write_vtk(mesh: TetMesh, path: Path, *, binary: bool = True) -> None:
    _write_vtk_like(mesh, path, file_format="vtk", binary=binary)


# ---------------------------------------------------------------------------------- TetGen
def _tetgen_table(path: Path, ncol_min: int) -> tuple[list[str], np.ndarray]:
    """Header tokens and the (count, ncol) body of a TetGen file (comments stripped)."""
    lines = []
    with open(path) as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    if not lines:
        raise MeshError(f"'{path}' is empty")
    header = lines[0].split()
    try:
        count = int(header[0])
    except ValueError:
        raise MeshError(f"'{path}': first line must start with a count, got {lines[0]!r}") from None
    body = lines[1 : 1 + count]
    tokens = " ".join(body).split()
    if count == 0:
        return header, np.zeros((0, ncol_min))
    if len(body) < count or len(tokens) % count:
        raise MeshError(
            f"'{path}': header announces {count} rows, found {len(body)} rows with "
            f"{len(tokens)} numbers"
        )
    try:
        table = np.array(tokens, dtype=np.float64).reshape(count, -1)
    except ValueError as exc:
        raise MeshError(f"'{path}': {exc}") from None
    if table.shape[1] < ncol_min:
        raise MeshError(f"'{path}': rows have {table.shape[1]} numbers, expected {ncol_min}+")
    return header, table


def _read_tetgen(path: Path) -> TetMesh:
    base = _tetgen_base(path) or path
    node, ele, face = (Path(f"{base}{e}") for e in (".node", ".ele", ".face"))
    for f in (node, ele):
        if not f.is_file():
            raise FileNotFoundError(f"mesh file not found: '{f}' (TetGen set '{base}')")
    nhead, ntab = _tetgen_table(node, 4)
    if len(nhead) > 1 and int(nhead[1]) != 3:
        raise MeshError(f"'{node}': dimension {nhead[1]}, expected 3")
    if ntab.shape[0] == 0:
        raise MeshError(f"'{node}' holds no nodes")
    ids = _integer_labels(ntab[:, 0], f"node indices of '{node}'")
    base_index = int(ids[0])
    if not np.array_equal(ids, base_index + np.arange(ids.shape[0])):
        raise MeshError(f"'{node}': node indices must be consecutive from {base_index}")
    points = ntab[:, 1:4]

    ehead, etab = _tetgen_table(ele, 5)
    nper = int(ehead[1]) if len(ehead) > 1 else 4
    nattr = int(ehead[2]) if len(ehead) > 2 else 0
    if nper != 4:
        raise MeshError(f"'{ele}': {nper} nodes per tetrahedron; only 4-node tetrahedra work")
    tets = _integer_labels(etab[:, 1:5], f"tetrahedra of '{ele}'").reshape(-1, 4) - base_index
    labels = _integer_labels(etab[:, 5], f"region attributes of '{ele}'") if nattr else None

    facets = facet_labels = None
    if face.is_file():
        fhead, ftab = _tetgen_table(face, 4)
        nbm = int(fhead[1]) if len(fhead) > 1 else 0
        if ftab.shape[0] and nbm:
            tri = _integer_labels(ftab[:, 1:4], f"faces of '{face}'").reshape(-1, 3)
            marker = _integer_labels(ftab[:, 4], f"face markers of '{face}'")
            keep = marker != 0
            facets, facet_labels = tri[keep] - base_index, marker[keep]
    return TetMesh(points, tets, labels, facets, facet_labels)


def _write_tetgen(mesh: TetMesh, path: Path) -> None:
    base = _tetgen_base(path) or path
    topo = mesh.topology
    stamp = "# Generated by spindoctor_torch (TetGen format, 1-based)"
    n, m, f = topo.npoint, topo.ntet, topo.facets.shape[0]
    node_rows = np.column_stack([np.arange(1, n + 1), _points_np(mesh)])
    np.savetxt(
        f"{base}.node",
        node_rows,
        fmt=["%d", "%.17g", "%.17g", "%.17g"],
        header=f"{n} 3 0 0",
        footer=stamp,
        comments="",
    )
    ele_rows = np.column_stack([np.arange(1, m + 1), topo.tets_array + 1, _tet_labels(topo)])
    np.savetxt(f"{base}.ele", ele_rows, fmt="%d", header=f"{m} 4 1", footer=stamp, comments="")
    face_rows = np.column_stack(
        [np.arange(1, f + 1), topo.facets + 1, boundary_tags(topo)[topo.facet_boundary]]
    )
    np.savetxt(f"{base}.face", face_rows, fmt="%d", header=f"{f} 1", footer=stamp, comments="")


# ---------------------------------------------------------------------------------- npz
def _read_npz(path: Path) -> TetMesh:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    keys = sorted(arrays)
    if "spindoctor_torch_mesh" in arrays:
        version = int(arrays["spindoctor_torch_mesh"])
        if version > NPZ_FORMAT_VERSION:
            raise MeshError(f"'{path}': npz mesh format version {version} is newer than ours")
        missing = {"points", "tets", "tet_labels", "facets", "facet_boundary", "boundary_labels"}
        missing -= set(arrays)
        if missing:
            raise MeshError(f"'{path}' lacks arrays {sorted(missing)} (has {keys})")
        # Facet labels = boundary indices reproduce the numbering; then restore file labels.
        mesh = TetMesh(
            arrays["points"],
            arrays["tets"],
            arrays["tet_labels"],
            arrays["facets"],
            arrays["facet_boundary"],
        )
        blabels = np.asarray(arrays["boundary_labels"], dtype=np.int64).reshape(-1)
        if blabels.shape[0] != mesh.nboundary:
            raise MeshError(
                f"'{path}': boundary_labels has {blabels.shape[0]} entries for "
                f"{mesh.nboundary} boundaries"
            )
        topo = dataclasses.replace(mesh.topology, boundary_labels=blabels)
        return TetMesh(mesh.points, None, topology=topo)
    tets_key = "tets" if "tets" in arrays else "tetrahedra" if "tetrahedra" in arrays else None
    if "points" not in arrays or tets_key is None:
        raise MeshError(
            f"'{path}' is not a mesh npz: it needs arrays 'points' and 'tets' (or SpinDoctor's "
            f"'tetrahedra'); found {keys}"
        )
    points = np.asarray(arrays["points"], dtype=np.float64)
    npoint = points.shape[0]
    tets = _integer_labels(arrays[tets_key], f"'{tets_key}' of '{path}'").reshape(-1, 4)
    one_based = tets.size and tets.max() == npoint and tets.min() >= 1
    offset = 1 if one_based else 0
    facets = facet_labels = None
    if "facets" in arrays:
        facets = _integer_labels(arrays["facets"], f"'facets' of '{path}'").reshape(-1, 3) - offset
        if "facet_labels" in arrays:
            facet_labels = _integer_labels(arrays["facet_labels"], f"'facet_labels' of '{path}'")
    labels = arrays.get("tet_labels")
    return TetMesh(points, tets - offset, labels, facets, facet_labels)


def _write_npz(mesh: TetMesh, path: Path, *, compressed: bool = True) -> None:
    topo = mesh.topology
    save = np.savez_compressed if compressed else np.savez
    # np.savez appends ".npz" to names without it; write through a handle to keep the name.
    with open(path, "wb") as fh:
        save(
            fh,
            spindoctor_torch_mesh=np.array(NPZ_FORMAT_VERSION),
            points=_points_np(mesh),
            tets=topo.tets_array,
            tet_labels=_tet_labels(topo),
            facets=topo.facets,
            facet_boundary=topo.facet_boundary,
            boundary_labels=topo.boundary_labels.astype(np.int64),
        )


register_format(
    "gmsh", (".msh",), _read_gmsh, _write_gmsh, "gmsh MSH 2.2/4.x, physical groups = labels"
)
register_format("vtu", (".vtu",), _read_vtu, _write_vtu, "VTK XML, cell data 'compartment'")
register_format("vtk", (".vtk",), _read_vtk, _write_vtk, "legacy VTK, cell data 'compartment'")
register_format(
    "tetgen",
    (".node", ".ele", ".face"),
    _read_tetgen,
    _write_tetgen,
    "TetGen .node/.ele/.face (region attribute, face marker)",
)
register_format("npz", (".npz",), _read_npz, _write_npz, "numpy arrays, lossless")
