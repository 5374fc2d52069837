"""Differentiable assembly of the P1 finite-element matrices of the Bloch-Torrey problem.

The semi-discrete Bloch-Torrey equation on the split (per-compartment) dofs reads

    M ξ' = −(K + Q + R + i·q·f(t)·(u_x J_x + u_y J_y + u_z J_z)) ξ,   ξ(0) = ρ,

with M the mass, K the stiffness (D per compartment), R = M/T2, J_d the first-moment matrices
∫ x_d φ_k φ_l and Q the flux matrix of interfaces (permeability κ with the coupling between
duplicated dofs) and outer walls (relaxivity, Robin). All matrices share one pattern
(:mod:`spindoctor_torch.fem.pattern`) and their values are differentiable functions of
``mesh.points`` and of the tensors in :class:`~spindoctor_torch.model.Model`.

References
----------
Li, J.-R., et al. (2019). SpinDoctor: a MATLAB toolbox for diffusion MRI simulation.
NeuroImage 202, 116120. doi:10.1016/j.neuroimage.2019.116120
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..linalg.sparse import SparseMatrix
from ..model import Model
from .elements import triangle_mass
from .pattern import FEMPattern, fem_pattern
from .tet_assembly import assemble_volume_terms

__all__ = ["FEMatrices", "assemble", "assemble_mass", "facet_mass_values"]


@dataclass(frozen=True, eq=False)
class FEMatrices:
    """Assembled FEM matrices of a :class:`Model` (all on one shared pattern).

    Attributes
    ----------
    M : mass ∫φ_kφ_l, µm³
    K : stiffness ∫D∇φ_k·∇φ_l, µm³/µs
    R : relaxation ∫φ_kφ_l/T2, µm³/µs
    Q : flux matrix (interfaces with κ and coupling, outer-wall relaxivity), µm³/µs
    J : (J_x, J_y, J_z) first moments ∫x_d φ_kφ_l, µm⁴
    G : (ndof, 3) dense boundary vectors ∫_∂Ω_i φ_k n (outward normal of the dof's own
        compartment), µm², used by HADC
    volumes : (ncompartment,) compartment volumes, µm³
    fem : FEMPattern (pattern, scatter maps, dof → compartment)
    """

    M: SparseMatrix
    K: SparseMatrix
    R: SparseMatrix
    Q: SparseMatrix
    J: tuple[SparseMatrix, SparseMatrix, SparseMatrix]
    G: torch.Tensor
    volumes: torch.Tensor
    fem: FEMPattern

    @property
    def ndof(self) -> int:
        return self.fem.pattern.n

    @property
    def dof_compartment(self) -> torch.Tensor:
        return self.fem.dof_compartment

    def J_direction(self, direction: torch.Tensor) -> SparseMatrix:  # noqa: N802
        """Σ_d u_d J_d for a direction u (3,)."""
        u = direction.to(self.J[0].values)
        values = u[0] * self.J[0].values + u[1] * self.J[1].values + u[2] * self.J[2].values
        return SparseMatrix(self.fem.pattern, values)

    def mass_weights(self) -> torch.Tensor:
        """(ndof,) M·1, so that the signal of a field ξ is ``(mass_weights * ξ).sum()``."""
        return self.M.row_sums()

    def compartment_integrals(self, field: torch.Tensor) -> torch.Tensor:
        """Integral of a dof field (ndof, ...) over each compartment → (ncompartment, ...)."""
        w = self.mass_weights()
        wf = w.reshape((-1,) + (1,) * (field.ndim - 1)) * field
        n = self.volumes.shape[0]
        out = torch.zeros((n,) + tuple(field.shape[1:]), dtype=wf.dtype, device=wf.device)
        return out.index_add(0, self.dof_compartment, wf)


def facet_mass_values(model: Model, fp: FEMPattern, areas: torch.Tensor) -> torch.Tensor:
    """Values of Q: κ-weighted facet mass on walls, coupled facet mass on interfaces."""
    mesh = model.mesh
    fb = mesh.facet_boundary
    kappa = model.boundary_kappa.index_select(0, fb)  # (F,)
    fm = triangle_mass(areas)  # (F, 3, 3)
    bc = mesh.boundary_compartments.index_select(0, fb)  # (F, 2)
    rho = model.density
    i, j = bc[:, 0], bc[:, 1]
    inter = j >= 0
    if model.coupling == "weighted":
        rho_i = rho.index_select(0, i)
        rho_j = torch.where(inter, rho.index_select(0, j.clamp_min(0)), rho_i)
        denom = rho_i + rho_j
        safe = torch.where(denom > 0, denom, torch.ones_like(denom))
        c_ij = torch.where(denom > 0, 2.0 * rho_i / safe, torch.ones_like(denom))
        c_ji = torch.where(denom > 0, 2.0 * rho_j / safe, torch.ones_like(denom))
    else:
        c_ij = c_ji = torch.ones_like(kappa)
    # Interface condition on side i: +κ c_ji F on (i,i), −κ c_ij F on (i,j); and i <-> j.
    k_ii = torch.where(inter, kappa * c_ji, kappa)  # outer wall: Robin term κ F
    k_ij = torch.where(inter, -kappa * c_ij, torch.zeros_like(kappa))
    k_ji = torch.where(inter, -kappa * c_ji, torch.zeros_like(kappa))
    k_jj = torch.where(inter, kappa * c_ij, torch.zeros_like(kappa))
    w = torch.stack([k_ii, k_ij, k_ji, k_jj], dim=1).reshape(-1, 2, 2)  # (F, row side, col side)
    entries = w[:, :, :, None, None] * fm[:, None, None, :, :]  # (F, 2, 2, 3, 3)
    present = entries.reshape(-1).index_select(0, fp.facet_entries)
    out = torch.zeros(fp.pattern.nnz, dtype=entries.dtype, device=entries.device)
    return out.index_add(0, fp.facet_targets, present)


def _boundary_vectors(model: Model, fp: FEMPattern, area_vectors: torch.Tensor) -> torch.Tensor:
    """(ndof, 3) G = ∫_∂Ω_i φ_k n: each facet adds A·n/3 to its three vertex dofs on each
    side, with the normal pointing out of that side's compartment."""
    fd = fp.facet_dofs  # (F, 2, 3)
    contrib = area_vectors / 3.0  # (F, 3), outward of side 0
    G = torch.zeros(fp.pattern.n, 3, dtype=area_vectors.dtype, device=area_vectors.device)
    G = G.index_add(0, fd[:, 0].reshape(-1), contrib.repeat_interleave(3, dim=0))
    has1 = fd[:, 1, 0] >= 0
    G = G.index_add(0, fd[has1, 1].reshape(-1), (-contrib[has1]).repeat_interleave(3, dim=0))
    return G


