"""Mesh topology: faces, boundaries and SpinDoctor's per-compartment node split.

Everything here depends only on the connectivity (``tets``, labels, facets), never on the
coordinates, so it is computed once per mesh topology and shared by every
:meth:`TetMesh.with_points` copy. Pure numpy, vectorized.

Conventions
-----------
* Compartments are numbered ``0 .. ncompartment-1`` in the sorted order of the tet labels.
* A *boundary* is a set of triangular facets that all separate the same ordered pair of
  compartments ``(i, j)`` with ``i < j`` (an interface Γ_ij), or that bound one compartment ``i``
  from the outside (an outer wall Γ_i, stored as ``(i, -1)``).
* Without facet labels the boundaries are numbered like SpinDoctor.jl: all interfaces Γ_ij in
  lexicographic order of ``(i, j)``, then the outer walls Γ_i in compartment order. With facet
  labels (gmsh physical surfaces, TetGen face markers) the order of the sorted labels is kept,
  a label spanning several compartment pairs is split (one boundary per pair, in pair order),
  and boundary faces left unlabelled get new boundaries appended in the default order.
* Degrees of freedom (dofs): each compartment owns a copy of every node its tets touch
  (SpinDoctor's ``point_map``); dofs are numbered compartment by compartment, nodes ascending
  inside a compartment, so interface nodes appear once per adjacent compartment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MeshError

__all__ = ["Topology", "build_topology", "TET_FACES", "TET_EDGES"]

#: Local vertex indices of the 4 faces of a tetrahedron (face k is opposite vertex k).
TET_FACES = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]], dtype=np.int64)
#: Local vertex pairs of the 6 edges of a tetrahedron.
TET_EDGES = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]], dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Topology:
    """Connectivity-derived arrays of a tetrahedral mesh (numpy, int64).

    Attributes
    ----------
    npoint, ntet, ncompartment, nboundary : int
    tets_array : (ntet, 4) node indices of each (positively oriented) tet.
    tet_compartment : (ntet,) compartment index of each tet.
    facets : (nfacet, 3) global node indices of every boundary facet, ordered so that the
        right-hand normal points out of compartment ``boundary_compartments[b, 0]``
        (orientation is fixed by :func:`build_topology` from the initial coordinates).
    facet_boundary : (nfacet,) boundary index of each facet.
    facet_tet : (nfacet,) the tet on the ``boundary_compartments[b, 0]`` side of each facet.
    boundary_compartments : (nboundary, 2) ``(i, j)`` for an interface, ``(i, -1)`` for an
        outer wall.
    boundary_labels : (nboundary,) the file label a boundary came from (-1 if generated).
    compartment_labels : (ncompartment,) original tet label of each compartment.
    dof_node : (ndof,) global node of each dof; ``dof_compartment`` : (ndof,).
    compartment_dof_offsets : (ncompartment+1,) dof range of each compartment.
    tet_dofs : (ntet, 4) dofs of each tet's vertices (in its own compartment).
    facet_dofs : (nfacet, 2, 3) dofs of each facet's vertices on side 0 (compartment i) and
        side 1 (compartment j; -1 for an outer wall).
    nonmanifold_faces : (k, 3) faces shared by more than two tets (invalid mesh).
    """

    npoint: int
    ntet: int
    ncompartment: int
    tets_array: np.ndarray
    nboundary: int
    tet_compartment: np.ndarray
    facets: np.ndarray
    facet_boundary: np.ndarray
    facet_tet: np.ndarray
    boundary_compartments: np.ndarray
    boundary_labels: np.ndarray
    compartment_labels: np.ndarray
    dof_node: np.ndarray
    dof_compartment: np.ndarray
    compartment_dof_offsets: np.ndarray
    tet_dofs: np.ndarray
    facet_dofs: np.ndarray
    nonmanifold_faces: np.ndarray

    @property
    def ndof(self) -> int:
        return int(self.dof_node.shape[0])

    @property
    def interfaces(self) -> np.ndarray:
        """Indices of the boundaries that are interfaces between two compartments."""
        return np.flatnonzero(self.boundary_compartments[:, 1] >= 0)

    @property
    def outer_walls(self) -> np.ndarray:
        """Indices of the boundaries that are outer walls of one compartment."""
        return np.flatnonzero(self.boundary_compartments[:, 1] < 0)

    def point_map(self, compartment: int) -> np.ndarray:
        """Global node indices of ``compartment``'s dofs (SpinDoctor's ``point_map``)."""
        lo, hi = self.compartment_dof_offsets[compartment : compartment + 2]
        return self.dof_node[lo:hi]


def _face_keys(faces_sorted: np.ndarray, npoint: int) -> np.ndarray:
    """Unique int64 key of each sorted face (a < b < c)."""
    n = np.int64(npoint)
    if npoint > 2_000_000:
        raise MeshError(f"npoint = {npoint}: face hashing supports at most 2e6 nodes")
    return (faces_sorted[:, 0] * n + faces_sorted[:, 1]) * n + faces_sorted[:, 2]


def build_topology(
    points: np.ndarray,
    tets: np.ndarray,
    tet_labels: np.ndarray,
    facets: np.ndarray | None = None,
    facet_labels: np.ndarray | None = None,
) -> Topology:
    """Derive faces, boundaries and the dof split from a labelled tetrahedral mesh.

    Parameters
    ----------
    points : (N, 3) float array, µm. Only used to orient facets.
    tets : (M, 4) int array of node indices, assumed positively oriented.
    tet_labels : (M,) int array of compartment labels (any integers).
    facets, facet_labels : optional (F, 3) and (F,) labelled boundary triangles, for example
        gmsh physical surfaces or TetGen face markers. Facets that are not boundary faces of
        the tet mesh raise :class:`MeshError`; unlabelled boundary faces are added.
    """
    npoint = int(points.shape[0])
    ntet = int(tets.shape[0])
    compartment_labels, tet_compartment = np.unique(tet_labels, return_inverse=True)
    tet_compartment = tet_compartment.astype(np.int64)
    ncompartment = int(compartment_labels.shape[0])

    # --- all tet faces, matched by sorted vertex triple -------------------------------------
    local = tets[:, TET_FACES]  # (M, 4, 3)
    all_faces = np.sort(local.reshape(-1, 3), axis=1)
    keys = _face_keys(all_faces, npoint)
    order = np.argsort(keys, kind="stable")
    skeys = keys[order]
    starts = np.flatnonzero(np.r_[True, skeys[1:] != skeys[:-1]])
    counts = np.diff(np.r_[starts, skeys.shape[0]])
    nonmanifold = all_faces[order[starts[counts > 2]]]

    first = order[starts]  # index into (M*4) of the first occurrence of each unique face
    second = np.where(counts >= 2, order[np.minimum(starts + 1, skeys.shape[0] - 1)], -1)
    tet_a = first // 4
    tet_b = np.where(second >= 0, second // 4, -1)
    cmp_a = tet_compartment[tet_a]
    cmp_b = np.where(tet_b >= 0, tet_compartment[np.maximum(tet_b, 0)], -1)
    is_boundary = (counts == 1) | ((counts == 2) & (cmp_a != cmp_b))
    ukeys = skeys[starts]

    bidx = np.flatnonzero(is_boundary)
    # Side 0 is the smaller compartment index for interfaces, the only one for outer walls.
    ta, tb, ca, cb = tet_a[bidx], tet_b[bidx], cmp_a[bidx], cmp_b[bidx]
    swap = (cb >= 0) & (cb < ca)
    side0_tet = np.where(swap, tb, ta)
    side1_tet = np.where(swap, ta, tb)
    pair_i = tet_compartment[side0_tet]
    pair_j = np.where(side1_tet >= 0, tet_compartment[np.maximum(side1_tet, 0)], -1)
    bfaces = all_faces[first[bidx]]
    bkeys = ukeys[bidx]

    # --- boundary labels -------------------------------------------------------------------
    face_label = np.full(bidx.shape[0], np.iinfo(np.int64).min, dtype=np.int64)
    if facets is not None and len(facets) > 0:
        facets = np.asarray(facets, dtype=np.int64)
        if facet_labels is None:
            facet_labels = np.zeros(facets.shape[0], dtype=np.int64)
        facet_labels = np.asarray(facet_labels, dtype=np.int64)
        fkeys = _face_keys(np.sort(facets, axis=1), npoint)
        pos = np.searchsorted(bkeys, fkeys)
        pos_c = np.minimum(pos, max(bkeys.shape[0] - 1, 0))
        found = (bkeys.shape[0] > 0) & (bkeys[pos_c] == fkeys)
        if not np.all(found):
            bad = int(np.flatnonzero(~found)[0])
            interior = np.isin(fkeys[bad], ukeys)
            what = (
                "an interior face inside one compartment"
                if interior
                else "not a face of any tetrahedron"
            )
            raise MeshError(
                f"facets[{bad}] = {facets[bad].tolist()} (label {int(facet_labels[bad])}) is "
                f"{what}; boundary facets must be tet faces on an outer wall or an interface"
            )
        face_label[pos_c] = facet_labels

    labelled = face_label != np.iinfo(np.int64).min
    # Boundary groups: (label, i, j) for labelled faces; unlabelled faces grouped by (i, j).
    jkey = np.where(pair_j >= 0, pair_j, ncompartment)  # outer walls after interfaces of i
    groups_l = np.stack([face_label, pair_i, pair_j], axis=1)[labelled]
    uniq_l, inv_l = (
        np.unique(groups_l, axis=0, return_inverse=True)
        if groups_l.shape[0]
        else (np.zeros((0, 3), np.int64), np.zeros(0, np.int64))
    )
    # Default order for unlabelled faces: interfaces (i<j) lexicographic, then outer walls.
    is_outer = pair_j < 0
    dkey = np.stack([is_outer.astype(np.int64), pair_i, jkey], axis=1)[~labelled]
    uniq_d, inv_d = (
        np.unique(dkey, axis=0, return_inverse=True)
        if dkey.shape[0]
        else (np.zeros((0, 3), np.int64), np.zeros(0, np.int64))
    )
    nb_l = uniq_l.shape[0]
    facet_boundary = np.empty(bidx.shape[0], dtype=np.int64)
    facet_boundary[labelled] = inv_l.reshape(-1)
    facet_boundary[~labelled] = nb_l + inv_d.reshape(-1)
    dpair_j = np.where(uniq_d[:, 2] == ncompartment, -1, uniq_d[:, 2])
    boundary_compartments = np.concatenate(
        [uniq_l[:, 1:3], np.stack([uniq_d[:, 1], dpair_j], axis=1)], axis=0
    ).astype(np.int64)
    boundary_labels = np.concatenate([uniq_l[:, 0], np.full(uniq_d.shape[0], -1)]).astype(np.int64)
    nboundary = int(boundary_compartments.shape[0])

    # Sort facets by boundary (stable) so that each boundary's facets are contiguous.
    fo = np.argsort(facet_boundary, kind="stable")
    facet_boundary = facet_boundary[fo]
    bfaces = bfaces[fo]
    side0_tet, side1_tet = side0_tet[fo], side1_tet[fo]

    # --- orient facets: right-hand normal out of the side-0 tet -----------------------------
    p = np.asarray(points, dtype=np.float64)
    tri = p[bfaces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    outward = tri.mean(axis=1) - p[tets[side0_tet]].mean(axis=1)
    flip = np.einsum("ij,ij->i", normal, outward) < 0
    bfaces = bfaces.copy()
    bfaces[flip, 1], bfaces[flip, 2] = bfaces[flip, 2], bfaces[flip, 1].copy()

    # --- dof split (SpinDoctor point_map) ----------------------------------------------------
    n = np.int64(npoint)
    tet_keys = tet_compartment[:, None] * n + tets  # (M, 4)
    dof_keys = np.unique(tet_keys)
    dof_compartment = dof_keys // n
    dof_node = dof_keys % n
    compartment_dof_offsets = np.searchsorted(dof_compartment, np.arange(ncompartment + 1))
    tet_dofs = np.searchsorted(dof_keys, tet_keys)
    facet_dofs = np.full((bfaces.shape[0], 2, 3), -1, dtype=np.int64)
    c0 = tet_compartment[side0_tet]
    facet_dofs[:, 0] = np.searchsorted(dof_keys, c0[:, None] * n + bfaces)
    has1 = side1_tet >= 0
    c1 = tet_compartment[side1_tet[has1]]
    facet_dofs[has1, 1] = np.searchsorted(dof_keys, c1[:, None] * n + bfaces[has1])

    return Topology(
        npoint=npoint,
        ntet=ntet,
        ncompartment=ncompartment,
        tets_array=np.ascontiguousarray(tets, dtype=np.int64),
        nboundary=nboundary,
        tet_compartment=tet_compartment,
        facets=bfaces,
        facet_boundary=facet_boundary,
        facet_tet=side0_tet,
        boundary_compartments=boundary_compartments,
        boundary_labels=boundary_labels,
        compartment_labels=compartment_labels,
        dof_node=dof_node,
        dof_compartment=dof_compartment,
        compartment_dof_offsets=compartment_dof_offsets,
        tet_dofs=tet_dofs,
        facet_dofs=facet_dofs,
        nonmanifold_faces=nonmanifold,
    )
