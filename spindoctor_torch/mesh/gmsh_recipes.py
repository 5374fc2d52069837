"""Tetrahedral meshes of simple shapes with gmsh's own Python API (OpenCASCADE kernel).

Every recipe builds its solids in one OCC model, glues them with a boolean *fragment* (so
touching solids share their interface surfaces and the tetrahedra on both sides share the
interface triangles: the mesh is conformal), tags the pieces with physical volumes (one per
compartment) and physical surfaces (one per boundary), meshes, and reads the result back in
memory into a :class:`~spindoctor_torch.mesh.tetmesh.TetMesh` with float64 points.

Conventions
-----------
* Lengths are in µm.
* Compartments are numbered from the innermost layer outwards (SpinDoctor's ``in`` before
  ``out``); the physical volume tags are ``1 .. ncompartment`` in that order.
* Boundaries follow SpinDoctor's order (``prepare_pde.m``), physical surface tags ascending:

  - sphere with ``L`` inner layers: ``[Γ(0,1), Γ(1,2), ..., Γ(L-1,L), outer wall of L]``;
  - cylinder with ``L`` inner layers: the side interfaces ``Γ(l,l+1)``, the outer side wall,
    then the two end caps of each compartment (inner to outer), each a separate boundary;
  - box: one boundary (all six faces); slab stack: the interfaces between neighbouring slabs
    (left to right), then the outer wall of each slab.

Mesh size
---------
``h`` (µm) is the target tetrahedron edge length (gmsh ``Mesh.MeshSizeMax``). Instead of ``h``
one may give SpinDoctor's ``refinement``, TetGen's maximum tetrahedron volume (``-a``, µm³); it
is converted to the edge length of the regular tetrahedron of that volume,
``h = (6·√2·refinement)^(1/3)`` (a regular tetrahedron with edge ``a`` has volume
``a³/(6√2)``). This reproduces TetGen's typical element size, not its hard bound: measured on
a box, the mean tet volume is ≈ 0.45·refinement and the largest ≈ 1.2·refinement. Curved
surfaces are refined by curvature (gmsh
``Mesh.MeshSizeFromCurvature``) with ``2π·R/h`` elements per 2π radians, ``R`` being the
recipe's reference radius (the outer radius; ``rmean`` for cell setups): a small inner
sphere or cylinder (nucleus, axon) gets the same angular resolution, hence the same relative
volume and area accuracy, as the outer one, while the bulk keeps the edge length ``h``.
The 3-D algorithm is HXT (``Mesh.Algorithm3D = 10``), which gave the same volumes and
quality as gmsh's Delaunay at a fraction of the time (see ``benchmarks/bench_meshing.py``).

All gmsh calls go through :func:`gmsh_session`, which initializes gmsh quietly, never leaves a
model or changed option behind, serializes concurrent use, and turns gmsh's errors into
:class:`~spindoctor_torch.errors.MeshError`.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import MeshError
from .tetmesh import TetMesh

__all__ = [
    "GmshSession",
    "gmsh_session",
    "tetmesh_from_gmsh",
    "fragment_solids",
    "classify_surfaces",
    "is_cap",
    "mesh_model",
    "mesh_size",
    "box",
    "sphere",
    "cylinder",
    "slabs",
    "soma_dendrites",
]

_LOCK = threading.RLock()
_COUNTER = itertools.count()
_GMSH_TET = 4  # gmsh element type of the 4-node tetrahedron
_GMSH_TRI = 2  # gmsh element type of the 3-node triangle


# ---------------------------------------------------------------------------------- session
class GmshSession:
    """A fresh gmsh model plus a record of the options changed in it.

    Attributes
    ----------
    gmsh : the ``gmsh`` module
    model : ``gmsh.model``
    occ : ``gmsh.model.occ`` (the OpenCASCADE kernel)
    name : name of the model created for this session
    """

    def __init__(self, gmsh_module, name: str):
        self.gmsh = gmsh_module
        self.model = gmsh_module.model
        self.occ = gmsh_module.model.occ
        self.name = name
        self._saved: dict[str, float | str] = {}

    def option(self, name: str, value: float | str) -> None:
        """Set a gmsh option for this session; the old value is restored on exit."""
        opt = self.gmsh.option
        if isinstance(value, str):
            if name not in self._saved:
                self._saved[name] = opt.getString(name)
            opt.setString(name, value)
        else:
            if name not in self._saved:
                self._saved[name] = opt.getNumber(name)
            opt.setNumber(name, float(value))

    def _restore_options(self) -> None:
        opt = self.gmsh.option
        for name, value in self._saved.items():
            if isinstance(value, str):
                opt.setString(name, value)
            else:
                opt.setNumber(name, value)
        self._saved.clear()


@contextmanager
def gmsh_session(
    name: str = "spindoctor_torch", *, verbose: bool = False, nthreads: int | None = None
) -> Iterator[GmshSession]:
    """Context manager giving a fresh gmsh model that leaves no state behind.

    gmsh is initialized (without reading the user's gmsh configuration files) if it is not
    already; a new model is added and made current. On exit the model is removed, every
    option changed through :meth:`GmshSession.option` is restored, the previously current
    model (if any) is made current again, and gmsh is finalized if this session initialized
    it. Errors raised by gmsh itself (plain ``Exception``) are re-raised as
    :class:`MeshError` with gmsh's message. Sessions are serialized by a process-wide lock
    (gmsh is not thread-safe).

    Parameters
    ----------
    name : model name prefix (a unique suffix is appended, so a user's model of the same
        name is never touched).
    verbose : print gmsh's log to the terminal (``General.Terminal = 1``).
    nthreads : ``General.NumThreads`` (gmsh default when None; HXT uses it).
    """
    import gmsh

    with _LOCK:
        owner = not gmsh.isInitialized()
        if owner:
            interruptible = threading.current_thread() is threading.main_thread()
            gmsh.initialize(readConfigFiles=False, interruptible=interruptible)
            previous = None
        else:
            try:
                previous = gmsh.model.getCurrent()
            except Exception:  # no current model
                previous = None
        name = f"{name}-{next(_COUNTER)}"
        session = GmshSession(gmsh, name)
        try:
            session.option("General.Terminal", 1 if verbose else 0)
            if nthreads is not None:
                session.option("General.NumThreads", int(nthreads))
            gmsh.model.add(name)
            gmsh.model.setCurrent(name)
            yield session
        except Exception as exc:
            if type(exc) is Exception:  # gmsh's API raises bare Exception(last error)
                raise MeshError(f"gmsh failed: {exc}") from exc
            raise
        finally:
            if owner:
                gmsh.finalize()
            else:
                try:
                    gmsh.model.setCurrent(name)
                    gmsh.model.remove()
                finally:
                    session._restore_options()
                    if previous is not None:
                        gmsh.model.setCurrent(previous)


# ---------------------------------------------------------------------------------- reading
def tetmesh_from_gmsh(session: GmshSession | None = None) -> TetMesh:
    """Read the current gmsh model's 3-D mesh into a :class:`TetMesh` (in memory).

    Physical volumes become compartment labels (their tags; compartments are numbered in tag
    order) and the triangles of physical surfaces become labelled boundary facets (their
    tags). If the model has no physical volume at all, every volume entity is a compartment
    labelled with its entity tag. Volume entities outside every physical volume are left out
    when physical volumes exist (as gmsh does when saving). Only used nodes are kept.

    Raises
    ------
    MeshError
        No tetrahedra, an entity in two physical groups, or non-linear elements.
    """
    import gmsh

    model = gmsh.model if session is None else session.model
    node_tags, coords, _ = model.mesh.getNodes()
    if node_tags.size == 0:
        raise MeshError("the gmsh model has no mesh nodes; was mesh.generate(3) called?")
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    node_tags = np.asarray(node_tags, dtype=np.int64)
    order = np.argsort(node_tags)
    sorted_tags = node_tags[order]

    def to_index(tags: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.searchsorted(sorted_tags, tags), sorted_tags.shape[0] - 1)
        if not np.array_equal(sorted_tags[pos], tags):
            raise MeshError("gmsh elements refer to node tags that the model does not hold")
        return order[pos]

    def collect(dim: int, etype: int, nvert: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        groups = model.getPhysicalGroups(dim)
        seen: dict[int, int] = {}
        blocks, labels = [], []
        if groups:
            pairs = [
                (ptag, ent)
                for _, ptag in groups
                for ent in model.getEntitiesForPhysicalGroup(dim, ptag)
            ]
        elif dim == 3:
            pairs = [(tag, tag) for _, tag in model.getEntities(3)]
        else:
            pairs = []
        for ptag, ent in pairs:
            ent = int(ent)
            if ent in seen:
                raise MeshError(
                    f"gmsh entity ({dim}, {ent}) belongs to physical groups {seen[ent]} and "
                    f"{ptag}; each volume/surface must be in at most one group"
                )
            seen[ent] = int(ptag)
            types = model.mesh.getElementTypes(dim, ent)
            other = [t for t in types if t != etype]
            if other:
                raise MeshError(
                    f"gmsh entity ({dim}, {ent}) holds element types {list(types)}; only linear "
                    f"{'tetrahedra' if dim == 3 else 'triangles'} are supported"
                )
            _, enodes = model.mesh.getElementsByType(etype, ent)
            conn = np.asarray(enodes, dtype=np.int64).reshape(-1, nvert)
            blocks.append(conn)
            labels.append(np.full(conn.shape[0], int(ptag), dtype=np.int64))
        return blocks, labels

    tet_blocks, tet_labels = collect(3, _GMSH_TET, 4)
    if not tet_blocks or sum(b.shape[0] for b in tet_blocks) == 0:
        raise MeshError("the gmsh model holds no tetrahedra in its physical volumes")
    tets = np.concatenate(tet_blocks)
    labels = np.concatenate(tet_labels)
    tri_blocks, tri_labels = collect(2, _GMSH_TRI, 3)

    tets_idx = to_index(tets)
    used, inverse = np.unique(tets_idx, return_inverse=True)
    points = coords[used]
    tets_local = inverse.reshape(-1, 4)
    facets = facet_labels = None
    if tri_blocks:
        tris = to_index(np.concatenate(tri_blocks))
        remap = np.full(coords.shape[0], -1, dtype=np.int64)
        remap[used] = np.arange(used.shape[0])
        tris_local = remap[tris]
        keep = (tris_local >= 0).all(axis=1)  # triangles of volumes left out are dropped
        facets = tris_local[keep]
        facet_labels = np.concatenate(tri_labels)[keep]
    return TetMesh(points, tets_local, labels, facets, facet_labels)


# ---------------------------------------------------------------------------------- sizes
def mesh_size(h: float | None, refinement: float | None, default: float) -> float:
    """Target tetrahedron edge length (µm) from ``h`` or SpinDoctor's ``refinement``.

    Parameters
    ----------
    h : target edge length, µm, or None.
    refinement : TetGen maximum tetrahedron volume (``-a``), µm³, or None. Converted to the
        edge of the regular tetrahedron of that volume, ``(6·√2·refinement)^(1/3)``.
    default : edge length used when both are None, µm.

    Raises
    ------
    MeshError
        Both given, or a non-positive / non-finite value.
    """
    if h is not None and refinement is not None:
        raise MeshError(f"give either h = {h} or refinement = {refinement}, not both")
    if h is not None:
        if not (isinstance(h, (int, float)) and math.isfinite(h) and h > 0):
            raise MeshError(f"h = {h} must be a positive finite mesh size (µm)")
        return float(h)
    if refinement is not None:
        if not (
            isinstance(refinement, (int, float)) and math.isfinite(refinement) and refinement > 0
        ):
            raise MeshError(
                f"refinement = {refinement} must be a positive maximum tetrahedron volume (µm³)"
            )
        return float((6.0 * math.sqrt(2.0) * refinement) ** (1.0 / 3.0))
    return float(default)


def _check_positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise MeshError(f"{name} = {value!r} must be a positive number (µm)") from None
    if not (math.isfinite(v) and v > 0):
        raise MeshError(f"{name} = {value!r} must be a positive number (µm)")
    return v


def _check_layers(layers, radius: float) -> list[float]:
    if layers is None:
        return []
    vals = [float(r) for r in np.atleast_1d(np.asarray(layers, dtype=np.float64))]
    for r in vals:
        if not (math.isfinite(r) and 0 < r < radius):
            raise MeshError(f"layers radius {r} must lie strictly inside (0, {radius}) µm")
    if any(b <= a for a, b in zip(vals, vals[1:])):
        raise MeshError(f"layers = {vals} must be strictly increasing radii (µm)")
    return vals


# ---------------------------------------------------------------------------------- building
def fragment_solids(session: GmshSession, solids: Sequence[tuple[int, int]]) -> dict[int, int]:
    """Fragment OCC solids and label every resulting piece.

    Parameters
    ----------
    solids : (volume tag, compartment label) pairs. Where solids overlap, a piece takes the
        label of the smallest (by volume) input solid that contains it, so nested solids
        (nucleus inside cell inside ECS) become disjoint compartments.

    Returns
    -------
    dict mapping each final volume tag to its compartment label (model synchronized).
    """
    occ = session.occ
    if len(solids) == 1:
        occ.synchronize()
        return {int(solids[0][0]): int(solids[0][1])}
    mass = [occ.getMass(3, tag) for tag, _ in solids]
    dimtags = [(3, tag) for tag, _ in solids]
    _, out_map = occ.fragment(dimtags[:1], dimtags[1:])
    occ.synchronize()
    best: dict[int, tuple[float, int]] = {}
    for (_, label), m, pieces in zip(solids, mass, out_map):
        for dim, tag in pieces:
            if dim != 3:
                continue
            if tag not in best or m < best[tag][0]:
                best[tag] = (m, int(label))
    present = {int(t) for _, t in session.model.getEntities(3)}
    return {t: lab for t, (_, lab) in best.items() if t in present}


def classify_surfaces(session: GmshSession, vol_label: dict[int, int]):
    """Yield ``(surface tag, (label_a, label_b or None))`` for every surface that separates two
    compartments or bounds one from outside; surfaces inside one compartment are skipped."""
    for _, s in session.model.getEntities(2):
        up, _ = session.model.getAdjacencies(2, s)
        labs = sorted({vol_label[int(v)] for v in up if int(v) in vol_label})
        if not labs:
            continue
        if len(labs) == 1:
            if len([v for v in up if int(v) in vol_label]) >= 2:
                continue  # internal surface between two pieces of one compartment
            yield int(s), (labs[0], None)
        elif len(labs) == 2:
            yield int(s), (labs[0], labs[1])
        else:
            raise MeshError(f"gmsh surface {s} touches compartments {labs}: more than two")


def is_cap(session: GmshSession, surface: int, zlo: float, zhi: float, tol: float) -> bool:
    """Whether a surface is flat and lies in the plane z = zlo or z = zhi (OCC pads bounding
    boxes by its tolerance, about 1e-7, so ``tol`` must exceed that)."""
    _, _, z0, _, _, z1 = session.model.getBoundingBox(2, surface)
    zm = 0.5 * (z0 + z1)
    return abs(z1 - z0) < tol and (abs(zm - zlo) < tol or abs(zm - zhi) < tol)


def mesh_model(
    session: GmshSession,
    vol_label: dict[int, int],
    surf_label: dict[int, int],
    h: float,
    *,
    curvature_radius: float | None = None,
    algorithm3d: int = 10,
    msh_path: str | Path | None = None,
) -> TetMesh:
    """Add physical groups (volumes: compartment labels, surfaces: boundary labels), mesh
    with target edge length ``h`` (µm) and read back the TetMesh.

    ``curvature_radius`` (µm): curved surfaces get ``ceil(2π·curvature_radius/h)`` elements
    per 2π radians (none when None). ``algorithm3d``: gmsh ``Mesh.Algorithm3D`` (10 = HXT,
    1 = Delaunay). ``msh_path``: also write the mesh (MSH 4.1, ASCII)."""
    model = session.model
    by_label: dict[int, list[int]] = {}
    for tag, lab in vol_label.items():
        by_label.setdefault(lab, []).append(tag)
    for lab in sorted(by_label):
        model.addPhysicalGroup(3, sorted(by_label[lab]), tag=lab)
    by_blabel: dict[int, list[int]] = {}
    for tag, lab in surf_label.items():
        by_blabel.setdefault(lab, []).append(tag)
    for lab in sorted(by_blabel):
        model.addPhysicalGroup(2, sorted(by_blabel[lab]), tag=lab)
    session.option("Mesh.MeshSizeMax", h)
    session.option("Mesh.MeshSizeMin", 0.0)
    npt = 0 if curvature_radius is None else math.ceil(2.0 * math.pi * curvature_radius / h)
    session.option("Mesh.MeshSizeFromCurvature", npt)
    session.option("Mesh.Algorithm3D", algorithm3d)
    session.option("Mesh.ElementOrder", 1)
    model.mesh.generate(3)
    if msh_path is not None:
        session.option("Mesh.MshFileVersion", 4.1)
        session.option("Mesh.Binary", 0)
        session.gmsh.write(str(msh_path))
    return tetmesh_from_gmsh(session)


def _nested_labels(
    session: GmshSession,
    radii_layers: Sequence[float],
    make_solid: Callable[[float], int],
) -> dict[int, int]:
    """Create concentric solids (innermost first, compartment labels 1..) and fragment them."""
    solids = [(make_solid(r), i + 1) for i, r in enumerate(radii_layers)]
    return fragment_solids(session, solids)


# ---------------------------------------------------------------------------------- recipes
def box(
    sides: Sequence[float],
    h: float | None = None,
    *,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    refinement: float | None = None,
    msh_path: str | Path | None = None,
) -> TetMesh:
    """Axis-aligned box ``[0, Lx] x [0, Ly] x [0, Lz]`` shifted by ``origin``.

    Parameters
    ----------
    sides : (Lx, Ly, Lz), µm.
    h : target edge length, µm (default ``min(sides)/8``).
    origin : lower corner, µm.
    refinement : SpinDoctor/TetGen maximum tet volume, µm³, instead of ``h``.
    msh_path : if given, also write the gmsh mesh there (MSH 4.1, ASCII).

    Returns
    -------
    TetMesh with one compartment and one boundary (the six faces).
    """
    s = [_check_positive(f"sides[{k}]", v) for k, v in enumerate(_triple(sides, "sides"))]
    o = _triple(origin, "origin")
    size = mesh_size(h, refinement, min(s) / 8.0)
    with gmsh_session("box") as ses:
        tag = ses.occ.addBox(o[0], o[1], o[2], s[0], s[1], s[2])
        vol_label = fragment_solids(ses, [(tag, 1)])
        surf = {s_: 1 for s_, _ in classify_surfaces(ses, vol_label)}
        return mesh_model(ses, vol_label, surf, size, msh_path=msh_path)


def sphere(
    radius: float,
    h: float | None = None,
    *,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    layers: Sequence[float] | None = None,
    refinement: float | None = None,
    msh_path: str | Path | None = None,
) -> TetMesh:
    """Ball of radius ``radius`` (µm), optionally with nested inner layers.

    Parameters
    ----------
    radius : outer radius, µm.
    h : target edge length, µm (default ``radius/8``: volume error ≈ 0.5 %).
    center : centre, µm.
    layers : radii (µm, increasing, each in ``(0, radius)``) of inner concentric spheres, e.g.
        ``[3.0]`` for a nucleus of radius 3; each shell becomes a compartment.
    refinement : SpinDoctor/TetGen maximum tet volume, µm³, instead of ``h``.
    msh_path : also write the gmsh mesh there (MSH 4.1).

    Returns
    -------
    TetMesh with compartments ``0 .. L`` from the innermost ball outwards and boundaries
    ``[Γ(0,1), ..., Γ(L-1,L), outer wall]``.
    """
    radius = _check_positive("radius", radius)
    radii = _check_layers(layers, radius) + [radius]
    c = _triple(center, "center")
    size = mesh_size(h, refinement, radius / 8.0)
    with gmsh_session("sphere") as ses:
        vol_label = _nested_labels(ses, radii, lambda r: ses.occ.addSphere(c[0], c[1], c[2], r))
        n = len(radii)
        surf = {}
        for s, (a, b) in classify_surfaces(ses, vol_label):
            surf[s] = a if b is not None else n  # interface (a-1, a) -> tag a; wall -> n
        return mesh_model(ses, vol_label, surf, size, curvature_radius=radius, msh_path=msh_path)


def cylinder(
    radius: float,
    height: float,
    h: float | None = None,
    *,
    layers: Sequence[float] | None = None,
    refinement: float | None = None,
    msh_path: str | Path | None = None,
) -> TetMesh:
    """Circular cylinder with axis z, ``x² + y² ≤ radius²``, ``z ∈ [-height/2, height/2]``.

    Parameters
    ----------
    radius, height : µm.
    h : target edge length, µm (default ``min(radius, height)/8``).
    layers : radii of inner coaxial cylinders (µm, increasing, in ``(0, radius)``), e.g. an
        axon inside a myelin sheath.
    refinement : SpinDoctor/TetGen maximum tet volume, µm³, instead of ``h``.
    msh_path : also write the gmsh mesh there (MSH 4.1).

    Returns
    -------
    TetMesh with compartments ``0 .. L`` from the axis outwards and boundaries, in order,
    the side interfaces ``Γ(l, l+1)``, the outer side wall, then the caps (top and bottom
    together) of compartment ``0, 1, ..., L`` (SpinDoctor's cylinder ordering).
    """
    radius = _check_positive("radius", radius)
    height = _check_positive("height", height)
    radii = _check_layers(layers, radius) + [radius]
    size = mesh_size(h, refinement, min(radius, height) / 8.0)
    zlo, zhi = -height / 2.0, height / 2.0
    with gmsh_session("cylinder") as ses:
        vol_label = _nested_labels(
            ses, radii, lambda r: ses.occ.addCylinder(0.0, 0.0, zlo, 0.0, 0.0, height, r)
        )
        n = len(radii)
        tol = 1e-5 * max(radius, height)
        surf = {}
        for s, (a, b) in classify_surfaces(ses, vol_label):
            if b is not None:
                surf[s] = a  # side interface between layers a-1 and a (labels 1-based)
            elif is_cap(ses, s, zlo, zhi, tol):
                surf[s] = n + a  # caps of compartment a
            else:
                surf[s] = n  # outer side wall
        return mesh_model(ses, vol_label, surf, size, curvature_radius=radius, msh_path=msh_path)


def slabs(
    widths: Sequence[float],
    sides_yz: Sequence[float],
    h: float | None = None,
    *,
    refinement: float | None = None,
    msh_path: str | Path | None = None,
) -> TetMesh:
    """Stack of boxes along x sharing conformal faces, one compartment each.

    Slab ``k`` occupies ``x ∈ [w_0+...+w_{k-1}, w_0+...+w_k]``, ``y ∈ [0, Ly]``,
    ``z ∈ [0, Lz]``.

    Parameters
    ----------
    widths : (nslab,) slab widths along x, µm.
    sides_yz : (Ly, Lz), µm.
    h : target edge length, µm (default ``min(widths + sides_yz)/4``).
    refinement : SpinDoctor/TetGen maximum tet volume, µm³, instead of ``h``.
    msh_path : also write the gmsh mesh there (MSH 4.1).

    Returns
    -------
    TetMesh with compartments ``0 .. nslab-1`` from x = 0 and boundaries: the interfaces
    ``Γ(k, k+1)`` for ``k = 0 .. nslab-2``, then the outer wall of each slab ``0 .. nslab-1``
    (SpinDoctor.jl's plate/slab ordering).
    """
    w = np.atleast_1d(np.asarray(widths, dtype=np.float64))
    if w.ndim != 1 or w.size == 0:
        raise MeshError(f"widths = {widths!r} must be a non-empty list of lengths (µm)")
    w = [_check_positive(f"widths[{k}]", float(v)) for k, v in enumerate(w)]
    if len(sides_yz) != 2:
        raise MeshError(f"sides_yz = {sides_yz!r} must be (Ly, Lz) in µm")
    ly, lz = (_check_positive(f"sides_yz[{k}]", v) for k, v in enumerate(sides_yz))
    size = mesh_size(h, refinement, min(w + [ly, lz]) / 4.0)
    n = len(w)
    x0 = np.concatenate([[0.0], np.cumsum(w)])
    with gmsh_session("slabs") as ses:
        solids = [(ses.occ.addBox(x0[k], 0.0, 0.0, w[k], ly, lz), k + 1) for k in range(n)]
        vol_label = fragment_solids(ses, solids)
        surf = {}
        for s, (a, b) in classify_surfaces(ses, vol_label):
            if b is not None:
                if b != a + 1:
                    raise MeshError(f"slabs {a} and {b} touch but are not neighbours")
                surf[s] = a  # interface (a, a+1), tags 1..n-1
            else:
                surf[s] = n - 1 + a  # wall of slab a, tags n..2n-1
        return mesh_model(ses, vol_label, surf, size, msh_path=msh_path)


def soma_dendrites(
    soma_radius: float = 5.0,
    dendrite_length: float = 20.0,
    dendrite_radii: tuple[float, float] = (1.5, 0.5),
    directions: Sequence[Sequence[float]] = ((1.0, 0.0, 0.0), (-0.6, 0.8, 0.0)),
    h: float | None = None,
    *,
    refinement: float | None = None,
    msh_path: str | Path | None = None,
    stl_path: str | Path | None = None,
) -> TetMesh:
    """A neuron-like closed cell: a spherical soma with tapered (conical) dendrites.

    Each dendrite is a truncated cone starting at the soma centre along ``directions[k]``,
    with radius ``dendrite_radii[0]`` at the centre and ``dendrite_radii[1]`` at its tip,
    which lies ``soma_radius + dendrite_length`` from the centre; the soma and dendrites
    are fused into one solid (one compartment, one boundary).

    Parameters
    ----------
    soma_radius, dendrite_length : µm.
    dendrite_radii : (base, tip) radii, µm, each smaller than ``soma_radius``.
    directions : dendrite directions (normalized internally).
    h : target edge length, µm (default ``dendrite_radii[1]``, so the tips are resolved).
    refinement : SpinDoctor/TetGen maximum tet volume, µm³, instead of ``h``.
    msh_path : also write the gmsh volume mesh there (MSH 4.1).
    stl_path : also write the outer surface triangulation there (binary STL), e.g. as
        input for surface-based neuron pipelines.
    """
    rs = _check_positive("soma_radius", soma_radius)
    length = _check_positive("dendrite_length", dendrite_length)
    r0, r1 = (_check_positive(f"dendrite_radii[{k}]", v) for k, v in enumerate(dendrite_radii))
    if max(r0, r1) >= rs:
        raise MeshError(f"dendrite_radii = {dendrite_radii} must be smaller than soma_radius {rs}")
    dirs = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    norms = np.linalg.norm(dirs, axis=1)
    if np.any(norms == 0) or not np.all(np.isfinite(dirs)):
        raise MeshError(f"directions = {np.asarray(directions).tolist()} must be non-zero vectors")
    dirs = dirs / norms[:, None]
    size = mesh_size(h, refinement, min(r0, r1))
    with gmsh_session("soma_dendrites") as ses:
        occ = ses.occ
        soma = occ.addSphere(0.0, 0.0, 0.0, rs)
        reach = rs + length
        cones = [(3, occ.addCone(0.0, 0.0, 0.0, *(reach * d), r0, r1)) for d in dirs]
        out, _ = occ.fuse([(3, soma)], cones)
        occ.synchronize()
        vols = [t for d, t in out if d == 3]
        if len(vols) != 1:
            raise MeshError(f"soma and dendrites fused into {len(vols)} solids, expected 1")
        vol_label = {int(vols[0]): 1}
        surf = {s: 1 for s, _ in classify_surfaces(ses, vol_label)}
        mesh = mesh_model(ses, vol_label, surf, size, msh_path=msh_path)
        if stl_path is not None:
            ses.option("Mesh.SaveAll", 0)
            ses.option("Mesh.Binary", 1)  # binary STL: 50 bytes per triangle
            ses.gmsh.write(str(stl_path))
        return mesh


def _triple(v, name: str) -> list[float]:
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise MeshError(f"{name} = {v!r} must be three finite numbers (µm)")
    return [float(x) for x in arr]