def assemble_mass(mesh) -> SparseMatrix:
    """Mass matrix only (µm³) on the FEM pattern of ``mesh``."""
    fp = fem_pattern(mesh)
    zero_d = mesh.points.new_zeros(mesh.ncompartment, 3, 3)
    return SparseMatrix(fp.pattern, assemble_volume_terms(mesh, zero_d, fp)[0])


def assemble(model: Model) -> FEMatrices:
    """Assemble M, K, R, Q, J_x/y/z and G for ``model`` (differentiable).

    Parameters
    ----------
    model : Model

    Returns
    -------
    FEMatrices
        Sparse matrices on one shared pattern over the split dofs (ndof = Σ npoint_i).

    Notes
    -----
    Cost: O(ntet) element arithmetic in cache-sized tet blocks, scattered into the upper
    triangle of the pattern (10 entries per tet, :mod:`~spindoctor_torch.fem.tet_assembly`),
    then one gather per matrix to the full pattern. The pattern is built once per mesh
    topology and cached. Gradients flow to ``model.mesh.points`` and to
    diffusivity, relaxation, permeability/relaxivity and density tensors of the model.
    """
    mesh = model.mesh
    fp = fem_pattern(mesh)
    m, k, jx, jy, jz, volumes = assemble_volume_terms(mesh, model.diffusivity, fp)
    M = SparseMatrix(fp.pattern, m)
    K = SparseMatrix(fp.pattern, k)
    J = tuple(SparseMatrix(fp.pattern, j) for j in (jx, jy, jz))
    inv_t2 = 1.0 / model.relaxation  # 0 for T2 = inf
    R = SparseMatrix(fp.pattern, M.values * inv_t2.index_select(0, fp.row_compartment))
    area_vec = mesh.facet_area_vectors()
    areas = torch.linalg.vector_norm(area_vec, dim=1)
    Q = SparseMatrix(fp.pattern, facet_mass_values(model, fp, areas))
    G = _boundary_vectors(model, fp, area_vec)
    return FEMatrices(M=M, K=K, R=R, Q=Q, J=J, G=G, volumes=volumes, fem=fp)
