"""SpinDoctor-style cell geometries: packed spheres or cylinders, inner layers, ECS.

* :class:`CellSetup` — the validated setup (SpinDoctor's ``setup.geometry`` fields).
* :func:`create_cells` — SpinDoctor's random packing (centres and radii, seeded).
* :func:`create_geometry` — one conformal :class:`~spindoctor_torch.mesh.TetMesh` of all
  cells, their layers and the ECS, with SpinDoctor's compartment and boundary order, bent
  and twisted.
"""

from .cells import Cells, create_cells, surface_gaps
from .create import boundary_index, build_cells_model, create_geometry
from .ecs import add_ecs_solid, circle_hull, fibonacci_sphere, sphere_hull
from .setup import CELL_SHAPES, ECS_SHAPES, CellSetup

__all__ = [
    "CellSetup",
    "CELL_SHAPES",
    "ECS_SHAPES",
    "Cells",
    "create_cells",
    "surface_gaps",
    "create_geometry",
    "boundary_index",
    "build_cells_model",
    "add_ecs_solid",
    "sphere_hull",
    "circle_hull",
    "fibonacci_sphere",
]
