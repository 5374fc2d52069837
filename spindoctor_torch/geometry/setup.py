"""The SpinDoctor-style cell setup: what :func:`create_cells` and :func:`create_geometry` build.

Field names and meanings follow SpinDoctor's ``setup.geometry`` (``prepare_geometry.m``);
defaults follow SpinDoctor.jl's recipes (``rmin = 2, rmax = 6, dmin = 0.2, dmax = 0.6``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import SetupError

__all__ = ["CellSetup", "CELL_SHAPES", "ECS_SHAPES"]

CELL_SHAPES = ("sphere", "cylinder")
ECS_SHAPES = ("none", "box", "convex_hull", "tight_wrap")
_ECS_ALIASES = {"no_ecs": "none"}


def _number(name: str, value, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SetupError(f"{name} = {value!r} must be a number")
    v = float(value)
    if not math.isfinite(v):
        raise SetupError(f"{name} = {value!r} must be finite")
    if positive and v <= 0:
        raise SetupError(f"{name} = {value!r} must be positive")
    if nonneg and v < 0:
        raise SetupError(f"{name} = {value!r} must be non-negative")
    return v


@dataclass(frozen=True)
class CellSetup:
    """Geometry of a SpinDoctor simulation: packed spheres or cylinders, layers, ECS.

    Parameters
    ----------
    cell_shape : ``'sphere'`` or ``'cylinder'`` (cylinder axes along z).
    ncell : number of cells (≥ 1). More than one cell needs an ECS (as in SpinDoctor).
    rmin, rmax : bounds on the cell radii, µm (``0 < rmin ≤ rmax``).
    dmin, dmax : bounds on the gap from a new cell to its nearest neighbour, as multiples of
        ``rmean = (rmin + rmax)/2`` (``0 < dmin ≤ dmax``).
    height : cylinder length, µm (required for cylinders, must be None for spheres).
    in_ratio : inner layer(s) as fractions of each cell's radius, each in (0, 1), strictly
        increasing: ``0.6`` gives a nucleus (sphere) or an axon inside its myelin (cylinder);
        ``(0.3, 0.6)`` gives two nested inner layers. ``None`` or ``()``: no inner layer.
    ecs_shape : extracellular space, one of ``'none'`` (alias ``'no_ecs'``), ``'box'``,
        ``'convex_hull'``, ``'tight_wrap'``.
    ecs_ratio : ECS gap around the cells as a multiple of ``rmean`` (> 0; required when
        there is an ECS, ignored when there is none).
    bend : SpinDoctor's ``a_bend`` (dimensionless), see :mod:`spindoctor_torch.mesh.deform`.
    twist : SpinDoctor's ``a_twist``, radians.
    h : target tetrahedron edge length, µm. Default: ``rmean/4``.
    refinement : SpinDoctor/TetGen maximum tetrahedron volume, µm³, instead of ``h``
        (converted to ``h = (6·√2·refinement)^(1/3)``).
    seed : seed of the packing's random generator (``None``: fresh entropy, not
        reproducible).

    Attributes
    ----------
    rmean : ``(rmin + rmax)/2``, µm.
    nlayer : number of compartments per cell (``len(in_ratio) + 1``).
    ncompartment : ``nlayer·ncell`` plus one for an ECS.
    has_ecs : whether there is an ECS.
    ecs_gap : ``ecs_ratio·rmean``, µm (0 without ECS).
    mesh_size : the edge length ``h`` actually used, µm.
    """

    cell_shape: str = "sphere"
    ncell: int = 1
    rmin: float = 2.0
    rmax: float = 6.0
    dmin: float = 0.2
    dmax: float = 0.6
    height: float | None = None
    in_ratio: float | Sequence[float] | None = None
    ecs_shape: str = "none"
    ecs_ratio: float | None = None
    bend: float = 0.0
    twist: float = 0.0
    h: float | None = None
    refinement: float | None = None
    seed: int | None = 0
    layers: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.cell_shape not in CELL_SHAPES:
            raise SetupError(
                f"cell_shape = {self.cell_shape!r} is unknown; pick one of "
                f"{', '.join(repr(s) for s in CELL_SHAPES)}"
            )
        if isinstance(self.ncell, bool) or not isinstance(self.ncell, int) or self.ncell < 1:
            raise SetupError(f"ncell = {self.ncell!r} must be a positive integer")
        rmin = _number("rmin", self.rmin, positive=True)
        rmax = _number("rmax", self.rmax, positive=True)
        if rmin > rmax:
            raise SetupError(f"rmin = {rmin} must not exceed rmax = {rmax}")
        dmin = _number("dmin", self.dmin, positive=True)
        dmax = _number("dmax", self.dmax, positive=True)
        if dmin > dmax:
            raise SetupError(f"dmin = {dmin} must not exceed dmax = {dmax}")
        if self.cell_shape == "cylinder":
            if self.height is None:
                raise SetupError("height is required for cell_shape = 'cylinder' (µm)")
            set_(self, "height", _number("height", self.height, positive=True))
        elif self.height is not None:
            raise SetupError(
                f"height = {self.height!r} is only used for cylinders; leave it None for "
                f"cell_shape = 'sphere'"
            )
        ratios = () if self.in_ratio is None else self.in_ratio
        if isinstance(ratios, (int, float)) and not isinstance(ratios, bool):
            ratios = (ratios,)
        try:
            ratios = tuple(ratios)
        except TypeError:
            raise SetupError(
                f"in_ratio = {self.in_ratio!r} must be a number or a sequence of numbers"
            ) from None
        vals = []
        for r in ratios:
            v = _number("in_ratio", r)
            if not 0.0 < v < 1.0:
                raise SetupError(f"in_ratio = {r!r} must lie in (0, 1)")
            vals.append(v)
        if any(b <= a for a, b in zip(vals, vals[1:])):
            raise SetupError(f"in_ratio = {tuple(vals)} must be strictly increasing")
        set_(self, "layers", tuple(vals))
        shape = _ECS_ALIASES.get(self.ecs_shape, self.ecs_shape)
        if shape not in ECS_SHAPES:
            raise SetupError(
                f"ecs_shape = {self.ecs_shape!r} is unknown; pick one of "
                f"{', '.join(repr(s) for s in ECS_SHAPES)}"
            )
        set_(self, "ecs_shape", shape)
        if shape == "none":
            if self.ncell > 1:
                raise SetupError(
                    f"ncell = {self.ncell} needs an extracellular space: set ecs_shape to "
                    f"'box', 'convex_hull' or 'tight_wrap' (got 'none')"
                )
        else:
            if self.ecs_ratio is None:
                raise SetupError(f"ecs_ratio is required with ecs_shape = {shape!r}")
            set_(self, "ecs_ratio", _number("ecs_ratio", self.ecs_ratio, positive=True))
        set_(self, "bend", _number("bend", self.bend))
        set_(self, "twist", _number("twist", self.twist))
        if self.h is not None and self.refinement is not None:
            raise SetupError(
                f"give either h = {self.h} or refinement = {self.refinement}, not both"
            )
        if self.h is not None:
            _number("h", self.h, positive=True)
        if self.refinement is not None:
            _number("refinement", self.refinement, positive=True)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise SetupError(f"seed = {self.seed!r} must be an integer or None")

    # ------------------------------------------------------------------ derived
    @property
    def rmean(self) -> float:
        return 0.5 * (self.rmin + self.rmax)

    @property
    def nlayer(self) -> int:
        return len(self.layers) + 1

    @property
    def has_ecs(self) -> bool:
        return self.ecs_shape != "none"

    @property
    def ncompartment(self) -> int:
        return self.nlayer * self.ncell + int(self.has_ecs)

    @property
    def nboundary(self) -> int:
        """Boundaries produced by :func:`create_geometry` (see its docstring)."""
        per_cell = self.nlayer * (2 if self.cell_shape == "cylinder" else 1)
        return per_cell * self.ncell + int(self.has_ecs)

    @property
    def ecs_gap(self) -> float:
        return self.ecs_ratio * self.rmean if self.has_ecs else 0.0

    @property
    def mesh_size(self) -> float:
        if self.h is not None:
            return float(self.h)
        if self.refinement is not None:
            return float((6.0 * math.sqrt(2.0) * self.refinement) ** (1.0 / 3.0))
        return self.rmean / 4.0
