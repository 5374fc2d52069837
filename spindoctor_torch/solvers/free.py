r"""Free-diffusion signal (SpinDoctor ``compute_free_diffusion``).

Without walls, each compartment attenuates as a Gaussian:

.. math::

    S_i(b, u) = \rho_i |\Omega_i| \exp(-b\, u^T D_i u)
    \quad [\times \exp(-TE/T_{2,i}) \text{ with } \texttt{relaxation=True}].

For isotropic D_i = D·I this is SpinDoctor's ``ρ|Ω| exp(−(tr D/3) b)``. For anisotropic tensors
SpinDoctor uses the direction average tr(D)/3; here the directional uᵀDu is used, which is the
free-diffusion signal of the tensor along u (the two agree after averaging over directions only
to first order in b).
"""

from __future__ import annotations

import torch

from ..errors import SetupError
from ..experiment import Experiment
from ..model import Model
from ..result import Result

__all__ = ["free_diffusion"]


def free_diffusion(model: Model, experiment: Experiment, *, relaxation: bool = False) -> Result:
    """Signal of unrestricted diffusion in every compartment.

    Parameters
    ----------
    model : Model
        Diffusivities (µm²/µs), densities, volumes (from the mesh) and T2 (µs).
    experiment : Experiment
        b-values (s/mm²) of every sequence and the directions.
    relaxation : bool
        Include the T2 decay exp(−TE/T2) (SpinDoctor does not; default False).

    Returns
    -------
    Result
        ``signal`` [ncompartment, namplitude, nsequence, ndirection] (complex, µm³),
        ``signal_allcmpts``, ``initial_signal`` Σρ_i|Ω_i|, ``method = "free"``, and
        ``info["adc"]`` (ncompartment, ndirection) = uᵀD_i u in µm²/µs.

    Raises
    ------
    TypeError
        Wrong argument types.
    SetupError
        A vector (Waveform3D) sequence.

    Notes
    -----
    Closed form, differentiable in the diffusivities, densities, b-values and mesh points
    (through the volumes).
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a Model, got {type(model).__name__}")
    if not isinstance(experiment, Experiment):
        raise TypeError(f"experiment must be an Experiment, got {type(experiment).__name__}")
    if experiment.has_waveform3d:
        raise SetupError("free_diffusion needs scalar gradient profiles, got a Waveform3D")
    like = model.mesh.points
    u = experiment.directions.to(like)
    adc = torch.einsum("nd,ide,ne->in", u, model.diffusivity.to(u), u)  # (ncmpt, ndir)
    b = experiment.bvalues.to(u)  # (namp, nseq)
    s0 = model.density.to(u) * model.mesh.compartment_volumes()
    decay = torch.exp(-b[None, :, :, None] * adc[:, None, None, :])
    signal = s0[:, None, None, None] * decay
    if relaxation:
        te = torch.tensor(
            [s.echotime for s in experiment.sequences], dtype=u.dtype, device=u.device
        )
        signal = signal * torch.exp(
            -te[None, None, :, None] / model.relaxation.to(u)[:, None, None, None]
        )
    signal = signal.to(torch.complex128 if u.dtype == torch.float64 else torch.complex64)
    return Result(
        signal=signal,
        signal_allcmpts=signal.sum(0),
        initial_signal=s0.sum(),
        method="free",
        experiment=experiment,
        info={"adc": adc, "relaxation": relaxation},
    )
