"""The FEM sparsity pattern and the scatter maps from element entries into it.

One pattern serves every matrix of a mesh (M, K, R, J_x/y/z, Q): the union of all
tet-local dof pairs and of the cross pairs that couple duplicated interface dofs. Sharing it
makes linear combinations such as ``M + dt/2·(K + Q + i·q·J)`` an operation on value vectors.
The pattern depends on topology only and is cached per (topology, device), so re-assembly
after a vertex move is a gather, element arithmetic and an ``index_add``.

The pattern is structurally symmetric and every tet matrix is symmetric, so the volume terms
are scattered into the *upper triangle* (row ≤ column, ``nupper`` entries) with 10 entries
per tet instead of 16, and expanded to the full pattern with one gather
(``values = upper[upper_to_full]``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from ..linalg.sparse import SparsePattern
from .elements import TET_PAIRS

__all__ = ["FEMPattern", "fem_pattern"]

_INT32_MAX = np.iinfo(np.int32).max


@dataclass(frozen=True, eq=False)
class FEMPattern:
    """Sparsity pattern plus scatter maps (positions into ``values``), on one device.

    Attributes
    ----------
    pattern : SparsePattern over all dofs (n = ndof)
    nupper : int, number of upper-triangle entries (row ≤ column) of ``pattern``
    upper_map : (10, ntet) for pair p = (k, l) of
        :data:`~spindoctor_torch.fem.elements.TET_PAIRS` and tet t, the position of that
        entry among the upper-triangle entries (CSR order, dofs sorted so row ≤ column)
    tet_nodes : (4, ntet) mesh node of each tet vertex (``tets`` transposed)
    upper_to_full : (nnz,) upper-triangle position of every full-pattern entry (of (i, j)
        for i ≤ j, of (j, i) otherwise)
    upper_nodes : (2, nupper) mesh nodes of the row and column dof of each upper entry
    upper_diagonal : (ndof,) upper-triangle position of each diagonal entry
    facet_map : (nfacet, 2, 2, 3, 3) position of the entry coupling facet vertex k on side s
        with facet vertex l on side t (``facet_map[f, s, t, k, l]``); -1 where side 1 does
        not exist (outer walls)
    facet_entries, facet_targets : the flat indices into ``facet_map`` of its existing
        entries (≥ 0) and their positions (``facet_map.reshape(-1)[facet_entries]``)
    row_compartment : (nnz,) compartment of the row dof of every pattern entry
    tet_dofs : (ntet, 4) dofs of each tet; facet_dofs : (nfacet, 2, 3), -1 for missing side
    dof_compartment : (ndof,), dof_node : (ndof,)

    ``upper_map``, ``tet_nodes``, ``upper_to_full``, ``upper_nodes`` and ``upper_diagonal`` are
    int32 when the sizes allow (half the memory traffic of the gathers and scatters), else int64.
    """

    pattern: SparsePattern
    nupper: int
    upper_map: torch.Tensor
    tet_nodes: torch.Tensor
    upper_to_full: torch.Tensor
    upper_nodes: torch.Tensor
    upper_diagonal: torch.Tensor
    facet_map: torch.Tensor
    facet_entries: torch.Tensor
    facet_targets: torch.Tensor
    row_compartment: torch.Tensor
    tet_dofs: torch.Tensor
    facet_dofs: torch.Tensor
    dof_compartment: torch.Tensor
    dof_node: torch.Tensor


def _index_dtype(bound: int) -> np.dtype:
    return np.dtype(np.int32) if bound <= _INT32_MAX else np.dtype(np.int64)


def _build(topology) -> dict[str, np.ndarray]:
    """Upper-triangle keys i·n + j (i ≤ j) of all tet pairs and interface cross pairs,
    their CSR order, the full pattern (upper ∪ transposed strict upper) and the maps.

    Memory is kept to a few arrays of 10·ntet int64 (the tet keys); the largest steps are one
    sort of those keys and one ``searchsorted`` of them into the unique keys (~1 s at 1e6
    tets).
    """
    n = np.int64(topology.ndof)
    tdt = np.ascontiguousarray(topology.tet_dofs.T)  # (4, M)
    pk, pl = (np.asarray(p) for p in TET_PAIRS)
    a, b = tdt[pk], tdt[pl]  # (10, M)
    keys = np.minimum(a, b)
    np.maximum(a, b, out=b)
    del a
    keys *= n
    keys += b  # upper key of every (pair, tet)
    del b
    fd = topology.facet_dofs  # (F, 2, 3)
    fdi = fd[fd[:, 1, 0] >= 0]
    ci, cj = fdi[:, 0, :, None], fdi[:, 1, None, :]  # interface cross pairs (side 0, side 1)
    cross = (np.minimum(ci, cj) * n + np.maximum(ci, cj)).reshape(-1)
    # Sort + mask instead of np.unique (numpy 2's hash-based unique: ~10 s at 1e7 keys).
    ukeys = np.concatenate([keys.reshape(-1), cross])
    del cross
    ukeys.sort()
    first = np.empty(ukeys.shape, dtype=bool)
    first[:1] = True
    np.not_equal(ukeys[1:], ukeys[:-1], out=first[1:])
    ukeys = ukeys[first]
    del first
    nupper = int(ukeys.shape[0])
    upper_map = np.searchsorted(ukeys, keys).astype(_index_dtype(nupper), copy=False)
    del keys
    # Full pattern: upper entries and the transposes of the strict upper ones, in CSR order.
    rows_u, cols_u = ukeys // n, ukeys % n
    node_dtype = _index_dtype(topology.npoint)
    upper_nodes = np.stack([topology.dof_node[rows_u], topology.dof_node[cols_u]])
    upper_nodes = upper_nodes.astype(node_dtype, copy=False)
    diag = rows_u == cols_u
    upper_diagonal = np.empty(int(n), dtype=_index_dtype(nupper))
    upper_diagonal[rows_u[diag]] = np.flatnonzero(diag)
    strict = np.flatnonzero(~diag)
    full_keys = np.concatenate([ukeys, cols_u[strict] * n + rows_u[strict]])
    order = np.argsort(full_keys, kind="stable")
    full_keys = full_keys[order]
    source = np.concatenate([np.arange(nupper), strict])[order]
    del order, strict, rows_u, cols_u, ukeys
    nnz = int(full_keys.shape[0])
    nf = fd.shape[0]
    facet_map = np.full((nf, 2, 2, 3, 3), -1, dtype=np.int64)
    for s in range(2):
        for t in range(2):
            valid = (fd[:, s, 0] >= 0) & (fd[:, t, 0] >= 0)
            k = fd[valid, s, :, None] * n + fd[valid, t, None, :]
            facet_map[valid, s, t] = np.searchsorted(full_keys, k.reshape(-1)).reshape(-1, 3, 3)
    rows = full_keys // n
    facet_flat = facet_map.reshape(-1)
    facet_entries = np.flatnonzero(facet_flat >= 0)
    return {
        "rows": rows,
        "cols": full_keys % n,
        "nupper": nupper,
        "upper_map": upper_map,
        "upper_to_full": source.astype(_index_dtype(max(nupper, nnz)), copy=False),
        "upper_nodes": upper_nodes,
        "upper_diagonal": upper_diagonal,
        "tet_nodes": np.ascontiguousarray(topology.tets_array.T).astype(node_dtype, copy=False),
        "facet_map": facet_map,
        "facet_entries": facet_entries,
        "facet_targets": facet_flat[facet_entries],
        "row_compartment": topology.dof_compartment[rows],
    }


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fem_pattern(mesh) -> FEMPattern:
    """The cached :class:`FEMPattern` of ``mesh``'s topology on ``mesh.points.device``."""
    topo = mesh.topology
    per_topo = _CACHE.get(topo)
    if per_topo is None:
        per_topo = {"arrays": _build(topo)}
        _CACHE[topo] = per_topo
    dev = mesh.points.device
    fp = per_topo.get(dev)
    if fp is None:
        a = per_topo["arrays"]

        def t(x):
            return torch.as_tensor(x, device=dev)

        fp = FEMPattern(
            pattern=SparsePattern(t(a["rows"]), t(a["cols"]), topo.ndof),
            nupper=a["nupper"],
            upper_map=t(a["upper_map"]),
            tet_nodes=t(a["tet_nodes"]),
            upper_to_full=t(a["upper_to_full"]),
            upper_nodes=t(a["upper_nodes"]),
            upper_diagonal=t(a["upper_diagonal"]),
            facet_map=t(a["facet_map"]),
            facet_entries=t(a["facet_entries"]),
            facet_targets=t(a["facet_targets"]),
            row_compartment=t(a["row_compartment"]),
            tet_dofs=t(topo.tet_dofs),
            facet_dofs=t(topo.facet_dofs),
            dof_compartment=t(topo.dof_compartment),
            dof_node=t(topo.dof_node),
        )
        per_topo[dev] = fp
    return fp
