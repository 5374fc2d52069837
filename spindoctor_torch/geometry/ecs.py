"""The extracellular space (ECS) as an OpenCASCADE solid enclosing the packed cells.

With ``g = ecs_ratio·rmean`` (µm), every ECS keeps a gap of at least ``g/2`` (``g`` for
'box' and 'tight_wrap', and for cylinders' 'convex_hull') between the cells and its outer
wall:

* ``'box'``: the axis-aligned bounding box of the cells inflated by ``g`` (for cylinders the
  xy box times the cylinder height), as SpinDoctor.
* ``'convex_hull'``: the convex hull of the cells inflated by ``g``. Cylinders: the 2-D hull
  of the inflated circles as a polygon whose vertices lie on circles of radius
  ``(r + g)/cos(π/n)`` (so the polygon contains every inflated circle), extruded over the
  height. Spheres: scipy's ``ConvexHull`` of Fibonacci points on the inflated spheres,
  with enough points that the hull stays at least ``g/2`` from every cell (checked), built
  as a polyhedral OCC solid. One cell: the inflated sphere/cylinder itself.
* ``'tight_wrap'``: the union (OCC fuse) of the cells inflated by ``g``. This is a faithful,
  simpler analogue of SpinDoctor's isosurface of the distance-to-cells field at the level
  ``ecs_ratio·rmax`` (spheres) or alpha shape (cylinders): the set of points within ``g``
  of a cell, with exact (not marching-cubes) surfaces. Cells farther than ``2g`` apart from
  all others get their own ECS shell, so the ECS may have several connected pieces
  (SpinDoctor instead keeps the largest isosurface component).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import MeshError
from .cells import Cells
from .setup import CellSetup

__all__ = ["add_ecs_solid", "fibonacci_sphere", "sphere_hull", "circle_hull"]


def fibonacci_sphere(npoint: int) -> np.ndarray:
    """(npoint, 3) nearly uniform unit vectors (golden-angle spiral)."""
    i = np.arange(npoint, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / npoint
    rho = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=1)


def sphere_hull(
    centers: np.ndarray, radii: np.ndarray, gap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Convex hull of spheres inflated by ``gap``, as a triangulated polyhedron.

    Points are sampled on every inflated sphere (Fibonacci spiral, ``n ≥ 10·(r + gap)/gap``
    points: the sagitta of a hull facet on a sphere of radius ρ sampled by n points is about
    2.4·ρ/n, so this keeps it near ``gap/4``); only hull vertices are kept.

    Returns
    -------
    vertices : (nv, 3) µm; triangles : (nt, 3) vertex indices.

    Raises
    ------
    MeshError
        If the hull comes closer than ``gap/2`` to a cell.
    """
    from scipy.spatial import ConvexHull

    pts = []
    for c, r in zip(centers, radii):
        rho = r + gap
        n = int(np.clip(math.ceil(10.0 * rho / gap), 60, 4000))
        pts.append(c + rho * fibonacci_sphere(n))
    pts = np.concatenate(pts)
    hull = ConvexHull(pts)
    # Signed distances of every cell centre to every facet plane (negative inside).
    normal, offset = hull.equations[:, :3], hull.equations[:, 3]
    dist = -(centers @ normal.T + offset)  # (ncell, nfacet) >= 0
    clearance = (dist - radii[:, None]).min()
    if clearance < 0.5 * gap:
        raise MeshError(
            f"convex hull ECS comes within {clearance:.3g} µm of a cell (< gap/2 = "
            f"{0.5 * gap:.3g} µm)"
        )
    used, inverse = np.unique(hull.simplices, return_inverse=True)
    return pts[used], inverse.reshape(-1, 3)


