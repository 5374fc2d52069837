"""The tetrahedral mesh every solver consumes.

A :class:`TetMesh` is a value: the differentiable leaf is the single ``points`` tensor, the
connectivity lives in a shared :class:`~spindoctor_torch.mesh.topology.Topology`, and
:meth:`TetMesh.with_points` returns a copy with new coordinates and the same (cached) topology.
All geometric quantities are computed on demand from ``points`` with vectorized torch
operations, so they are differentiable with respect to the vertex positions.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import MeshError
from .topology import Topology, build_topology

__all__ = ["TetMesh"]


def _as_index_array(x, name: str, ncol: int | None) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise MeshError(f"{name} must hold integer indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if ncol is not None and (arr.ndim != 2 or arr.shape[1] != ncol):
        raise MeshError(f"{name} must have shape (n, {ncol}), got {tuple(arr.shape)}")
    return arr


class TetMesh:
    """Tetrahedral mesh with compartments, labelled boundaries and SpinDoctor's node split.

    Parameters
    ----------
    points : (N, 3) tensor or array, µm
        Vertex coordinates. Kept as given if already a floating tensor (so a tensor that
        requires grad stays the differentiable leaf); otherwise converted to float64.
    tets : (M, 4) int
        Vertex indices of each tetrahedron. Negatively oriented tets are re-ordered on
        construction so that every tet has a positive signed volume.
    tet_labels : (M,) int, optional
        Compartment label of each tet (any integers; compartments are numbered
        ``0 .. ncompartment-1`` in sorted label order). Default: one compartment.
    facets, facet_labels : (F, 3) int and (F,) int, optional
        Labelled boundary triangles (gmsh physical surfaces, TetGen face markers). See
        :mod:`spindoctor_torch.mesh.topology` for how boundaries are numbered.

    Attributes
    ----------
    points : (N, 3) tensor, µm
    tets : (M, 4) int64 tensor
    tet_compartment : (M,) int64 tensor
    facets : (F, 3) int64 tensor, oriented with the normal pointing out of compartment
        ``boundary_compartments[facet_boundary, 0]``
    facet_boundary : (F,) int64 tensor
    boundary_compartments : (nboundary, 2) int64 tensor, ``(i, j)`` or ``(i, -1)``
    topology : Topology (numpy arrays, shared between copies)

    Examples
    --------
    >>> import spindoctor_torch as sdt
    >>> mesh = sdt.mesh.box((2.0, 2.0, 2.0), h=1.0)  # doctest: +SKIP
    >>> float(mesh.compartment_volumes().sum())  # doctest: +SKIP
    8.0
    """

    def __init__(
        self,
        points,
        tets,
        tet_labels=None,
        facets=None,
        facet_labels=None,
        *,
        topology: Topology | None = None,
    ):
        if isinstance(points, torch.Tensor) and points.is_floating_point():
            pts = points
        else:
            pts = torch.as_tensor(np.asarray(points, dtype=np.float64))
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise MeshError(f"points must have shape (N, 3), got {tuple(pts.shape)}")
        if not bool(torch.isfinite(pts).all()):
            bad = int((~torch.isfinite(pts)).any(dim=1).nonzero()[0, 0])
            raise MeshError(f"points[{bad}] = {pts[bad].tolist()} is not finite")
        self.points = pts

        if topology is not None:
            self.topology = topology
            return

        tets_np = _as_index_array(tets, "tets", 4)
        npoint = pts.shape[0]
        if tets_np.shape[0] == 0:
            raise MeshError("tets is empty: a mesh needs at least one tetrahedron")
        if tets_np.min() < 0 or tets_np.max() >= npoint:
            raise MeshError(
                f"tets index range [{tets_np.min()}, {tets_np.max()}] is outside the "
                f"{npoint} points"
            )
        if np.any(np.sort(tets_np, axis=1)[:, 1:] == np.sort(tets_np, axis=1)[:, :-1]):
            bad = int(np.flatnonzero((np.diff(np.sort(tets_np, axis=1), axis=1) == 0).any(1))[0])
            raise MeshError(f"tets[{bad}] = {tets_np[bad].tolist()} repeats a vertex")
        if tet_labels is None:
            labels = np.zeros(tets_np.shape[0], dtype=np.int64)
        else:
            labels = _as_index_array(tet_labels, "tet_labels", None).reshape(-1)
            if labels.shape[0] != tets_np.shape[0]:
                raise MeshError(
                    f"tet_labels has {labels.shape[0]} entries for {tets_np.shape[0]} tets"
                )
        p_np = pts.detach().cpu().numpy().astype(np.float64)
        # Orient every tet positively (swap two vertices of the negative ones).
        vol6 = _signed_volume6_np(p_np, tets_np)
        neg = vol6 < 0
        if np.any(neg):
            tets_np = tets_np.copy()
            tets_np[neg, 2], tets_np[neg, 3] = tets_np[neg, 3], tets_np[neg, 2].copy()
        f_np = None if facets is None else _as_index_array(facets, "facets", 3)
        fl_np = None
        if facet_labels is not None:
            fl_np = _as_index_array(facet_labels, "facet_labels", None).reshape(-1)
            if f_np is None or fl_np.shape[0] != f_np.shape[0]:
                raise MeshError("facet_labels needs facets of the same length")
        self.topology = build_topology(p_np, tets_np, labels, f_np, fl_np)

    # ------------------------------------------------------------------ construction helpers
    def with_points(self, points: torch.Tensor) -> TetMesh:
        """Return a mesh with the same topology (and cached patterns) and new coordinates.

        This is the optimization hook: ``mesh.with_points(phi(theta))`` keeps the graph from
        ``theta`` to every matrix assembled on the new mesh.
        """
        if not isinstance(points, torch.Tensor):
            points = torch.as_tensor(np.asarray(points, dtype=np.float64))
        if tuple(points.shape) != tuple(self.points.shape):
            raise MeshError(
                f"with_points: points must have shape {tuple(self.points.shape)}, "
                f"got {tuple(points.shape)}"
            )
        new = TetMesh(points, None, topology=self.topology)
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k.startswith("_topo_")})
        return new

    def to(self, device=None, dtype=None) -> TetMesh:
        """Copy of the mesh with ``points`` on another device and/or dtype."""
        return self.with_points(self.points.to(device=device, dtype=dtype))

    def detach(self) -> TetMesh:
        return self.with_points(self.points.detach())

    # ------------------------------------------------------------------ topology as tensors
    def _topo_tensor(self, name: str) -> torch.Tensor:
        key = f"_topo_{name}_{self.points.device}"
        t = self.__dict__.get(key)
        if t is None:
            t = torch.as_tensor(getattr(self.topology, name), device=self.points.device)
            self.__dict__[key] = t
        return t

    @property
    def tets(self) -> torch.Tensor:
        return self._topo_tensor("tets_array")

    @property
    def tet_compartment(self) -> torch.Tensor:
        return self._topo_tensor("tet_compartment")

    @property
    def facets(self) -> torch.Tensor:
        return self._topo_tensor("facets")

    @property
    def facet_boundary(self) -> torch.Tensor:
        return self._topo_tensor("facet_boundary")

    @property
    def boundary_compartments(self) -> torch.Tensor:
        return self._topo_tensor("boundary_compartments")

    @property
    def npoint(self) -> int:
        return self.topology.npoint

    @property
    def ntet(self) -> int:
        return self.topology.ntet

    @property
    def nfacet(self) -> int:
        return int(self.topology.facets.shape[0])

    @property
    def ncompartment(self) -> int:
        return self.topology.ncompartment

    @property
    def nboundary(self) -> int:
        return self.topology.nboundary

    @property
    def ndof(self) -> int:
        return self.topology.ndof

    @property
    def dtype(self) -> torch.dtype:
        return self.points.dtype

    @property
    def device(self) -> torch.device:
        return self.points.device

    @property
    def point_map(self) -> list[torch.Tensor]:
        """Per compartment, the global node index of each local node (SpinDoctor's
        ``point_map``; interface nodes appear in every adjacent compartment)."""
        return [
            torch.as_tensor(self.topology.point_map(c), device=self.device)
            for c in range(self.ncompartment)
        ]

    @property
    def interfaces(self) -> list[tuple[int, int, int]]:
        """``(boundary, i, j)`` for every interface between compartments ``i < j``."""
        bc = self.topology.boundary_compartments
        return [(int(b), int(bc[b, 0]), int(bc[b, 1])) for b in self.topology.interfaces]

    def compartment_points(self, compartment: int) -> torch.Tensor:
        """(npoint_i, 3) coordinates of compartment ``compartment``'s nodes, gathered from
        the one differentiable ``points`` tensor."""
        self._check_compartment(compartment)
        return self.points[self.point_map[compartment]]

    def _check_compartment(self, compartment: int) -> None:
        if not 0 <= int(compartment) < self.ncompartment:
            raise MeshError(
                f"compartment = {compartment} is unknown; this mesh has compartments "
                f"0..{self.ncompartment - 1}"
            )

    # ------------------------------------------------------------------ geometry (differentiable)
    def tet_signed_volumes(self) -> torch.Tensor:
        """(M,) signed tetrahedron volumes, µm³ (positive for a valid mesh)."""
        p = self.points[self.tets]  # (M, 4, 3)
        e = p[:, 1:] - p[:, :1]
        return torch.linalg.det(e) / 6.0

    def tet_volumes(self) -> torch.Tensor:
        """(M,) tetrahedron volumes, µm³ (absolute values of the signed volumes)."""
        return self.tet_signed_volumes().abs()

    def compartment_volumes(self) -> torch.Tensor:
        """(ncompartment,) compartment volumes |Ω_i|, µm³."""
        v = self.tet_signed_volumes()
        out = torch.zeros(self.ncompartment, dtype=v.dtype, device=v.device)
        return out.index_add(0, self.tet_compartment, v)

    def volume(self) -> torch.Tensor:
        """Total volume, µm³."""
        return self.tet_signed_volumes().sum()

    def facet_area_vectors(self) -> torch.Tensor:
        """(F, 3) facet normals scaled by the facet area, µm², pointing out of compartment
        ``boundary_compartments[b, 0]``."""
        t = self.points[self.facets]
        return 0.5 * torch.linalg.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])

    def facet_areas(self) -> torch.Tensor:
        """(F,) facet areas, µm²."""
        return torch.linalg.vector_norm(self.facet_area_vectors(), dim=1)

    def facet_normals(self) -> torch.Tensor:
        """(F, 3) unit facet normals pointing out of compartment
        ``boundary_compartments[facet_boundary, 0]``."""
        a = self.facet_area_vectors()
        return a / torch.linalg.vector_norm(a, dim=1, keepdim=True)

    def facet_centers(self) -> torch.Tensor:
        """(F, 3) facet centroids, µm."""
        return self.points[self.facets].mean(dim=1)

    def boundary_areas(self) -> torch.Tensor:
        """(nboundary,) area of each boundary, µm²."""
        a = self.facet_areas()
        out = torch.zeros(self.nboundary, dtype=a.dtype, device=a.device)
        return out.index_add(0, self.facet_boundary, a)

    def compartment_surface_areas(self) -> torch.Tensor:
        """(ncompartment,) total boundary area of each compartment (walls and interfaces), µm²."""
        ab = self.boundary_areas()
        bc = self.boundary_compartments
        out = torch.zeros(self.ncompartment, dtype=ab.dtype, device=ab.device)
        out = out.index_add(0, bc[:, 0], ab)
        inter = bc[:, 1] >= 0
        return out.index_add(0, bc[inter, 1], ab[inter])

    def bounding_box(self) -> torch.Tensor:
        """(2, 3) lower and upper corners of the axis-aligned bounding box, µm."""
        return torch.stack([self.points.min(dim=0).values, self.points.max(dim=0).values])

    def edge_lengths(self) -> torch.Tensor:
        """(M, 6) lengths of the six edges of each tet, µm."""
        from .topology import TET_EDGES

        p = self.points[self.tets]
        e = torch.as_tensor(TET_EDGES, device=self.device)
        return torch.linalg.vector_norm(p[:, e[:, 1]] - p[:, e[:, 0]], dim=-1)

    def mean_edge_length(self) -> float:
        """Mean tet edge length h, µm (a float: a mesh-size summary, not differentiable)."""
        return float(self.edge_lengths().mean())

    # ------------------------------------------------------------------ quality
    def quality(self):
        """Summary of element quality; see :func:`spindoctor_torch.mesh.quality.mesh_quality`."""
        from .quality import mesh_quality

        return mesh_quality(self)

    def check(self, *, min_volume_ratio: float = 1e-12) -> TetMesh:
        """Raise :class:`MeshError` if the mesh is unusable; return ``self`` otherwise.

        Checks: inverted or degenerate tets, faces shared by more than two tets,
        non-conformal interfaces (hanging nodes), and empty compartments.
        """
        from .quality import check_mesh

        check_mesh(self, min_volume_ratio=min_volume_ratio)
        return self

    # ------------------------------------------------------------------ misc
    def summary(self) -> str:
        """Multi-line human-readable description (sizes, volumes, boundaries)."""
        vols = self.compartment_volumes().detach().cpu().tolist()
        areas = self.boundary_areas().detach().cpu().tolist()
        lines = [
            f"TetMesh: {self.npoint} points, {self.ntet} tets, {self.ndof} dofs, "
            f"{self.ncompartment} compartment(s), {self.nboundary} boundary(ies)",
            f"  mean edge length h = {self.mean_edge_length():.4g} µm",
        ]
        for c, v in enumerate(vols):
            lines.append(
                f"  compartment {c} (label {self.topology.compartment_labels[c]}): "
                f"volume {v:.6g} µm³"
            )
        for b, (i, j) in enumerate(self.topology.boundary_compartments.tolist()):
            kind = f"interface {i}-{j}" if j >= 0 else f"outer wall of {i}"
            lines.append(f"  boundary {b}: {kind}, area {areas[b]:.6g} µm²")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"TetMesh(npoint={self.npoint}, ntet={self.ntet}, ncompartment={self.ncompartment}, "
            f"nboundary={self.nboundary}, dtype={self.dtype}, device={self.device})"
        )


def _signed_volume6_np(p: np.ndarray, tets: np.ndarray) -> np.ndarray:
    a = p[tets[:, 1]] - p[tets[:, 0]]
    b = p[tets[:, 2]] - p[tets[:, 0]]
    c = p[tets[:, 3]] - p[tets[:, 0]]
    return np.einsum("ij,ij->i", a, np.cross(b, c))
