"""The FEM sparsity pattern and the scatter maps from element entries into it.

One pattern serves every matrix of a mesh (M, K, R, J_x/y/z, Q): the union of all
tet-local dof pairs and of the cross pairs that couple duplicated interface dofs. Sharing it
makes linear combinations such as ``M + dt/2·(K + Q + i·q·J)`` an operation on value vectors.
The pattern depends on topology only and is cached per (topology, device), so re-assembly
after a vertex move is a gather, element arithmetic and an ``index_add``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from ..linalg.sparse import SparsePattern

__all__ = ["FEMPattern", "fem_pattern"]


@dataclass(frozen=True, eq=False)
class FEMPattern:
    """Sparsity pattern plus scatter maps (positions into ``values``), on one device.

    Attributes
    ----------
    pattern : SparsePattern over all dofs (n = ndof)
    tet_map : (ntet, 4, 4) position of the (k, l) entry of each tet matrix
    facet_map : (nfacet, 2, 2, 3, 3) position of the entry coupling facet vertex k on side s
        with facet vertex l on side t (``facet_map[f, s, t, k, l]``); -1 where side 1 does
        not exist (outer walls)
    tet_dofs : (ntet, 4) dofs of each tet; facet_dofs : (nfacet, 2, 3), -1 for missing side
    dof_compartment : (ndof,), dof_node : (ndof,)
    """

    pattern: SparsePattern
    tet_map: torch.Tensor
    facet_map: torch.Tensor
    tet_dofs: torch.Tensor
    facet_dofs: torch.Tensor
    dof_compartment: torch.Tensor
    dof_node: torch.Tensor


def _build(topology) -> dict[str, np.ndarray]:
    ndof = topology.ndof
    n = np.int64(ndof)
    td = topology.tet_dofs  # (M, 4)
    tet_keys = (td[:, :, None] * n + td[:, None, :]).reshape(-1)
    fd = topology.facet_dofs  # (F, 2, 3)
    inter = fd[:, 1, 0] >= 0
    fdi = fd[inter]
    cross = [(fdi[:, s, :, None] * n + fdi[:, t, None, :]).reshape(-1) for s, t in ((0, 1), (1, 0))]
    keys = np.unique(np.concatenate([tet_keys] + cross))
    tet_map = np.searchsorted(keys, tet_keys).reshape(-1, 4, 4)
    nf = fd.shape[0]
    facet_map = np.full((nf, 2, 2, 3, 3), -1, dtype=np.int64)
    for s in range(2):
        for t in range(2):
            rows = fd[:, s, :, None]
            cols = fd[:, t, None, :]
            valid = (fd[:, s, 0] >= 0) & (fd[:, t, 0] >= 0)
            k = rows[valid] * n + cols[valid]
            facet_map[valid, s, t] = np.searchsorted(keys, k.reshape(-1)).reshape(-1, 3, 3)
    return {
        "rows": keys // n,
        "cols": keys % n,
        "tet_map": tet_map,
        "facet_map": facet_map,
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
            tet_map=t(a["tet_map"]),
            facet_map=t(a["facet_map"]),
            tet_dofs=t(topo.tet_dofs),
            facet_dofs=t(topo.facet_dofs),
            dof_compartment=t(topo.dof_compartment),
            dof_node=t(topo.dof_node),
        )
        per_topo[dev] = fp
    return fp
