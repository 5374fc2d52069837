"""Write everything a simulation run produced into one folder.

``write_run(run, directory)`` (called by :func:`~spindoctor_torch.config.run_setup`) writes

* ``results.h5``: every solver's output with named axes and units, the experiment, the mesh
  (``[output] save_mesh``) and provenance (package version, setup hash and JSON, timings);
* ``summary.json``: a small digest (mesh sizes and volumes, b-values, normalized signals
  |S|/S₀, fitted ADCs, timings); ``setup.json``: the validated setup;
* ``mesh.msh``: the mesh (``save_mesh``), readable by gmsh and ``read_mesh``;
* ``*.png``: plots, a mesh render and, when the magnetization is kept, a render of it
  (``[output] plots``);
* with ``[output] vtu``: ``<solver>_magnetization.vtu`` (ξ(TE) for ParaView) and
  ``<solver>_snapshots.pvd`` (the time series of the BTPDE's ``snapshot_times`` for the
  highest amplitude, first sequence and first direction).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .hdf5 import provenance, save_results

__all__ = ["write_run", "run_summary", "signal_results", "adc_results"]


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().resolve_conj().numpy()
    return np.asarray(x)


def signal_results(results: dict[str, Any]) -> dict[str, Any]:
    """The entries that are signal results (have ``signal_allcmpts``)."""
    return {k: v for k, v in results.items() if hasattr(v, "signal_allcmpts")}


def adc_results(results: dict[str, Any]) -> dict[str, Any]:
    """ADC arrays [ncompartment, nsequence, ndirection] of the entries that are ADC results
    (a tensor, or an object / dict with an ``adc`` member)."""
    out = {}
    for k, v in results.items():
        if hasattr(v, "signal_allcmpts"):
            continue
        if isinstance(v, torch.Tensor):
            out[k] = v
        elif isinstance(v, dict) and "adc" in v:
            out[k] = v["adc"]
        elif getattr(v, "adc", None) is not None:
            out[k] = v.adc
    return out


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return _clean(_np(x).tolist())
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else str(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    return x


def _fit_adc(bvalues: torch.Tensor, signal: torch.Tensor) -> dict[str, Any] | None:
    """SpinDoctor's ``fit_signal`` of |signal_allcmpts| [namplitude, nsequence, ndirection]:
    ADC and kurtosis [nsequence][ndirection], or None when it cannot be fitted."""
    from ..postprocess.fit import fit_signal

    b = bvalues.detach().to(torch.float64)
    if b.shape[0] < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = fit_signal(b[:, :, None].expand(signal.shape), signal.detach().abs(), axis=0)
    except ValueError:
        return None
    return {"adc_um2_per_us": f.adc, "kurtosis": f.kurtosis, "converged": f.converged}


def _fit_compartments(bvalues: torch.Tensor, signal: torch.Tensor) -> torch.Tensor | None:
    """Fitted ADC [ncompartment, nsequence, ndirection] of per-compartment signals."""
    from ..postprocess.fit import fit_signal

    if bvalues.shape[0] < 2:
        return None
    b = bvalues.detach().to(torch.float64)[None, :, :, None].expand(signal.shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fit_signal(b, signal.detach().abs(), axis=1).adc
    except ValueError:
        return None


def run_summary(run) -> dict[str, Any]:
    """The digest written to ``summary.json`` (see module doc)."""
    from ..config import compartment_roles

    mesh, exp, setup = run.mesh, run.experiment, run.setup
    prov = provenance(setup)
    prov.pop("setup_json", None)
    b = _np(exp.bvalues)
    out: dict[str, Any] = {
        "name": setup.name,
        "description": setup.description,
        **prov,
        "mesh": {
            "npoint": mesh.npoint,
            "ntet": mesh.ntet,
            "ndof": mesh.ndof,
            "ncompartment": mesh.ncompartment,
            "nboundary": mesh.nboundary,
            "compartment_roles": list(compartment_roles(setup.geometry, mesh.ncompartment)),
            "compartment_volumes_um3": _np(mesh.compartment_volumes()).tolist(),
            "mean_edge_length_um": mesh.mean_edge_length(),
        },
        "experiment": {
            "sequences": [repr(s) for s in exp.sequences],
            "bvalues_s_per_mm2": b.tolist(),
            "directions": _np(exp.directions).tolist(),
        },
        "results": {},
        "timings_s": dict(run.timings),
    }
    for name, res in signal_results(run.results).items():
        att = np.abs(_np(res.signal_allcmpts)) / float(_np(res.initial_signal))
        out["results"][name] = {
            "kind": "signal",
            "normalized_signal_abs": att.tolist(),
            "normalized_signal_axes": ["amplitude", "sequence", "direction"],
            "fit": _fit_adc(exp.bvalues, res.signal_allcmpts),
            "fit_axes": ["sequence", "direction"],
            "initial_signal_um3": float(_np(res.initial_signal)),
            "timings_s": dict(res.timings),
        }
    for name, adc in adc_results(run.results).items():
        out["results"][name] = {
            "kind": "adc",
            "adc_um2_per_us": np.real(_np(adc)).tolist(),
            "adc_axes": ["compartment", "sequence", "direction"],
        }
    return _clean(out)


def _storable(results: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.detach() if hasattr(v, "detach") else v) for k, v in results.items()}


def _try(what: str, func, *args, **kwargs):
    """Run an optional output step (plots, renders); a failure becomes a warning."""
    try:
        return func(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - optional outputs must not lose the results
        warnings.warn(f"could not write {what}: {type(err).__name__}: {err}", stacklevel=3)
        return None


def write_run(run, directory: str | Path, *, quiet: bool = True) -> dict[str, Path]:
    """Write a :class:`~spindoctor_torch.config.SimulationRun` into ``directory``.

    Returns
    -------
    dict name -> path of every file written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = run.setup.output
    files: dict[str, Path] = {}
    files["results"] = save_results(
        directory / "results.h5",
        _storable(run.results),
        experiment=run.experiment,
        mesh=run.mesh if out.save_mesh else None,
        setup=run.setup,
        attrs={"timings_json": json.dumps(run.timings)},
    )
    files["summary"] = directory / "summary.json"
    files["summary"].write_text(json.dumps(run_summary(run), indent=1), encoding="utf-8")
    files["setup"] = directory / "setup.json"
    files["setup"].write_text(run.setup.to_json(), encoding="utf-8")
    if out.save_mesh:
        from ..mesh.io import write_mesh

        path = directory / "mesh.msh"
        write_mesh(run.mesh, path)
        files["mesh"] = path
    if out.vtu:
        from .vtk import write_magnetization_vtu, write_snapshots_pvd

        for name, res in signal_results(run.results).items():
            if (getattr(res, "snapshots", None) or {}).get("magnetization") is not None:
                p = _try(
                    f"{name} snapshots",
                    write_snapshots_pvd,
                    directory / f"{name}_snapshots.pvd",
                    run.mesh,
                    res,
                )
                if p is not None:
                    files[f"{name}_pvd"] = p
            if getattr(res, "magnetization", None) is not None:
                p = _try(
                    f"{name} VTU",
                    write_magnetization_vtu,
                    directory / f"{name}_magnetization.vtu",
                    run.mesh,
                    res,
                )
                if p is not None:
                    files[f"{name}_vtu"] = p
    if out.plots:
        files.update(write_plots(run, directory))
    return files


