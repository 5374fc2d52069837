"""Exception and warning classes of spindoctor_torch.

Every error raised on bad input names the offending field and its value.
"""

from __future__ import annotations

__all__ = ["MeshError", "SetupError", "SolverError", "SpinDoctorWarning"]


class MeshError(ValueError):
    """A mesh is invalid: inverted or degenerate tetrahedra, non-conformal interfaces,
    non-manifold faces, empty compartments, or a surface that cannot be meshed."""


class SetupError(ValueError):
    """A simulation setup (geometry, PDE parameters, gradient, solver options) is invalid."""


class SolverError(RuntimeError):
    """A solver failed (no convergence, non-finite values)."""


class SpinDoctorWarning(UserWarning):
    """Something suspicious but not fatal (for example a truncated eigenbasis)."""
