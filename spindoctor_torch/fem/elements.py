"""P1 element integrals on tetrahedra and triangles, vectorized over elements.

All functions take gathered vertex coordinates and return element matrices whose entries are
differentiable functions of those coordinates. Formulas (barycentric basis φ_k, volume V,
area A, exact integration ∫λ_a λ_b λ_c = V·a!b!c!·3!/(a+b+c+3)!):

* mass            M_e[k,l] = V/20 · (1 + δ_kl)
* stiffness       K_e[k,l] = V · ∇φ_kᵀ D ∇φ_l
* first moment    J_e[k,l] = ∫ x φ_k φ_l = V/120 · (1 + δ_kl) · (Σ_m x_m + x_k + x_l)
* facet mass      F_e[k,l] = A/12 · (1 + δ_kl)

All tet matrices are symmetric: the assembly (:mod:`spindoctor_torch.fem.tet_assembly`) forms
only their 10 upper-triangle entries, the pairs :data:`TET_PAIRS` (k ≤ l).
"""

from __future__ import annotations

import torch

__all__ = [
    "TET_PAIRS",
    "tet_geometry",
    "tet_mass",
    "tet_stiffness",
    "tet_first_moments",
    "triangle_mass",
]


#: The 10 index pairs (k, l), k ≤ l, of a symmetric 4x4 tet matrix: diagonal first, then
#: (0,1), (0,2), (0,3), (1,2), (1,3), (2,3). Row k of the pair p is ``TET_PAIRS[0][p]``.
TET_PAIRS: tuple[tuple[int, ...], tuple[int, ...]] = (
    (0, 1, 2, 3, 0, 0, 0, 1, 1, 2),
    (0, 1, 2, 3, 1, 2, 3, 2, 3, 3),
)


def tet_geometry(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed volumes (M,) and basis gradients (M, 4, 3) of tets with vertices p (M, 4, 3).

    The gradient of barycentric coordinate k is row k of [-1ᵀ; I]·E⁻ᵀ with E the edge
    matrix (rows p_k − p_0), computed from cross products (no matrix inverse):
    ∇λ_1 = (e2 × e3)/(6V), ∇λ_2 = (e3 × e1)/(6V), ∇λ_3 = (e1 × e2)/(6V), ∇λ_0 = −Σ.
    """
    e1, e2, e3 = (p[:, k] - p[:, 0] for k in (1, 2, 3))
    c1 = torch.linalg.cross(e2, e3)
    c2 = torch.linalg.cross(e3, e1)
    c3 = torch.linalg.cross(e1, e2)
    det = (e1 * c1).sum(-1)  # 6V
    g = torch.stack([c1, c2, c3], dim=1) / det[:, None, None]
    grads = torch.cat([-g.sum(1, keepdim=True), g], dim=1)
    return det / 6.0, grads


_MASS_PATTERN_CACHE: dict = {}


def _one_plus_delta(n: int, like: torch.Tensor) -> torch.Tensor:
    key = (n, like.dtype, like.device)
    m = _MASS_PATTERN_CACHE.get(key)
    if m is None:
        m = torch.ones(n, n, dtype=like.dtype, device=like.device) + torch.eye(
            n, dtype=like.dtype, device=like.device
        )
        _MASS_PATTERN_CACHE[key] = m
    return m


def tet_mass(volumes: torch.Tensor) -> torch.Tensor:
    """(M, 4, 4) element mass matrices, µm³."""
    return volumes[:, None, None] / 20.0 * _one_plus_delta(4, volumes)


def tet_stiffness(
    volumes: torch.Tensor, grads: torch.Tensor, diffusivity: torch.Tensor
) -> torch.Tensor:
    """(M, 4, 4) element stiffness matrices V·∇φᵀ D ∇φ, µm³·(µm²/µs)/µm² = µm³/µs.

    ``diffusivity`` is (M, 3, 3) (a tensor per element) or (M,) (isotropic).
    """
    if diffusivity.ndim == 1:
        return (volumes * diffusivity)[:, None, None] * (grads @ grads.transpose(1, 2))
    return volumes[:, None, None] * (grads @ diffusivity @ grads.transpose(1, 2))


def tet_first_moments(volumes: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(3, M, 4, 4) element first-moment matrices ∫ x_d φ_k φ_l for d = x, y, z, µm⁴."""
    x = p.permute(2, 0, 1)  # (3, M, 4)
    s = x.sum(-1, keepdim=True)  # (3, M, 1)
    w = s.unsqueeze(-1) + x.unsqueeze(-1) + x.unsqueeze(-2)  # (3, M, 4, 4)
    return (volumes[None, :, None, None] / 120.0) * _one_plus_delta(4, volumes) * w


def triangle_mass(areas: torch.Tensor) -> torch.Tensor:
    """(F, 3, 3) facet mass matrices A/12·(1 + δ_kl), µm²."""
    return areas[:, None, None] / 12.0 * _one_plus_delta(3, areas)
