r"""Finite-pulse Karger model: compartment exchange with effective diffusion tensors.

One signal per compartment, S_i(t), obeys (SpinDoctor ``solve_karger``)

.. math::

    \frac{dS}{dt} = \Big[A - q^2 F(t)^2 \operatorname{diag}(u^T D^{eff}_i u)
                    - \operatorname{diag}(1/T_{2,i})\Big] S, \qquad S_i(0) = \rho_i |\Omega_i|,

with the exchange matrix A_ij = κ_ij|Γ_ij|/|Ω_j| (i ≠ j) and A_ii = −Σ_j κ_ij|Γ_ij|/|Ω_i|
(|Γ_ij| the total area of the interfaces between i and j). The effective tensors D^eff_i come
from the HADC model in ``ndirection`` directions of :func:`~spindoctor_torch.experiment.
unit_sphere` followed by :func:`~spindoctor_torch.postprocess.fit_tensor` (SpinDoctor's
procedure), unless given.

Time integration: the generator is constant where f = 0 (F constant: the pause of a PGSE or
OGSE), where one exact matrix exponential covers the whole piece; elsewhere the fourth-order
Magnus integrator with two Gauss-Legendre nodes,
``Ω = h/2 (A₁ + A₂) − (√3/12) h² [A₁, A₂]``, on ``nstep`` equal steps per interval. All
exponentials of a sequence (every step, amplitude and direction) are evaluated in one batched
:func:`torch.linalg.matrix_exp` and multiplied by a balanced product tree, so the whole solve
is a handful of tensor operations and is differentiable in κ, T2, ρ, the tensors and (through
areas, volumes and the HADC tensors) the mesh points.

References
----------
* J. Kärger, "NMR self-diffusion studies in heterogeneous systems", Adv. Colloid Interface Sci.
  23 (1985) 129-148.
* J.-R. Li et al., "SpinDoctor: a MATLAB toolbox for diffusion MRI simulation", NeuroImage 202
  (2019) 116120, doi:10.1016/j.neuroimage.2019.116120.
* S. Blanes, F. Casas, J. A. Oteo, J. Ros, "The Magnus expansion and some of its applications",
  Phys. Rep. 470 (2009) 151-238.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..errors import SetupError
from ..experiment import Experiment, unit_sphere
from ..model import Model
from ..postprocess.fit import fit_tensor
from ..result import Result
from ..sequences import Sequence
from .hadc import hadc_tensors

__all__ = ["exchange_matrix", "karger_difftensors", "solve_karger"]

_GL2 = (0.5 - math.sqrt(3.0) / 6.0, 0.5 + math.sqrt(3.0) / 6.0)
_ZERO_PROBES = 16  # f samples per interval used to detect f ≡ 0 for general profiles
_HADC_OPTIONS = {"rtol", "atol", "nstep", "max_refinement", "matrices"}


def exchange_matrix(model: Model) -> torch.Tensor:
    """Karger exchange matrix A (ncompartment, ncompartment), 1/µs.

    A_ij = κ_ij|Γ_ij|/|Ω_j| for i ≠ j and A_ii = −Σ_j κ_ij|Γ_ij|/|Ω_i|, summing over every
    interface between the two compartments (the symmetric coupling; SpinDoctor's Karger model
    does not weight by the densities).
    """
    mesh = model.mesh
    n = model.ncompartment
    volumes = mesh.compartment_volumes()
    rate = torch.zeros(n, n, dtype=volumes.dtype, device=volumes.device)
    interfaces = mesh.interfaces
    if interfaces:
        b, i, j = (torch.tensor(x, device=volumes.device) for x in zip(*interfaces))
        flux = model.boundary_kappa[b].to(volumes) * mesh.boundary_areas()[b]
        rate = rate.index_put((i, j), flux, accumulate=True)
        rate = rate.index_put((j, i), flux, accumulate=True)
    a = rate / volumes[None, :]
    return a - torch.diag(rate.sum(1) / volumes)


def karger_difftensors(
    model: Model,
    sequence: Sequence,
    *,
    ndirection: int = 50,
    hadc_options: dict | None = None,
    quiet: bool = True,
) -> torch.Tensor:
    """Effective tensors (ncompartment, 3, 3), µm²/µs: HADC of ``sequence`` in ``ndirection``
    directions of :func:`unit_sphere`, then :func:`fit_tensor` (SpinDoctor's procedure).

    The HADC model gives ``adc(u) = uᵀ T u`` for a symmetric T, so the fit reproduces T
    (exactly, up to round-off) for any ``ndirection ≥ 6``.
    """
    if isinstance(ndirection, bool) or not isinstance(ndirection, int) or ndirection < 6:
        raise SetupError(f"ndirection must be an integer ≥ 6, got {ndirection!r}")
    options = dict(hadc_options or {})
    unknown = set(options) - _HADC_OPTIONS
    if unknown:
        raise SetupError(
            f"hadc_options has unknown keys {sorted(unknown)}; allowed {sorted(_HADC_OPTIONS)}"
        )
    tensor, _, _ = hadc_tensors(model, [sequence], quiet=quiet, **options)
    u = unit_sphere(ndirection).to(tensor)
    adc = torch.einsum("nd,ide,ne->in", u, tensor[:, 0], u)
    return fit_tensor(u, adc)


def _check_difftensors(value, model: Model) -> torch.Tensor:
    like = model.mesh.points
    n = model.ncompartment
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    t = t.to(dtype=like.dtype, device=like.device)
    eye = torch.eye(3, dtype=t.dtype, device=t.device)
    if t.ndim == 0:
        t = t * eye.expand(n, 3, 3)
    elif t.shape == (n,):
        t = t[:, None, None] * eye
    elif t.shape == (3, 3):
        t = t.expand(n, 3, 3)
    elif t.shape != (n, 3, 3):
        raise SetupError(
            f"difftensors must be a scalar, ({n},), (3, 3) or ({n}, 3, 3) in µm²/µs, got shape "
            f"{tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t.detach()).all()):
        raise SetupError("difftensors must be finite")
    if not bool(torch.allclose(t, t.transpose(1, 2), rtol=1e-8, atol=1e-14)):
        raise SetupError("difftensors must be symmetric")
    return t


def _profile_pieces(seq: Sequence) -> list[tuple[float, float, bool]]:
    """[(t0, t1, F_is_constant)] on the sequence's intervals (zero-length ones dropped)."""
    if seq.is_constant:
        return [(a, b, v == 0.0) for a, b, v in seq.constant_pieces() if b > a]
    edges = [float(x) for x in seq.intervals]
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        if b <= a:
            continue
        probe = torch.linspace(a, b, _ZERO_PROBES + 2, dtype=torch.float64)[1:-1]
        out.append((a, b, bool((seq.f(probe) == 0).all())))
    return out


def _chain_product(mats: torch.Tensor) -> torch.Tensor:
    """E_{N-1} ··· E_1 E_0 for mats (N, ..., n, n), by a balanced product tree."""
    while mats.shape[0] > 1:
        if mats.shape[0] % 2:
            eye = torch.eye(mats.shape[-1], dtype=mats.dtype, device=mats.device)
            mats = torch.cat([mats, eye.expand_as(mats[:1])], dim=0)
        mats = mats[1::2] @ mats[0::2]
    return mats[0]


def _propagator(
    seq: Sequence,
    q2: torch.Tensor,
    ddiag: torch.Tensor,
    base: torch.Tensor,
    nstep: int,
) -> torch.Tensor:
    """exp-ordered propagator (namp, ndir, n, n) of dS/dt = [base − q²F²·diag(dd)] S.

    q2 : (namp,) q²; ddiag : (ndir, n) uᵀD_i u; base : (n, n) A − diag(1/T2).
    """
    pieces = _profile_pieces(seq)
    like = base
    exps = []

    def generator(times: torch.Tensor) -> torch.Tensor:  # (nt,) -> (nt, namp, ndir, n, n)
        f2 = seq.F(times).to(like) ** 2
        coef = q2[None, :, None, None] * f2[:, None, None, None] * ddiag[None, None]
        return base - torch.diag_embed(coef)

    for a, b, constant in pieces:
        if constant:
            mid = torch.tensor([0.5 * (a + b)], dtype=torch.float64)
            exps.append((b - a) * generator(mid))
            continue
        h = (b - a) / nstep
        starts = a + h * torch.arange(nstep, dtype=torch.float64)
        g1 = generator(starts + _GL2[0] * h)
        g2 = generator(starts + _GL2[1] * h)
        exps.append(0.5 * h * (g1 + g2) - (math.sqrt(3.0) / 12.0) * h**2 * (g1 @ g2 - g2 @ g1))
    omega = torch.cat(exps, dim=0)  # (nsteps, namp, ndir, n, n), in time order
    return _chain_product(torch.linalg.matrix_exp(omega))


def solve_karger(
    model: Model,
    experiment: Experiment,
    *,
    difftensors=None,
    ndirection: int = 50,
    tensor_sequence: int = -1,
    nstep: int = 100,
    hadc_options: dict | None = None,
    quiet: bool = False,
) -> Result:
    """Signals of the finite-pulse Karger compartment-exchange model.

    Parameters
    ----------
    model : Model
        Geometry (volumes, interface areas), permeabilities κ (µm/µs), T2 (µs), densities.
        Outer-wall relaxivity is not part of the Karger model and is ignored.
    experiment : Experiment
        Sequences (scalar profiles), q-values (rad/(µs·µm)) and directions.
    difftensors : tensor, optional
        Effective diffusion tensors, µm²/µs: scalar, (ncompartment,), (3, 3) or
        (ncompartment, 3, 3). Default: HADC tensors (see ``ndirection``).
    ndirection : int
        Directions for the HADC tensor fit (SpinDoctor ``karger.ndirection``, default 50).
    tensor_sequence : int
        Index of the sequence whose HADC tensors are used for every sequence (default −1, the
        last one, as SpinDoctor; some SpinDoctor versions use the first).
    nstep : int
        Magnus steps per interval where the gradient is on (default 100; error O(nstep⁻⁴)).
    hadc_options : dict, optional
        Keyword arguments for the HADC solve (``rtol``, ``atol``, ``nstep``, ...).
    quiet : bool
        Hide the HADC progress bar.

    Returns
    -------
    Result
        ``signal`` [ncompartment, namplitude, nsequence, ndirection] (complex with zero
        imaginary part, µm³), ``signal_allcmpts``, ``initial_signal``, ``method = "karger"``,
        ``info["difftensors"]`` and ``info["exchange_matrix"]``.

    Raises
    ------
    TypeError, SetupError
        Wrong argument types, vector (Waveform3D) sequences, bad tensors or step counts.

    Notes
    -----
    Cost: HADC (unless ``difftensors`` is given) plus one batched ``matrix_exp`` of
    (#steps × namplitude × ndirection) ncompartment² matrices per sequence.
    """
    t_start = time.perf_counter()
    if not isinstance(model, Model):
        raise TypeError(f"model must be a Model, got {type(model).__name__}")
    if not isinstance(experiment, Experiment):
        raise TypeError(f"experiment must be an Experiment, got {type(experiment).__name__}")
    for i, seq in enumerate(experiment.sequences):
        if seq.is_vector:
            raise SetupError(
                f"Karger needs scalar gradient profiles; sequences[{i}] = {seq!r} is a vector "
                "waveform"
            )
    if isinstance(nstep, bool) or not isinstance(nstep, int) or nstep < 1:
        raise SetupError(f"nstep must be a positive integer, got {nstep!r}")
    nseq = experiment.nsequence
    if isinstance(tensor_sequence, bool) or not isinstance(tensor_sequence, int):
        raise TypeError(f"tensor_sequence must be an int, got {tensor_sequence!r}")
    if not -nseq <= tensor_sequence < nseq:
        raise SetupError(
            f"tensor_sequence = {tensor_sequence} is out of range for {nseq} sequences"
        )

    timings = {}
    if difftensors is None:
        t0 = time.perf_counter()
        dt = karger_difftensors(
            model,
            experiment.sequences[tensor_sequence],
            ndirection=ndirection,
            hadc_options=hadc_options,
            quiet=quiet,
        )
        timings["hadc"] = time.perf_counter() - t0
    else:
        dt = _check_difftensors(difftensors, model)

    like = model.mesh.points
    volumes = model.mesh.compartment_volumes()
    a = exchange_matrix(model)
    base = a - torch.diag(1.0 / model.relaxation.to(like))
    s0 = model.density.to(like) * volumes
    u = experiment.directions.to(like)
    ddiag = torch.einsum("nd,ide,ne->ni", u, dt, u)  # (ndir, ncmpt)
    t0 = time.perf_counter()
    signals = []
    for s, seq in enumerate(experiment.sequences):
        q2 = experiment.qvalues[:, s].to(like) ** 2
        prop = _propagator(seq, q2, ddiag, base, nstep)  # (namp, ndir, n, n)
        signals.append(prop @ s0)  # (namp, ndir, n)
    signal = torch.stack(signals, dim=1).permute(3, 0, 1, 2)  # (n, namp, nseq, ndir)
    timings["ode"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    signal = signal.to(torch.complex128 if signal.dtype == torch.float64 else torch.complex64)
    return Result(
        signal=signal,
        signal_allcmpts=signal.sum(0),
        initial_signal=s0.sum(),
        method="karger",
        timings=timings,
        experiment=experiment,
        info={"difftensors": dt, "exchange_matrix": a, "nstep": nstep},
    )
