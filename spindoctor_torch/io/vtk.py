"""Meshes and magnetization fields to VTK XML (``.vtu``) and ParaView time series (``.pvd``).

The magnetization is discontinuous across permeable interfaces (each compartment has its own
copy of the interface nodes, SpinDoctor's ``point_map``), so the grids written here are
*split-node* unstructured grids: one VTK point per degree of freedom, each tetrahedron using
the dofs of its own compartment. Interfaces therefore show both sides' values, and a
``Threshold`` on the cell array ``compartment`` isolates one compartment in ParaView.

Every grid holds

* tetrahedra with the cell array ``compartment`` (0-based compartment index) and
  ``boundary = -1``;
* the labelled boundary triangles (on the dofs of the compartment their normal points out
  of) with the cell array ``boundary`` (0-based boundary index) and that compartment in
  ``compartment``;
* the point array ``compartment``, and for each field ``<name>`` the point arrays
  ``<name>_real``, ``<name>_imag`` and ``<name>_abs`` (complex fields) or ``<name>`` (real).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "split_node_arrays",
    "write_vtu",
    "write_pvd",
    "write_magnetization_vtu",
    "write_snapshots_pvd",
]


def split_node_arrays(mesh) -> dict[str, np.ndarray]:
    """Arrays of the split-node grid of ``mesh``.

    Returns
    -------
    dict with ``points`` (ndof, 3) µm, ``tets`` (ntet, 4) dof indices, ``triangles``
    (nfacet, 3) dof indices, ``tet_compartment`` (ntet,), ``facet_boundary`` (nfacet,),
    ``facet_compartment`` (nfacet,), ``dof_compartment`` (ndof,).
    """
    topo = mesh.topology
    pts = mesh.points.detach().cpu().numpy().astype(np.float64)
    bc = topo.boundary_compartments
    return {
        "points": pts[topo.dof_node],
        "tets": np.asarray(topo.tet_dofs, dtype=np.int64),
        "triangles": np.asarray(topo.facet_dofs[:, 0, :], dtype=np.int64),
        "tet_compartment": np.asarray(topo.tet_compartment, dtype=np.int64),
        "facet_boundary": np.asarray(topo.facet_boundary, dtype=np.int64),
        "facet_compartment": np.asarray(bc[topo.facet_boundary, 0], dtype=np.int64),
        "dof_compartment": np.asarray(topo.dof_compartment, dtype=np.int64),
    }


def _field_arrays(
    fields: Mapping[str, torch.Tensor | np.ndarray], ndof: int
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, value in fields.items():
        arr = (
            value.detach().cpu().resolve_conj().numpy()
            if isinstance(value, torch.Tensor)
            else np.asarray(value)
        )
        if arr.shape[0] != ndof:
            raise ValueError(f"field {name!r} has {arr.shape[0]} values, the mesh has {ndof} dofs")
        if np.iscomplexobj(arr):
            out[f"{name}_real"] = arr.real.astype(np.float64)
            out[f"{name}_imag"] = arr.imag.astype(np.float64)
            out[f"{name}_abs"] = np.abs(arr).astype(np.float64)
        else:
            out[name] = arr.astype(np.float64)
    return out


def write_vtu(
    path: str | Path,
    mesh,
    fields: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    *,
    boundaries: bool = True,
) -> Path:
    """Write the split-node grid of ``mesh`` with optional per-dof ``fields`` (see module doc).

    Parameters
    ----------
    path : ``.vtu`` file.
    mesh : TetMesh.
    fields : name -> (ndof,) real or complex values (e.g. the magnetization ξ(TE)).
    boundaries : also write the labelled boundary triangles.

    Returns
    -------
    Path written.
    """
    import meshio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = split_node_arrays(mesh)
    cells = [("tetra", a["tets"])]
    compartment = [a["tet_compartment"]]
    boundary = [np.full(a["tets"].shape[0], -1, dtype=np.int64)]
    if boundaries and a["triangles"].shape[0]:
        cells.append(("triangle", a["triangles"]))
        compartment.append(a["facet_compartment"])
        boundary.append(a["facet_boundary"])
    point_data = {"compartment": a["dof_compartment"].astype(np.int64)}
    point_data.update(_field_arrays(fields or {}, a["points"].shape[0]))
    grid = meshio.Mesh(
        a["points"],
        cells,
        point_data=point_data,
        cell_data={"compartment": compartment, "boundary": boundary},
    )
    grid.write(path, file_format="vtu", binary=True, compression="zlib")
    return path


def write_magnetization_vtu(path: str | Path, mesh, result, *, max_fields: int = 24) -> Path:
    """Write ξ(TE) of a :class:`~spindoctor_torch.result.Result` (``magnetization``
    [namplitude, nsequence, ndirection, ndof]) as fields ``m_a{a}_s{s}_d{d}``.

    Raises
    ------
    ValueError
        The result holds no magnetization, or more than ``max_fields`` combinations.
    """
    mag = getattr(result, "magnetization", None)
    if mag is None:
        raise ValueError(
            f"{getattr(result, 'method', 'result')} holds no magnetization (ask the solver "
            "for it, e.g. [output] magnetization = true)"
        )
    namp, nseq, ndir, _ = mag.shape
    if namp * nseq * ndir > max_fields:
        raise ValueError(
            f"{namp * nseq * ndir} magnetization fields exceed max_fields = {max_fields}; "
            "select some first"
        )
    fields = {
        f"m_a{a}_s{s}_d{d}": mag[a, s, d]
        for a in range(namp)
        for s in range(nseq)
        for d in range(ndir)
    }
    return write_vtu(path, mesh, fields)


def write_pvd(
    path: str | Path,
    mesh,
    times: Sequence[float] | torch.Tensor,
    fields: torch.Tensor | np.ndarray,
    *,
    name: str = "magnetization",
) -> Path:
    """Write a time series for ParaView: one ``.vtu`` per time plus the ``.pvd`` collection.

    Parameters
    ----------
    path : the ``.pvd`` file; the frames go to ``<stem>_frames/<stem>_NNNN.vtu`` beside it.
    mesh : TetMesh.
    times : (nt,) times, µs.
    fields : (nt, ndof) values (real or complex).
    name : field name in the frames.

    Returns
    -------
    Path of the ``.pvd`` file.
    """
    path = Path(path)
    times = np.asarray(
        times.detach().cpu() if isinstance(times, torch.Tensor) else times, dtype=np.float64
    )
    if fields.shape[0] != times.shape[0]:
        raise ValueError(f"fields has {fields.shape[0]} frames for {times.shape[0]} times")
    frame_dir = path.parent / f"{path.stem}_frames"
    frame_dir.mkdir(parents=True, exist_ok=True)
    root = ET.Element("VTKFile", type="Collection", version="0.1", byte_order="LittleEndian")
    coll = ET.SubElement(root, "Collection")
    for k, t in enumerate(times):
        frame = frame_dir / f"{path.stem}_{k:04d}.vtu"
        write_vtu(frame, mesh, {name: fields[k]})
        ET.SubElement(
            coll,
            "DataSet",
            timestep=repr(float(t)),
            group="",
            part="0",
            file=str(frame.relative_to(path.parent)),
        )
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, xml_declaration=True, encoding="utf-8")
    return path


def write_snapshots_pvd(
    path: str | Path, mesh, result, index: tuple[int, int, int] = (-1, 0, 0)
) -> Path:
    """Write the magnetization snapshots of a result (BTPDE ``snapshot_times``:
    ``result.snapshots = {"times": (nt,), "magnetization": [namp, nseq, ndir, nt, ndof]}``)
    for one (amplitude, sequence, direction) ``index`` as a ParaView time series.

    Raises
    ------
    ValueError
        The result holds no snapshots.
    """
    snaps = getattr(result, "snapshots", None) or {}
    if "times" not in snaps or "magnetization" not in snaps:
        raise ValueError(
            f"{getattr(result, 'method', 'result')} holds no snapshots (give the BTPDE "
            "snapshot_times = [...], µs)"
        )
    a, s, d = index
    return write_pvd(path, mesh, snaps["times"], snaps["magnetization"][a, s, d])