def circle_hull(centers: np.ndarray, radii: np.ndarray, gap: float) -> np.ndarray:
    """Convex polygon (counter-clockwise (nv, 2) vertices, µm) containing every circle of
    radius ``r + gap``: hull of regular n-gons circumscribed about the inflated circles,
    ``n ≥ max(24, π·sqrt(r/gap))``."""
    from scipy.spatial import ConvexHull

    pts = []
    for c, r in zip(centers, radii):
        rho = r + gap
        n = max(24, math.ceil(math.pi * math.sqrt(rho / gap)))
        t = 2.0 * math.pi * np.arange(n) / n
        big = rho / math.cos(math.pi / n)
        pts.append(c + big * np.stack([np.cos(t), np.sin(t)], axis=1))
    pts = np.concatenate(pts)
    hull = ConvexHull(pts)
    return pts[hull.vertices]  # counter-clockwise in 2-D


def _occ_polyhedron(occ, vertices: np.ndarray, triangles: np.ndarray) -> int:
    """Closed OCC solid bounded by plane triangles (shared points and edges)."""
    ptag = [occ.addPoint(*map(float, v)) for v in vertices]
    edges: dict[tuple[int, int], int] = {}

    def line(a: int, b: int) -> int:
        key = (min(a, b), max(a, b))
        if key not in edges:
            edges[key] = occ.addLine(ptag[key[0]], ptag[key[1]])
        return edges[key]

    surfaces = []
    for a, b, c in triangles:
        loop = occ.addCurveLoop([line(a, b), line(b, c), line(c, a)])
        surfaces.append(occ.addPlaneSurface([loop]))
    shell = occ.addSurfaceLoop(surfaces)
    return occ.addVolume([shell])


def _occ_prism(occ, polygon: np.ndarray, zlo: float, height: float) -> int:
    """OCC solid: a planar polygon at z = zlo extruded by ``height`` along z."""
    ptag = [occ.addPoint(float(x), float(y), zlo) for x, y in polygon]
    n = len(ptag)
    lines = [occ.addLine(ptag[k], ptag[(k + 1) % n]) for k in range(n)]
    surf = occ.addPlaneSurface([occ.addCurveLoop(lines)])
    out = occ.extrude([(2, surf)], 0.0, 0.0, height)
    vols = [t for d, t in out if d == 3]
    return vols[0]


def add_ecs_solid(session, setup: CellSetup, cells: Cells) -> list[int]:
    """Add the ECS solid(s) of ``setup`` around ``cells`` to the OCC model.

    Returns the OCC volume tags (cells not yet subtracted; the caller fragments).
    Cylinders span ``z ∈ [-height/2, height/2]``.
    """
    occ = session.occ
    g = setup.ecs_gap
    c, r = cells.centers, cells.radii
    shape = setup.ecs_shape
    if setup.cell_shape == "sphere":
        if shape == "box":
            lo = (c - r[:, None]).min(axis=0) - g
            hi = (c + r[:, None]).max(axis=0) + g
            return [occ.addBox(*lo, *(hi - lo))]
        if shape == "tight_wrap" or (shape == "convex_hull" and cells.ncell == 1):
            balls = [occ.addSphere(*ci, ri + g) for ci, ri in zip(c, r)]
            return _fuse(occ, balls)
        if shape == "convex_hull":
            verts, tris = sphere_hull(c, r, g)
            return [_occ_polyhedron(occ, verts, tris)]
    else:
        hgt = float(setup.height)
        zlo = -0.5 * hgt
        if shape == "box":
            lo = (c - r[:, None]).min(axis=0) - g
            hi = (c + r[:, None]).max(axis=0) + g
            return [occ.addBox(lo[0], lo[1], zlo, hi[0] - lo[0], hi[1] - lo[1], hgt)]
        if shape == "tight_wrap" or (shape == "convex_hull" and cells.ncell == 1):
            cyls = [
                occ.addCylinder(ci[0], ci[1], zlo, 0.0, 0.0, hgt, ri + g) for ci, ri in zip(c, r)
            ]
            return _fuse(occ, cyls)
        if shape == "convex_hull":
            return [_occ_prism(occ, circle_hull(c, r, g), zlo, hgt)]
    raise MeshError(f"no ECS solid for ecs_shape = {shape!r}")  # unreachable after validation


def _fuse(occ, tags: list[int]) -> list[int]:
    if len(tags) == 1:
        return tags
    out, _ = occ.fuse([(3, tags[0])], [(3, t) for t in tags[1:]])
    return [t for d, t in out if d == 3]