def write_plots(run, directory: Path) -> dict[str, Path]:
    """PNG plots of a run: signal vs b, ADC, MF vs BTPDE, HARDI, timings and the mesh."""
    from .. import viz
    from ..config import compartment_roles

    roles = compartment_roles(run.setup.geometry, run.mesh.ncompartment)
    labels = [f"{c}: {r}" for c, r in enumerate(roles)]
    files: dict[str, Path] = {}
    sig = signal_results(run.results)
    if sig:
        p = directory / "signal.png"
        if (
            _try("signal plot", viz.plot_signal, sig, model=run.model, labels=labels, path=p)
            is not None
        ):
            files["plot_signal"] = p
    adcs = dict(adc_results(run.results))
    for name, res in sig.items():
        if name == "free":
            continue
        fitted = _fit_compartments(run.experiment.bvalues, res.signal)
        if fitted is not None:
            adcs[f"{name} (fit)"] = fitted
    if adcs:
        p = directory / "adc.png"
        if _try("ADC plot", viz.plot_adc, adcs, compartment_names=labels, path=p) is not None:
            files["plot_adc"] = p
    if "mf" in sig and "btpde" in sig:
        p = directory / "mf_vs_btpde.png"
        if _try("MF error plot", viz.plot_mf_error, sig["mf"], sig["btpde"], path=p) is not None:
            files["plot_mf_error"] = p
    if sig and run.experiment.ndirection >= 6:
        first_name, first = next(iter(sig.items()))
        att = np.abs(_np(first.signal_allcmpts))[-1, 0] / float(_np(first.initial_signal))
        p = directory / "hardi.png"
        title = f"{first_name}: |S|/S₀ at b = {float(_np(run.experiment.bvalues)[-1, 0]):g}"
        if (
            _try("HARDI plot", viz.plot_hardi, run.experiment.directions, att, title=title, path=p)
            is not None
        ):
            files["plot_hardi"] = p
    with_mag = [(n, r) for n, r in sig.items() if getattr(r, "magnetization", None) is not None]
    if with_mag:
        name, res = with_mag[0]
        b_last = float(_np(run.experiment.bvalues)[-1, 0])
        p = directory / "magnetization.png"
        title = f"{name}: real part of the magnetization at TE, b = {b_last:g} (clipped)"
        if (
            _try(
                "magnetization render",
                viz.render_field,
                run.mesh,
                res.magnetization[-1, 0, 0],
                p,
                part="real",
                clip="y",
                title=title,
            )
            is not None
        ):
            files["render_magnetization"] = p
    p = directory / "timings.png"
    if _try("timings plot", viz.plot_timings, run.timings, path=p) is not None:
        files["plot_timings"] = p
    p = directory / "mesh.png"
    if (
        _try("mesh render", viz.render_mesh, run.mesh, p, labels=labels, title=run.setup.name)
        is not None
    ):
        files["render_mesh"] = p
    return files
