"""Recover the bend and the twist of an axon segment from its diffusion signals.

User story: "An axon is not straight: from PGSE signals in many directions, how much is it
bent and twisted?" The cell is a cylinder (radius 1 µm, length 10 µm, axis z) deformed as in
SpinDoctor (:mod:`spindoctor_torch.mesh.deform`): bent in the x-z plane by ``a_bend`` (the
ends move by 7.5·a_bend·width) and twisted about z by ``a_twist`` radians over its length.
A twist alone leaves a circular cylinder unchanged; on a bent one it turns the planar
centre line into a helix-like curve, which the signals in directions out of the x-z plane see.

The optimized geometry is a mesh of the straight cylinder deformed by
:class:`~spindoctor_torch.optimize.BendTwist` (parameters ``bend``, ``twist``); its signals come
from the matrix formalism. The target signals come from an independent, finer mesh of the
same cylinder deformed by SpinDoctor's own rule
(:func:`~spindoctor_torch.mesh.deform.bend_twist`: extents and twist centre measured on that
mesh), so the discretizations of target and fit differ.

Writes to ``--output``: ``trace.png`` (loss, bend and twist at every objective evaluation),
``before_after.png`` (PyVista overlay of start, fit and target), ``history.json``,
``summary.json``.

Run: ``python examples/fit_bend_twist.py [--h 0.25] [--h-target 0.16] [--output out]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from spindoctor_torch.experiment import Experiment, unit_sphere
from spindoctor_torch.mesh.deform import bend_twist
from spindoctor_torch.mesh.gmsh_recipes import cylinder
from spindoctor_torch.model import Model
from spindoctor_torch.optimize import BendTwist, fit, mse_loss, relative_error
from spindoctor_torch.sequences import PGSE
from spindoctor_torch.solvers.mf import solve_mf
from spindoctor_torch.viz.plots import plot_history

DIFFUSIVITY = 0.002  # µm²/µs
RADIUS, HEIGHT = 1.0, 10.0  # µm
SEQUENCES = (PGSE(5000.0, 20000.0), PGSE(10000.0, 43100.0))  # µs
BVALUES = (1000.0, 2500.0, 4000.0)  # s/mm²
TARGET = {"bend": 0.12, "twist": 3.0}  # dimensionless, radians


def make_experiment(ndirection: int = 15) -> Experiment:
    """PGSE experiment with ``ndirection`` Fibonacci directions on the sphere."""
    return Experiment(list(SEQUENCES), bvalues=list(BVALUES), directions=unit_sphere(ndirection))


def signals(mesh, experiment: Experiment, length_scale: float) -> torch.Tensor:
    """Normalized MF signal magnitudes [namplitude, nsequence, ndirection]."""
    res = solve_mf(Model(mesh, DIFFUSIVITY), experiment, length_scale=length_scale, quiet=True)
    return res.normalized().abs()


def plot_trace(trace: dict[str, list[float]], truth: dict[str, float], path) -> None:
    """Loss and parameters at every objective evaluation (L-BFGS line-search points
    included), the targets dashed."""
    params = {k: v for k, v in trace.items() if k != "loss"}
    plot_history({"loss": trace["loss"], "parameters": params}, targets=truth, path=path)


def run(
    *,
    start: dict | None = None,
    target: dict | None = None,
    h: float = 0.25,
    h_target: float = 0.16,
    ndirection: int = 15,
    length_scale: float = 1.0,
    maxiter: int = 4,
    output: str | Path | None = None,
    render: bool = True,
    quiet: bool = False,
) -> dict:
    """Fit (bend, twist); returns fitted values, relative errors, the history, timings.

    Parameters
    ----------
    start, target : {"bend", "twist"} (defaults: half the target; :data:`TARGET`).
    h, h_target : mesh sizes of the optimized and of the target cylinder, µm.
    ndirection : gradient directions (Fibonacci sphere).
    length_scale : MF length scale of both meshes, µm.
    maxiter : L-BFGS outer iterations.
    output : folder for plots and JSON (nothing written when None).
    render : also write the PyVista overlay.
    """
    target = dict(TARGET if target is None else target)
    start = {k: 0.5 * v for k, v in target.items()} if start is None else dict(start)
    t0 = time.perf_counter()
    experiment = make_experiment(ndirection)
    fine = cylinder(RADIUS, HEIGHT, h_target)
    fine = fine.with_points(bend_twist(fine.points, target["bend"], target["twist"]))
    with torch.no_grad():
        measured = signals(fine, experiment, length_scale)
    t_target = time.perf_counter() - t0

    mesh = cylinder(RADIUS, HEIGHT, h)
    geometry = BendTwist(mesh, bend=start["bend"], twist=start["twist"])
    initial = geometry.mesh().detach()

    trace: dict[str, list[float]] = {"loss": [], "bend": [], "twist": []}

    def objective() -> torch.Tensor:
        loss = mse_loss(signals(geometry.mesh(), experiment, length_scale), measured)
        trace["loss"].append(float(loss.detach()))
        for name in ("bend", "twist"):
            trace[name].append(float(geometry.parameters[name].detach()))
        return loss

    history = fit(
        objective, geometry, optimizer="lbfgs", lr=1.0, maxiter=maxiter, tol=1e-10, quiet=quiet
    )
    fitted = {k: float(v) for k, v in geometry.values().items()}
    errors = {k: relative_error(fitted[k], target[k]) for k in target}
    summary = {
        "start": start,
        "target": target,
        "fit": fitted,
        "relative_error": errors,
        "npoint": mesh.npoint,
        "npoint_target": fine.npoint,
        "iterations": history.niter,
        "evaluations": len(trace["loss"]),
        "seconds_target": t_target,
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

            render_overlay(
                {"before": initial, "after": geometry.mesh().detach(), "target": fine},
                out / "before_after.png",
                title=f"bend {fitted['bend']:.4f} (target {target['bend']}), "
                f"twist {fitted['twist']:.4f} (target {target['twist']})",
            )
    summary["history"] = history
    return summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default="fit_bend_twist_out", help="folder for plots and JSON")
    ap.add_argument("--h", type=float, default=0.25, help="mesh size of the fit, µm")
    ap.add_argument("--h-target", type=float, default=0.16, help="mesh size of the target, µm")
    ap.add_argument("--ndirection", type=int, default=15)
    ap.add_argument("--maxiter", type=int, default=4)
    ap.add_argument("--no-render", action="store_true", help="skip the PyVista render")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    s = run(
        h=args.h,
        h_target=args.h_target,
        ndirection=args.ndirection,
        maxiter=args.maxiter,
        output=args.output,
        render=not args.no_render,
        quiet=args.quiet,
    )
    for k in ("bend", "twist"):
        print(
            f"{k:>5}: start {s['start'][k]:.4g}, fit {s['fit'][k]:.5g}, target "
            f"{s['target'][k]:.4g}, relative error {100 * s['relative_error'][k]:.2f} %"
        )
    print(
        f"({s['iterations']} iterations, {s['seconds']:.1f} s, {s['npoint']} nodes, target "
        f"{s['npoint_target']} nodes)"
    )
    return s


if __name__ == "__main__":
    main()
