"""Closed triangulated surfaces in, tetrahedral meshes out (and back).

:func:`mesh_surface` reads a closed surface (STL, PLY, OBJ, OFF, a gmsh ``.msh`` surface, a
:class:`trimesh.Trimesh` or ``(vertices, faces)`` arrays), checks that it bounds a volume,
repairs trivial defects, and fills it with tetrahedra using gmsh. This is the entry point
for neurons and other cells given as surfaces. :func:`tetmesh_to_trimesh` goes the other
way: the outer surface of a :class:`TetMesh` as a trimesh (for example for Chamfer
distances between a fitted and a target shape).

Surface checks
--------------
A surface can be meshed when it is watertight (every edge shared by exactly two
triangles), consistently oriented (the two triangles at each edge traverse it in opposite
directions), oriented outward (positive enclosed volume), made of one connected piece, free
of degenerate (zero-area) and duplicate triangles, and not self-intersecting. Vertices with
bit-identical coordinates are always merged (STL stores every triangle's corners
separately). With ``repair=True`` the following are fixed first: vertices closer than 1e-8
(trimesh's merge tolerance, in the file's units) are merged, degenerate and duplicate
triangles are dropped, and the winding is made consistent and outward. Whatever remains is
reported in one :class:`~spindoctor_torch.errors.MeshError` that lists every problem with
its count. Self-intersections are detected by gmsh's boundary recovery and reported too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import MeshError
from .tetmesh import TetMesh

__all__ = ["mesh_surface", "surface_problems", "tetmesh_to_trimesh", "SURFACE_FORMATS"]

#: File extensions :func:`mesh_surface` reads (``.msh`` through meshio, the rest through trimesh).
SURFACE_FORMATS = (".stl", ".ply", ".obj", ".off", ".msh")

#: gmsh 3-D algorithm: Delaunay. Measured on an icosphere with a fixed surface, HXT left
#: 0.5° slivers next to the surface that gmsh's optimizer did not remove (and spent 15 s
#: trying), while Delaunay + optimizer gave a smallest dihedral angle of 14°.
_ALGORITHM_3D = 1
#: Dihedral angle (degrees) above which an edge is kept as a sharp feature when remeshing.
_FEATURE_ANGLE = 40.0
_GMSH_TRI, _GMSH_TET = 2, 4


# ---------------------------------------------------------------------------------- input
def _load_surface(source) -> tuple[np.ndarray, np.ndarray, str]:
    """(vertices (n, 3) float64, faces (m, 3) int64, name for messages)."""
    import trimesh

    if isinstance(source, trimesh.Trimesh):
        return (
            np.asarray(source.vertices, dtype=np.float64),
            np.asarray(source.faces, dtype=np.int64),
            "trimesh input",
        )
    if isinstance(source, (tuple, list)) and len(source) == 2:
        vertices = np.asarray(source[0], dtype=np.float64)
        faces = np.asarray(source[1])
        if faces.size and not np.issubdtype(faces.dtype, np.integer):
            raise MeshError(f"faces must hold integer vertex indices, got dtype {faces.dtype}")
        return vertices, faces.astype(np.int64), "(vertices, faces) input"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "surface must be a file path, a trimesh.Trimesh or a (vertices, faces) pair, got "
            f"{type(source).__name__}"
        )
    path = Path(os.fspath(source)).expanduser()
    ext = path.suffix.lower()
    if ext not in SURFACE_FORMATS:
        raise ValueError(
            f"cannot read a surface from '{path}': extension {ext!r} is not one of "
            f"{list(SURFACE_FORMATS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"surface file not found: '{path}'")
    if ext == ".msh":
        import meshio

        m = meshio.read(path, file_format="gmsh")
        tris = [blk.data for blk in m.cells if blk.type == "triangle"]
        if not tris:
            raise MeshError(
                f"'{path}' holds no triangles (cell types: {[b.type for b in m.cells]})"
            )
        return np.asarray(m.points, np.float64), np.concatenate(tris).astype(np.int64), str(path)
    loaded = trimesh.load(path, force="mesh", process=False)
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), dtype=np.int64)
    return np.asarray(loaded.vertices, dtype=np.float64), faces, str(path)


def _validate_arrays(vertices: np.ndarray, faces: np.ndarray, name: str) -> None:
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise MeshError(f"{name}: vertices must have shape (n, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise MeshError(f"{name}: faces must have shape (m, 3) with m > 0, got {faces.shape}")
    if faces.min() < 0 or faces.max() >= vertices.shape[0]:
        raise MeshError(
            f"{name}: face indices [{faces.min()}, {faces.max()}] outside the "
            f"{vertices.shape[0]} vertices"
        )
    if not np.all(np.isfinite(vertices)):
        bad = int(np.flatnonzero(~np.isfinite(vertices).all(axis=1))[0])
        raise MeshError(f"{name}: vertex {bad} = {vertices[bad].tolist()} is not finite")


def _merge_exact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge bit-identical vertices (keeping the first copy) and drop unreferenced ones;
    the remaining vertices keep their order."""
    used = np.unique(faces)
    _, first, inverse = np.unique(vertices[used], axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    new_index = np.full(vertices.shape[0], -1, dtype=np.int64)
    new_index[used] = rank[inverse.reshape(-1)]
    return vertices[used[first[order]]], new_index[faces]


# ---------------------------------------------------------------------------------- checks
def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed triangulation (divergence theorem), positive if outward."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def surface_problems(vertices, faces) -> list[str]:
    """Everything that keeps a triangulated surface from bounding a volume.

    Parameters
    ----------
    vertices : (n, 3) float, µm.
    faces : (m, 3) int vertex indices.

    Returns
    -------
    list of messages, empty for a closed, consistently and outward oriented, connected
    surface without degenerate or duplicate triangles (self-intersections are not checked).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    problems = []
    scale = float(np.ptp(v[np.unique(f)], axis=0).max()) if f.size else 0.0
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    area2 = np.linalg.norm(cross, axis=1)
    repeated = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2])
    ndegenerate = int(np.count_nonzero(repeated | (area2 <= 1e-12 * scale**2)))
    if ndegenerate:
        problems.append(f"{ndegenerate} degenerate (zero-area) triangles")
    _, counts = np.unique(np.sort(f, axis=1), axis=0, return_counts=True)
    nduplicate = int((counts - 1).sum())
    if nduplicate:
        problems.append(f"{nduplicate} duplicate triangles")

    directed = f[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2)
    n = np.int64(v.shape[0])
    undirected = np.sort(directed, axis=1)
    _, einv, ecount = np.unique(
        undirected[:, 0] * n + undirected[:, 1], return_inverse=True, return_counts=True
    )
    nopen = int(np.count_nonzero(ecount == 1))
    nnonmanifold = int(np.count_nonzero(ecount > 2))
    if nopen:
        problems.append(f"surface is not watertight: {nopen} boundary edges (holes)")
    if nnonmanifold:
        problems.append(f"non-manifold: {nnonmanifold} edges shared by more than two triangles")
    # Orientation is defined at manifold edges only: there the two triangles must traverse
    # the edge in opposite directions.
    manifold = ecount[einv.reshape(-1)] == 2
    dkeys = directed[manifold, 0] * n + directed[manifold, 1]
    _, dcount = np.unique(dkeys, return_counts=True)
    nflipped = int(np.count_nonzero(dcount > 1))
    if nflipped:
        problems.append(
            f"inconsistent orientation: {nflipped} edges traversed in the same direction by "
            "two triangles"
        )
    graph = coo_matrix((np.ones(directed.shape[0]), (directed[:, 0], directed[:, 1])), shape=(n, n))
    ncomp, comp = connected_components(graph, directed=False)
    ncomp_used = np.unique(comp[np.unique(f)]).shape[0]
    if ncomp_used > 1:
        problems.append(
            f"{ncomp_used} disconnected pieces (mesh_surface fills one closed surface; mesh "
            "separate cells separately)"
        )
    if not problems:
        vol = _signed_volume(v, f)
        if vol <= 0:
            problems.append(
                f"inside out: the triangle normals point inward (enclosed volume {vol:.6g})"
            )
    return problems


def _repair(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    tm = trimesh.Trimesh(vertices, faces, process=False)
    tm.merge_vertices()
    tm.update_faces(tm.nondegenerate_faces())
    tm.update_faces(tm.unique_faces())
    tm.remove_unreferenced_vertices()
    if len(tm.faces):
        trimesh.repair.fix_normals(tm, multibody=False)
    return np.asarray(tm.vertices, np.float64), np.asarray(tm.faces, np.int64)


# ---------------------------------------------------------------------------------- meshing
def mesh_surface(
    surface,
    h: float | None = None,
    *,
    repair: bool = True,
    remesh: bool = False,
    quiet: bool = False,
) -> TetMesh:
    """Tetrahedralize the inside of a closed triangulated surface with gmsh.

    Parameters
    ----------
    surface : path (``.stl``, ``.ply``, ``.obj``, ``.off``, or a gmsh ``.msh`` whose
        triangles form the surface), :class:`trimesh.Trimesh`, or ``(vertices, faces)`` with
        vertices (n, 3) in µm and faces (m, 3) vertex indices.
    h : float, µm, optional
        Target tetrahedron size inside (gmsh ``Mesh.MeshSizeMax``; interior edges come out
        about 1.3 h on average). The surface triangles are kept as they are (unless
        ``remesh``), so near the surface the tets follow the surface's own edge lengths;
        by default (None) sizes are interpolated from them throughout.
    repair : merge near-duplicate vertices (1e-8), drop degenerate and duplicate triangles
        and make the winding consistent and outward before checking (see module docstring).
    remesh : re-triangulate the surface at size ``h`` (default: the mean surface edge
        length) before filling it (gmsh ``classifySurfaces`` + ``createGeometry``, sharp
        edges above 40° kept). Use it for poor-quality surfaces; the surface then changes
        slightly, so volumes are no longer those of the input triangulation.
    quiet : hide the progress bar.

    Returns
    -------
    TetMesh with one compartment (label 1) and one boundary (label 1) whose facets are the
    surface triangles. Without ``remesh``, the first ``nvertex`` points are the (repaired)
    surface vertices, bit for bit, and the mesh volume equals the surface's enclosed volume
    up to round-off.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, unsupported extension, bad ``h``.
    MeshError
        The surface is not closed/orientable/connected (the message lists each problem and
        its count), self-intersects, or gmsh fails or alters the surface.

    Examples
    --------
    >>> import trimesh
    >>> sphere = trimesh.creation.icosphere(3, radius=5.0)
    >>> mesh = mesh_surface(sphere, quiet=True)
    >>> abs(float(mesh.volume()) - float(sphere.volume)) < 1e-9 * float(sphere.volume)
    True
    """
    from tqdm.auto import tqdm

    if h is not None:
        try:
            h = float(h)
        except (TypeError, ValueError):
            raise ValueError(f"h = {h!r} must be a positive mesh size (µm)") from None
        if not (math.isfinite(h) and h > 0):
            raise ValueError(f"h = {h!r} must be a positive mesh size (µm)")
    vertices, faces, name = _load_surface(surface)
    _validate_arrays(vertices, faces, name)
    with tqdm(total=3, desc="mesh_surface", disable=quiet, leave=False) as steps:
        steps.set_postfix_str("checking surface")
        vertices, faces = _merge_exact(vertices, faces)
        if repair:
            vertices, faces = _repair(vertices, faces)
        problems = surface_problems(vertices, faces) if faces.shape[0] else ["no triangles left"]
        if problems:
            hint = "" if repair else " (repair=True fixes duplicates, degenerate faces, winding)"
            raise MeshError(f"{name} cannot be meshed: " + "; ".join(problems) + hint)
        steps.update()

        steps.set_postfix_str("tetrahedralizing")
        size = h
        if remesh and size is None:
            edges = vertices[faces[:, [1, 2, 0]]] - vertices[faces]
            size = float(np.linalg.norm(edges, axis=2).mean())
        points, tets, tris = _gmsh_fill(vertices, faces, size, remesh, name)
        steps.update()

        steps.set_postfix_str("building TetMesh")
        mesh = _assemble(points, tets, tris, vertices, faces, remesh, name)
        steps.update()
    return mesh


def _gmsh_fill(
    vertices: np.ndarray,
    faces: np.ndarray,
    h: float | None,
    remesh: bool,
    name: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fill the surface with tets; returns points (sorted by gmsh node tag), tets and
    boundary triangles (indices into points)."""
    from .gmsh_recipes import gmsh_session

    with gmsh_session("mesh_surface", nthreads=1) as s:
        model = s.model
        surf = model.addDiscreteEntity(2)
        model.mesh.addNodes(2, surf, np.arange(1, vertices.shape[0] + 1), vertices.reshape(-1))
        model.mesh.addElementsByType(surf, _GMSH_TRI, [], (faces + 1).reshape(-1))
        try:
            if remesh:
                model.mesh.classifySurfaces(math.radians(_FEATURE_ANGLE), True, True, math.pi)
                model.mesh.createGeometry()
            surfaces = [tag for _, tag in model.getEntities(2)]
            loop = model.geo.addSurfaceLoop(surfaces)
            model.geo.addVolume([loop])
            model.geo.synchronize()
            s.option("Mesh.Algorithm3D", _ALGORITHM_3D)
            s.option("Mesh.Optimize", 1)
            s.option("Mesh.ElementOrder", 1)
            if h is not None:
                s.option("Mesh.MeshSizeMax", h)
            model.mesh.generate(3)
        except Exception as exc:
            if type(exc) is not Exception:  # not a gmsh error
                raise
            msg = str(exc)
            cause = " (the surface self-intersects)" if "intersect" in msg.lower() else ""
            raise MeshError(f"gmsh could not tetrahedralize {name}{cause}: {msg}") from exc
        node_tags, coords, _ = model.mesh.getNodes()
        _, tet_nodes = model.mesh.getElementsByType(_GMSH_TET)
        _, tri_nodes = model.mesh.getElementsByType(_GMSH_TRI)
    node_tags = np.asarray(node_tags, dtype=np.int64)
    if tet_nodes.size == 0:
        raise MeshError(f"gmsh produced no tetrahedra inside {name}")
    order = np.argsort(node_tags)
    points = np.asarray(coords, dtype=np.float64).reshape(-1, 3)[order]
    sorted_tags = node_tags[order]
    tets = np.searchsorted(sorted_tags, np.asarray(tet_nodes, np.int64)).reshape(-1, 4)
    tris = np.searchsorted(sorted_tags, np.asarray(tri_nodes, np.int64)).reshape(-1, 3)
    return points, tets, tris


def _assemble(
    points: np.ndarray,
    tets: np.ndarray,
    tris: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    remesh: bool,
    name: str,
) -> TetMesh:
    used, inverse = np.unique(tets, return_inverse=True)
    remap = np.full(points.shape[0], -1, dtype=np.int64)
    remap[used] = np.arange(used.shape[0])
    points, tets = points[used], inverse.reshape(-1, 4)
    if remesh:
        facets = remap[tris]
        facets = facets[(facets >= 0).all(axis=1)]
    else:
        nv = vertices.shape[0]
        # Surface nodes carry gmsh tags 1..nv, so they come first, unchanged and in order.
        if used.shape[0] < nv or not np.array_equal(used[:nv], np.arange(nv)):
            raise MeshError(f"gmsh left surface vertices of {name} out of the tetrahedra")
        if not np.array_equal(points[:nv], vertices):
            raise MeshError(f"gmsh moved surface vertices of {name}")
        facets = faces
    try:
        mesh = TetMesh(points, tets, np.ones(tets.shape[0], np.int64), facets, np.ones(len(facets)))
    except MeshError as exc:
        raise MeshError(f"gmsh changed the surface of {name}: {exc}") from exc
    if mesh.nboundary != 1:
        raise MeshError(
            f"the tetrahedra of {name} have boundary faces that are not surface triangles "
            "(gmsh split the surface)"
        )
    if not remesh:
        enclosed = _signed_volume(vertices, faces)
        vol = float(mesh.volume())
        if abs(vol - enclosed) > 1e-9 * abs(enclosed):
            raise MeshError(
                f"tet volume {vol:.12g} differs from the enclosed volume {enclosed:.12g} of {name}"
            )
    return mesh


# ---------------------------------------------------------------------------------- back
def tetmesh_to_trimesh(
    mesh: TetMesh,
    boundary: int | Sequence[int] | None = None,
    *,
    return_vertex_ids: bool = False,
):
    """Boundary facets of a :class:`TetMesh` as a :class:`trimesh.Trimesh`.

    Parameters
    ----------
    mesh : the tetrahedral mesh (points are detached).
    boundary : boundary index or indices; default: every outer wall (the outer surface).
    return_vertex_ids : also return the (nvertex,) global node index of each trimesh vertex,
        so that differentiable losses can gather the vertices from ``mesh.points``.

    Returns
    -------
    trimesh.Trimesh (µm), faces oriented with normals out of the compartment
    ``boundary_compartments[b, 0]`` (outward for outer walls); and the node ids if asked.
    """
    import trimesh

    topo = mesh.topology
    if boundary is None:
        chosen = topo.outer_walls
    else:
        chosen = np.atleast_1d(np.asarray(boundary, dtype=np.int64))
        bad = chosen[(chosen < 0) | (chosen >= topo.nboundary)]
        if bad.size:
            raise MeshError(
                f"boundary = {int(bad[0])} is unknown; this mesh has boundaries "
                f"0..{topo.nboundary - 1}"
            )
    faces = topo.facets[np.isin(topo.facet_boundary, chosen)]
    if faces.shape[0] == 0:
        raise MeshError(f"boundaries {chosen.tolist()} hold no facets")
    ids, local = np.unique(faces, return_inverse=True)
    vertices = mesh.points.detach().cpu().numpy().astype(np.float64)[ids]
    tm = trimesh.Trimesh(vertices, local.reshape(-1, 3), process=False)
    return (tm, ids) if return_vertex_ids else tm
