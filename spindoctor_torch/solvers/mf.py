r"""Matrix formalism (MF): Laplace eigenfunctions, reduced Bloch-Torrey propagation, MF tensors.

With the lowest eigenpairs of :math:`(K + Q)\varphi = \lambda M \varphi` (M-orthonormal, λ up
to :math:`\bar D(\pi/\ell)^2` for a length scale ℓ), the magnetization is sought as
:math:`\xi = \Phi\nu` and the Bloch-Torrey equation reduces to

.. math::

    \dot\nu = -\bigl(L + T + i\,q\,f(t)\,A(u)\bigr)\nu, \qquad \nu(0) = \Phi^T M \rho,

with :math:`L = \Phi^T(K+Q)\Phi` (= diag λ), :math:`T = \Phi^T R \Phi`,
:math:`A(u) = \sum_d u_d \Phi^T J_d \Phi`. The signal of compartment c is
:math:`w_c^T \nu(TE)` with :math:`w_c = \Phi^T M 1_c`.

Catalogue
---------
LaplaceEig                      eigenvalues, eigenfunctions, length scales (+ what was computed)
compute_laplace_eig             the eigen-decomposition (sparse, differentiable, cacheable)
solve_mf                        MF signals for every amplitude, sequence and direction at once
compute_mf_diffusion_tensor     MF effective diffusion tensor D = a j(L) aᵀ / |Ω|
solve_mfga                      MF Gaussian-approximation signal ρ|Ω| exp(−b uᵀDu)

Propagation
-----------
Piecewise-constant profiles (PGSE, DoublePGSE, custom constant pieces) are propagated exactly:
one exponential per piece, the pause pieces ``exp(−t(L+T))`` elementwise when L+T is diagonal.
For a PGSE the second lobe is the complex conjugate of the first and K is complex-symmetric,
so ``w_cᵀ conj(E) D E ν0 = conj(E w_c)ᵀ D (E ν0)`` (E = exp(−δK)): one exponential action per
compartment and pair instead of two. Other profiles (OGSE, custom, Waveform3D) use ``ninterval``
pieces over [0, TE] (distributed over the sequence's characteristic intervals) with the value
averaged over each piece's end points, as SpinDoctor. Every exponential acts on all
(amplitude, direction) pairs of a sequence at once, as the columns of (k, npair) vectors, by a
Chebyshev series (:func:`~spindoctor_torch.linalg.expm.expmv_chebyshev`, a fixed polynomial,
so autograd derivatives are as accurate as values). With derivatives the products with A(u)
are one real GEMM ``[A_x A_y A_z]·[q u_x ⊙ x; …]`` over all columns; without (``torch.no_grad``
or nothing requiring grad) the series runs in place and, from 4 columns per direction on, with
one batched product ``A(u_g)`` per direction (a third of the arithmetic). The position
operators are taken about the centroid of the domain (a phase per pair, which cancels at the
echo), so the series degree does not grow with the distance of the mesh from the origin.

Gradients
---------
Everything is differentiable with respect to ``mesh.points`` and the model tensors (D, κ, T2,
ρ) and experiment amplitudes/directions. The reduced stiffness is taken as the full matrix
``ΦᵀAΦ`` (numerically diag λ): the MF outputs then depend on Φ only through the spanned
subspace, which makes the eigenvector adjoint exact also for degenerate eigenvalues (see
:mod:`spindoctor_torch.linalg.eig`). The off-diagonal part of ``ΦᵀAΦ`` is round-off: its product
is skipped in the forward pass but its first-order sensitivity is kept in the backward pass.

References
----------
Li, J.-R., et al. (2019). SpinDoctor: a MATLAB toolbox for diffusion MRI simulation.
NeuroImage 202, 116120. doi:10.1016/j.neuroimage.2019.116120
Agdestein, S. D., Tran, T. N., Li, J.-R. (2022). SpinDoctor-IVIM. NMR Biomed 35, e4646.
Grebenkov, D. S. (2007). NMR survey of reflected Brownian motion. Rev. Mod. Phys. 79, 1077.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import SetupError, SpinDoctorWarning
from ..experiment import Experiment
from ..fem.assemble import FEMatrices, assemble
from ..linalg.eig import EigInfo, project, sparse_eigsh
from ..linalg.expm import (
    ColumnOperator,
    GroupedOperator,
    diag_matrix_function,
    expmv_chebyshev,
)
from ..linalg.sparse import SparseMatrix
from ..model import Model, warn_unequal_density
from ..result import Result
from ..sequences import Sequence

__all__ = [
    "LaplaceEig",
    "compute_laplace_eig",
    "solve_mf",
    "compute_mf_diffusion_tensor",
    "solve_mfga",
    "eiglim_from_length_scale",
]

_CACHE_VERSION = 1
# no-grad propagation with one batched product per direction (GroupedOperator) from this many
# columns per direction on (measured, k = 300, 100 directions, 1 thread: the stacked products
# are faster up to 3 columns, the batched ones from 4), and while the matrices A(u_g) take
# at most this much memory
_GROUPED_MIN_COLUMNS = 4
_GROUPED_MAX_BYTES = 256 * 2**20


# ------------------------------------------------------------------------------ eigenpairs
@dataclass(eq=False)
class LaplaceEig:
    """Laplace eigen-decomposition of a model: (K + Q) φ = λ M φ.

    Attributes
    ----------
    values : (nmode,) tensor, 1/µs
        Eigenvalues λ (D included), ascending. Differentiable.
    funcs : (ndof, nmode) tensor
        M-orthonormal eigenfunctions (columns). Differentiable.
    length_scales : (nmode,) tensor, µm
        ℓ = π·sqrt(D̄/λ) (inf for λ ≤ 0).
    mean_diffusivity : float, µm²/µs
        D̄, the volume-weighted mean of tr(D_i)/3.
    eiglim : float, 1/µs
        The truncation λ_max = D̄(π/ℓ)² (inf when only ``neig_max`` limits).
    neig_max : int
    info : EigInfo
        Backend, number computed, timings, whether ``neig_max`` cut the request.
    fem : FEMatrices used (same graph as ``values``/``funcs``)
    model : Model
    """

    values: torch.Tensor
    funcs: torch.Tensor
    length_scales: torch.Tensor
    mean_diffusivity: float
    eiglim: float
    neig_max: int
    info: EigInfo = field(repr=False)
    fem: FEMatrices = field(repr=False)
    model: Model = field(repr=False)

    @property
    def nmode(self) -> int:
        return int(self.values.shape[0])

    def truncate(self, length_scale: float | None = None, neig_max: int | None = None):
        """The leading modes down to ``length_scale`` µm and/or at most ``neig_max`` modes
        (never cutting a cluster of equal eigenvalues). Differentiable (a column slice)."""
        lam = self.values.detach().cpu().numpy()
        k = lam.size
        eiglim = self.eiglim
        if length_scale is not None:
            eiglim = eiglim_from_length_scale(self.mean_diffusivity, length_scale)
            k = int((lam <= eiglim).sum())
        if neig_max is not None:
            k = min(k, int(neig_max))
        scale = max(float(np.abs(lam).max()), 1e-300)
        while 0 < k < lam.size and lam[k] - lam[k - 1] <= 1e-8 * scale:
            k -= 1
        if k == 0:
            raise SetupError(f"length_scale = {length_scale} µm keeps no mode")
        return replace(
            self,
            values=self.values[:k],
            funcs=self.funcs[:, :k],
            length_scales=self.length_scales[:k],
            eiglim=eiglim,
            neig_max=k if neig_max is None else int(neig_max),
        )


def eiglim_from_length_scale(mean_diffusivity: float, length_scale: float) -> float:
    """λ_max = D̄ (π/ℓ)² in 1/µs for D̄ in µm²/µs and ℓ in µm."""
    if not (length_scale > 0):
        raise SetupError(f"length_scale must be a positive length in µm, got {length_scale!r}")
    return float(mean_diffusivity) * (math.pi / float(length_scale)) ** 2


def _symmetric_stiffness(fem: FEMatrices) -> SparseMatrix:
    A = fem.K + fem.Q
    perm = A.pattern.transpose_permutation()
    asym = (A.values - A.values[perm]).detach().abs().max()
    if float(asym) > 1e-12 * float(A.values.detach().abs().max()):
        warnings.warn(
            "K + Q is not symmetric (unequal densities with weighted coupling): the matrix "
            "formalism uses its symmetric part and is inaccurate for non-equilibrium density",
            SpinDoctorWarning,
            stacklevel=3,
        )
        return SparseMatrix(A.pattern, 0.5 * (A.values + A.values[perm]))
    return A


def _interfaces_impermeable(model: Model) -> bool:
    inter = [b for b, _, _ in model.mesh.interfaces]
    if not inter:
        return True
    return bool((model.boundary_kappa.detach()[inter] == 0).all())


def _weyl_count(volume: float, area: float, d: float, lam: float) -> float:
    """Weyl estimate of the number of Neumann eigenvalues ≤ λ of D·(−Δ) in a 3-D domain."""
    mu = lam / d
    return volume * mu**1.5 / (6 * math.pi**2) + area * mu / (16 * math.pi) + 1.0


def _cache_key(fem: FEMatrices, A: SparseMatrix, params: dict[str, Any]) -> str:
    h = hashlib.sha256()
    p = fem.fem.pattern
    for t in (p.rows, p.cols, A.values, fem.M.values):
        h.update(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes())
    h.update(repr(sorted(params.items())).encode())
    return h.hexdigest()


def compute_laplace_eig(
    model: Model,
    length_scale: float | None = None,
    neig_max: int = 400,
    *,
    eiglim: float | None = None,
    sigma: float = -1e-8,
    backend: str = "auto",
    buffer: float = 1.25,
    cache_dir: str | Path | None = None,
    quiet: bool = False,
) -> LaplaceEig:
    """Lowest Laplace eigenpairs of a model, down to a length scale.

    Solves (K + Q) φ = λ M φ (SpinDoctor's ``compute_laplace_eig``): M-orthonormal φ,
    ascending λ ≤ λ_max = D̄(π/ℓ)², at most ``neig_max`` modes. When every interface is
    impermeable each compartment is solved separately (the pencil is block diagonal) and the
    modes are merged into one basis over all dofs.

    Parameters
    ----------
    model : Model
    length_scale : float, µm, optional
        Smallest length scale ℓ resolved (SpinDoctor's ``length_scale``; 1-3 µm typical).
    neig_max : int, default 400
        Cap on the number of modes. A :class:`SpinDoctorWarning` tells when it cuts the
        requested length scale.
    eiglim : float, 1/µs, optional
        λ_max directly (overrides ``length_scale``).
    sigma : float, 1/µs, default -1e-8
        Shift of the shift-invert operator (SpinDoctor's default).
    backend : {"auto", "dense", "splu", "cholmod", "lobpcg"}
        Forward eigensolver (see :mod:`spindoctor_torch.linalg.eig`). "auto" uses CHOLMOD
        when scikit-sparse is installed.
    buffer : float, default 1.25
        Modes up to ``buffer·λ_max`` are computed but not returned (they condition the
        adjoint solve of the gradient).
    cache_dir : str or Path, optional
        Directory for an ``.npz`` cache keyed by a hash of the pattern, the matrix values
        (hence points, D, κ) and these parameters.
    quiet : bool

    Returns
    -------
    LaplaceEig

    Raises
    ------
    SetupError
        Non-positive length scale or eiglim, ``neig_max`` < 1, or neither a length scale
        nor a finite cap.
    """
    if not isinstance(model, Model):
        raise SetupError(f"model must be a Model, got {type(model).__name__}")
    if isinstance(neig_max, bool) or not isinstance(neig_max, int | np.integer) or neig_max < 1:
        raise SetupError(f"neig_max must be a positive integer, got {neig_max!r}")
    dbar = float(model.mean_diffusivity().detach())
    if eiglim is not None:
        if not (eiglim > 0):
            raise SetupError(f"eiglim must be positive (1/µs), got {eiglim!r}")
        lam_max = float(eiglim)
    elif length_scale is not None:
        lam_max = eiglim_from_length_scale(dbar, length_scale)
    else:
        lam_max = math.inf
    t0 = time.perf_counter()
    fem = assemble(model)
    t_asm = time.perf_counter() - t0
    A = _symmetric_stiffness(fem)
    mesh = model.mesh
    fp = fem.fem
    groups = None
    dof_cmpt = fp.dof_compartment.cpu().numpy()
    ncmpt = model.ncompartment
    if ncmpt > 1 and _interfaces_impermeable(model):
        groups = [np.flatnonzero(dof_cmpt == c) for c in range(ncmpt)]
    coords = mesh.points.detach()[fp.dof_node].cpu().numpy()
    nev_guess = None
    if math.isfinite(lam_max):
        vols = fem.volumes.detach().cpu().numpy()
        areas = mesh.compartment_surface_areas().detach().cpu().numpy()
        dc = torch.diagonal(model.diffusivity, dim1=1, dim2=2).mean(-1).detach().cpu().numpy()
        est = [
            _weyl_count(vols[c], areas[c], max(dc[c], 1e-30), buffer * lam_max)
            for c in range(ncmpt)
        ]
        nev_guess = (
            [int(1.15 * sum(est) + 8)] if groups is None else [int(1.15 * e + 8) for e in est]
        )
    params = dict(
        v=_CACHE_VERSION,
        lam_max=lam_max,
        nmax=int(neig_max),
        sigma=sigma,
        buffer=buffer,
        groups=groups is not None,
    )
    precomputed = None
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"laplace_eig_{_cache_key(fem, A, params)[:24]}.npz"
        if cache_file.is_file():
            with np.load(cache_file) as z:
                precomputed = (z["values"], z["vectors"], int(z["k"]))
            if not quiet:
                print(f"compute_laplace_eig: loaded {cache_file}")
    if not quiet and precomputed is None:
        print(
            f"compute_laplace_eig: {fem.ndof} dofs, λ_max = {lam_max:.4g} 1/µs, "
            f"neig_max = {neig_max}, backend = {backend}"
        )
    lam, phi, info = sparse_eigsh(
        A,
        fem.M,
        lam_max=lam_max,
        nmax=int(neig_max),
        sigma=sigma,
        backend=backend,
        groups=groups,
        coords=coords,
        nev_guess=nev_guess,
        buffer=buffer,
        precomputed=precomputed,
        quiet=quiet,
    )
    info.timings["assembly"] = t_asm
    st = info.extra["state"]
    if cache_file is not None and precomputed is None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_file, values=st.values, vectors=st.vectors, k=st.k)
    if info.capped and math.isfinite(lam_max):  # no warning when only neig_max was asked
        lk = float(lam[-1].detach())
        warnings.warn(
            f"neig_max = {neig_max} cuts the requested length scale: the last mode has "
            f"λ = {lk:.4g} 1/µs (ℓ = {math.pi * math.sqrt(dbar / max(lk, 1e-300)):.3g} µm) "
            f"< λ_max = {lam_max:.4g}; increase neig_max",
            SpinDoctorWarning,
            stacklevel=2,
        )
    lam_d = lam.detach()
    if bool((lam_d < -1e-8 * lam_d.abs().max().clamp_min(1e-300)).any()):
        warnings.warn(
            f"negative Laplace eigenvalue {float(lam_d.min()):.3g} 1/µs",
            SpinDoctorWarning,
            stacklevel=2,
        )
    pos = lam_d > 1e-12 * lam_d.abs().max().clamp_min(1e-300)
    ls = torch.where(pos, math.pi * torch.sqrt(dbar / torch.where(pos, lam_d, 1.0)), math.inf)
    if not quiet:
        t_eig = info.timings.get("factorization", 0.0) + info.timings.get("eigensolve", 0.0)
        print(
            f"compute_laplace_eig: {lam.shape[0]} modes (+{info.ncomputed - info.nreturned} "
            f"buffer) by {info.backend}, {t_eig:.2f} s"
        )
    return LaplaceEig(
        values=lam,
        funcs=phi,
        length_scales=ls,
        mean_diffusivity=dbar,
        eiglim=lam_max,
        neig_max=int(neig_max),
        info=info,
        fem=fem,
        model=model,
    )


# ------------------------------------------------------------------------ reduced operator
def _rmm(Ar: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Real matrix (k, k) times complex (k, N), as one real product."""
    k, n = x.shape
    xr = torch.view_as_real(x.resolve_conj().contiguous()).reshape(k, 2 * n)
    return torch.view_as_complex((Ar @ xr).reshape(k, n, 2))


@dataclass
class _Reduced:
    sigma: torch.Tensor  # (k,) diagonal of L + T
    E: torch.Tensor  # (k, k) off-diagonal of L + T
    E_negligible: bool
    A: torch.Tensor  # (3, k, k): Φᵀ J_d Φ − m_d I (position about the centroid m)
    W: torch.Tensor  # (k, ncmpt): w_c = Φᵀ M 1_c
    rho: torch.Tensor  # (ncmpt,)
    lo: float  # spectrum of L + T
    hi: float
    anorm: list[float]  # ‖A_d‖₂
    anorm_joint: float  # ‖Σ_d A_d²‖₂^½ ≥ ‖A(u)‖₂ for every unit u
    center: list[float]  # m, µm

    def __post_init__(self):
        self._stacks: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}

    def operator(self, dirs: torch.Tensor, qf: torch.Tensor) -> ColumnOperator:
        """K_n = L + T + i q_n A(u_n) (differentiable) for the columns n = (g, j) of a
        (k, G·m) block: directions ``dirs`` (G, 3), q·f values ``qf`` (G, m) in rad/(µs·µm).

        One direction: a single block Σ_d u_d A_d; several: the three A_d (one real product
        over all columns). The off-diagonal of L + T is one more block when it is not
        negligible; when it is, it only enters the backward pass (the operator's ghost block).
        """
        G, m = qf.shape
        ctype = _complex(self.A.dtype)
        if G == 1:
            blocks = torch.einsum("d,dkl->kl", dirs[0].to(self.A), self.A)[None]
            coefs = (1j * qf).to(ctype)
            stack = None
            if not self.E_negligible:
                blocks = torch.cat([self.E[None], blocks])
                coefs = torch.cat([torch.ones_like(coefs), coefs])
        else:
            grad = torch.is_grad_enabled()
            if grad not in self._stacks:  # [E] A_x A_y A_z, built once for all pieces
                blocks = self.A if self.E_negligible else torch.cat([self.E[None], self.A])
                k = blocks.shape[1]
                stack = blocks.permute(1, 0, 2).reshape(k, blocks.shape[0] * k)
                self._stacks[grad] = (blocks, stack)
            blocks, stack = self._stacks[grad]
            c = qf[None, :, :] * dirs.T.to(qf)[:, :, None]  # (3, G, m)
            coefs = (1j * c.reshape(3, G * m)).to(ctype)
            if not self.E_negligible:
                coefs = torch.cat([torch.ones_like(coefs[:1]), coefs])
        ghost = None
        if self.E_negligible and torch.is_grad_enabled() and self.E.requires_grad:
            ghost = self.E  # zero in value; its first-order sensitivity is kept
        return ColumnOperator(self.sigma, blocks, coefs, ghost, _stack=stack)

    def grouped_operator(self, mats: torch.Tensor, qf: torch.Tensor) -> GroupedOperator:
        """The derivative-free operator of the same columns with the per-direction
        matrices ``mats`` = A(u_g) (G, k, k) (see :meth:`direction_matrices`)."""
        return GroupedOperator(
            self.sigma, mats, qf.to(self.sigma), None if self.E_negligible else self.E
        )

    def direction_matrices(self, dirs: torch.Tensor) -> torch.Tensor:
        """A(u_g) = Σ_d u_gd A_d, (G, k, k), without derivative."""
        with torch.no_grad():
            return torch.einsum("gd,dkl->gkl", dirs.detach().to(self.A), self.A.detach())

    def imag_bound(self, dirs: torch.Tensor, qf: torch.Tensor) -> float:
        """max |q_n|·‖A(u_n)‖₂, bounded per direction by min(Σ_d |u_d| ‖A_d‖₂,
        ‖u‖·‖Σ_d A_d²‖₂^½)."""
        u = dirs.detach().abs().to(torch.float64).cpu()
        an = torch.tensor(self.anorm, dtype=torch.float64)
        per_dir = torch.minimum(u @ an, torch.linalg.vector_norm(u, dim=1) * self.anorm_joint)
        qmax = qf.detach().abs().amax(1).to(torch.float64).cpu()
        return float((qmax * per_dir).max())

    def phase(self, dirs: torch.Tensor, qf: torch.Tensor, dt: float) -> torch.Tensor:
        """exp(−i dt q_n u_n·m), (G·m,): the factor between exp(−dt K) about the origin and
        about the centroid m (A is stored centred)."""
        um = dirs.to(qf) @ torch.tensor(self.center, dtype=qf.dtype, device=qf.device)  # (G,)
        return torch.exp(-1j * dt * (qf * um[:, None])).reshape(-1)

    def pause(self, t: float, x: torch.Tensor) -> torch.Tensor:
        """exp(−t(L+T)) x for x (k, N)."""
        if t == 0:
            return x
        S = torch.diag_embed(self.sigma) + self.E
        if self.E_negligible:
            if not (torch.is_grad_enabled() and (S.requires_grad or x.requires_grad)):
                return torch.exp(-t * self.sigma).to(x.dtype)[:, None] * x
            # exp(−tS) at a (numerically) diagonal S, with the exact Daleckii-Krein backward
            P = diag_matrix_function(S, lambda lam: torch.exp(-t * lam))
        else:
            P = torch.linalg.matrix_exp(-t * S)
        return _rmm(P, x)


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _reduce(model: Model, fem: FEMatrices, phi: torch.Tensor) -> _Reduced:
    A = _symmetric_stiffness(fem)
    S = project(A, phi)
    if bool(torch.isfinite(model.relaxation).any()):
        S = S + project(fem.R, phi)
    sigma = torch.diagonal(S)
    E = S - torch.diag_embed(sigma)
    e_neg = float(E.detach().abs().max()) <= 1e-9 * float(sigma.detach().abs().max())
    Ad = torch.stack([project(J, phi) for J in fem.J])
    mw = fem.mass_weights()
    onehot = torch.nn.functional.one_hot(fem.dof_compartment, model.ncompartment).to(mw.dtype)
    W = phi.T @ (mw[:, None] * onehot)
    with torch.no_grad():
        if e_neg:
            ev = sigma.detach()
        else:
            ev = torch.linalg.eigvalsh(0.5 * (S + S.T).detach())
        # the position operators about the centroid m (w = Φᵀ M 1 spans the constants):
        # shifting x by m multiplies K's exponential by a phase and shrinks the imaginary
        # extent of its field of values, hence the Chebyshev degree, for off-centre meshes
        wt = W.detach().sum(1)
        center = [float(wt @ a.detach() @ wt / (wt @ wt)) for a in Ad]
    eye = torch.eye(Ad.shape[1], dtype=Ad.dtype, device=Ad.device)
    Ad = Ad - torch.tensor(center, dtype=Ad.dtype, device=Ad.device)[:, None, None] * eye
    with torch.no_grad():
        anorm = [float(torch.linalg.eigvalsh(a.detach()).abs().max()) for a in Ad]
        sq = torch.einsum("dkl,dlm->km", Ad.detach(), Ad.detach())
        anorm_joint = math.sqrt(max(float(torch.linalg.eigvalsh(sq).max()), 0.0))
    return _Reduced(
        sigma,
        E,
        e_neg,
        Ad,
        W,
        model.density.to(W.dtype),
        float(ev.min()),
        float(ev.max()),
        anorm,
        anorm_joint,
        center,
    )


def _pieces(seq: Sequence, ninterval: int) -> tuple[list[tuple[float, Any]], bool]:
    """[(duration µs, value)] with value a float (scalar profile) or a (3,) tensor (vector);
    and whether it is exact (piecewise constant)."""
    if seq.is_constant and not seq.is_vector:
        return [(t1 - t0, float(v)) for t0, t1, v in seq.constant_pieces() if t1 > t0], True
    iv = np.asarray(seq.intervals, dtype=np.float64)
    lengths = np.diff(iv)
    te = float(iv[-1] - iv[0])
    out: list[tuple[float, Any]] = []
    for a, b, ln in zip(iv[:-1], iv[1:], lengths):
        if ln <= 0:
            continue
        n = max(1, int(round(ninterval * ln / te)))
        t = torch.linspace(float(a), float(b), n + 1, dtype=torch.float64)
        # one-sided values at the interval ends (f may jump at a breakpoint)
        nudge = 1e-9 * float(ln)
        t[0] += nudge
        t[-1] -= nudge
        f = seq.f(t)
        fm = 0.5 * (f[1:] + f[:-1])
        dt = float(ln) / n
        for i in range(n):
            v = fm[i] if seq.is_vector else float(fm[i])
            out.append((dt, v))
    return out, False


def _is_zero(v) -> bool:
    return (float(torch.linalg.vector_norm(v)) if isinstance(v, torch.Tensor) else abs(v)) == 0.0


def _pgse_like(pieces) -> bool:
    """(δ, v), [(Δ−δ, 0)], (δ, −v) with scalar v ≠ 0."""
    if len(pieces) not in (2, 3) or any(isinstance(v, torch.Tensor) for _, v in pieces):
        return False
    (d1, v1), (d2, v2) = pieces[0], pieces[-1]
    mid_ok = len(pieces) == 2 or pieces[1][1] == 0.0
    return mid_ok and v1 != 0.0 and v2 == -v1 and math.isclose(d1, d2, rel_tol=1e-12)


def _propagate_sequence(
    red: _Reduced,
    seq: Sequence,
    q: torch.Tensor,
    dirs: torch.Tensor,
    ninterval: int,
    want_nu: bool,
    tol: float,
    progress,
    grouped: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Signals (ncmpt, ndir, namp) and, if asked, ν(TE) (k, ndir, namp).

    Vectors are (k, N) with the (direction, amplitude) pairs as columns (and the compartments
    for the PGSE first lobe: column (g, c, a)), so that every product is one real GEMM, or,
    without derivatives and with ≥ 4 columns per direction, one batched product per
    direction (:class:`~spindoctor_torch.linalg.expm.GroupedOperator`). ``grouped=False``
    forces the stacked products (benchmarks); None decides as above."""
    k = red.sigma.shape[0]
    pieces, _ = _pieces(seq, ninterval)
    if seq.is_vector:
        dirs = torch.zeros(1, 3, dtype=q.dtype, device=q.device)
    G, C = dirs.shape[0], q.shape[0]
    ctype = _complex(red.sigma.dtype)
    ncmpt = red.W.shape[1]
    pgse = _pgse_like(pieces)
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (red.sigma, red.E, red.A, red.W, q, dirs)
    )
    ncol_dir = C * (ncmpt if pgse else 1)
    if grouped is None:
        grouped = (
            G >= 2
            and ncol_dir >= _GROUPED_MIN_COLUMNS
            and G * k * k * red.A.element_size() <= _GROUPED_MAX_BYTES
        )
    mats = None
    if grouped and not (needs_grad or seq.is_vector):
        mats = red.direction_matrices(dirs)

    def expmv(v, dt: float, x: torch.Tensor, ncopies: int = 1) -> torch.Tensor:
        """exp(−dt K(v)) x about the centroid, for a piece of value v (scalar, or a (3,)
        vector profile); columns (g, copy, a)."""
        if isinstance(v, torch.Tensor):  # vector profile: one group, direction v
            dv, qf = v.to(red.A)[None, :], q[None, :]
        else:
            dv, qf = dirs.to(red.A), (q * v)[None, :].expand(G, C)
        imag = red.imag_bound(dv, qf)
        qf = qf.repeat_interleave(ncopies, 0).reshape(dv.shape[0], ncopies * C)
        if mats is not None and not isinstance(v, torch.Tensor):
            op = red.grouped_operator(mats, qf)
        else:
            op = red.operator(dv, qf)
        return expmv_chebyshev(op, x, dt, red.lo, red.hi, imag, tol=tol)

    if pgse:
        # exp(−δK) about the origin and about the centroid differ by a phase per pair that
        # cancels in conj(E w_c)ᵀ D E ν0 and in conj(E) D E ν0: no phase needed here
        (d1, v1) = pieces[0]
        tpause = pieces[1][0] if len(pieces) == 3 else 0.0
        # Y[:, (g, c, a)] = E_{g,a} w_c  (one action per compartment and pair)
        x0 = red.W.to(ctype)[:, None, :, None].expand(k, G, ncmpt, C).reshape(k, -1)
        Y = expmv(v1, d1, x0, ncmpt).reshape(k, G, ncmpt, C)
        progress.update(1)
        x1 = (Y * red.rho.to(ctype)[None, None, :, None]).sum(2)  # E ν0, (k, G, C)
        z = red.pause(tpause, x1.reshape(k, G * C))  # D E ν0
        progress.update(1)
        sig = (Y.conj() * z.reshape(k, G, 1, C)).sum(0)  # conj(E w_c)ᵀ D E ν0, (G, c, C)
        nu = None
        if want_nu:
            nu = expmv(v1, d1, z.conj()).conj().reshape(k, G, C)
        progress.update(1)
        return sig.permute(1, 0, 2), nu
    x = (red.W.to(ctype) @ red.rho.to(ctype))[:, None].expand(k, G * C).contiguous()
    area = 0.0  # ∫f dt of the pieces (a (3,) tensor for a vector profile), µs
    for dt, v in pieces:
        if _is_zero(v):
            x = red.pause(dt, x)
        else:
            x = expmv(v, dt, x)
            area = area + dt * v
        progress.update(1)
    # each piece's exp(−dt K) about the origin is the one about the centroid m times the
    # column phase exp(−i q f dt u·m); these commute: one phase in total (≈ 1 at the echo)
    if isinstance(area, torch.Tensor):
        x = x * red.phase(area.to(red.A)[None, :], q[None, :], 1.0)
    elif area != 0.0:
        x = x * red.phase(dirs.to(red.A), q[None, :].expand(G, C), area)
    sig = red.W.to(ctype).T @ x  # (ncmpt, GC)
    return sig.reshape(ncmpt, G, C), (x.reshape(k, G, C) if want_nu else None)


def solve_mf(
    model: Model,
    experiment: Experiment,
    *,
    length_scale: float | None = None,
    neig_max: int = 400,
    lap: LaplaceEig | None = None,
    ninterval: int = 500,
    return_magnetization: bool = False,
    backend: str = "auto",
    expm_tol: float = 1e-10,
    quiet: bool = False,
) -> Result:
    """Matrix-formalism signals for every amplitude, sequence and direction of an experiment.

    Parameters
    ----------
    model : Model
    experiment : Experiment
    length_scale : float, µm, optional
        Smallest length scale of the eigenbasis (computed here unless ``lap`` is given; with
        ``lap`` it truncates that basis).
    neig_max : int, default 400
        Mode cap when the basis is computed here.
    lap : LaplaceEig, optional
        A basis from :func:`compute_laplace_eig` to reuse.
    ninterval : int, default 500
        Pieces over [0, TE] for profiles that are not piecewise constant (OGSE, custom,
        Waveform3D); piecewise-constant profiles are propagated exactly.
    return_magnetization : bool
        Also return ξ(TE) = Φν(TE) [namplitude, nsequence, ndirection, ndof].
    backend : eigensolver backend when ``lap`` is None.
    expm_tol : float, default 1e-10
        Relative accuracy of each reduced exponential action.
    quiet : bool

    Returns
    -------
    Result
        ``signal`` [ncompartment, namplitude, nsequence, ndirection] (complex, µm³),
        ``signal_allcmpts``, ``initial_signal`` Σρ_i|Ω_i|, ``method="mf"``, timings and info
        (number of modes, length scale, eigensolver).

    Notes
    -----
    Cost: the eigen-decomposition (see :func:`compute_laplace_eig`), 4 sparse projections
    ΦᵀXΦ, then per sequence one batched Chebyshev series of degree ~sqrt(δ·λ_max·25) per
    exponential over all (amplitude, direction) pairs (each term: one real (2·npair×k)·(k×k)
    product per direction without derivatives, one (k×3k)·(3k×2·npair) product with them).
    Differentiable in ``mesh.points``, D, κ, T2, ρ and the experiment's tensors.
    """
    if not isinstance(experiment, Experiment):
        raise SetupError(f"experiment must be an Experiment, got {type(experiment).__name__}")
    if isinstance(ninterval, bool) or not isinstance(ninterval, int) or ninterval < 1:
        raise SetupError(f"ninterval must be a positive integer, got {ninterval!r}")
    warn_unequal_density(model)
    t0 = time.perf_counter()
    if lap is None:
        lap = compute_laplace_eig(
            model, length_scale=length_scale, neig_max=neig_max, backend=backend, quiet=quiet
        )
    elif length_scale is not None:
        lap = lap.truncate(length_scale)
    t_eig = time.perf_counter() - t0
    fem = lap.fem if lap.model is model else assemble(model)
    if fem.ndof != lap.funcs.shape[0]:
        raise SetupError(
            f"lap has {lap.funcs.shape[0]} dofs but the model has {fem.ndof}: wrong mesh"
        )
    t1 = time.perf_counter()
    phi = lap.funcs
    red = _reduce(model, fem, phi)
    t_red = time.perf_counter() - t1
    ns = experiment.nsequence
    q_all = experiment.qvalues.to(phi.dtype)
    dirs = experiment.directions.to(phi.dtype)
    sigs, nus = [], []
    t2 = time.perf_counter()
    nsteps = sum(
        3 if _pgse_like(_pieces(s, ninterval)[0]) else len(_pieces(s, ninterval)[0])
        for s in experiment.sequences
    )
    with tqdm(total=nsteps, desc="solve_mf", disable=quiet, leave=False) as bar:
        for s, seq in enumerate(experiment.sequences):
            sig, nu = _propagate_sequence(
                red, seq, q_all[:, s], dirs, ninterval, return_magnetization, expm_tol, bar
            )
            sigs.append(sig)  # (ncmpt, G, namp)
            nus.append(nu)
    t_prop = time.perf_counter() - t2
    ndir = experiment.ndirection
    signal = torch.stack(
        [sg.expand(sg.shape[0], ndir, sg.shape[2]) if sg.shape[1] == 1 else sg for sg in sigs], 2
    )  # (ncmpt, G, nseq, namp)
    signal = signal.permute(0, 3, 2, 1)  # (ncmpt, namp, nseq, ndir)
    mag = None
    if return_magnetization:
        mags = []
        for nu in nus:
            m = torch.einsum("nk,kga->agn", phi.to(nu.dtype), nu)  # (namp, G, ndof)
            mags.append(m.expand(m.shape[0], ndir, m.shape[2]) if m.shape[1] == 1 else m)
        mag = torch.stack(mags, 1)
    return Result(
        signal=signal,
        signal_allcmpts=signal.sum(0),
        initial_signal=(model.density * fem.volumes).sum(),
        method="mf",
        magnetization=mag,
        timings={"eig": t_eig, "reduce": t_red, "propagate": t_prop},
        info={
            "nmode": lap.nmode,
            "eiglim": lap.eiglim,
            "length_scale_min": float(lap.length_scales[-1]) if lap.nmode else math.inf,
            "eig_backend": lap.info.backend,
            "ninterval": ninterval,
            "nsequence": ns,
        },
        experiment=experiment,
    )


# ------------------------------------------------------------------ effective tensor, MF-GA
def compute_mf_diffusion_tensor(
    model: Model,
    sequences: Sequence | list[Sequence] | Experiment,
    *,
    length_scale: float | None = None,
    neig_max: int = 400,
    lap: LaplaceEig | None = None,
    backend: str = "auto",
    quiet: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MF effective diffusion tensors D = a·j(L)·aᵀ/|Ω| (SpinDoctor's MF-HADC).

    ``a = X M Φ`` holds the first moments ∫ x φ_n of the eigenfunctions (restricted to a
    compartment for its tensor), ``L = Φᵀ(K+Q)Φ`` and j is the sequence's MF function
    (:meth:`Sequence.j`), applied as a matrix function of L (exact derivative also for
    degenerate eigenvalues).

    Parameters
    ----------
    model : Model
    sequences : Sequence, list of Sequence or Experiment
    length_scale, neig_max, lap, backend, quiet : as :func:`solve_mf`

    Returns
    -------
    tensors : (ncompartment, nsequence, 3, 3) tensor, µm²/µs
    tensors_allcmpts : (nsequence, 3, 3) tensor, µm²/µs
        With a over all dofs and |Ω| the total volume (the volume-weighted mean of the
        compartment tensors when the interfaces are impermeable).
    """
    seqs = _sequence_list(sequences)
    if lap is None:
        lap = compute_laplace_eig(
            model, length_scale=length_scale, neig_max=neig_max, backend=backend, quiet=quiet
        )
    elif length_scale is not None:
        lap = lap.truncate(length_scale)
    fem = lap.fem if lap.model is model else assemble(model)
    phi = lap.funcs
    L = project(_symmetric_stiffness(fem), phi)
    x = model.mesh.points[fem.fem.dof_node].to(phi.dtype)  # (ndof, 3)
    mx = fem.M.matvec(x)  # (ndof, 3)
    onehot = torch.nn.functional.one_hot(fem.dof_compartment, model.ncompartment).to(phi.dtype)
    a_c = torch.einsum("nd,nc,nk->cdk", mx, onehot, phi)  # (ncmpt, 3, k)
    a_all = a_c.sum(0)
    vol = fem.volumes
    out_c, out_all = [], []
    for seq in seqs:
        jL = diag_matrix_function(L, seq.j)
        out_c.append(torch.einsum("cdk,kl,cel->cde", a_c, jL, a_c) / vol[:, None, None])
        out_all.append(a_all @ jL @ a_all.T / vol.sum())
    return torch.stack(out_c, 1), torch.stack(out_all, 0)


def _sequence_list(sequences) -> list[Sequence]:
    if isinstance(sequences, Experiment):
        return list(sequences.sequences)
    if isinstance(sequences, Sequence):
        return [sequences]
    seqs = list(sequences)
    for i, s in enumerate(seqs):
        if not isinstance(s, Sequence):
            raise SetupError(f"sequences[{i}] must be a Sequence, got {type(s).__name__}")
    return seqs


def solve_mfga(
    model: Model,
    experiment: Experiment,
    *,
    length_scale: float | None = None,
    neig_max: int = 400,
    lap: LaplaceEig | None = None,
    backend: str = "auto",
    quiet: bool = False,
) -> Result:
    """MF Gaussian-approximation signal S_c = ρ_c|Ω_c| exp(−b·uᵀD_c u) (SpinDoctor's
    ``compute_mfga_signal``; no T2).

    Returns
    -------
    Result (method "mfga") with ``info["adc"]`` (ncompartment, nsequence, ndirection) and
    ``info["adc_allcmpts"]`` (nsequence, ndirection) in µm²/µs, ``info["tensors"]``.
    """
    if not isinstance(experiment, Experiment):
        raise SetupError(f"experiment must be an Experiment, got {type(experiment).__name__}")
    t0 = time.perf_counter()
    Dc, Dall = compute_mf_diffusion_tensor(
        model,
        experiment,
        length_scale=length_scale,
        neig_max=neig_max,
        lap=lap,
        backend=backend,
        quiet=quiet,
    )
    u = experiment.directions.to(Dc.dtype)
    adc = torch.einsum("id,csde,ie->csi", u, Dc, u)  # (ncmpt, nseq, ndir)
    adc_all = torch.einsum("id,sde,ie->si", u, Dall, u)
    b = experiment.bvalues.to(Dc.dtype)  # (namp, nseq)
    fem_vol = lap.fem.volumes if lap is not None and lap.model is model else None
    vol = fem_vol if fem_vol is not None else model.mesh.compartment_volumes().to(Dc.dtype)
    s0 = model.density.to(Dc.dtype) * vol  # (ncmpt,)
    sig = s0[:, None, None, None] * torch.exp(-b[None, :, :, None] * adc[:, None, :, :])
    sig = sig.to(torch.complex128 if sig.dtype == torch.float64 else torch.complex64)
    return Result(
        signal=sig,
        signal_allcmpts=sig.sum(0),
        initial_signal=s0.sum(),
        method="mfga",
        timings={"total": time.perf_counter() - t0},
        info={"adc": adc, "adc_allcmpts": adc_all, "tensors": Dc, "tensors_allcmpts": Dall},
        experiment=experiment,
    )
