"""Running a setup: mesh, model, experiment, the requested solvers, and the outputs."""

from __future__ import annotations

import dataclasses
import inspect
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SetupError
from ._tables import _Ctx
from .build import build_experiment, build_mesh, build_model
from .schema import Setup, load_setup, solver_function


# ============================================================================ running
@dataclass
class SimulationRun:
    """Everything :func:`run_setup` produced.

    Attributes
    ----------
    setup : the validated setup.
    mesh, model, experiment : the objects built from it.
    results : solver name -> its return value (a :class:`~spindoctor_torch.result.Result` for
        signal solvers; the solver's own object or tensor for ADC solvers).
    timings : stage -> wall time in seconds (``mesh``, ``model``, ``<solver>``, ``write``).
    files : name -> path of every file written.
    """

    setup: Setup
    mesh: Any
    model: Any
    experiment: Any
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)


def _call_solver(name: str, func: Callable, options: dict, run: SimulationRun, quiet: bool):
    if name == "analytical":
        return _run_analytical(run, options, quiet)
    params = inspect.signature(func).parameters
    kwargs = dict(options)
    if "quiet" in params:
        kwargs["quiet"] = quiet
    if "progress" in params:
        kwargs["progress"] = not quiet
    if name in ("btpde", "mf") and run.setup.output.magnetization:
        if "return_magnetization" in params and "return_magnetization" not in kwargs:
            kwargs["return_magnetization"] = True
    if "lap" in params:  # mf and mfga with the same truncation share one eigendecomposition
        key = (kwargs.get("length_scale"), kwargs.get("neig_max", 400))
        lap = run.cache.get(("lap", key))
        if lap is None and _count_lap_users(run.setup, key) > 1:
            from ..solvers.mf import compute_laplace_eig

            lap = compute_laplace_eig(run.model, key[0], key[1], quiet=quiet)
            run.cache[("lap", key)] = lap
        if lap is not None:
            kwargs["lap"] = lap
    return func(run.model, run.experiment, **kwargs)


def _count_lap_users(setup: Setup, key) -> int:
    return sum(
        1
        for n in ("mf", "mfga")
        if n in setup.solvers
        and (
            setup.solvers[n].options.get("length_scale"),
            setup.solvers[n].options.get("neig_max", 400),
        )
        == key
    )


def layered_geometry(setup: Setup, model):
    """The :class:`~spindoctor_torch.solvers.analytical.LayeredGeometry` equivalent to a
    setup's geometry and PDE coefficients (for the analytical solver).

    Only concentric geometries have one: one cell (``cells`` with ``ncell = 1`` and no ECS or a
    ``tight_wrap`` ECS, which for one cell is a concentric shell of gap ``ecs_ratio·rmean``),
    the ``sphere`` and ``cylinder`` recipes, and ``slabs``. Cylinders are treated as infinite
    (SpinDoctor's analytical cylinder), with the setup's height scaling the volumes.

    Raises
    ------
    SetupError
        Any other geometry, or coefficients the analytical module cannot represent
        (anisotropic diffusion, several outer-wall relaxivities).
    """
    from ..solvers.analytical import LayeredGeometry

    g = setup.geometry
    ctx = _Ctx(setup.source)
    height, area = 1.0, 1.0
    if g.recipe == "cells":
        o = g.options
        if o.get("ncell", 1) != 1 or g.roles is None:
            raise ctx.error("solvers.analytical", "needs one cell (ncell = 1)")
        ecs = o.get("ecs_shape", "none")
        if ecs not in ("none", "no_ecs", "tight_wrap"):
            raise ctx.error(
                "solvers.analytical",
                f"needs a concentric ECS: ecs_shape 'none' or 'tight_wrap', got {ecs!r}",
            )
        r = float(o.get("rmin", 2.0))
        if float(o.get("rmax", 6.0)) != r:
            raise ctx.error("solvers.analytical", "needs rmin = rmax (one known radius)")
        ratios = o.get("in_ratio") or ()
        ratios = (ratios,) if isinstance(ratios, (int, float)) else tuple(ratios)
        radii = [q * r for q in ratios] + [r]
        if ecs == "tight_wrap":
            radii.append(r + float(o["ecs_ratio"]) * r)
        shape = o.get("cell_shape", "sphere")
        height = float(o.get("height") or 1.0)
    elif g.recipe in ("sphere", "cylinder"):
        radii = list(g.options.get("layers") or []) + [float(g.options["radius"])]
        shape = g.recipe
        height = float(g.options.get("height", 1.0))
    elif g.recipe == "slabs":
        import numpy as np

        radii = np.cumsum(g.options["widths"]).tolist()
        shape = "slab"
        ly, lz = g.options["sides_yz"]
        area = float(ly) * float(lz)
    else:
        raise ctx.error(
            "solvers.analytical",
            f"needs a layered sphere, cylinder or slab geometry, not recipe = {g.recipe!r}",
        )
    d = model.diffusivity.detach()
    iso = _eye_like(d) * d.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None]
    if not bool((d - iso).abs().max() <= 1e-12 * d.abs().max()):
        raise ctx.error("solvers.analytical", "needs isotropic diffusivities")
    nb = model.mesh.nboundary
    bc = model.mesh.topology.boundary_compartments
    walls = [b for b in range(nb) if bc[b, 1] < 0]
    kappa = model.boundary_kappa.detach()
    w = {float(kappa[b]) for b in walls if int(bc[b, 0]) == len(radii) - 1}
    inner_walls = [b for b in walls if int(bc[b, 0]) != len(radii) - 1]
    if len(w) > 1 or any(float(kappa[b]) != 0.0 for b in inner_walls):
        raise ctx.error(
            "solvers.analytical", "needs one relaxivity on the outermost wall and none elsewhere"
        )
    perm = [0.0] * (len(radii) - 1)
    for b, i, j in model.mesh.interfaces:
        if j == i + 1:
            perm[i] = float(kappa[b])
    try:
        return LayeredGeometry(
            shape=shape,
            radii=radii,
            diffusivity=d.diagonal(dim1=1, dim2=2).mean(-1).tolist(),
            relaxation=model.relaxation.detach().tolist(),
            density=model.density.detach().tolist(),
            permeability=perm,
            relaxivity=w.pop() if w else 0.0,
            height=height,
            area=area,
            coupling=model.coupling,
        )
    except (SetupError, ValueError) as err:
        raise ctx.error("solvers.analytical", str(err)) from None


