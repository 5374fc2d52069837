"""Recover axon radius, myelin radius and membrane permeability of a myelinated axon.

User story: "My tissue model is an axon (slow-relaxing, fast-diffusing water) inside a myelin
sheath (short T2, slow diffusion) with a permeable membrane between them; from PGSE signals at
three diffusion times, what are the axon radius, the outer radius and the permeability κ?"

The optimized geometry is a coarse two-compartment mesh cylinder (axon radius 2, outer radius
3 µm). A :class:`~spindoctor_torch.optimize.RadialMap` with knots [2, 3] moves both radii
(parameter ``radii``); :class:`~spindoctor_torch.optimize.PhysicalParameters` holds log κ. The
signals come from the matrix formalism (:func:`~spindoctor_torch.solvers.mf.solve_mf`); the
target from the analytical two-layer infinite cylinder
(:func:`~spindoctor_torch.solvers.analytical.solve_analytical`) for gradients in the xy
plane, where the finite mesh cylinder with reflecting caps is equivalent to it. The diffusivities
and T2 of both compartments are known. Different echo times (T2 weighting) tell the volume
fraction, the b-dependence at several diffusion times the radii and the exchange.

Writes to ``--output``: ``trace.png`` (loss and parameters at every objective evaluation),
``before_after.png`` (PyVista overlay), ``history.json``, ``summary.json``.

Run: ``python examples/fit_myelin.py [--h 0.5] [--output fit_myelin_out]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from spindoctor_torch.experiment import Experiment, unit_circle
from spindoctor_torch.mesh.gmsh_recipes import cylinder
from spindoctor_torch.model import Model
from spindoctor_torch.optimize import (
    PhysicalParameters,
    RadialMap,
    fit,
    log_mse_loss,
    relative_error,
)
from spindoctor_torch.sequences import PGSE
from spindoctor_torch.solvers.analytical import LayeredGeometry, solve_analytical
from spindoctor_torch.solvers.mf import solve_mf
from spindoctor_torch.viz.plots import plot_history

DIFFUSIVITY = (0.002, 0.0005)  # axon, myelin; µm²/µs
RELAXATION = (70000.0, 15000.0)  # T2 of axon, myelin; µs
SEQUENCES = (PGSE(2500.0, 10000.0), PGSE(5000.0, 20000.0), PGSE(10000.0, 43100.0))  # µs
BVALUES = (0.0, 1000.0, 2000.0, 4000.0)  # s/mm²
TARGET = {"radius_axon": 2.6, "radius_outer": 3.5, "permeability": 5e-5}  # µm, µm, µm/µs


def make_experiment(ndirection: int = 6) -> Experiment:
    """PGSE experiment, gradient directions in the xy plane (perpendicular to the axon)."""
    return Experiment(
        list(SEQUENCES), bvalues=list(BVALUES), directions=unit_circle(ndirection, half=True)
    )


def analytical_signals(
    radius_axon: float, radius_outer: float, permeability: float, experiment: Experiment
) -> torch.Tensor:
    """Normalized magnitudes of the two-layer infinite cylinder, [namplitude, nsequence,
    ndirection] (equal over in-plane directions)."""
    geo = LayeredGeometry(
        "cylinder",
        radii=[radius_axon, radius_outer],
        diffusivity=list(DIFFUSIVITY),
        relaxation=list(RELAXATION),
        permeability=permeability,
    )
    res = solve_analytical(geo, experiment.sequences, bvalues=list(BVALUES), length_scale=0.4)
    s = res.normalized().abs()
    return s[:, :, None].expand(-1, -1, experiment.ndirection).clone()


def plot_trace(trace: dict[str, list[float]], truth: dict[str, float], path) -> None:
    """Loss and parameters at every objective evaluation (L-BFGS line-search points
    included), the targets dashed."""
    params = {k: v for k, v in trace.items() if k != "loss"}
    plot_history({"loss": trace["loss"], "parameters": params}, targets=truth, path=path)


def run(
    *,
    radii_start: tuple[float, float] = (2.0, 3.0),
    permeability_start: float = 2e-4,
    target: dict | None = None,
    h: float = 0.5,
    height: float = 1.0,
    ndirection: int = 6,
    length_scale: float = 1.0,
    maxiter: int = 6,
    output: str | Path | None = None,
    render: bool = True,
    quiet: bool = False,
) -> dict:
    """Fit (axon radius, outer radius, κ); returns fitted values, relative errors, history.

    Parameters
    ----------
    radii_start : (axon, outer) radii of the optimized mesh, µm.
    permeability_start : initial κ, µm/µs.
    target : {"radius_axon", "radius_outer", "permeability"} (default :data:`TARGET`).
    h : mesh size, µm.
    height : cylinder length, µm.
    ndirection : in-plane gradient directions.
    length_scale : MF length scale, µm.
    maxiter : L-BFGS outer iterations.
    output : folder for plots and JSON (nothing written when None).
    render : also write the PyVista overlay.
    """
    target = dict(TARGET if target is None else target)
    t0 = time.perf_counter()
    r_in, r_out = radii_start
    mesh = cylinder(r_out, height, h, layers=[r_in])
    shape = RadialMap(mesh, knots=[r_in, r_out], axis=(0.0, 0.0, 1.0))
    physics = PhysicalParameters(permeability=permeability_start)
    experiment = make_experiment(ndirection)
    measured = analytical_signals(
        target["radius_axon"], target["radius_outer"], target["permeability"], experiment
    )

    trace: dict[str, list[float]] = {
        "loss": [],
        "radius_axon": [],
        "radius_outer": [],
        "permeability": [],
    }

    def objective() -> torch.Tensor:
        model = Model(
            shape.mesh(),
            diffusivity=torch.tensor(DIFFUSIVITY, dtype=torch.float64),
            relaxation=torch.tensor(RELAXATION, dtype=torch.float64),
            permeability=physics.value("permeability"),
        )
        res = solve_mf(model, experiment, length_scale=length_scale, quiet=True)
        loss = log_mse_loss(res.normalized().abs(), measured)
        radii = shape.parameters["radii"].detach()
        trace["loss"].append(float(loss.detach()))
        trace["radius_axon"].append(float(radii[0]))
        trace["radius_outer"].append(float(radii[1]))
        trace["permeability"].append(float(physics.value("permeability").detach()))
        return loss

    history = fit(
        objective,
        [shape, physics],
        optimizer="lbfgs",
        lr=1.0,
        maxiter=maxiter,
        tol=1e-10,
        quiet=quiet,
    )
    radii = shape.parameters["radii"].detach()
    fitted = {
        "radius_axon": float(radii[0]),
        "radius_outer": float(radii[1]),
        "permeability": float(physics.value("permeability").detach()),
    }
    errors = {k: relative_error(v, target[k]) for k, v in fitted.items()}
    summary = {
        "start": {"radius_axon": r_in, "radius_outer": r_out, "permeability": permeability_start},
        "target": target,
        "fit": fitted,
        "relative_error": errors,
        "npoint": mesh.npoint,
        "iterations": history.niter,
        "evaluations": len(trace["loss"]),
        "seconds": time.perf_counter() - t0,
    }
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        history.save(out / "history.json")
        plot_trace(trace, target, out / "trace.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if render:
            from spindoctor_torch.viz.scenes import render_overlay

            truth = RadialMap(mesh, knots=[r_in, r_out], axis=(0.0, 0.0, 1.0))
            truth.set_values({"radii": [target["radius_axon"], target["radius_outer"]]})
            render_overlay(
                {"before": mesh, "after": shape.mesh().detach(), "target": truth.mesh().detach()},
                out / "before_after.png",
                title="myelinated axon: before / after / target",
            )
    summary["history"] = history
    return summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default="fit_myelin_out", help="folder for plots and JSON")
    ap.add_argument("--h", type=float, default=0.5, help="mesh size, µm")
    ap.add_argument("--ndirection", type=int, default=6)
    ap.add_argument("--maxiter", type=int, default=6)
    ap.add_argument("--no-render", action="store_true", help="skip the PyVista render")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    s = run(
        h=args.h,
        ndirection=args.ndirection,
        maxiter=args.maxiter,
        output=args.output,
        render=not args.no_render,
        quiet=args.quiet,
    )
    for k in ("radius_axon", "radius_outer", "permeability"):
        print(
            f"{k:>13}: start {s['start'][k]:.4g}, fit {s['fit'][k]:.5g}, target "
            f"{s['target'][k]:.4g}, relative error {100 * s['relative_error'][k]:.2f} %"
        )
    print(f"({s['iterations']} iterations, {s['seconds']:.1f} s, {s['npoint']} nodes)")
    return s


if __name__ == "__main__":
    main()
