"""Build the tetrahedral mesh of a SpinDoctor cell setup (``create_geometry``).

All cells (with their inner layers) and the ECS are OpenCASCADE solids in one gmsh model,
fragmented together so that every interface is conformal, meshed with HXT, read back as a
:class:`~spindoctor_torch.mesh.tetmesh.TetMesh`, then bent and twisted.

Compartment order (SpinDoctor's ``[in × ncell, out × ncell, ecs]``)
-------------------------------------------------------------------
With ``L = len(in_ratio)`` inner layers (``nlayer = L + 1`` compartments per cell),
compartment ``l·ncell + k`` is layer ``l`` of cell ``k``, layer 0 being the innermost
(nucleus / axon) and layer ``L`` the outer one (cytoplasm / myelin); the ECS, if any, is last
(``nlayer·ncell``). Without inner layers this is ``[out × ncell, ecs]``.

Boundary order (SpinDoctor's ``prepare_pde.m``, generalized to several layers)
------------------------------------------------------------------------------
``index(group, k) = group·ncell + k`` for cell ``k``:

* groups ``0 .. L-1``: interface between layers ``l`` and ``l+1`` of each cell
  (SpinDoctor's ``[in,out × ncell]``);
* group ``L``: the outer surface of each cell: its interface with the ECS, or its outer
  wall without ECS (``[out,ecs or out × ncell]``); for cylinders only the side surface;
* cylinders only, groups ``L+1 .. 2L+1``: the two end caps (z = ±height/2) of layer
  ``group − L − 1`` of each cell (``[in caps × ncell][out caps × ncell]``);
* last, with an ECS: the whole outer wall of the ECS (sides and caps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MeshError
from ..mesh.deform import bend_twist
from ..mesh.gmsh_recipes import (
    classify_surfaces,
    fragment_solids,
    gmsh_session,
    is_cap,
    mesh_model,
)
from ..mesh.tetmesh import TetMesh
from .cells import Cells, create_cells
from .ecs import add_ecs_solid
from .setup import CellSetup

__all__ = ["create_geometry", "build_cells_model", "boundary_index"]


def boundary_index(setup: CellSetup, group: int, cell: int) -> int:
    """Boundary number of ``group`` (see the module docstring) for cell ``cell``.

    ``group = -1`` (or ``None``) names the ECS outer wall."""
    if group is None or group < 0:
        if not setup.has_ecs:
            raise MeshError("this setup has no ECS, hence no ECS wall")
        return setup.nboundary - 1
    return group * setup.ncell + cell


def create_geometry(
    setup: CellSetup,
    *,
    cells: Cells | None = None,
    deform: bool = True,
    msh_path: str | Path | None = None,
    quiet: bool = False,
) -> TetMesh:
    """Mesh the cells and ECS of ``setup`` into one conformal :class:`TetMesh`.

    Parameters
    ----------
    setup : CellSetup.
    cells : packed cells to use instead of ``create_cells(setup)`` (e.g. read back from a
        file); centres in µm (xy for cylinders), radii in µm.
    deform : apply ``setup.bend`` and ``setup.twist`` to the mesh points
        (:func:`~spindoctor_torch.mesh.deform.bend_twist`). With ``deform=False`` the caller
        may apply them later, differentiably, with
        ``mesh.with_points(bend_twist(mesh.points, a_bend, a_twist))``.
    msh_path : also write the (undeformed) gmsh mesh there (MSH 4.1, ASCII).
    quiet : hide the progress bar.

    Returns
    -------
    TetMesh with float64 points (µm), compartments and boundaries ordered as in the module
    docstring (``setup.ncompartment`` and ``setup.nboundary`` of them).

    Raises
    ------
    SetupError
        Bad setup or impossible packing.
    MeshError
        gmsh failed, the mesh lost a compartment or boundary, or the bend/twist inverted
        tetrahedra (use a smaller ``h``).
    """
    from tqdm.auto import tqdm

    if not isinstance(setup, CellSetup):
        raise TypeError(f"setup must be a CellSetup, got {type(setup).__name__}")
    steps = tqdm(total=4, desc="create_geometry", disable=quiet, leave=False)
    try:
        steps.set_postfix_str("packing cells")
        if cells is None:
            cells = create_cells(setup)
        _check_cells(setup, cells)
        steps.update()
        with gmsh_session("cells") as ses:
            steps.set_postfix_str("building solids")
            vol_label, surf_label = build_cells_model(ses, setup, cells)
            steps.update()
            steps.set_postfix_str("meshing")
            mesh = mesh_model(
                ses,
                vol_label,
                surf_label,
                setup.mesh_size,
                curvature_radius=setup.rmean,
                msh_path=msh_path,
            )
            steps.update()
        steps.set_postfix_str("deforming")
        if mesh.ncompartment != setup.ncompartment or mesh.nboundary != setup.nboundary:
            raise MeshError(
                f"the mesh has {mesh.ncompartment} compartments and {mesh.nboundary} "
                f"boundaries, expected {setup.ncompartment} and {setup.nboundary}; use a "
                f"smaller h (now {setup.mesh_size:g} µm)"
            )
        if deform and (setup.bend != 0.0 or setup.twist != 0.0):
            mesh = mesh.with_points(
                bend_twist(mesh.points.detach(), setup.bend, setup.twist).detach()
            )
            ninverted = int((mesh.tet_signed_volumes() <= 0).sum())
            if ninverted:
                raise MeshError(
                    f"bend = {setup.bend}, twist = {setup.twist} invert {ninverted} of "
                    f"{mesh.ntet} tetrahedra at h = {setup.mesh_size:g} µm (the maps are "
                    f"volume-preserving, but straight-edged tets larger than their curvature "
                    f"scale fold); use a smaller h or smaller deformations"
                )
        steps.update()
    finally:
        steps.close()
    return mesh


def _check_cells(setup: CellSetup, cells: Cells) -> None:
    ndim = 3 if setup.cell_shape == "sphere" else 2
    c = np.asarray(cells.centers, dtype=np.float64)
    r = np.asarray(cells.radii, dtype=np.float64)
    if c.shape != (setup.ncell, ndim) or r.shape != (setup.ncell,):
        raise MeshError(
            f"cells have centres {c.shape} and radii {r.shape}; setup needs "
            f"({setup.ncell}, {ndim}) and ({setup.ncell},)"
        )
    if not (np.all(np.isfinite(c)) and np.all(r > 0)):
        raise MeshError("cell centres must be finite and radii positive")


def build_cells_model(ses, setup: CellSetup, cells: Cells) -> tuple[dict[int, int], dict[int, int]]:
    """Add the cells, their layers and the ECS to the session's OCC model and fragment them.

    Returns
    -------
    vol_label : {volume tag: compartment + 1}; surf_label : {surface tag: boundary + 1},
    numbered as in the module docstring (ready for
    :func:`~spindoctor_torch.mesh.gmsh_recipes.mesh_model`).
    """
    occ = ses.occ
    ncell, nlayer = setup.ncell, setup.nlayer
    ratios = list(setup.layers) + [1.0]
    c = np.asarray(cells.centers, dtype=np.float64)
    r = np.asarray(cells.radii, dtype=np.float64)
    sphere = setup.cell_shape == "sphere"
    if not sphere:
        hgt = float(setup.height)
        zlo, zhi = -0.5 * hgt, 0.5 * hgt

    solids = []
    for k in range(ncell):
        for layer, ratio in enumerate(ratios):
            rad = ratio * r[k]
            if sphere:
                tag = occ.addSphere(*c[k], rad)
            else:
                tag = occ.addCylinder(c[k, 0], c[k, 1], zlo, 0.0, 0.0, hgt, rad)
            solids.append((tag, layer * ncell + k + 1))
    if setup.has_ecs:
        ecs_label = nlayer * ncell + 1
        solids += [(t, ecs_label) for t in add_ecs_solid(ses, setup, cells)]
    vol_label = fragment_solids(ses, solids)

    ecs = nlayer * ncell  # 0-based ECS compartment
    tol = 1e-5 * max(float(r.max()), 1.0 if sphere else hgt)
    surf_label: dict[int, int] = {}
    for s, (a, b) in classify_surfaces(ses, vol_label):
        a0, b0 = a - 1, (None if b is None else b - 1)
        la, ka = divmod(a0, ncell)
        if b0 is not None:
            if b0 == ecs:
                if la != nlayer - 1:
                    raise MeshError(f"layer {la} of cell {ka} touches the ECS; use smaller h")
                group = la
            else:
                lb, kb = divmod(b0, ncell)
                if ka != kb or lb != la + 1:
                    raise MeshError(
                        f"compartments {a0} and {b0} touch (cells {ka} and {kb}); cells must "
                        f"not overlap"
                    )
                group = la
            surf_label[s] = group * ncell + ka + 1
        elif a0 == ecs:
            surf_label[s] = setup.nboundary  # last boundary, 1-based
        elif not sphere and is_cap(ses, s, zlo, zhi, tol):
            surf_label[s] = (nlayer + la) * ncell + ka + 1
        else:
            if la != nlayer - 1:
                raise MeshError(f"inner layer {la} of cell {ka} has an outer wall")
            surf_label[s] = la * ncell + ka + 1
    return vol_label, surf_label
