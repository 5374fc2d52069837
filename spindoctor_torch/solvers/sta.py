r"""Short-time approximation (STA) of the ADC (SpinDoctor ``compute_adc_sta``).

Mitra's short-time expansion with the finite-pulse and direction correction of Schiavi et al.
(2016): for compartment Ω_i and unit direction u,

.. math::

    D_{STA} = D_0 \left[1 - \frac{4}{3} \sqrt{\frac{D_0}{\pi}}\,
        \frac{A_u}{|\Omega_i|} \sqrt{t_{STA}}\right],
    \qquad D_0 = u^T D_i u, \qquad A_u = \sum_{\text{facets of } \partial\Omega_i}
        \text{area}\,(u\cdot n)^2,

where the sum runs over every boundary facet of the compartment, interfaces included, and
``t_STA = sequence.diffusion_time_sta`` (the squared finite-pulse factor C², ≈ Δ for narrow
pulses). The approximation only holds while √(D_0 t_STA) is small compared with the
compartment; a negative result (long times) is returned as computed, with a warning, like
SpinDoctor.

References
----------
* P. P. Mitra, P. N. Sen, L. M. Schwartz, "Short-time behavior of the diffusion coefficient as a
  geometrical probe of porous media", Phys. Rev. B 47 (1993) 8565,
  doi:10.1103/PhysRevB.47.8565.
* S. Schiavi, H. Haddar, J.-R. Li, "A macroscopic model for the diffusion MRI signal accounting
  for time-dependent diffusivity", SIAM J. Appl. Math. 76 (2016) 930-949.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from ..errors import SetupError, SpinDoctorWarning
from ..experiment import Experiment
from ..model import Model

__all__ = ["STAResult", "compute_adc_sta", "projected_surface_areas"]


@dataclass
class STAResult:
    """Output of :func:`compute_adc_sta`.

    Attributes
    ----------
    adc : (ncompartment, nsequence, ndirection) tensor, µm²/µs
    adc_allcmpts : (nsequence, ndirection) tensor, µm²/µs
        Compartment ADCs weighted by ρ_i|Ω_i|.
    """

    adc: torch.Tensor
    adc_allcmpts: torch.Tensor


def projected_surface_areas(model: Model, directions: torch.Tensor) -> torch.Tensor:
    """A_u = Σ area·(u·n)² over all boundary facets of each compartment (interfaces count for
    both sides), µm².

    Parameters
    ----------
    model : Model
    directions : (ndirection, 3) tensor of unit vectors

    Returns
    -------
    (ncompartment, ndirection) tensor, µm², differentiable in the mesh points
    """
    mesh = model.mesh
    av = mesh.facet_area_vectors()  # (F, 3) = area · n
    area = torch.linalg.vector_norm(av, dim=1)
    u = directions.to(av)
    proj = (av @ u.T) ** 2 / area[:, None]  # area (u·n)², (F, ndir)
    bc = mesh.boundary_compartments[mesh.facet_boundary]  # (F, 2)
    out = torch.zeros(model.ncompartment, u.shape[0], dtype=proj.dtype, device=proj.device)
    out = out.index_add(0, bc[:, 0], proj)
    inter = bc[:, 1] >= 0
    return out.index_add(0, bc[inter, 1], proj[inter])


def compute_adc_sta(model: Model, experiment: Experiment) -> STAResult:
    """Short-time-approximation ADC per compartment, sequence and direction.

    Parameters
    ----------
    model : Model
        Geometry, diffusivities (µm²/µs, scalar or tensor) and densities.
    experiment : Experiment
        Sequences (scalar profiles, ``diffusion_time_sta`` in µs) and directions.

    Returns
    -------
    STAResult
        ``adc`` (ncompartment, nsequence, ndirection) and ``adc_allcmpts`` (nsequence,
        ndirection), µm²/µs.

    Raises
    ------
    TypeError
        Wrong argument types.
    SetupError
        A vector (Waveform3D) sequence.

    Warns
    -----
    SpinDoctorWarning
        When an ADC is negative (the diffusion time is too long for the approximation).

    Notes
    -----
    No PDE is solved: the cost is one pass over the boundary facets. Differentiable with respect
    to the mesh points (areas, normals, volumes) and the diffusivities.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a Model, got {type(model).__name__}")
    if not isinstance(experiment, Experiment):
        raise TypeError(f"experiment must be an Experiment, got {type(experiment).__name__}")
    for i, seq in enumerate(experiment.sequences):
        if seq.is_vector:
            raise SetupError(
                f"STA needs a scalar gradient profile; sequences[{i}] = {seq!r} is a vector "
                "waveform"
            )
    mesh = model.mesh
    u = experiment.directions.to(mesh.points)
    d0 = torch.einsum("nd,ide,ne->in", u, model.diffusivity.to(u), u)  # (ncmpt, ndir)
    area_u = projected_surface_areas(model, u)  # (ncmpt, ndir)
    volumes = mesh.compartment_volumes()
    t_sta = torch.tensor(
        [seq.diffusion_time_sta for seq in experiment.sequences], dtype=u.dtype, device=u.device
    )
    factor = (4.0 / 3.0) * torch.sqrt(d0 / math.pi) * area_u / volumes[:, None]  # (ncmpt, ndir)
    adc = d0[:, None, :] * (1.0 - factor[:, None, :] * torch.sqrt(t_sta)[None, :, None])
    negative = (adc.detach() < 0).any(dim=2).any(dim=0)
    for s in torch.nonzero(negative).flatten().tolist():
        warnings.warn(
            f"STA ADC is negative for sequence {s} ({experiment.sequences[s]!r}): the "
            "short-time approximation does not hold at this diffusion time",
            SpinDoctorWarning,
            stacklevel=2,
        )
    weights = model.density * volumes
    weights = weights / weights.sum()
    adc_allcmpts = torch.einsum("i,isn->sn", weights.to(adc), adc)
    return STAResult(adc=adc, adc_allcmpts=adc_allcmpts)