def _eye_like(d):
    import torch

    return torch.eye(3, dtype=d.dtype, device=d.device).expand_as(d)


def _run_analytical(run: SimulationRun, options: dict, quiet: bool):
    """SpinDoctor's analytical solver on the setup's layered geometry, as a Result with the
    experiment's axes (the value is the same for every direction of a sphere; cylinders
    accept only directions perpendicular to their axis, as SpinDoctor)."""
    import torch

    from ..result import Result
    from ..solvers.analytical import solve_analytical

    geom = layered_geometry(run.setup, run.model)
    exp = run.experiment
    if geom.shape == "cylinder" and bool((exp.directions[:, 2].abs() > 1e-12).any()):
        raise _Ctx(run.setup.source).error(
            "solvers.analytical",
            "the analytical cylinder needs gradient directions perpendicular to its axis (z)",
        )
    if geom.shape == "slab" and bool((exp.directions[:, 1:].abs() > 1e-12).any()):
        raise _Ctx(run.setup.source).error(
            "solvers.analytical", "the analytical slab needs gradient directions along x"
        )
    out = solve_analytical(geom, exp.sequences, qvalues=exp.qvalues, quiet=quiet, **options)
    ndir = exp.ndirection
    sig = out.signal[..., None].expand(-1, -1, -1, ndir).to(torch.complex128)
    info = dict(out.info)
    info["geometry"] = dataclasses.asdict(geom)
    return Result(
        signal=sig.contiguous(),
        signal_allcmpts=sig.sum(0),
        initial_signal=out.initial_signal,
        method="analytical",
        timings=dict(out.timings),
        info=info,
        experiment=exp,
    )


def run_setup(
    setup: Setup | str | Path,
    *,
    output_dir: str | Path | None | bool = None,
    quiet: bool = False,
    solvers: Sequence[str] | None = None,
) -> SimulationRun:
    """Build mesh, model and experiment of a setup, run its solvers, and write the outputs.

    Parameters
    ----------
    setup : a :class:`Setup` or the path of a TOML setup file.
    output_dir : overrides ``[output] directory``; ``False`` writes nothing.
    quiet : no progress bars or messages.
    solvers : run only these of the setup's solvers (default: all, in setup order).

    Returns
    -------
    SimulationRun
    """
    if not isinstance(setup, Setup):
        setup = load_setup(setup)
    names = list(setup.solvers)
    if solvers is not None:
        unknown = [s for s in solvers if s not in setup.solvers]
        if unknown:
            raise SetupError(f"{setup.source}: solvers {unknown} are not in the setup ({names})")
        names = [n for n in names if n in solvers]
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    say(f"[{setup.name}] building the mesh ({setup.geometry.recipe})")
    mesh = build_mesh(setup, quiet=quiet)
    timings["mesh"] = time.perf_counter() - t0
    say(f"[{setup.name}] {mesh.npoint} points, {mesh.ntet} tets, {mesh.ncompartment} compartments")
    t0 = time.perf_counter()
    model = build_model(setup, mesh)
    experiment = build_experiment(setup)
    timings["model"] = time.perf_counter() - t0
    run = SimulationRun(setup, mesh, model, experiment, timings=timings)
    for name in names:
        say(f"[{setup.name}] running {name}")
        func = solver_function(name)
        t0 = time.perf_counter()
        out = _call_solver(name, func, setup.solvers[name].options, run, quiet)
        timings[name] = time.perf_counter() - t0
        run.results[name] = out
    directory = setup.output.directory if output_dir is None else output_dir
    if directory:
        from ..io.outputs import write_run

        t0 = time.perf_counter()
        run.files = write_run(run, Path(directory), quiet=quiet)
        timings["write"] = time.perf_counter() - t0
        say(f"[{setup.name}] wrote {Path(directory)}")
    return run
