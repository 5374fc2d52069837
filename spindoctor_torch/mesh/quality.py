"""Element quality measures and the validity check behind :meth:`TetMesh.check`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import MeshError

__all__ = [
    "MeshQuality",
    "dihedral_angles",
    "radius_ratios",
    "mesh_quality",
    "check_mesh",
    "find_hanging_facets",
]

# For edge (a, b) of a tet, the two faces containing it are opposite the other two vertices.
_OPPOSITE = np.array([[2, 3], [1, 3], [1, 2], [0, 3], [0, 2], [0, 1]], dtype=np.int64)


def _face_normals(p: torch.Tensor) -> torch.Tensor:
    """(M, 4, 3) inward-independent normals of the 4 faces (face k opposite vertex k)."""
    idx = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]], device=p.device)
    f = p[:, idx]  # (M, 4, 3, 3)
    n = torch.linalg.cross(f[:, :, 1] - f[:, :, 0], f[:, :, 2] - f[:, :, 0])
    # Orient each normal away from the opposite vertex (outward).
    centroid = f.mean(dim=2)
    sign = torch.sign(((centroid - p) * n).sum(-1, keepdim=True))
    return n * sign


def dihedral_angles(points: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    """(M, 6) interior dihedral angles at the six edges of each tet, degrees.

    The angle at edge (a, b) is π minus the angle between the outward normals of the two
    faces sharing that edge.
    """
    p = points[tets]
    n = _face_normals(p)
    n = n / torch.linalg.vector_norm(n, dim=-1, keepdim=True).clamp_min(1e-300)
    opp = torch.as_tensor(_OPPOSITE, device=points.device)
    cosang = (n[:, opp[:, 0]] * n[:, opp[:, 1]]).sum(-1).clamp(-1.0, 1.0)
    return 180.0 - torch.rad2deg(torch.arccos(cosang))


def radius_ratios(points: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    """(M,) normalized radius ratio 3·r_in/r_circ of each tet: 1 for a regular tet, 0 when
    degenerate."""
    p = points[tets]
    e = p[:, 1:] - p[:, :1]
    vol = torch.linalg.det(e).abs() / 6.0
    n = _face_normals(p)
    area = 0.5 * torch.linalg.vector_norm(n, dim=-1).sum(-1)
    r_in = 3.0 * vol / area.clamp_min(1e-300)
    # Circumradius: |a²(b×c) + b²(c×a) + c²(a×b)| / (12 V) with a, b, c edges from vertex 0.
    a, b, c = e[:, 0], e[:, 1], e[:, 2]
    num = (
        (a * a).sum(-1, keepdim=True) * torch.linalg.cross(b, c)
        + (b * b).sum(-1, keepdim=True) * torch.linalg.cross(c, a)
        + (c * c).sum(-1, keepdim=True) * torch.linalg.cross(a, b)
    )
    r_circ = torch.linalg.vector_norm(num, dim=-1) / (12.0 * vol).clamp_min(1e-300)
    return torch.where(vol > 0, 3.0 * r_in / r_circ, torch.zeros_like(vol))


@dataclass(frozen=True)
class MeshQuality:
    """Summary of element quality (angles in degrees, radius ratio in [0, 1])."""

    ntet: int
    min_dihedral: float
    max_dihedral: float
    min_radius_ratio: float
    mean_radius_ratio: float
    ninverted: int
    ndegenerate: int

    def __str__(self) -> str:
        return (
            f"{self.ntet} tets: dihedral angles [{self.min_dihedral:.2f}°, "
            f"{self.max_dihedral:.2f}°], radius ratio min {self.min_radius_ratio:.3f} "
            f"mean {self.mean_radius_ratio:.3f}, {self.ninverted} inverted, "
            f"{self.ndegenerate} degenerate"
        )


def _degenerate_threshold(mesh, min_volume_ratio: float) -> float:
    h = float(mesh.edge_lengths().detach().mean())
    return min_volume_ratio * h**3


def mesh_quality(mesh, *, min_volume_ratio: float = 1e-12) -> MeshQuality:
    """Quality summary of a :class:`TetMesh` (no gradients are kept)."""
    with torch.no_grad():
        vol = mesh.tet_signed_volumes()
        ang = dihedral_angles(mesh.points, mesh.tets)
        rr = radius_ratios(mesh.points, mesh.tets)
        tol = _degenerate_threshold(mesh, min_volume_ratio)
        return MeshQuality(
            ntet=mesh.ntet,
            min_dihedral=float(ang.min()),
            max_dihedral=float(ang.max()),
            min_radius_ratio=float(rr.min()),
            mean_radius_ratio=float(rr.mean()),
            ninverted=int((vol < -tol).sum()),
            ndegenerate=int((vol.abs() <= tol).sum()),
        )


def _point_triangle_distance(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Distance from points p (K, 3) to triangles tri (K, 3, 3), vectorized (Ericson's
    closest-point regions, evaluated by projecting and clamping to the three edges)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    n = np.cross(b - a, c - a)
    nn = np.einsum("ij,ij->i", n, n)
    nn = np.where(nn > 0, nn, 1.0)
    # Projection onto the plane and barycentric coordinates.
    d = np.einsum("ij,ij->i", p - a, n) / nn
    q = p - d[:, None] * n
    w_c = np.einsum("ij,ij->i", np.cross(b - a, q - a), n) / nn
    w_b = np.einsum("ij,ij->i", np.cross(q - a, c - a), n) / nn
    w_a = 1.0 - w_b - w_c
    inside = (w_a >= 0) & (w_b >= 0) & (w_c >= 0)
    dist_in = np.abs(d) * np.sqrt(nn)

    def seg(p, u, v):
        uv = v - u
        t = np.clip(
            np.einsum("ij,ij->i", p - u, uv) / np.maximum(np.einsum("ij,ij->i", uv, uv), 1e-300),
            0.0,
            1.0,
        )
        return np.linalg.norm(p - (u + t[:, None] * uv), axis=1)

    dist_edge = np.minimum(np.minimum(seg(p, a, b), seg(p, b, c)), seg(p, c, a))
    return np.where(inside, dist_in, dist_edge)


def find_hanging_facets(mesh, *, rel_tol: float = 1e-6, k: int = 8) -> np.ndarray:
    """Indices of outer-wall facets that overlap an outer-wall facet of another compartment.

    In a conformal mesh two compartments touch only through shared faces (interfaces). A
    compartment's outer-wall facet whose centroid lies on another compartment's outer wall
    therefore marks a non-conformal interface (hanging nodes, or a duplicated surface).
    """
    topo = mesh.topology
    outer = topo.boundary_compartments[topo.facet_boundary, 1] < 0
    fidx = np.flatnonzero(outer)
    if fidx.size == 0 or topo.ncompartment < 2:
        return np.zeros(0, dtype=np.int64)
    from scipy.spatial import cKDTree

    p = mesh.points.detach().cpu().numpy()
    tri = p[topo.facets[fidx]]
    cen = tri.mean(axis=1)
    cmp = topo.boundary_compartments[topo.facet_boundary[fidx], 0]
    h = float(np.linalg.norm(tri[:, 1] - tri[:, 0], axis=1).mean())
    kk = min(k, fidx.size)
    _, nb = cKDTree(cen).query(cen, k=kk)
    nb = nb.reshape(fidx.size, kk)
    rows = np.repeat(np.arange(fidx.size), kk)
    cols = nb.reshape(-1)
    other = cmp[rows] != cmp[cols]
    rows, cols = rows[other], cols[other]
    if rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    dist = _point_triangle_distance(cen[rows], tri[cols])
    hit = dist <= rel_tol * h
    return np.unique(fidx[rows[hit]])


def check_mesh(mesh, *, min_volume_ratio: float = 1e-12) -> None:
    """Raise :class:`MeshError` naming the first problem found (see :meth:`TetMesh.check`)."""
    topo = mesh.topology
    if topo.nonmanifold_faces.shape[0]:
        f = topo.nonmanifold_faces[0].tolist()
        raise MeshError(
            f"{topo.nonmanifold_faces.shape[0]} face(s) are shared by more than two tets "
            f"(first: nodes {f}); a facet can separate at most two compartments"
        )
    with torch.no_grad():
        vol = mesh.tet_signed_volumes()
        tol = _degenerate_threshold(mesh, min_volume_ratio)
        inverted = torch.nonzero(vol < -tol).reshape(-1)
        if inverted.numel():
            t = int(inverted[0])
            raise MeshError(
                f"{inverted.numel()} inverted tetrahedra (negative volume), first: tet {t} "
                f"with volume {float(vol[t]):.3e} µm³ and nodes {topo.tets_array[t].tolist()}"
            )
        degenerate = torch.nonzero(vol.abs() <= tol).reshape(-1)
        if degenerate.numel():
            t = int(degenerate[0])
            raise MeshError(
                f"{degenerate.numel()} degenerate tetrahedra (volume ≤ {tol:.3e} µm³), "
                f"first: tet {t} with volume {float(vol[t]):.3e} µm³"
            )
    counts = np.bincount(topo.tet_compartment, minlength=topo.ncompartment)
    if np.any(counts == 0):
        raise MeshError(f"compartment {int(np.flatnonzero(counts == 0)[0])} is empty")
    hanging = find_hanging_facets(mesh)
    if hanging.size:
        f = int(hanging[0])
        c = int(topo.boundary_compartments[topo.facet_boundary[f], 0])
        raise MeshError(
            f"non-conformal interface: {hanging.size} outer-wall facet(s) of one compartment "
            f"lie on another compartment's wall (hanging nodes), first: facet {f} of "
            f"compartment {c} with nodes {topo.facets[f].tolist()}; mesh the compartments "
            "together (e.g. gmsh boolean fragments) so interface triangles are shared"
        )
    if not math.isfinite(float(mesh.volume().detach())):
        raise MeshError("mesh volume is not finite")
