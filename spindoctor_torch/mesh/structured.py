"""Structured tetrahedral meshes of boxes and slab stacks (pure numpy, no gmsh).

Each grid cell is split into six tetrahedra around its main diagonal (Kuhn/Freudenthal
subdivision), which is conforming across cells. These meshes have exactly known volumes,
areas and interfaces, which makes them the workhorse of the accuracy tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import MeshError
from .tetmesh import TetMesh

__all__ = ["structured_box", "structured_slabs"]

# Kuhn subdivision of the unit cube: vertex bit (x + 2y + 4z); each tet follows a monotone
# path from corner 0 to corner 7 through one permutation of the axes.
_PERMS = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


def _kuhn_local() -> np.ndarray:
    tets = []
    for perm in _PERMS:
        v = 0
        path = [v]
        for ax in perm:
            v |= 1 << ax
            path.append(v)
        tets.append(path)
    return np.array(tets, dtype=np.int64)  # (6, 4) corner ids


def structured_box(
    sides: Sequence[float] = (1.0, 1.0, 1.0),
    divisions: Sequence[int] = (4, 4, 4),
    *,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    x_interfaces: Sequence[float] = (),
    jitter: float = 0.0,
    seed: int | None = 0,
) -> TetMesh:
    """Box ``[0, Lx] x [0, Ly] x [0, Lz]`` (shifted by ``origin``) meshed on a regular grid.

    Parameters
    ----------
    sides : (Lx, Ly, Lz), µm
    divisions : (nx, ny, nz) grid cells per axis
    x_interfaces : x positions (µm, relative to origin) that split the box into compartments
        along x; each must lie on a grid plane. Compartment k is the k-th slab from x = 0.
    jitter : random displacement of interior grid nodes, as a fraction of the cell size
        (< 0.25 keeps every tet positive); nodes on the outer faces and on the interface
        planes move only within their plane, so volumes and areas stay exact.
    seed : random seed for ``jitter``.
    """
    sides = np.asarray(sides, dtype=np.float64)
    div = np.asarray(divisions, dtype=np.int64)
    if sides.shape != (3,) or np.any(sides <= 0):
        raise MeshError(f"sides must be three positive lengths (µm), got {sides.tolist()}")
    if div.shape != (3,) or np.any(div < 1):
        raise MeshError(f"divisions must be three positive integers, got {div.tolist()}")
    if not 0.0 <= jitter < 0.25:
        raise MeshError(f"jitter = {jitter} must lie in [0, 0.25)")
    nx, ny, nz = div
    axes = [np.linspace(0.0, sides[k], div[k] + 1) for k in range(3)]
    gx, gy, gz = np.meshgrid(*axes, indexing="ij")
    points = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)

    def node(i, j, k):
        return (i * (ny + 1) + j) * (nz + 1) + k

    ci, cj, ck = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    ci, cj, ck = ci.ravel(), cj.ravel(), ck.ravel()
    corners = np.stack(
        [node(ci + (b & 1), cj + ((b >> 1) & 1), ck + ((b >> 2) & 1)) for b in range(8)], axis=1
    )
    tets = corners[:, _kuhn_local()].reshape(-1, 4)

    # Compartment labels from x interfaces.
    cuts = np.sort(np.asarray(x_interfaces, dtype=np.float64))
    dx = sides[0] / nx
    for c in cuts:
        if not 0 < c < sides[0] or abs(c / dx - round(c / dx)) > 1e-9:
            raise MeshError(
                f"x_interfaces value {c} must lie strictly inside (0, {sides[0]}) on a grid "
                f"plane (multiples of {dx:g} µm)"
            )
    cell_center_x = (ci + 0.5) * dx
    labels = np.repeat(np.searchsorted(cuts, cell_center_x), 6)

    if jitter > 0:
        rng = np.random.default_rng(seed)
        h = sides / div
        disp = rng.uniform(-jitter, jitter, size=points.shape) * h
        on_plane = [
            np.isclose(points[:, 0], 0) | np.isclose(points[:, 0], sides[0]),
            np.isclose(points[:, 1], 0) | np.isclose(points[:, 1], sides[1]),
            np.isclose(points[:, 2], 0) | np.isclose(points[:, 2], sides[2]),
        ]
        for c in cuts:
            on_plane[0] |= np.isclose(points[:, 0], c)
        for k in range(3):
            disp[on_plane[k], k] = 0.0
        points = points + disp
    points = points + np.asarray(origin, dtype=np.float64)
    return TetMesh(points, tets, labels)


def structured_slabs(
    widths: Sequence[float],
    sides_yz: Sequence[float] = (1.0, 1.0),
    h: float = 0.25,
    *,
    jitter: float = 0.0,
    seed: int | None = 0,
) -> TetMesh:
    """Stack of boxes along x with widths ``widths`` (µm), one compartment each, sharing
    conformal faces; grid spacing about ``h`` µm (adjusted so that every width is a whole
    number of cells)."""
    widths = np.asarray(widths, dtype=np.float64)
    if widths.ndim != 1 or widths.size == 0 or np.any(widths <= 0):
        raise MeshError(f"widths must be positive lengths (µm), got {widths.tolist()}")
    if h <= 0:
        raise MeshError(f"h = {h} must be positive (µm)")
    # Common cell size dividing every width.
    ncell = np.maximum(1, np.round(widths / h)).astype(int)
    dx = widths / ncell
    if not np.allclose(dx, dx[0], rtol=1e-9):
        # Choose a cell size that divides every width exactly when they are commensurate.
        g = widths.min() / max(1, round(widths.min() / h))
        ncell = np.round(widths / g).astype(int)
        if not np.allclose(ncell * g, widths, rtol=1e-9):
            raise MeshError(f"widths {widths.tolist()} are not commensurate with h = {h}")
    total = widths.sum()
    nx = int(ncell.sum())
    ny = max(1, round(sides_yz[0] / h))
    nz = max(1, round(sides_yz[1] / h))
    cuts = np.cumsum(widths)[:-1]
    return structured_box(
        (total, sides_yz[0], sides_yz[1]),
        (nx, ny, nz),
        x_interfaces=cuts,
        jitter=jitter,
        seed=seed,
    )
