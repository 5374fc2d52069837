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


def relative_error(value, reference) -> float:
    """|value − reference| / |reference| (floats or tensors, max over elements)."""
    v = torch.as_tensor(value, dtype=torch.float64)
    r = torch.as_tensor(reference, dtype=torch.float64)
    return float(((v - r).abs() / r.abs().clamp_min(math.ulp(0.0))).max())
