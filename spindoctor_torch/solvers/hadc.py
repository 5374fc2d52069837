r"""Homogenized apparent diffusion coefficient (HADC), differentiable.

SpinDoctor's HADC model (Schiavi, Haddar, Li 2016; Li et al. 2019): in each compartment Ω_i,
with impermeable (Neumann) walls and interfaces, solve

.. math::

    M \dot\zeta = -K \zeta + F(t)\, G D u, \qquad \zeta(0) = 0,

and set :math:`D_{HADC}(u) = u^T D u - \int_0^{TE} F(t) h(t)\,dt / \int_0^{TE} F^2`,
:math:`h = \zeta^T G D u / |\Omega_i|`.

How it is computed here
-----------------------
*Shifted form.* For P1 elements ``K X_u = G D u`` holds exactly (X_u = the nodal values of
u·x; the compartment's D is constant), so ``ζ = F(t) X_u − η`` turns the system into

.. math::

    M \dot\eta = -K \eta + f(t)\, M X_u, \qquad \eta(0) = 0, \qquad
    D_{HADC}(u) = \frac{\int_0^{TE} F(t)\, \eta^T G D u \, dt}{|\Omega_i| \int_0^{TE} F^2},

the same semi-discrete problem without the cancellation ``uᵀDu − (uᵀDu − D_HADC)`` (at long
times D_HADC is a few % of uᵀDu, which would cost two digits). As η is linear in u, three
right-hand sides (u = e_x, e_y, e_z) give the whole effective tensor
:math:`D^{eff}_i = \mathrm{sym}(T_i D_i)/\int F^2` and every direction is then free:
``adc = uᵀ D_eff u``.

*Time stepping.* Crank-Nicolson on a grid aligned with the sequence's breakpoints
(``sequence.intervals``), forcing integrated exactly over each step (``(F(t+h) − F(t)) M X``),
and the F-weighted output integral by the trapezoidal rule on the same grid: a consistent
second-order discretization whose error expands in even powers of the step. Two grids (h and
h/2) are combined by Richardson extrapolation (fourth order); the grid is halved until two
successive estimates agree to ``rtol``/``atol``. One real sparse factorization of
``M + h/2 K`` per distinct step serves every compartment (the matrices are block diagonal) and
the three right-hand sides together.

*Gradients.* :class:`_ThetaIntegral` is a custom autograd function with the exact discrete
adjoint of the time stepping (backward in time with the transposed factorizations, states
recomputed from √N checkpoints), so gradients with respect to the mesh points (through M, K,
G, volumes and coordinates) and to the diffusivities are those of the computed number. Memory:
O(√N·ndof) per sequence; backward costs about twice the forward.

Permeability, outer-wall relaxivity and T2 are ignored (HADC is the impermeable model); only
scalar-profile sequences are supported (no :class:`~spindoctor_torch.sequences.Waveform3D`).

References
----------
* S. Schiavi, H. Haddar, J.-R. Li, "A macroscopic model for the diffusion MRI signal accounting
  for time-dependent diffusivity", SIAM J. Appl. Math. 76 (2016) 930-949.
* J.-R. Li et al., "SpinDoctor: a MATLAB toolbox for diffusion MRI simulation", NeuroImage 202
  (2019) 116120, doi:10.1016/j.neuroimage.2019.116120.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from tqdm.auto import tqdm

from ..errors import SetupError, SolverError, SpinDoctorWarning
from ..experiment import Experiment
from ..fem.assemble import FEMatrices, assemble
from ..linalg.solve import SUPERLU_OPTIONS
from ..model import Model
from ..sequences import Sequence

__all__ = ["HADCResult", "solve_hadc", "hadc_tensors"]

_BASE_STEPS = 32  # steps over TE on the coarsest grid (split over the intervals by length)
_MIN_STEPS_PER_INTERVAL = 2


@dataclass
class HADCResult:
    """Output of :func:`solve_hadc`.

    Attributes
    ----------
    adc : (ncompartment, nsequence, ndirection) tensor, µm²/µs
        D_HADC per compartment, sequence and direction of the experiment.
    adc_allcmpts : (nsequence, ndirection) tensor, µm²/µs
        Compartment ADCs weighted by ρ_i|Ω_i| (SpinDoctor's ``adc_allcmpts``).
    tensor : (ncompartment, nsequence, 3, 3) tensor, µm²/µs
        Effective (homogenized) diffusion tensors, ``adc = uᵀ tensor u`` for any unit u.
    error_estimate : (ncompartment, nsequence) tensor, µm²/µs
        Estimated time-discretization error of ``tensor`` (Frobenius norm): the smaller of
        |T(h/2) − T(h)|/3 (the error of the finer Crank-Nicolson grid) and the change between
        the last two extrapolations. Both overestimate the error of the returned
        (extrapolated) tensor, usually by orders of magnitude. Space (mesh) error is not
        included.
    timings : dict[str, float]
        Wall times in seconds: ``assembly``, ``solve`` and ``total``.
    info : dict
        ``steps`` (per sequence: steps of the finest grid), ``levels`` (grid halvings),
        ``rtol``, ``atol``.
    """

    adc: torch.Tensor
    adc_allcmpts: torch.Tensor
    tensor: torch.Tensor
    error_estimate: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ time grid
@dataclass(frozen=True)
class _Grid:
    """A time grid aligned with the breakpoints of a sequence.

    Attributes
    ----------
    step : (N,) step lengths h_m, µs
    force : (N,) F(t_{m+1}) − F(t_m) (exact ∫ f over the step), µs
    weight : (N+1,) trapezoidal weights times F(t_m), µs²
    step_group : (N,) index into ``steps`` of the distinct step of each step
    steps : distinct step lengths (one factorization each)
    """

    step: np.ndarray
    force: np.ndarray
    weight: np.ndarray
    step_group: np.ndarray
    steps: tuple[float, ...]

    @property
    def nstep(self) -> int:
        return int(self.step.shape[0])


def _interval_counts(seq: Sequence, nbase: int) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints (without zero-length intervals) and step counts per interval."""
    edges = np.asarray(seq.intervals, dtype=np.float64)
    lengths = np.diff(edges)
    keep = lengths > 1e-12 * seq.echotime
    lengths = lengths[keep]
    starts = edges[:-1][keep]
    counts = np.maximum(
        _MIN_STEPS_PER_INTERVAL, np.ceil(nbase * lengths / lengths.sum()).astype(np.int64)
    )
    return np.concatenate([starts, [starts[-1] + lengths[-1]]]), counts


def _make_grid(seq: Sequence, edges: np.ndarray, counts: np.ndarray) -> _Grid:
    lengths = np.diff(edges)
    h_int = lengths / counts
    # Intervals of equal length share a step (and a factorization).
    keys = np.round(h_int / seq.echotime, 12)
    uniq, inverse = np.unique(keys, return_inverse=True)
    steps = tuple(float(h_int[np.flatnonzero(inverse == g)[0]]) for g in range(len(uniq)))
    times = np.concatenate(
        [a + h * np.arange(n) for a, h, n in zip(edges[:-1], h_int, counts)] + [edges[-1:]]
    )
    step = np.repeat(h_int, counts)
    group = np.repeat(inverse, counts)
    F = seq.F(torch.as_tensor(times, dtype=torch.float64)).detach().cpu().numpy()
    F = F.astype(np.float64).reshape(-1)
    trap = np.zeros(times.shape[0])
    trap[:-1] += step / 2
    trap[1:] += step / 2
    return _Grid(
        step=step,
        force=np.diff(F),
        weight=trap * F,
        step_group=group,
        steps=steps,
    )


# ------------------------------------------------------------------ propagation with adjoint
class _Stepper:
    """Crank-Nicolson propagation of ``M η' = −K η + f(t) B`` on a :class:`_Grid` (NumPy,
    CPU), with the transposed steps for the adjoint."""

    def __init__(self, m: np.ndarray, k: np.ndarray, crow, cols, n: int, grid: _Grid):
        self.grid = grid
        self.n = n
        self.lu = []
        self.rhs = []  # P_h = M − h/2 K
        self.rhs_t = []
        for h in grid.steps:
            a = sp.csr_matrix((m + 0.5 * h * k, cols, crow), shape=(n, n)).tocsc()
            try:
                self.lu.append(spla.splu(a, **SUPERLU_OPTIONS))
            except RuntimeError as err:
                raise SolverError(f"HADC: factorization of M + h/2 K failed: {err}") from err
            p = sp.csr_matrix((m - 0.5 * h * k, cols, crow), shape=(n, n))
            self.rhs.append(p)
            self.rhs_t.append(p.T.tocsr())

    def step(self, i: int, eta: np.ndarray, b: np.ndarray) -> np.ndarray:
        g = self.grid.step_group[i]
        return self.lu[g].solve(self.rhs[g] @ eta + self.grid.force[i] * b)

    def adjoint_solve(self, i: int, lam: np.ndarray) -> np.ndarray:
        return self.lu[self.grid.step_group[i]].solve(np.asfortranarray(lam), trans="T")

    def adjoint_rhs(self, i: int, mu: np.ndarray) -> np.ndarray:
        return self.rhs_t[self.grid.step_group[i]] @ mu


class _ThetaIntegral(torch.autograd.Function):
    """``W = Σ_m ω_m η_m`` for the Crank-Nicolson solution η of ``M η' = −K η + f(t) B``.

    Forward: ``(M + h/2 K) η_{m+1} = (M − h/2 K) η_m + (F_{m+1} − F_m) B``, η_0 = 0.

    Backward (exact discrete adjoint, Ḡ = ∂L/∂W): λ_N = ω_N Ḡ and, for m = N−1 … 0,
    μ = (M + h/2 K)⁻ᵀ λ_{m+1}, λ_m = ω_m Ḡ + (M − h/2 K)ᵀ μ, with

    * ∂L/∂B += (F_{m+1} − F_m) μ,
    * ∂L/∂M[r, c] += −μ[r]·(η_{m+1} − η_m)[c],
    * ∂L/∂K[r, c] += −(h/2) μ[r]·(η_{m+1} + η_m)[c],

    on the pattern only (O(nnz) memory). States are recomputed from checkpoints every ⌈√N⌉
    steps. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, m_values, k_values, b, pattern, grid):
        crow = pattern.crow_indices().cpu().numpy()
        cols = pattern.cols.cpu().numpy()
        n = pattern.n
        m_np = m_values.detach().cpu().numpy().astype(np.float64)
        k_np = k_values.detach().cpu().numpy().astype(np.float64)
        b_np = np.asfortranarray(b.detach().cpu().numpy().astype(np.float64))
        stepper = _Stepper(m_np, k_np, crow, cols, n, grid)
        nstep = grid.nstep
        seg = max(1, math.isqrt(nstep - 1) + 1)
        keep = any(ctx.needs_input_grad[:3])
        eta = np.zeros((n, b_np.shape[1]), order="F")
        w = np.zeros_like(eta)
        checkpoints = [eta.copy()]
        for i in range(nstep):
            eta = stepper.step(i, eta, b_np)
            w += grid.weight[i + 1] * eta
            if keep and (i + 1) % seg == 0 and i + 1 < nstep:
                checkpoints.append(eta.copy())
        if keep:
            ctx.stepper = stepper
            ctx.checkpoints = checkpoints
            ctx.seg = seg
            ctx.b = b_np
            ctx.rows = pattern.rows.cpu().numpy()
            ctx.cols = cols
        return torch.as_tensor(w, dtype=b.dtype, device=b.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_w):
        stepper: _Stepper = ctx.stepper
        grid = stepper.grid
        rows, cols = ctx.rows, ctx.cols
        gw = np.asfortranarray(grad_w.detach().cpu().numpy().astype(np.float64))
        nstep, seg = grid.nstep, ctx.seg
        grad_m = np.zeros(rows.shape[0])
        grad_k = np.zeros(rows.shape[0])
        grad_b = np.zeros_like(gw)
        lam = grid.weight[nstep] * gw
        nseg = len(ctx.checkpoints)
        for s in range(nseg - 1, -1, -1):
            start = s * seg
            stop = min(nstep, start + seg)
            states = [ctx.checkpoints[s]]
            for i in range(start, stop):
                states.append(stepper.step(i, states[-1], ctx.b))
            for i in range(stop - 1, start - 1, -1):
                mu = stepper.adjoint_solve(i, lam)
                e0, e1 = states[i - start], states[i + 1 - start]
                mu_r = mu[rows]
                grad_m -= np.einsum("ij,ij->i", mu_r, (e1 - e0)[cols])
                grad_k -= (0.5 * grid.step[i]) * np.einsum("ij,ij->i", mu_r, (e1 + e0)[cols])
                grad_b += grid.force[i] * mu
                lam = grid.weight[i] * gw + stepper.adjoint_rhs(i, mu)
        dev, dt = grad_w.device, grad_w.dtype
        return (
            torch.as_tensor(grad_m, dtype=dt, device=dev) if ctx.needs_input_grad[0] else None,
            torch.as_tensor(grad_k, dtype=dt, device=dev) if ctx.needs_input_grad[1] else None,
            torch.as_tensor(grad_b, dtype=dt, device=dev) if ctx.needs_input_grad[2] else None,
            None,
            None,
        )


# --------------------------------------------------------------------------------- driver
def _check_tolerance(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise SetupError(f"{name} must be a finite non-negative number, got {value!r}")
    return float(value)


def _fem_inputs(model: Model, fe: FEMatrices):
    """Forcing B = M X (centred coordinates per compartment), output weights C = G D."""
    fp = fe.fem
    cmpt = fp.dof_compartment
    x = model.mesh.points[fp.dof_node]  # (ndof, 3)
    ncmpt = model.ncompartment
    # Centre each compartment (detached: a constant shift does not change the result, since
    # Σ_k G_k = ∫_∂Ω n = 0; it only limits round-off).
    xd = x.detach()
    count = torch.zeros(ncmpt, dtype=xd.dtype, device=xd.device).index_add(
        0, cmpt, torch.ones_like(xd[:, 0])
    )
    centre = torch.zeros(ncmpt, 3, dtype=xd.dtype, device=xd.device).index_add(0, cmpt, xd)
    centre = centre / count[:, None]
    b = fe.M.matvec(x - centre[cmpt])
    c = torch.einsum("kd,kde->ke", fe.G, model.diffusivity[cmpt])
    return b, c


def _compartment_tensors(
    w: torch.Tensor, c: torch.Tensor, cmpt: torch.Tensor, ncmpt: int
) -> torch.Tensor:
    """S_i[d, e] = Σ_{k ∈ Ω_i} W[k, d] C[k, e] → (ncompartment, 3, 3)."""
    outer = w[:, :, None] * c[:, None, :]
    out = torch.zeros(ncmpt, 3, 3, dtype=outer.dtype, device=outer.device)
    return out.index_add(0, cmpt, outer)


def hadc_tensors(
    model: Model,
    sequences: list[Sequence],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-12,
    nstep: int | None = None,
    max_refinement: int = 8,
    matrices: FEMatrices | None = None,
    quiet: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Effective HADC diffusion tensors for a list of sequences.

    Parameters
    ----------
    model : Model
    sequences : list of Sequence (scalar profiles)
    rtol, atol, nstep, max_refinement, matrices, quiet
        See :func:`solve_hadc`.

    Returns
    -------
    tensor : (ncompartment, nsequence, 3, 3) tensor, µm²/µs
    error_estimate : (ncompartment, nsequence) tensor, µm²/µs (detached)
    info : dict with ``steps``, ``levels`` (per sequence) and ``time_assembly``
    """
    rtol = _check_tolerance(rtol, "rtol")
    atol = _check_tolerance(atol, "atol")
    if rtol == 0 and atol == 0 and nstep is None:
        raise SetupError("rtol and atol cannot both be 0 (give nstep for a fixed grid)")
    if nstep is not None:
        if isinstance(nstep, bool) or not isinstance(nstep, int | np.integer) or nstep < 4:
            raise SetupError(f"nstep must be an integer ≥ 4, got {nstep!r}")
    if isinstance(max_refinement, bool) or not isinstance(max_refinement, int):
        raise TypeError(f"max_refinement must be an int, got {max_refinement!r}")
    if max_refinement < 1:
        raise SetupError(f"max_refinement must be ≥ 1, got {max_refinement}")
    for i, seq in enumerate(sequences):
        if not isinstance(seq, Sequence):
            raise TypeError(f"sequences[{i}] must be a Sequence, got {type(seq).__name__}")
        if seq.is_vector:
            raise SetupError(
                f"HADC needs a scalar gradient profile; sequences[{i}] = {seq!r} is a vector "
                "waveform"
            )

    t0 = time.perf_counter()
    fe = assemble(model) if matrices is None else matrices
    time_assembly = time.perf_counter() - t0
    ncmpt = model.ncompartment
    cmpt = fe.fem.dof_compartment
    b, c = _fem_inputs(model, fe)
    volumes = fe.volumes

    def tensors_on(grid: _Grid, scale: torch.Tensor) -> torch.Tensor:
        """Symmetrized compartment tensors (ncompartment, 3, 3) of one grid."""
        w = _ThetaIntegral.apply(fe.M.values, fe.K.values, b, fe.fem.pattern, grid)
        t = _compartment_tensors(w, c, cmpt, ncmpt) / scale
        return 0.5 * (t + t.transpose(1, 2))

    def norm(t: torch.Tensor) -> torch.Tensor:
        return torch.linalg.matrix_norm(t.detach())

    tensors, errors, steps, levels = [], [], [], []
    bar = tqdm(total=len(sequences), desc="HADC", disable=quiet, leave=False)
    for seq in sequences:
        bnq = float(seq.bvalue_no_q)
        if not bnq > 0:
            raise SetupError(f"HADC needs ∫F² > 0, got {bnq} µs³ for {seq!r}")
        scale = volumes[:, None, None] * bnq
        edges, counts = _interval_counts(seq, _BASE_STEPS if nstep is None else nstep // 2)
        # Richardson extrapolation of Crank-Nicolson: (4 T(h/2) − T(h)) / 3. Error estimates:
        # |T(h/2) − T(h)|/3 bounds the error of T(h/2); two successive extrapolations differ
        # by about the error of the coarser one. Both overestimate the returned value's error.
        prev = tensors_on(_make_grid(seq, edges, counts), scale)
        prev_ext = None
        last = 1 if nstep is not None else max_refinement
        for level in range(1, last + 1):
            bar.set_postfix(steps=int(counts.sum()) << level)
            cur = tensors_on(_make_grid(seq, edges, counts << level), scale)
            best = (4 * cur - prev) / 3
            err = norm(cur - prev) / 3
            if prev_ext is not None:
                err = torch.minimum(err, norm(best - prev_ext))
            if nstep is not None or bool((err <= rtol * norm(best) + atol).all()):
                break
            prev, prev_ext = cur, best
        else:
            warnings.warn(
                f"HADC for {seq!r} did not reach rtol={rtol:g}, atol={atol:g} after "
                f"{max_refinement} grid halvings; estimated error {err.max().item():.3g} "
                "µm²/µs",
                SpinDoctorWarning,
                stacklevel=3,
            )
        if not bool(torch.isfinite(best.detach()).all()):
            raise SolverError(f"HADC produced non-finite tensors for {seq!r}")
        tensors.append(best)
        errors.append(err)
        steps.append(int(counts.sum()) << level)
        levels.append(level)
        bar.update(1)
    bar.close()
    info = {"steps": steps, "levels": levels, "time_assembly": time_assembly}
    return torch.stack(tensors, dim=1), torch.stack(errors, dim=1), info


def solve_hadc(
    model: Model,
    experiment: Experiment,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-12,
    nstep: int | None = None,
    max_refinement: int = 8,
    matrices: FEMatrices | None = None,
    quiet: bool = False,
) -> HADCResult:
    r"""Homogenized ADC of every compartment, sequence and direction (SpinDoctor ``solve_hadc``).

    Solves, per compartment and with Neumann conditions on all of its boundary,
    ``M ζ' = −K ζ + F(t) G D u``, ζ(0) = 0, and returns
    ``D_HADC = uᵀDu − ∫F(t) h(t) dt / ∫F²`` with ``h = ζᵀ G D u / |Ω_i|`` (see the module
    docstring for the equivalent shifted form actually integrated).

    Parameters
    ----------
    model : Model
        Geometry and diffusivities (scalar or tensor per compartment, µm²/µs). Permeability,
        relaxivity, T2 are ignored: HADC is the impermeable, relaxation-free model.
    experiment : Experiment
        Sequences (scalar profiles) and directions; the amplitudes are not used.
    rtol, atol : float
        Relative and absolute (µm²/µs) tolerance on the effective tensors' time-discretization
        error (Frobenius norm). Default 1e-4 and 1e-12.
    nstep : int, optional
        Fixed grid: about ``nstep`` Crank-Nicolson steps over TE (split over the sequence
        intervals by length) plus one grid of half as many for the extrapolation. Overrides
        rtol/atol.
    max_refinement : int
        Maximum number of grid halvings (default 8, i.e. up to 32·2⁸ steps); a
        :class:`SpinDoctorWarning` is given when the tolerance is not met.
    matrices : FEMatrices, optional
        ``assemble(model)`` already computed (saves the assembly; not checked against
        ``model``).
    quiet : bool
        Hide the progress bar.

    Returns
    -------
    HADCResult
        ``adc`` (ncompartment, nsequence, ndirection) and ``adc_allcmpts`` (nsequence,
        ndirection) in µm²/µs, effective ``tensor`` (ncompartment, nsequence, 3, 3),
        ``error_estimate``, ``timings``, ``info``.

    Raises
    ------
    SetupError
        Vector (Waveform3D) sequences, bad tolerances or step counts.
    SolverError
        Factorization failure or non-finite results.

    Notes
    -----
    Cost per sequence: a few real factorizations of ``M + h/2 K`` (one per distinct step
    length and grid) and about 2·N sparse solves with 3 right-hand sides, N the steps of the
    finest grid (typically a few hundred at rtol 1e-4). The directions cost nothing extra.
    Differentiable with respect to ``model.mesh.points`` and ``model.diffusivity`` (exact
    discrete adjoint; the adaptive choice of the grid is not differentiated). CPU SciPy
    factorizations are used whatever the device of the tensors; results come back on it.

    References
    ----------
    Schiavi, Haddar, Li, SIAM J. Appl. Math. 76 (2016); Li et al. (2019),
    doi:10.1016/j.neuroimage.2019.116120.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a Model, got {type(model).__name__}")
    if not isinstance(experiment, Experiment):
        raise TypeError(f"experiment must be an Experiment, got {type(experiment).__name__}")
    t0 = time.perf_counter()
    tensor, error, info = hadc_tensors(
        model,
        experiment.sequences,
        rtol=rtol,
        atol=atol,
        nstep=nstep,
        max_refinement=max_refinement,
        matrices=matrices,
        quiet=quiet,
    )
    u = experiment.directions.to(device=tensor.device, dtype=tensor.dtype)
    adc = torch.einsum("nd,isde,ne->isn", u, tensor, u)
    weights = model.density * model.mesh.compartment_volumes()
    weights = (weights / weights.sum()).to(adc)
    adc_allcmpts = torch.einsum("i,isn->sn", weights, adc)
    total = time.perf_counter() - t0
    timings = {
        "assembly": info.pop("time_assembly"),
        "total": total,
    }
    timings["solve"] = total - timings["assembly"]
    info.update(rtol=rtol, atol=atol, nstep=nstep)
    return HADCResult(
        adc=adc,
        adc_allcmpts=adc_allcmpts,
        tensor=tensor,
        error_estimate=error,
        timings=timings,
        info=info,
    )
