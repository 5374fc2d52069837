"""Optimization files: fit mesh parameters of a setup to a target signal."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SetupError
from ._tables import _Ctx, _is_number, _Table, tomllib
from .run import SimulationRun, run_setup
from .schema import Setup, load_setup, solver_function

# ============================================================================ optimization files
_PARAM_KINDS = ("scale", "anisotropic", "radial", "bend_twist")
_LOSSES = ("mse", "log_mse")


@dataclass(frozen=True)
class OptimizationSetup:
    """A validated optimization file (``spindoctor-torch optimize CONFIG``).

    .. code-block:: toml

        name = "radius_fit"
        setup = "axon_myelin_ecs.toml"     # the model: mesh, PDE, gradient, solver options
        [target]
        results = "target/results.h5"      # ours (.h5), SpinDoctor (.mat) or reference (.json)
        name = "btpde"                     # which result (default: the first signal result)
        # or: setup = "target.toml"        # simulate it (its first signal solver)
        [parameters]
        kind = "radial"                    # scale, anisotropic, radial, bend_twist
        knots = [1.8, 3.0]                 # radial: reference radii (µm) whose images are fitted
        fixed_outer = 6.0                  # radial: radii beyond this stay in place (µm)
        [fit]
        solver = "mf"                      # forward model: mf or btpde
        loss = "log_mse"                   # or mse, on |S|/S0
        optimizer = "lbfgs"                # or adam
        maxiter = 10
        [output]
        directory = "output/radius_fit"

    ``[parameters]`` of kind ``radial`` also takes ``axis`` (default [0, 0, 1]; ``spherical =
    true`` for distances to ``center``) and ``center``; ``bend_twist`` takes initial ``bend``
    and ``twist``. ``[fit]`` also takes ``lr`` (default 1 for L-BFGS, 0.05 for Adam) and
    ``tol``.
    """

    name: str
    setup: Setup
    target_results: Path | None
    target_name: str | None
    target_setup: Setup | None
    parameters: dict[str, Any]
    solver: str
    loss: str
    optimizer: str
    lr: float
    maxiter: int
    tol: float
    directory: Path | None
    source: str = "<dict>"


def load_optimization(path: str | Path, *, tiny: bool = False) -> OptimizationSetup:
    """Read and validate an optimization file (see :class:`OptimizationSetup`); paths inside
    it are relative to its folder. ``tiny`` applies the ``[tiny]`` tables of both setups."""
    path = Path(path)
    if not path.is_file():
        raise SetupError(f"optimization file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SetupError(f"{path.name}: not valid TOML: {err}") from None
    ctx = _Ctx(path.name)
    base = path.resolve().parent
    top = _Table(ctx, "", data)
    name = top.string("name", path.stem)

    def setup_file(tab: _Table, key: str) -> Setup:
        rel = tab.string(key)
        p = (base / rel) if not Path(rel).is_absolute() else Path(rel)
        if not p.is_file():
            raise tab.err(key, f"setup file not found (looked for {p})")
        return load_setup(p, tiny=tiny)

    setup = setup_file(top, "setup")
    fit_tab = top.table("fit", {})
    solver = fit_tab.string("solver", "mf", choices=("mf", "btpde"))
    if solver not in setup.solvers:
        raise fit_tab.err("solver", f"the setup {setup.source} has no [solvers.{solver}] table")
    loss = fit_tab.string("loss", "log_mse", choices=_LOSSES)
    optimizer = fit_tab.string("optimizer", "lbfgs", choices=("lbfgs", "adam"))
    lr = fit_tab.number("lr", 1.0 if optimizer == "lbfgs" else 0.05, positive=True)
    maxiter = fit_tab.integer("maxiter", 10, minimum=1)
    tol = fit_tab.number("tol", 1e-6, nonneg=True)
    fit_tab.finish()

    tgt = top.table("target")
    target_results = target_name = target_setup = None
    if tgt.has("setup") == tgt.has("results"):
        raise tgt.err(None, "give exactly one of results = FILE or setup = FILE")
    if tgt.has("setup"):
        target_setup = setup_file(tgt, "setup")
    else:
        rel = tgt.string("results")
        target_results = (base / rel).resolve()
        if not target_results.is_file():
            raise tgt.err("results", f"file not found (looked for {target_results})")
    target_name = tgt.string("name", None)
    tgt.finish()

    ptab = top.table("parameters")
    kind = ptab.string("kind", choices=_PARAM_KINDS)
    params: dict[str, Any] = {"kind": kind}
    if kind == "radial":
        knots = ptab.raw("knots", required_text="reference radii, µm")
        if not (isinstance(knots, list) and knots and all(_is_number(k) and k > 0 for k in knots)):
            raise ptab.err("knots", "must be a non-empty list of radii > 0 (µm)")
        if any(b <= a for a, b in zip(knots, knots[1:])):
            raise ptab.err("knots", "must increase strictly")
        params["knots"] = [float(k) for k in knots]
        spherical = ptab.boolean("spherical", False)
        axis = ptab.raw("axis", [0.0, 0.0, 1.0])
        center = ptab.raw("center", [0.0, 0.0, 0.0])
        for key, v in (("axis", axis), ("center", center)):
            if not (isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v)):
                raise ptab.err(key, "must be 3 numbers")
        params["axis"] = None if spherical else [float(x) for x in axis]
        params["center"] = [float(x) for x in center]
        outer = ptab.number("fixed_outer", None, positive=True)
        if outer is not None and outer <= params["knots"][-1]:
            raise ptab.err("fixed_outer", f"must exceed the last knot {params['knots'][-1]} µm")
        params["fixed_outer"] = outer
    elif kind == "bend_twist":
        params["bend"] = ptab.number("bend", 0.0)
        params["twist"] = ptab.number("twist", 0.0, unit="rad")
    ptab.finish()
    out = top.table("output", {})
    directory = out.raw("directory", f"output/{name}")
    if directory is not False and not isinstance(directory, str):
        raise out.err("directory", "must be a folder path (string) or false")
    out.finish()
    top.finish()
    return OptimizationSetup(
        name=name,
        setup=setup,
        target_results=target_results,
        target_name=target_name,
        target_setup=target_setup,
        parameters=params,
        solver=solver,
        loss=loss,
        optimizer=optimizer,
        lr=float(lr),
        maxiter=int(maxiter),
        tol=float(tol),
        directory=Path(directory) if directory else None,
        source=path.name,
    )


@dataclass
class OptimizationRun:
    """What :func:`run_optimization` produced: the model run, the parameterization (with its
    fitted values), the optimization history, target and fitted signals, written files."""

    config: OptimizationSetup
    run: SimulationRun
    parameterization: Any
    history: Any
    target: Any
    fitted: Any
    files: dict[str, Path] = field(default_factory=dict)


def _parameterization(opt: OptimizationSetup, mesh):
    from .. import optimize

    p = opt.parameters
    if p["kind"] in ("scale", "anisotropic"):
        kind = "isotropic" if p["kind"] == "scale" else "anisotropic"
        return optimize.Affine(mesh, kind)
    if p["kind"] == "radial":
        return optimize.RadialMap(
            mesh, p["knots"], center=p["center"], axis=p["axis"], fixed_outer=p["fixed_outer"]
        )
    return optimize.BendTwist(mesh, p["bend"], p["twist"])


def _target_result(opt: OptimizationSetup, quiet: bool):
    from ..io.spindoctor import read_results_any

    if opt.target_setup is not None:
        trun = run_setup(opt.target_setup, output_dir=False, quiet=quiet)
        results = trun.results
    else:
        results = read_results_any(opt.target_results)
    signals = {k: v for k, v in results.items() if hasattr(v, "signal_allcmpts")}
    ctx = _Ctx(opt.source)
    if not signals:
        raise ctx.error("target", "holds no signal result")
    if opt.target_name is not None:
        if opt.target_name not in signals:
            raise ctx.error(
                "target", f"name = {opt.target_name!r} is not there; signals: {list(signals)}"
            )
        return signals[opt.target_name]
    return next(iter(signals.values()))


def run_optimization(
    opt: OptimizationSetup | str | Path,
    *,
    output_dir: str | Path | None | bool = None,
    quiet: bool = False,
) -> OptimizationRun:
    """Fit the parameters of an optimization file: simulate the model setup (mesh, model,
    experiment), get the target signal, minimize the loss on |S|/S0 through the mesh
    parameterization, and write ``results.h5`` (target, initial and fitted signals, history,
    fitted mesh), ``history.png``, ``overlay.png`` and ``summary.json``."""
    import torch

    from .. import optimize

    if not isinstance(opt, OptimizationSetup):
        opt = load_optimization(opt)
    ctx = _Ctx(opt.source)
    run = run_setup(opt.setup, output_dir=False, quiet=quiet, solvers=[opt.solver])
    target_res = _target_result(opt, quiet)
    target = target_res.normalized().abs().detach().to(run.mesh.dtype)
    initial = run.results[opt.solver]
    if tuple(target.shape) != tuple(initial.signal_allcmpts.shape):
        raise ctx.error(
            "target",
            f"signal shape {tuple(target.shape)} [amplitude, sequence, direction] differs from "
            f"the model's {tuple(initial.signal_allcmpts.shape)}",
        )
    geo = _parameterization(opt, run.mesh)
    func = solver_function(opt.solver)
    options = dict(opt.setup.solvers[opt.solver].options)
    options.pop("return_magnetization", None)
    loss_fn = optimize.log_mse_loss if opt.loss == "log_mse" else optimize.mse_loss

    def simulate():
        return func(run.model.with_mesh(geo.mesh()), run.experiment, quiet=True, **options)

    def objective():
        return loss_fn(simulate().normalized().abs(), target)

    history = optimize.fit(
        objective,
        geo,
        optimizer=opt.optimizer,
        lr=opt.lr,
        maxiter=opt.maxiter,
        tol=opt.tol,
        quiet=quiet,
    )
    with torch.no_grad():
        fitted = simulate()
    out = OptimizationRun(opt, run, geo, history, target_res, fitted)
    directory = opt.directory if output_dir is None else output_dir
    if directory:
        out.files = _write_optimization(out, Path(directory))
    return out


def _write_optimization(out: OptimizationRun, directory: Path) -> dict[str, Path]:
    from .. import viz
    from ..io.hdf5 import save_results
    from ..io.outputs import _try

    directory.mkdir(parents=True, exist_ok=True)
    mesh = out.parameterization.mesh().detach()
    files = {
        "results": save_results(
            directory / "results.h5",
            {
                "target": out.target.detach(),
                "initial": out.run.results[out.config.solver].detach(),
                "fitted": out.fitted.detach(),
                "history": out.history.to_dict(),
            },
            experiment=out.run.experiment,
            mesh=mesh,
            setup=out.config.setup,
        )
    }
    values = {k: v.tolist() for k, v in out.parameterization.values().items()}
    summary = {
        "name": out.config.name,
        "parameters": values,
        "loss_initial": out.history.loss[0] if out.history.loss else None,
        "loss_final": out.history.loss[-1] if out.history.loss else None,
        "iterations": out.history.niter,
        "events": out.history.events,
    }
    files["summary"] = directory / "summary.json"
    files["summary"].write_text(json.dumps(summary, indent=1), encoding="utf-8")
    traj = {
        k.split(":", 1)[-1]: [p[k] for p in out.history.parameters]
        for k in (out.history.parameters[0] if out.history.parameters else {})
    }
    scalar = {k: v for k, v in traj.items() if all(isinstance(x, float) for x in v)}
    if not scalar:  # vector parameters: one curve per component
        scalar = {
            f"{k}[{i}]": [x[i] for x in v]
            for k, v in traj.items()
            for i in range(len(v[0]) if v and isinstance(v[0], list) else 0)
        }
    p = directory / "history.png"
    if (
        _try(
            "history plot",
            viz.plot_history,
            {"loss": out.history.loss, "parameters": scalar},
            path=p,
        )
        is not None
    ):
        files["history"] = p
    p = directory / "overlay.png"
    if (
        _try(
            "overlay render",
            viz.render_overlay,
            {"before": out.run.mesh, "after": mesh},
            p,
            title=out.config.name,
        )
        is not None
    ):
        files["overlay"] = p
    return files
