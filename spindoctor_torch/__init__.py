"""spindoctor_torch: a differentiable SpinDoctor in PyTorch.

Catalogue
---------
Meshes      TetMesh, read_mesh, write_mesh, mesh.box / sphere / cylinder, geometry.create_geometry
Physics     Model, assemble (M, K, R, Q, J, G)
Sequences   PGSE, DoublePGSE, CosOGSE, SinOGSE, CustomProfile, Waveform3D, Experiment
Solvers     solve_btpde, solve_mf, compute_laplace_eig, solve_hadc, compute_adc_sta,
            solve_karger, solve_analytical, free_diffusion
Results     Result (signal [ncompartment, namplitude, nsequence, ndirection])
"""

__version__ = "0.1.0"

from . import config, geometry, io, mesh, optimize, postprocess, solvers
from .config import load_setup, run_setup
from .errors import MeshError, SetupError, SolverError, SpinDoctorWarning
from .experiment import Experiment, half_sphere, unit_circle, unit_sphere
from .fem import FEMatrices, assemble
from .geometry import CellSetup, create_cells, create_geometry
from .io import load_results, save_results
from .mesh import TetMesh
from .mesh.io import read_mesh, write_mesh
from .mesh.surface import mesh_surface, tetmesh_to_trimesh
from .model import Model
from .postprocess import fit_signal, fit_tensor
from .result import Result
from .sequences import PGSE, CosOGSE, CustomProfile, DoublePGSE, Sequence, SinOGSE, Waveform3D
from .solvers import (
    HADCResult,
    LaplaceEig,
    STAResult,
    compute_adc_sta,
    compute_laplace_eig,
    compute_mf_diffusion_tensor,
    free_diffusion,
    solve_btpde,
    solve_hadc,
    solve_karger,
    solve_mf,
    solve_mfga,
)
from .solvers.analytical import LayeredGeometry, solve_analytical
from .units import GAMMA, b_from_q, g_from_q, q_from_b, q_from_g
from .validation import run_validation

__all__ = [
    "__version__",
    "mesh",
    "geometry",
    "CellSetup",
    "create_cells",
    "create_geometry",
    "MeshError",
    "SetupError",
    "SolverError",
    "SpinDoctorWarning",
    "TetMesh",
    "read_mesh",
    "write_mesh",
    "mesh_surface",
    "tetmesh_to_trimesh",
    "Model",
    "assemble",
    "FEMatrices",
    "Result",
    "optimize",
    "config",
    "io",
    "load_setup",
    "run_setup",
    "save_results",
    "load_results",
    "postprocess",
    "solvers",
    "solve_btpde",
    "solve_mf",
    "solve_mfga",
    "compute_laplace_eig",
    "compute_mf_diffusion_tensor",
    "LaplaceEig",
    "solve_hadc",
    "HADCResult",
    "compute_adc_sta",
    "STAResult",
    "solve_karger",
    "free_diffusion",
    "solve_analytical",
    "LayeredGeometry",
    "fit_signal",
    "run_validation",
    "fit_tensor",
    "Experiment",
    "unit_sphere",
    "half_sphere",
    "unit_circle",
    "Sequence",
    "PGSE",
    "DoublePGSE",
    "CosOGSE",
    "SinOGSE",
    "CustomProfile",
    "Waveform3D",
    "GAMMA",
    "q_from_b",
    "b_from_q",
    "q_from_g",
    "g_from_q",
]
