r"""Bloch-Torrey PDE solver with exact discrete-adjoint gradients (``solve_btpde``).

The semi-discrete Bloch-Torrey equation of P1 finite elements (SpinDoctor's BTPDE),

.. math::

    M \dot\xi = -\bigl(K + Q + R + i\,q\,f(t)\,J(u)\bigr)\,\xi, \qquad \xi(0) = \rho,

is integrated to the echo time TE for every (amplitude, sequence, direction) of an
:class:`~spindoctor_torch.experiment.Experiment`; the signal of compartment i is
:math:`\int_{\Omega_i} \xi(TE)` (``FEMatrices.compartment_integrals``).

Methods
-------
``theta`` (piecewise-constant profiles: PGSE, DoublePGSE): the θ-method, Crank-Nicolson by
default, with a fixed number of steps per interval of constant gradient and one factorization
(or one preconditioner) per distinct interval matrix reused by every step, forward and
backward. The two lobes of a PGSE are complex conjugates: one factorization serves both.

``adaptive`` (any profile: OGSE, custom, Waveform3D): a stiffly accurate ESDIRK (third order,
L-stable; TR-BDF2 on request) with an embedded error estimate, ``rtol``/``atol`` as SpinDoctor's
ode15s (1e-4/1e-6, max norm), restarted at every breakpoint of the sequence; on larger meshes
the time-dependent step systems are solved by COCG with a shared real preconditioner.

The first moments are taken about the mean vertex c (``J_d − c_d M``): exact for the
semi-discrete system (``ξ = e^{−i q c·u F(t)} η``, and F(TE) = 0 for refocused sequences), it
halves the phase rotation the time stepping has to resolve.

A uniform relaxation rate ``r0 = min_i 1/T2_i`` is factored out exactly
(``ξ = e^{-r0 t} η``), so a single-T2 model gives exactly the factor ``exp(−TE/T2)``.

Gradients flow from the signals (and the magnetization) to ``mesh.points``, every tensor of the
:class:`~spindoctor_torch.model.Model` (D, κ, T2, ρ) and the experiment's amplitude and direction
tensors, through a custom autograd function implementing the discrete adjoint of the time
stepping (:mod:`._btpde_schemes`): exact for the discrete scheme, memory bounded by
checkpointing.

References
----------
J.-R. Li et al., "SpinDoctor: a MATLAB toolbox for diffusion MRI simulation", NeuroImage 202
(2019) 116120, doi:10.1016/j.neuroimage.2019.116120.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import SetupError
from ..experiment import Experiment
from ..fem.assemble import FEMatrices, assemble
from ..model import Model
from ..result import Result
from ._btpde_schemes import TABLEAUS, ESDIRKScheme, Sweep, ThetaScheme, _Piece
from ._btpde_system import PRECONDITIONERS, SOLVERS, BTSystem, SystemOptions

__all__ = [
    "solve_btpde",
    "SPLU_MAX_DOF",
    "SPLU_MAX_DOF_ADAPTIVE",
    "DEFAULT_STEPS_PER_INTERVAL",
]

METHODS = ("auto", "theta", "adaptive")

SPLU_MAX_DOF = 4000
"""``solver="auto"`` uses SuperLU up to this many dofs (CPU, θ-method), COCG above (see
``benchmarks/bench_btpde.py`` for the measured cross-over)."""

SPLU_MAX_DOF_ADAPTIVE = 1000
"""The same for the adaptive method, which refactorizes every stage of every step."""

AMG_MIN_DOF = 5000
"""``preconditioner="auto"`` uses AMG (if pyamg is installed) from this many dofs on, Jacobi
below (at 10k dofs AMG needed 3x fewer COCG iterations, at 50k 8x)."""

DEFAULT_STEPS_PER_INTERVAL = 50
"""θ-method steps per interval of constant gradient when neither ``timestep`` nor ``nsteps``
is given (Crank-Nicolson time error on SpinDoctor's sphere, b ≤ 4000: 4e-6 relative)."""

DEFAULT_MEMORY_BUDGET = 2**30
"""Bytes of stored states per sequence before checkpoints are thinned."""


# ------------------------------------------------------------------------------ validation
def _check_options(
    theta, timestep, nsteps, method, rtol, atol, solver, preconditioner, linear_rtol, checkpoint
):
    if method not in METHODS:
        raise SetupError(f"method = {method!r}; allowed: {', '.join(METHODS)}")
    if solver not in ("auto",) + SOLVERS:
        raise SetupError(f"solver = {solver!r}; allowed: auto, {', '.join(SOLVERS)}")
    if preconditioner not in ("auto",) + PRECONDITIONERS:
        raise SetupError(
            f"preconditioner = {preconditioner!r}; allowed: auto, {', '.join(PRECONDITIONERS)}"
        )
    if not isinstance(theta, int | float) or not 0.5 <= float(theta) <= 1.0:
        raise SetupError(
            f"theta = {theta!r} must lie in [0.5, 1] (0.5 Crank-Nicolson, 1 implicit "
            "Euler; smaller values are unstable for diffusion)"
        )
    if timestep is not None and nsteps is not None:
        raise SetupError("give either timestep (µs) or nsteps (per interval), not both")
    if timestep is not None and (
        not isinstance(timestep, int | float) or not math.isfinite(timestep) or timestep <= 0
    ):
        raise SetupError(f"timestep = {timestep!r} must be a positive number of µs")
    if nsteps is not None and (
        isinstance(nsteps, bool) or not isinstance(nsteps, int) or nsteps < 1
    ):
        raise SetupError(f"nsteps = {nsteps!r} must be a positive integer (steps per interval)")
    for name, v in (("rtol", rtol), ("atol", atol), ("linear_rtol", linear_rtol)):
        if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise SetupError(f"{name} = {v!r} must be a positive number")
    if checkpoint is not None and (
        isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or checkpoint < 1
    ):
        raise SetupError(f"checkpoint = {checkpoint!r} must be a positive integer or None")


def _check_inputs(model, experiment):
    if not isinstance(model, Model):
        raise TypeError(f"model must be a Model, got {type(model).__name__}")
    if not isinstance(experiment, Experiment):
        raise TypeError(f"experiment must be an Experiment, got {type(experiment).__name__}")
    pts = model.mesh.points
    if not bool(torch.isfinite(pts.detach()).all()):
        bad = int((~torch.isfinite(pts.detach())).any(dim=1).nonzero()[0, 0])
        raise SetupError(f"mesh.points[{bad}] = {pts[bad].tolist()} is not finite")
    if experiment.namplitude < 1 or experiment.nsequence < 1 or experiment.ndirection < 1:
        raise SetupError(
            f"empty experiment: namplitude = {experiment.namplitude}, nsequence = "
            f"{experiment.nsequence}, ndirection = {experiment.ndirection}"
        )
    norms = torch.linalg.vector_norm(experiment.directions.detach(), dim=1)
    if bool((norms <= 1e-12).any()):
        i = int((norms <= 1e-12).nonzero()[0])
        raise SetupError(f"experiment.directions[{i}] has zero length")
    q = experiment.qvalues.detach()
    if not bool(torch.isfinite(q).all()):
        raise SetupError(f"experiment.qvalues must be finite, got {q.tolist()}")


# ------------------------------------------------------------------------------ time grids
def _theta_pieces(seq, ncol_groups, timestep, nsteps, dtype, device) -> list[_Piece]:
    pieces = []
    for t0, t1, v in seq.constant_pieces():
        length = t1 - t0
        if nsteps is not None:
            n = nsteps
        elif timestep is not None:
            if timestep > length * (1 + 1e-12):
                raise SetupError(
                    f"timestep = {timestep:g} µs is larger than the interval [{t0:g}, {t1:g}] µs "
                    f"of {seq!r}; use a timestep ≤ {length:g} µs or nsteps"
                )
            n = max(1, math.ceil(length / timestep - 1e-9))
        else:
            n = DEFAULT_STEPS_PER_INTERVAL
        phi = torch.full((ncol_groups,), float(v), dtype=dtype, device=device)
        pieces.append(_Piece(float(t0), float(t1), int(n), phi))
    return pieces


def _adaptive_intervals(seq) -> list[tuple[float, float]]:
    br = [float(t) for t in seq.intervals]
    te = seq.echotime
    return [(a, b) for a, b in zip(br[:-1], br[1:]) if b - a > 1e-12 * te]


def _profile_function(seq, ncol_groups, dtype, device):
    """phi(t, a, b): the profile inside the interval (a, b), one value per G-matrix."""

    def phi(t: float, a: float, b: float) -> torch.Tensor:
        eps = 1e-9 * (b - a)
        tc = min(max(t, a + eps), b - eps)
        v = seq.f(torch.tensor(tc, dtype=torch.float64))
        if seq.is_vector:
            return v.reshape(3).to(dtype=dtype, device=device)
        return torch.full((ncol_groups,), float(v), dtype=dtype, device=device)

    return phi


# ------------------------------------------------------------------------- autograd sweep
@dataclass
class _SweepConfig:
    pattern: object
    columns: list
    scaling: torch.Tensor | None
    options: SystemOptions
    make_scheme: object
    store: bool
    checkpoint: int | None
    memory_budget: int
    snapshot_times: list | None
    quiet: bool
    desc: str
    timings: dict
    record: dict = field(default_factory=dict)


class _BTPDESweep(torch.autograd.Function):
    """ξ(TE) of one sequence's batch; backward = the discrete adjoint sweep."""

    @staticmethod
    def forward(ctx, cfg: _SweepConfig, M, A0, G, q, xi0):
        system = BTSystem(
            cfg.pattern,
            M.detach(),
            A0.detach(),
            G.detach(),
            cfg.columns,
            q.detach(),
            cfg.scaling,
            cfg.options,
        )
        scheme = cfg.make_scheme()
        bar = tqdm(total=scheme_total(scheme), desc=cfg.desc, disable=cfg.quiet, leave=False)
        sweep = Sweep(
            system,
            scheme,
            store=cfg.store,
            checkpoint=cfg.checkpoint,
            memory_budget=cfg.memory_budget,
            snapshot_times=cfg.snapshot_times,
            progress=bar.update,
        )
        y0 = system.to_internal(xi0.detach().to(system.dtype))
        y0 = y0.unsqueeze(1).expand(system.n, system.k).contiguous()
        try:
            y = system.to_original(sweep.forward(y0))
        finally:
            bar.close()
        cfg.record.update(
            nsteps=scheme.nsteps,
            times=list(scheme.times),
            rejected=getattr(scheme, "rejected", 0),
            snapshots={t: system.to_original(v) for t, v in sweep.snapshots.items()},
            checkpoint_every=sweep.k,
            stored_states=len(sweep.checkpoints),
        )
        ctx.sweep = sweep if cfg.store else None
        ctx.cfg = cfg
        ctx.xi0_complex = xi0.is_complex()
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        sweep, cfg = ctx.sweep, ctx.cfg
        if sweep is None:
            raise RuntimeError(
                "solve_btpde's backward pass can run only once (its checkpoints and "
                "factorizations are freed after it); run solve_btpde again for a second pass"
            )
        t0 = time.perf_counter()
        need = ctx.needs_input_grad
        bar = tqdm(
            total=scheme_total(sweep.scheme),
            desc=cfg.desc + " (adjoint)",
            disable=cfg.quiet,
            leave=False,
        )
        try:
            g = sweep.sys.to_internal(grad_y.contiguous())
            acc, g0 = sweep.backward(g, any(need[1:5]), bar.update)
        finally:
            bar.close()
        g0 = sweep.sys.to_original(g0)
        back = sweep.sys.values_to_original
        ctx.sweep = None  # free checkpoints and factorizations
        gxi0 = None
        if need[5]:
            gxi0 = g0.sum(1)
            if not ctx.xi0_complex:
                gxi0 = gxi0.real
        out = (
            None,
            back(acc.gM) if need[1] else None,
            back(acc.gA0) if need[2] else None,
            back(acc.gG) if need[3] else None,
            acc.gq if need[4] else None,
            gxi0,
        )
        cfg.timings["backward"] = cfg.timings.get("backward", 0.0) + time.perf_counter() - t0
        cfg.record["backward_stored_states_peak"] = sweep.peak_states
        return out


def _shift_phase(seq, center, u_cols, qcols, times) -> torch.Tensor:
    """(nt, k) factor exp(−i q c·u F(t)) undoing the shift of the moments to the centre c."""
    F = seq.F(times.detach().cpu()).to(device=center.device, dtype=center.dtype)
    if seq.is_vector:
        cf = F.reshape(-1, 3) @ center  # (nt,)
        arg = cf[:, None] * qcols[None, :]
    else:
        cu = u_cols @ center  # (k,)
        arg = F.reshape(-1)[:, None] * (cu * qcols)[None, :]
    return torch.exp(-1j * arg)


def _has_pyamg() -> bool:
    try:
        import pyamg  # noqa: F401
    except ImportError:
        return False
    return True


def scheme_total(scheme) -> float:
    """Progress-bar total: steps (θ-method) or µs (adaptive)."""
    return scheme.progress_total()


# ------------------------------------------------------------------------------ public API
def solve_btpde(
    model: Model,
    experiment: Experiment,
    *,
    theta: float = 0.5,
    timestep: float | None = None,
    nsteps: int | None = None,
    method: str = "auto",
    rtol: float = 1e-4,
    atol: float = 1e-6,
    solver: str = "auto",
    preconditioner: str = "auto",
    linear_rtol: float = 1e-10,
    integrator: str = "esdirk3",
    step_times=None,
    checkpoint: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    matrices: FEMatrices | None = None,
    return_magnetization: bool = False,
    snapshot_times=None,
    quiet: bool = False,
) -> Result:
    r"""Solve the Bloch-Torrey PDE for every amplitude, sequence and direction of an experiment.

    Parameters
    ----------
    model : Model
        Mesh and PDE coefficients (D µm²/µs, κ µm/µs, T2 µs, ρ).
    experiment : Experiment
        Sequences, amplitudes (q = γg, rad/(µs·µm)) and unit directions.
    theta : float in [0.5, 1], default 0.5
        θ of the θ-method (0.5 Crank-Nicolson, 1 implicit Euler).
    timestep : float, µs, optional
        θ-method step; each interval of constant gradient gets ``ceil(length/timestep)``
        equal steps. Must not exceed any interval.
    nsteps : int, optional
        θ-method steps per interval (instead of ``timestep``). Default (neither given):
        :data:`DEFAULT_STEPS_PER_INTERVAL`.
    method : {"auto", "theta", "adaptive"}
        "auto": θ-method when every sequence is piecewise constant, else adaptive ESDIRK.
    rtol, atol : float
        Error tolerances of the adaptive method (relative; absolute, in units of ρ).
    solver : {"auto", "splu", "cocg"}
        Linear solver of the step systems: SciPy SuperLU (tuned) or COCG with a shared real
        preconditioner (any device). "auto": SuperLU on CPU for the θ-method up to
        :data:`SPLU_MAX_DOF` dofs (adaptive: :data:`SPLU_MAX_DOF_ADAPTIVE`), COCG otherwise.
    preconditioner : {"auto", "jacobi", "amg", "factor"}
        COCG preconditioner: complex Jacobi, smoothed-aggregation AMG (pyamg hierarchy, torch
        cycle) or an exact real factorization of ``M + c(K+Q+R)``. "auto": AMG from
        :data:`AMG_MIN_DOF` dofs on (if pyamg is installed), Jacobi below.
    linear_rtol : float, default 1e-10
        COCG relative residual tolerance (also that of the adjoint solves).
    integrator : {"esdirk3", "trbdf2"}
        Adaptive scheme: ESDIRK3(2)4L[2]SA (default) or TR-BDF2.
    step_times : list (one per sequence) of increasing times, µs, optional
        Replay this step sequence with the adaptive method, without error control (e.g.
        ``previous_result.info["step_times"]``): the discretization then no longer depends
        on the parameters, so losses are smooth functions of them (optimization, finite
        differences). Must start at 0, end at TE and contain every breakpoint.
    checkpoint : int, optional
        Keep every K-th state for the backward sweep (segments recomputed). Default: every
        state while they fit ``memory_budget`` bytes, then thinned by halving.
    memory_budget : int, bytes
    matrices : FEMatrices, optional
        ``assemble(model)`` if already computed.
    return_magnetization : bool
        Also return ξ(TE) (differentiable) as ``Result.magnetization``.
    snapshot_times : sequence of float, µs, optional
        Times in [0, min TE] where the magnetization is recorded (linear interpolation between
        steps, detached) in ``Result.snapshots``.
    quiet : bool
        No progress bars.

    Returns
    -------
    Result
        ``signal`` complex [ncompartment, namplitude, nsequence, ndirection] (µm³),
        ``signal_allcmpts`` [namplitude, nsequence, ndirection], ``initial_signal`` Σρ|Ω|,
        ``magnetization`` [namplitude, nsequence, ndirection, ndof] if requested, ``snapshots``
        {"times": (nt,), "magnetization": [namplitude, nsequence, ndirection, nt, ndof]},
        ``timings`` (assembly, forward; backward is added when it runs), ``info`` (method,
        solver, steps, factorizations, COCG iterations, checkpointing).

    Raises
    ------
    SetupError
        Bad options, an empty experiment, zero-length directions, non-finite points, a
        timestep larger than an interval, method="theta" with a non-constant profile.

    Notes
    -----
    Cost (θ-method): one factorization per distinct interval matrix and per (amplitude,
    direction) with SuperLU, or one real preconditioner per distinct step with COCG, plus one
    solve per step for all columns together. The backward pass costs one adjoint solve per step
    (plus one recomputed step per step when states were checkpointed) and a few sampled
    products per step to form the gradients at the matrix nonzeros.
    """
    _check_options(
        theta, timestep, nsteps, method, rtol, atol, solver, preconditioner, linear_rtol, checkpoint
    )
    if integrator not in TABLEAUS:
        raise SetupError(f"integrator = {integrator!r}; allowed: {', '.join(TABLEAUS)}")
    if step_times is not None and len(step_times) != experiment.nsequence:
        raise SetupError(
            f"step_times must hold one list of times per sequence ({experiment.nsequence}), "
            f"got {len(step_times)}"
        )
    _check_inputs(model, experiment)
    seqs = experiment.sequences
    all_constant = all(s.is_constant for s in seqs)
    if method == "auto":
        method = "theta" if all_constant else "adaptive"
    if method == "theta" and not all_constant:
        bad = next(s for s in seqs if not s.is_constant)
        raise SetupError(
            f"method='theta' needs piecewise-constant profiles (PGSE, DoublePGSE); {bad!r} is "
            "not: use method='adaptive'"
        )
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    mats = assemble(model) if matrices is None else matrices
    timings["assembly"] = time.perf_counter() - t_start
    device = mats.M.device
    dtype = mats.M.dtype
    ndof = mats.ndof
    if solver == "auto":
        limit = SPLU_MAX_DOF if method == "theta" else SPLU_MAX_DOF_ADAPTIVE
        solver = "splu" if device.type == "cpu" and ndof <= limit else "cocg"
    if preconditioner == "auto":
        preconditioner = "amg" if ndof >= AMG_MIN_DOF and _has_pyamg() else "jacobi"
    snap = None
    if snapshot_times is not None:
        snap = [float(t) for t in torch.as_tensor(snapshot_times, dtype=torch.float64).reshape(-1)]
        te_min = min(s.echotime for s in seqs)
        if any(not (0.0 <= t <= te_min) or not math.isfinite(t) for t in snap):
            raise SetupError(f"snapshot_times = {snap} must lie in [0, {te_min:g}] µs")

    # Matrices: A0 = K + Q + R − r0·M with the uniform relaxation rate factored out exactly.
    rates = 1.0 / model.relaxation.to(device=device, dtype=dtype)
    r0 = rates.min()
    A0 = mats.K.values + mats.Q.values + mats.R.values - r0 * mats.M.values
    Mv = mats.M.values
    xi0 = model.initial_magnetization().to(device=device, dtype=dtype)
    scaling = None
    rho = model.density.detach().to(device=device, dtype=dtype)
    if bool((rho > 0).all()):
        scaling = (1.0 / rho)[mats.dof_compartment]
    # First moments about the mean vertex c: J_d − c_d M. Exact for the semi-discrete system
    # (ξ = exp(−i q c·u F(t)) η) and about halves the phase speed the time stepping must
    # resolve. c is a smooth function of the points and is differentiated like the rest.
    center = model.mesh.points.to(device=device, dtype=dtype).mean(0)
    Jstack = torch.stack([j.values for j in mats.J]) - center[:, None] * Mv[None, :]  # (3, nnz)

    need_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (Mv, A0, Jstack, experiment.qvalues, experiment.directions, xi0)
    )
    namp, ndir = experiment.namplitude, experiment.ndirection
    options = SystemOptions(solver=solver, preconditioner=preconditioner, linear_rtol=linear_rtol)
    fields, records = [], []
    t_fwd = time.perf_counter()
    for s, seq in enumerate(seqs):
        q_s = experiment.qvalues[:, s].to(device=device, dtype=dtype)
        if seq.is_vector:
            G = Jstack
            columns = [slice(0, namp)] * 3
            qcols = q_s
            ngroups = 3
            u_cols = None
        else:
            u = experiment.directions.to(device=device, dtype=dtype)
            G = u @ Jstack  # (ndir, nnz): J(u_m) = Σ_d u_md J_d
            columns = [slice(m * namp, (m + 1) * namp) for m in range(ndir)]
            qcols = q_s.repeat(ndir)
            ngroups = ndir
            u_cols = u.repeat_interleave(namp, dim=0)  # (k, 3)
        if method == "theta":
            pieces = _theta_pieces(seq, ngroups, timestep, nsteps, dtype, device)

            def make_scheme(pieces=pieces):
                return ThetaScheme(pieces, theta)
        else:
            intervals = _adaptive_intervals(seq)
            phi = _profile_function(seq, ngroups, dtype, device)

            frozen = None if step_times is None else [float(t) for t in step_times[s]]

            def make_scheme(intervals=intervals, phi=phi, frozen=frozen):
                return ESDIRKScheme(
                    intervals, phi, rtol, atol, TABLEAUS[integrator], frozen_times=frozen
                )

        cfg = _SweepConfig(
            pattern=mats.fem.pattern,
            columns=columns,
            scaling=scaling,
            options=options,
            make_scheme=make_scheme,
            store=need_grad,
            checkpoint=checkpoint,
            memory_budget=memory_budget,
            snapshot_times=snap,
            quiet=quiet,
            desc=f"btpde {type(seq).__name__} ({s + 1}/{len(seqs)})",
            timings=timings,
        )
        y = _BTPDESweep.apply(cfg, Mv, A0, G, qcols, xi0)  # (ndof, k)
        te = torch.tensor([seq.echotime], dtype=dtype, device=device)
        y = y * _shift_phase(seq, center, u_cols, qcols, te)[0]
        decay = torch.exp(-r0 * seq.echotime)
        if seq.is_vector:
            y = y.reshape(ndof, namp, 1)
        else:
            y = y.reshape(ndof, ndir, namp).transpose(1, 2)
        fields.append(y * decay)
        records.append(cfg.record)
        cfg.record["u_cols"], cfg.record["qcols"] = u_cols, qcols.detach()
    timings["forward"] = time.perf_counter() - t_fwd
    xi = torch.stack(fields, dim=2)  # (ndof, namp, nseq, ndir)
    signal = mats.compartment_integrals(xi)
    initial = (model.density.to(device=device, dtype=dtype) * mats.volumes).sum()

    snapshots = {}
    if snap:
        mags = []
        for seq, rec in zip(seqs, records):
            per = torch.stack([rec["snapshots"][t] for t in snap], dim=0)  # (nt, ndof, k)
            tt = torch.tensor(snap, dtype=dtype, device=device)
            decay = torch.exp(-r0.detach() * tt)
            phase = _shift_phase(seq, center, rec["u_cols"], rec["qcols"], tt)  # (nt, k)
            per = per * (decay[:, None] * phase)[:, None, :]
            if seq.is_vector:
                per = per.reshape(len(snap), ndof, namp, 1)
            else:
                per = per.reshape(len(snap), ndof, ndir, namp).transpose(2, 3)
            mags.append(per.permute(2, 3, 0, 1))  # (namp, ndir, nt, ndof)
        snapshots = {
            "times": torch.tensor(snap, dtype=dtype, device=device),
            "magnetization": torch.stack(mags, dim=1),
        }
    info = {
        "method": method,
        "theta": theta if method == "theta" else None,
        "rtol": rtol if method == "adaptive" else None,
        "atol": atol if method == "adaptive" else None,
        "solver": solver,
        "preconditioner": preconditioner if solver == "cocg" else None,
        "linear_rtol": linear_rtol if solver == "cocg" else None,
        "ndof": ndof,
        "nsteps": [r["nsteps"] for r in records],
        "rejected_steps": [r["rejected"] for r in records],
        "step_times": [r["times"] for r in records],
        "factorizations": options.stats["factorizations"],
        "solves": options.stats["solves"],
        "cocg_iterations": options.stats["iterations"],
        "checkpoint_every": [r["checkpoint_every"] for r in records],
        "relaxation_factored": float(r0.detach()),
    }
    return Result(
        signal=signal,
        signal_allcmpts=signal.sum(0),
        initial_signal=initial,
        method="btpde",
        magnetization=xi.permute(1, 2, 3, 0) if return_magnetization else None,
        snapshots=snapshots,
        timings=timings,
        info=info,
        experiment=experiment,
    )
