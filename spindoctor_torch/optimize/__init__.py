"""Geometry and parameter fitting by gradient descent through the simulator.

Parameterizations map a few parameters to vertex positions (topology fixed), losses compare
simulated with target signals, :func:`fit` runs Adam or L-BFGS with a mesh-quality guard.
"""

from .loop import INVALID_LOSS, History, QualityGuard, fit
from .losses import (
    area_prior,
    chamfer_distance,
    hausdorff_distance,
    log_mse_loss,
    mse_loss,
    point_surface_distance,
    relative_error,
    rician_nll_loss,
    sample_surface,
    surface_distances,
    surface_smoothness,
    volume_prior,
)
from .parameterizations import (
    Affine,
    BendTwist,
    Chain,
    FreeForm,
    Parameterization,
    PhysicalParameters,
    RadialMap,
)

__all__ = [
    "fit",
    "INVALID_LOSS",
    "History",
    "QualityGuard",
    "Parameterization",
    "Affine",
    "RadialMap",
    "BendTwist",
    "FreeForm",
    "Chain",
    "PhysicalParameters",
    "mse_loss",
    "log_mse_loss",
    "rician_nll_loss",
    "surface_smoothness",
    "volume_prior",
    "area_prior",
    "sample_surface",
    "chamfer_distance",
    "hausdorff_distance",
    "point_surface_distance",
    "surface_distances",
    "relative_error",
]
