"""Signal losses, geometric regularizers and evaluation metrics for geometry fitting."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import SetupError

__all__ = [
    "mse_loss",
    "log_mse_loss",
    "rician_nll_loss",
    "surface_smoothness",
    "volume_prior",
    "area_prior",
    "sample_surface",
    "chamfer_distance",
    "hausdorff_distance",
    "point_surface_distance",
    "surface_distances",
    "relative_error",
]


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise SetupError(f"prediction shape {tuple(pred.shape)} != target {tuple(target.shape)}")


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of normalized signal magnitudes (dimensionless)."""
    _check(pred, target)
    return ((pred.abs() - target.abs()) ** 2).mean()


def log_mse_loss(pred: torch.Tensor, target: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """Mean squared error of log signal magnitudes (emphasises high b-values)."""
    _check(pred, target)
    return (
        (torch.log(pred.abs().clamp_min(floor)) - torch.log(target.abs().clamp_min(floor))) ** 2
    ).mean()


def rician_nll_loss(pred: torch.Tensor, measured: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean negative log-likelihood of magnitudes ``measured`` under Rician noise of level
    ``sigma`` around the noise-free magnitudes ``pred``:

    −log p(m | a) = −log(m/σ²) + (m² + a²)/(2σ²) − log I0(m a/σ²),

    with log I0(x) = log(i0e(x)) + x for stability. Constant terms are dropped.
    """
    _check(pred, measured)
    if sigma <= 0:
        raise SetupError(f"sigma = {sigma} must be positive")
    a = pred.abs()
    m = measured.abs()
    s2 = sigma**2
    x = m * a / s2
    return ((a**2) / (2 * s2) - (torch.log(torch.special.i0e(x)) + x)).mean()


def surface_smoothness(mesh, boundaries=None) -> torch.Tensor:
    """Σ over boundary edges of (1 − cos θ) between adjacent facet normals (µm⁰): zero for
    a plane, small for smooth surfaces; penalizes crumpling in free-form fits."""
    topo = mesh.topology
    sel = (
        np.ones(topo.facets.shape[0], bool)
        if boundaries is None
        else np.isin(topo.facet_boundary, boundaries)
    )
    fidx = np.flatnonzero(sel)
    tri = topo.facets[fidx]
    edges = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1)
    owner = np.tile(np.arange(fidx.size), 3)
    key = edges[:, 0] * topo.npoint + edges[:, 1]
    order = np.argsort(key, kind="stable")
    k = key[order]
    pair = np.flatnonzero(k[1:] == k[:-1])
    a = torch.as_tensor(fidx[owner[order[pair]]], device=mesh.device)
    b = torch.as_tensor(fidx[owner[order[pair + 1]]], device=mesh.device)
    n = mesh.facet_normals()
    # Interface facets are oriented out of the lower compartment on both sides: use |cos|.
    return (1.0 - (n[a] * n[b]).sum(1).abs()).sum()


def volume_prior(mesh, target_volume: float) -> torch.Tensor:
    """(|Ω|/V₀ − 1)², dimensionless."""
    return (mesh.volume() / target_volume - 1.0) ** 2


def area_prior(mesh, target_area: float, boundaries=None) -> torch.Tensor:
    """(A/A₀ − 1)² for the total area of the selected boundaries (default: all)."""
    a = mesh.boundary_areas()
    if boundaries is not None:
        a = a[torch.as_tensor(boundaries, device=a.device)]
    return (a.sum() / target_area - 1.0) ** 2


def sample_surface(vertices, faces, n: int, seed: int | None = 0) -> torch.Tensor:
    """(n, 3) points sampled uniformly by area on a triangle surface (differentiable in
    ``vertices`` for fixed random barycentric coordinates)."""
    v = torch.as_tensor(vertices)
    f = torch.as_tensor(faces, device=v.device)
    tri = v[f]
    area = 0.5 * torch.linalg.vector_norm(
        torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), dim=1
    )
    gen = torch.Generator(device="cpu").manual_seed(0 if seed is None else seed)
    idx = torch.multinomial(area.detach().cpu(), n, replacement=True, generator=gen).to(v.device)
    r1, r2 = torch.rand(2, n, generator=gen, dtype=v.dtype).to(v.device)
    s = torch.sqrt(r1)
    w = torch.stack([1 - s, s * (1 - r2), s * r2], dim=1)
    return (w[:, :, None] * tri[idx]).sum(1)


def _nearest(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    out = []
    for k in range(0, a.shape[0], chunk):
        out.append(torch.cdist(a[k : k + chunk], b).min(dim=1).values)
    return torch.cat(out)


def chamfer_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric Chamfer distance between point sets: mean nearest distance a→b plus b→a
    over two, µm."""
    return 0.5 * (_nearest(a, b).mean() + _nearest(b, a).mean())


def hausdorff_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric Hausdorff distance between point sets, µm."""
    return torch.maximum(_nearest(a, b).max(), _nearest(b, a).max())


def _triangle_distance(q, a, b, c) -> torch.Tensor:
    """Distance from points q to triangles (a, b, c), all (..., 3) and broadcastable: the
    plane distance when the projection falls inside the triangle, else the distance to the
    nearest of the three edges (segments)."""
    tiny = torch.finfo(q.dtype).tiny
    normal = torch.linalg.cross(b - a, c - a, dim=-1)
    dist = None
    inside = None
    for origin, e in ((a, b - a), (b, c - b), (c, a - c)):
        w = q - origin
        t = (w * e).sum(-1) / (e * e).sum(-1).clamp_min(tiny)
        seg = torch.linalg.vector_norm(w - t.clamp(0, 1)[..., None] * e, dim=-1)
        side = (torch.linalg.cross(e, w, dim=-1) * normal).sum(-1) >= 0
        dist = seg if dist is None else torch.minimum(dist, seg)
        inside = side if inside is None else inside & side
    plane = ((q - a) * normal).sum(-1).abs() / torch.linalg.vector_norm(normal, dim=-1).clamp_min(
        tiny
    )
    return torch.where(inside, torch.minimum(dist, plane), dist)


def point_surface_distance(points, vertices, faces, candidates: int = 16) -> torch.Tensor:
    """(n,) distance from each point to a triangle surface (its closest point on any
    triangle, interiors and edges included), µm. Not differentiable (a metric).

    Exact: for every point the ``candidates`` triangles with the smallest lower bound
    ``|q − centroid| − circumradius`` are measured; when the next lower bound could still
    beat the best distance found, that point is measured against every triangle.

    Parameters
    ----------
    points : (n, 3) tensor, µm.
    vertices : (nv, 3) tensor, µm.
    faces : (nf, 3) integer array or tensor of vertex indices.
    candidates : triangles measured per point before the exactness check.
    """
    p = torch.as_tensor(points).detach()
    v = torch.as_tensor(vertices).detach().to(dtype=p.dtype, device=p.device)
    f = torch.as_tensor(faces, device=p.device)
    if p.ndim != 2 or p.shape[1] != 3 or v.ndim != 2 or v.shape[1] != 3:
        raise SetupError(
            f"points {tuple(p.shape)} and vertices {tuple(v.shape)} must have shape (n, 3)"
        )
    if f.ndim != 2 or f.shape[1] != 3 or f.shape[0] == 0:
        raise SetupError(f"faces must have shape (nf, 3) with nf ≥ 1, got {tuple(f.shape)}")
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]  # (nf, 3)
    centroid = (a + b + c) / 3.0
    radius = torch.stack([torch.linalg.vector_norm(x - centroid, dim=1) for x in (a, b, c)])
    radius = radius.amax(0)
    k = min(int(candidates), f.shape[0])
    out = []
    for s in range(0, p.shape[0], 1024):
        q = p[s : s + 1024]
        bound = torch.cdist(q, centroid) - radius  # (m, nf) lower bounds
        lb, idx = bound.topk(k, dim=1, largest=False)
        d = _triangle_distance(q[:, None], a[idx], b[idx], c[idx]).min(dim=1).values
        if k < f.shape[0]:
            nxt = bound.scatter(1, idx, math.inf).min(dim=1).values
            redo = torch.nonzero(nxt < d).flatten()
            for r in redo.tolist():  # rare: fall back to every triangle for that point
                d[r] = _triangle_distance(q[r], a, b, c).min()
        out.append(d)
    return torch.cat(out)


def surface_distances(
    vertices_a, faces_a, vertices_b, faces_b, n: int = 4000, seed: int | None = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Chamfer, Hausdorff) distances between two triangle surfaces, µm.

    ``n`` area-uniform samples on each surface (:func:`sample_surface`) are measured exactly
    against the other surface (:func:`point_surface_distance`), so, unlike point-set
    distances between samples, identical surfaces give 0 whatever ``n``. Chamfer: the mean of
    the two directed mean distances; Hausdorff: the largest sampled distance (a lower bound
    of the true Hausdorff distance that converges as ``n`` grows).
    """
    sa = sample_surface(vertices_a, faces_a, n, seed=seed)
    sb = sample_surface(vertices_b, faces_b, n, seed=None if seed is None else seed + 1)
    ab = point_surface_distance(sa, vertices_b, faces_b)
    ba = point_surface_distance(sb, vertices_a, faces_a)
    return 0.5 * (ab.mean() + ba.mean()), torch.maximum(ab.max(), ba.max())


def relative_error(value, reference) -> float:
    """|value − reference| / |reference| (floats or tensors, max over elements)."""
    v = torch.as_tensor(value, dtype=torch.float64)
    r = torch.as_tensor(reference, dtype=torch.float64)
    return float(((v - r).abs() / r.abs().clamp_min(math.ulp(0.0))).max())
