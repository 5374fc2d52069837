"""TOML setup files: SpinDoctor's ``setup`` struct as typed, validated Python objects.

A setup file describes one simulation: the geometry (a SpinDoctor cell recipe, a gmsh
primitive or a mesh file), the PDE coefficients per compartment and interface, the gradient
sequences, b/q/g values and directions, the solvers to run, and what to write. Everything is
validated when the file is read: an unknown key, a wrong type, a missing field or an impossible
geometry raises :class:`~spindoctor_torch.errors.SetupError` with a one-line message naming the
file, the field, the value and what is allowed.

Example
-------
.. code-block:: toml

    name = "sphere_nucleus"

    [geometry]                 # SpinDoctor cell recipe (recipe = "cells" is the default)
    cell_shape = "sphere"
    rmin = 5.0
    rmax = 5.0
    in_ratio = 0.6             # nucleus of radius 0.6 r
    ecs_shape = "box"
    ecs_ratio = 0.5
    refinement = 1.0           # TetGen-style max tet volume, µm³ (or h = edge length, µm)

    [pde]                      # by compartment role ("in", "out", "ecs"), index, or one value
    diffusivity = { in = 0.002, out = 0.002, ecs = 0.002 }   # µm²/µs
    relaxation = inf                                          # T2, µs
    permeability = { in_out = 1e-4, out_ecs = 1e-4 }          # µm/µs

    [gradient]
    bvalues = [0, 1000, 2000]  # s/mm² (or qvalues, rad/(µs·µm); or gvalues, T/m)
    directions = { set = "sphere", n = 16 }
    [[gradient.sequences]]
    type = "PGSE"
    delta = 10000.0            # µs
    Delta = 43100.0            # µs

    [solvers.btpde]
    [solvers.mf]
    length_scale = 2.0

    [output]
    directory = "output/sphere_nucleus"

    [tiny]                     # overrides applied by load_setup(..., tiny=True) / --tiny
    geometry.refinement = 10.0

Entry points: :func:`load_setup` (file), :func:`parse_setup` (dict), :func:`run_setup`
(mesh -> model -> experiment -> solvers -> results, optionally written to disk).
"""

from ._tables import tomllib
from .build import build_experiment, build_mesh, build_model
from .optimization import OptimizationRun, OptimizationSetup, load_optimization, run_optimization
from .run import SimulationRun, layered_geometry, run_setup
from .schema import (
    RECIPES,
    SOLVERS,
    DirectionSpec,
    GeometrySpec,
    GradientSpec,
    OutputSpec,
    PDESpec,
    SequenceSpec,
    Setup,
    SolverSpec,
    apply_overrides,
    compartment_roles,
    load_setup,
    parse_setup,
    solver_function,
)

__all__ = [
    "Setup",
    "GeometrySpec",
    "PDESpec",
    "GradientSpec",
    "SequenceSpec",
    "DirectionSpec",
    "SolverSpec",
    "OutputSpec",
    "SimulationRun",
    "SOLVERS",
    "RECIPES",
    "load_setup",
    "parse_setup",
    "apply_overrides",
    "build_mesh",
    "build_model",
    "build_experiment",
    "compartment_roles",
    "layered_geometry",
    "run_setup",
    "OptimizationSetup",
    "OptimizationRun",
    "load_optimization",
    "run_optimization",
    "solver_function",
    "tomllib",
]
