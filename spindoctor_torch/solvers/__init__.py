"""Signal solvers: Bloch-Torrey PDE (btpde), matrix formalism, HADC, STA, Karger, analytical."""

from .btpde import solve_btpde
from .free import free_diffusion
from .hadc import HADCResult, solve_hadc
from .karger import solve_karger
from .mf import (
    LaplaceEig,
    compute_laplace_eig,
    compute_mf_diffusion_tensor,
    solve_mf,
    solve_mfga,
)
from .sta import STAResult, compute_adc_sta

__all__ = [
    "solve_btpde",
    "solve_hadc",
    "HADCResult",
    "compute_adc_sta",
    "STAResult",
    "solve_karger",
    "free_diffusion",
    "LaplaceEig",
    "compute_laplace_eig",
    "solve_mf",
    "compute_mf_diffusion_tensor",
    "solve_mfga",
]
