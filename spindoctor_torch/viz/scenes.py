"""PyVista scenes: meshes coloured by compartment, magnetization on surfaces, overlays.

Headless rendering
------------------
On a machine without a display (CI, containers, SSH) VTK renders off screen through Mesa's
EGL (software llvmpipe; Debian packages ``libegl1 libegl-mesa0 libgl1-mesa-dri``). Two things
make it work, and :func:`pyvista_module` does both when no ``DISPLAY``/``WAYLAND_DISPLAY`` is
set:

1. the environment variable ``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow`` is set **before
   vtk is first imported** (VTK reads it when it creates its first render window; without it
   VTK 9.4+ first tries X, logs "bad X server connection", then falls back to EGL);
2. ``pyvista.OFF_SCREEN = True``, so plotters never try to open a window.

If vtk was already imported by the caller, only step 2 is taken. Xvfb is not needed
(``pyvista.start_xvfb`` no longer exists in PyVista 0.45+).

Every ``render_*`` function returns the image as an (H, W, 3) uint8 array and writes it to
``screenshot`` when given; with ``screenshot=None`` and a display present, ``show=True`` opens
an interactive window instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "pyvista_module",
    "has_display",
    "to_pyvista",
    "render_mesh",
    "render_field",
    "render_overlay",
]

_COMPARTMENT_COLORS = [
    "#4c72b0",
    "#dd8452",
    "#55a868",
    "#c44e52",
    "#8172b3",
    "#937860",
    "#da8bc3",
    "#8c8c8c",
    "#ccb974",
    "#64b5cd",
]


def has_display() -> bool:
    """True when an X11 or Wayland display is available for interactive windows."""
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pyvista_module():
    """Import PyVista configured for this machine (off-screen EGL when headless)."""
    headless = not has_display()
    if headless and "vtkmodules" not in sys.modules:
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import pyvista

    if headless:
        pyvista.OFF_SCREEN = True
    return pyvista


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().resolve_conj().numpy()
    return np.asarray(x)


def to_pyvista(mesh, fields: Mapping[str, Any] | None = None, *, split: bool = True):
    """PyVista UnstructuredGrid of a TetMesh.

    Parameters
    ----------
    mesh : TetMesh.
    fields : name -> (ndof,) values (split grid) or (npoint,) values (``split=False``);
        complex values give ``<name>_real``, ``<name>_imag`` and ``<name>_abs``.
    split : one point per dof (discontinuous fields across interfaces, see
        :mod:`spindoctor_torch.io.vtk`) instead of one per mesh node.

    Returns
    -------
    pyvista.UnstructuredGrid with cell data ``compartment`` and point data ``compartment``
    (split grids) plus the fields.
    """
    pv = pyvista_module()
    topo = mesh.topology
    if split:
        from ..io.vtk import split_node_arrays

        a = split_node_arrays(mesh)
        points, tets = a["points"], a["tets"]
        point_cmpt = a["dof_compartment"]
    else:
        points = _np(mesh.points).astype(np.float64)
        tets = np.asarray(topo.tets_array, dtype=np.int64)
        point_cmpt = None
    cells = np.hstack([np.full((tets.shape[0], 1), 4, dtype=np.int64), tets]).ravel()
    celltypes = np.full(tets.shape[0], pv.CellType.TETRA, dtype=np.uint8)
    grid = pv.UnstructuredGrid(cells, celltypes, points)
    grid.cell_data["compartment"] = np.asarray(topo.tet_compartment, dtype=np.int64)
    if point_cmpt is not None:
        grid.point_data["compartment"] = point_cmpt
    for name, value in (fields or {}).items():
        arr = _np(value).reshape(-1)
        if arr.shape[0] != points.shape[0]:
            raise ValueError(
                f"field {name!r} has {arr.shape[0]} values for {points.shape[0]} points"
            )
        if np.iscomplexobj(arr):
            grid.point_data[f"{name}_real"] = arr.real
            grid.point_data[f"{name}_imag"] = arr.imag
            grid.point_data[f"{name}_abs"] = np.abs(arr)
        else:
            grid.point_data[name] = arr.astype(np.float64)
    return grid


def _surface(grid):
    """Outer surface of a grid (PyVista >= 0.47 wants the algorithm named explicitly)."""
    import inspect

    if "algorithm" in inspect.signature(grid.extract_surface).parameters:
        return grid.extract_surface(algorithm="dataset_surface")
    return _surface(grid)


def _plotter(window_size, show: bool):
    pv = pyvista_module()
    off = not (show and has_display())
    return pv.Plotter(off_screen=off, window_size=list(window_size)), off


def _output(plotter, screenshot, off_screen: bool, show: bool) -> np.ndarray:
    if not off_screen and show:
        plotter.show(auto_close=False)
    if screenshot is not None:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
    img = plotter.screenshot(str(screenshot) if screenshot is not None else None, return_img=True)
    plotter.close()
    return np.asarray(img)


def _clip(grid, clip: bool | str, crinkle: bool = False):
    if not clip:
        return grid
    normal = "y" if clip is True else clip
    return grid.clip(normal=normal, origin=grid.center, crinkle=crinkle)


def render_mesh(
    mesh,
    screenshot: str | Path | None = None,
    *,
    clip: bool | str = True,
    show_edges: bool = True,
    labels: Sequence[str] | None = None,
    crinkle: bool = False,
    window_size: Sequence[int] = (900, 700),
    show: bool = False,
    title: str | None = None,
) -> np.ndarray:
    """The mesh coloured by compartment, clipped through its centre to show the inside.

    Parameters
    ----------
    mesh : TetMesh.
    screenshot : PNG path to write.
    clip : ``True`` (normal y), an axis ``"x"``/``"y"``/``"z"``, or ``False`` for no clip.
    show_edges : draw the element edges.
    labels : legend name of each compartment (default ``"compartment i"``).
    crinkle : keep whole tetrahedra at the clip plane instead of cutting them.
    show : open an interactive window when a display exists.

    Returns
    -------
    (H, W, 3) uint8 image.
    """
    grid = _clip(to_pyvista(mesh), clip, crinkle)
    p, off = _plotter(window_size, show)
    ncmpt = mesh.ncompartment
    if labels is not None and len(labels) != ncmpt:
        raise ValueError(f"labels has {len(labels)} names for {ncmpt} compartments")
    names = list(labels) if labels is not None else [f"compartment {c}" for c in range(ncmpt)]
    colors = [_COMPARTMENT_COLORS[c % len(_COMPARTMENT_COLORS)] for c in range(ncmpt)]
    for c in range(ncmpt):
        part = grid.extract_cells(np.flatnonzero(np.asarray(grid.cell_data["compartment"]) == c))
        if part.n_cells:
            p.add_mesh(
                part,
                color=colors[c],
                show_edges=show_edges,
                edge_color="#303030",
                line_width=0.3,
                label=names[c],
            )
    if ncmpt > 1:
        width = 0.03 + 0.013 * max(len(n) for n in names)
        p.add_legend(
            bcolor="white",
            face="rectangle",
            size=(width, 0.035 * min(ncmpt, 10) + 0.02),
            loc="lower right",
        )
    p.add_axes()
    if title:
        p.add_text(title, font_size=10, color="black")
    p.camera_position = "iso"
    p.set_background("white")
    return _output(p, screenshot, off, show)


def render_field(
    mesh,
    values: Any,
    screenshot: str | Path | None = None,
    *,
    part: str = "abs",
    clip: bool | str = False,
    name: str = "magnetization",
    cmap: str = "viridis",
    window_size: Sequence[int] = (900, 700),
    show: bool = False,
    title: str | None = None,
) -> np.ndarray:
    """A per-dof field (e.g. ξ(TE) of one b-value and direction) on the mesh surface.

    Parameters
    ----------
    values : (ndof,) real or complex.
    part : ``"abs"``, ``"real"`` or ``"imag"`` for complex fields.
    clip : as in :func:`render_mesh` (off by default: the field on the outer surface).
    """
    if part not in ("abs", "real", "imag"):
        raise ValueError(f"part = {part!r}; allowed: 'abs', 'real', 'imag'")
    arr = _np(values).reshape(-1)
    grid = to_pyvista(mesh, {name: arr})
    scalars = f"{name}_{part}" if np.iscomplexobj(arr) else name
    grid = _clip(grid, clip, crinkle=False)
    p, off = _plotter(window_size, show)
    p.add_mesh(
        _surface(grid),
        scalars=scalars,
        cmap=cmap,
        show_edges=False,
        scalar_bar_args={"title": scalars, "color": "black"},
    )
    p.add_axes()
    if title:
        p.add_text(title, font_size=10, color="black")
    p.camera_position = "iso"
    p.set_background("white")
    return _output(p, screenshot, off, show)


def render_overlay(
    meshes: Mapping[str, Any],
    screenshot: str | Path | None = None,
    *,
    compartments: Sequence[int] | None = None,
    view: str = "iso",
    window_size: Sequence[int] = (900, 700),
    show: bool = False,
    title: str | None = None,
) -> np.ndarray:
    """Surfaces of several meshes overlaid, e.g. ``{"before": m0, "after": m1, "target": mt}``
    for an optimization: the first blue and opaque, the second red and translucent, an entry named
    ``"target"`` as a black wireframe.

    Parameters
    ----------
    meshes : label -> TetMesh (the topologies may differ).
    compartments : show the outer surface of these compartments only (e.g. ``[0, 1]``, the
        cell without its ECS); default: the whole mesh.
    view : camera: ``"iso"``, or along an axis ``"xy"`` (from +z), ``"xz"``, ``"yz"``.
    """
    p, off = _plotter(window_size, show)
    styles = [("#4c72b0", 1.0), ("#c44e52", 0.45), ("#55a868", 0.45)]
    for k, (label, mesh) in enumerate(meshes.items()):
        grid = to_pyvista(mesh, split=False)
        if compartments is not None:
            keep = np.isin(np.asarray(grid.cell_data["compartment"]), list(compartments))
            if not keep.any():
                raise ValueError(f"{label}: no tetrahedra in compartments {list(compartments)}")
            grid = grid.extract_cells(np.flatnonzero(keep))
        surf = _surface(grid)
        color, opacity = styles[k % len(styles)]
        if label.lower() == "target":
            p.add_mesh(surf, style="wireframe", color="#1a1a1a", line_width=0.8, label=label)
        else:
            p.add_mesh(surf, color=color, opacity=opacity, label=label)
    p.add_legend(bcolor="white", face="rectangle", size=(0.25, 0.15))
    p.add_axes()
    if title:
        p.add_text(title, font_size=10, color="black")
    p.camera_position = view
    p.set_background("white")
    return _output(p, screenshot, off, show)
