"""spindoctor_torch: a differentiable SpinDoctor in PyTorch."""

__version__ = "0.1.0"

from . import mesh
from .errors import MeshError, SetupError, SolverError, SpinDoctorWarning
from .mesh import TetMesh

torch_default_dtype = None  # the package works in the dtype of mesh.points (float64 default)
