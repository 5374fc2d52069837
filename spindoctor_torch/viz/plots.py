"""matplotlib plots of results (SpinDoctor's ``plot_signal``, ``plot_adc``, ``plot_hardi``,
``plot_timing`` and the MF-vs-BTPDE error of its driver) and of optimization histories.

Every function builds a :class:`matplotlib.figure.Figure` through the object-oriented API (no
``pyplot``, no global state, no display needed) and returns it; pass ``path`` to also save it
(PNG, PDF, SVG by extension). Figures display inline in Jupyter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "plot_signal",
    "plot_adc",
    "plot_hardi",
    "plot_mf_error",
    "plot_timings",
    "plot_history",
]


def _figure(ncols: int = 1, *, size=(5.5, 4.0), left: float = 0.15):
    from matplotlib.figure import Figure

    # Fixed margins instead of a layout engine: constrained layout draws every figure twice.
    fig = Figure(figsize=(size[0] * ncols, size[1]))
    fig.subplots_adjust(left=left / ncols, right=0.97, bottom=0.12, top=0.91, wspace=0.3)
    axes = [fig.add_subplot(1, ncols, k + 1) for k in range(ncols)]
    return fig, axes


def _finish(fig, path: str | Path | None):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().resolve_conj().numpy()
    return np.asarray(x)


def _fit(b: np.ndarray, s: np.ndarray) -> tuple[float, float] | None:
    """SpinDoctor's adaptive polynomial fit of log s against b: (ADC µm²/µs, S0), or None
    when there are too few distinct b-values or non-positive signals."""
    import warnings

    from ..postprocess.fit import fit_signal

    if np.unique(b).size < 2 or not np.all(s > 0):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two b-values: a line, flagged in the legend instead
        f = fit_signal(
            torch.as_tensor(b, dtype=torch.float64), torch.as_tensor(s, dtype=torch.float64)
        )
    return float(f.adc), float(f.S0)


def _bvalues(result, sequence: int, bvalues=None) -> np.ndarray:
    if bvalues is not None:
        return _np(bvalues).reshape(-1)
    exp = getattr(result, "experiment", None)
    b = getattr(exp, "bvalues", None)
    if b is None:
        raise ValueError(
            f"{result.method}: no experiment attached to the result; pass bvalues= (s/mm²)"
        )
    b = _np(b)
    return b[:, sequence] if b.ndim == 2 else b


def plot_signal(
    results: Any,
    *,
    model: Any = None,
    sequence: int = 0,
    direction: int | str = "mean",
    bvalues: Any = None,
    compartments: bool = True,
    labels: Sequence[str] | None = None,
    free_diffusivity: float | Sequence[float] | None = None,
    fit: bool = True,
    path: str | Path | None = None,
):
    """Normalized signal vs b, total and per compartment, with free diffusion and a fit.

    Parameters
    ----------
    results : a Result or {name: Result} (several solvers overlaid, e.g. btpde and mf). A
        result whose method is ``"free"`` is drawn as the free-diffusion reference.
    model : the Model; gives per-compartment normalizations ρ_i|Ω_i| and, without a free
        result, the free-diffusion references exp(−D_i b) with D_i = tr(D_i)/3.
    sequence : which sequence.
    direction : a direction index, or ``"mean"`` (direction average).
    bvalues : (namplitude,) s/mm², when the results carry no experiment.
    compartments : also draw each compartment (needs ``model``).
    labels : names of the compartments (default ``"compartment i"``).
    free_diffusivity : µm²/µs; free-diffusion reference(s) when there is neither a free result
        nor a model.
    fit : fit the total signal of the first result with SpinDoctor's adaptive polynomial
        (:func:`~spindoctor_torch.postprocess.fit.fit_signal`) and draw S0·exp(−ADC·b) with
        its ADC in the legend.

    Returns
    -------
    matplotlib Figure (log y axis).
    """
    if not isinstance(results, Mapping):
        results = {getattr(results, "method", "result"): results}
    free = {k: v for k, v in results.items() if getattr(v, "method", k) == "free"}
    solved = {k: v for k, v in results.items() if k not in free}
    if not solved:
        solved, free = free, {}
    fig, (ax,) = _figure()
    styles = ["-", "--", ":", "-."]
    first = next(iter(solved.values()))
    b = _bvalues(first, sequence, bvalues)
    bb = np.linspace(b.min(), b.max(), 100)

    def pick(x: np.ndarray) -> np.ndarray:  # [..., ndir] -> [...]
        return x.mean(-1) if direction == "mean" else x[..., int(direction)]

    def per_compartment(res) -> np.ndarray:  # [cmpt, amp], each normalized by rho_i |Omega_i|
        sig = pick(np.abs(_np(res.signal))[:, :, sequence])
        return sig / (rho * vols)[:, None]

    vols = rho = None
    if model is not None:
        vols = _np(model.mesh.compartment_volumes())
        rho = _np(model.density)
    ncmpt = first.signal.shape[0]
    names = list(labels) if labels is not None else [f"compartment {c}" for c in range(ncmpt)]
    lowest = np.inf
    for k, (name, res) in enumerate(solved.items()):
        ls = styles[k % len(styles)]
        total = pick(np.abs(_np(res.signal_allcmpts))[:, sequence]) / float(_np(res.initial_signal))
        per_cmpt = compartments and vols is not None and ncmpt > 1
        ax.plot(
            b,
            total,
            ls,
            color="k" if per_cmpt else f"C{k % 10}",
            marker="o",
            ms=3,
            label=f"{name}: all" if per_cmpt else name,
        )
        lowest = min(lowest, float(total.min()))
        if per_cmpt:
            for c, curve in enumerate(per_compartment(res)):
                lowest = min(lowest, float(curve.min()))
                ax.plot(b, curve, ls, color=f"C{c % 10}", marker=".", label=f"{name}: {names[c]}")
    if fit:
        total = pick(np.abs(_np(first.signal_allcmpts))[:, sequence]) / float(
            _np(first.initial_signal)
        )
        fitted = _fit(b, total)
        if fitted is not None:
            adc, s0 = fitted
            ax.plot(
                bb, s0 * np.exp(-adc * bb), color="0.45", lw=1, label=f"fit: ADC = {adc:.3g} µm²/µs"
            )
    if free:
        res = next(iter(free.values()))
        total = pick(np.abs(_np(res.signal_allcmpts))[:, sequence]) / float(_np(res.initial_signal))
        ax.plot(b, total, color="0.6", lw=1, ls="--", label="free diffusion: all")
        if compartments and vols is not None and ncmpt > 1:
            for c, curve in enumerate(per_compartment(res)):
                ax.plot(
                    b,
                    curve,
                    color=f"C{c % 10}",
                    lw=0.8,
                    ls=(0, (2, 2)),
                    alpha=0.6,
                    label=f"free: {names[c]}",
                )
    else:
        if model is not None:
            dfree = np.diagonal(_np(model.diffusivity), axis1=1, axis2=2).mean(-1)
        elif free_diffusivity is not None:
            dfree = np.atleast_1d(np.asarray(free_diffusivity, dtype=np.float64))
        else:
            dfree = np.zeros(0)
        for d in np.unique(np.round(dfree, 12)):
            ax.plot(
                bb, np.exp(-d * bb), color="0.6", lw=1, ls="--", label=f"free, D = {d:g} µm²/µs"
            )
    ax.set_yscale("log")
    if np.isfinite(lowest) and lowest > 0:  # free diffusion may decay far below the cells
        ax.set_ylim(bottom=0.3 * lowest, top=1.3)
    ax.set_xlabel("b (s/mm²)")
    ax.set_ylabel("normalized signal |S|/S₀")
    seq = _sequence_name(first, sequence)
    ax.set_title(f"signal vs b{' — ' + seq if seq else ''}", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return _finish(fig, path)


def _sequence_name(result, sequence: int) -> str:
    exp = getattr(result, "experiment", None)
    seqs = getattr(exp, "sequences", None)
    return repr(seqs[sequence]) if seqs is not None and sequence < len(seqs) else ""


def plot_adc(
    adcs: Mapping[str, Any],
    *,
    sequence: int = 0,
    compartment_names: Sequence[str] | None = None,
    path: str | Path | None = None,
):
    """ADC per compartment, one bar group per compartment and one bar per method.

    Parameters
    ----------
    adcs : method -> ADC, µm²/µs, [ncompartment, nsequence, ndirection] (or [ncompartment]).
        Bars show the direction mean, error bars the min-max over directions.
    """
    fig, (ax,) = _figure()
    names = list(adcs)
    width = 0.8 / max(len(names), 1)
    ncmpt = 0
    for k, name in enumerate(names):
        a = np.real(_np(adcs[name])).astype(np.float64)
        if a.ndim == 3:
            a = a[:, sequence, :]
        a = a.reshape(a.shape[0], -1)
        ncmpt = max(ncmpt, a.shape[0])
        x = np.arange(a.shape[0]) + (k - (len(names) - 1) / 2) * width
        mean = a.mean(1)
        err = np.stack([mean - a.min(1), a.max(1) - mean])
        ax.bar(x, mean, width, yerr=err, capsize=3, label=name)
    labels = compartment_names or [f"compartment {c}" for c in range(ncmpt)]
    ax.set_xticks(np.arange(ncmpt), labels[:ncmpt])
    ax.set_ylabel("ADC (µm²/µs)")
    ax.set_title("apparent diffusion coefficient")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _finish(fig, path)


def plot_hardi(
    directions: Any,
    values: Any,
    *,
    title: str = "HARDI",
    label: str = "",
    path: str | Path | None = None,
):
    """A direction-dependent quantity (signal, ADC) on the unit sphere (SpinDoctor
    ``plot_hardi``): the sphere triangulated through ±u (the signal is centrosymmetric),
    faces coloured by the mean value of their vertices, plus the points themselves.

    Parameters
    ----------
    directions : (ndirection, 3), normalized internally; at least 3 non-coplanar ones.
    values : (ndirection,) real values.
    """
    from matplotlib import cm
    from matplotlib.colors import Normalize
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection
    from scipy.spatial import ConvexHull

    u = _np(directions).astype(np.float64).reshape(-1, 3)
    v = np.real(_np(values)).astype(np.float64).reshape(-1)
    if u.shape[0] != v.shape[0]:
        raise ValueError(f"{u.shape[0]} directions for {v.shape[0]} values")
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    pts = np.concatenate([u, -u])
    vals = np.concatenate([v, v])
    hull = ConvexHull(pts)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    norm = Normalize(vals.min(), vals.max() if vals.max() > vals.min() else vals.min() + 1e-30)
    cmap = cm.viridis
    face_vals = vals[hull.simplices].mean(1)
    coll = Poly3DCollection(
        pts[hull.simplices], facecolors=cmap(norm(face_vals)), edgecolors="k", linewidths=0.2
    )
    ax.add_collection3d(coll)
    ax.scatter(*pts.T, c=vals, cmap=cmap, norm=norm, s=8)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_zlim(-1, 1)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    ax.set_title(title)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.7, label=label)
    return _finish(fig, path)


def plot_mf_error(
    mf: Any,
    btpde: Any,
    *,
    bvalues: Any = None,
    path: str | Path | None = None,
):
    """Relative MF error vs b (SpinDoctor's driver metric):
    max over directions of |S_MF − S_BTPDE| / max_direction |S_BTPDE|, per sequence."""
    s_mf = _np(mf.signal_allcmpts)
    s_bt = _np(btpde.signal_allcmpts)
    if s_mf.shape != s_bt.shape:
        raise ValueError(f"MF {s_mf.shape} and BTPDE {s_bt.shape} signals differ in shape")
    err = np.abs(s_mf - s_bt) / np.abs(s_bt).max(axis=-1, keepdims=True)
    err = err.max(-1)  # [amp, seq]
    fig, (ax,) = _figure()
    for s in range(err.shape[1]):
        b = _bvalues(btpde, s, bvalues)
        ax.semilogy(
            b, np.maximum(err[:, s], 1e-16), "o-", label=_sequence_name(btpde, s) or f"sequence {s}"
        )
    ax.set_xlabel("b (s/mm²)")
    ax.set_ylabel("max |S_MF − S_BTPDE| / max |S_BTPDE|")
    ax.set_title("matrix formalism vs BTPDE")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _finish(fig, path)


def plot_timings(
    timings: Mapping[str, float], *, title: str = "wall time", path: str | Path | None = None
):
    """Horizontal bars of wall times (seconds) by stage or solver."""
    names = list(timings)
    vals = [float(timings[n]) for n in names]
    height = 1.2 + 0.35 * max(len(names), 2)
    fig, (ax,) = _figure(size=(5.5, height), left=0.22)
    fig.subplots_adjust(bottom=0.5 / height, top=1 - 0.35 / height)
    ax.barh(names, vals, color="C0")
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.3g} s", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(title)
    ax.set_xlim(0, max(vals + [1e-3]) * 1.3)
    return _finish(fig, path)


def plot_history(
    history: Any,
    *,
    targets: Mapping[str, float] | None = None,
    path: str | Path | None = None,
):
    """Optimization history: loss per iteration (log scale) and parameter trajectories.

    Parameters
    ----------
    history : an object with ``loss`` (sequence of floats) and ``parameters`` (sequence of
        {name: value} or a {name: sequence}), or a dict with those keys.
    targets : name -> true value, drawn as dashed lines.
    """
    get = history.get if isinstance(history, Mapping) else lambda k, d=None: getattr(history, k, d)
    loss = np.asarray([float(x) for x in get("loss", [])], dtype=np.float64)
    params = get("parameters", None) or get("params", None) or {}
    if isinstance(params, Sequence) and params and isinstance(params[0], Mapping):
        params = {
            k: [float(np.asarray(_np(p[k])).reshape(-1)[0]) for p in params] for k in params[0]
        }
    fig, (ax1, ax2) = _figure(2)
    if loss.size and loss.min() > 0:
        ax1.semilogy(np.arange(loss.size), loss, "-", color="C3")
    elif loss.size:  # e.g. a negative log-likelihood without its constant
        ax1.plot(np.arange(loss.size), loss, "-", color="C3")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("loss")
    ax1.set_title("loss")
    ax1.grid(True, which="both", alpha=0.3)
    for k, (name, traj) in enumerate(dict(params).items()):
        traj = np.asarray([float(np.asarray(_np(t)).reshape(-1)[0]) for t in traj])
        ax2.plot(np.arange(traj.size), traj, color=f"C{k}", label=name)
        if targets and name in targets:
            ax2.axhline(float(targets[name]), color=f"C{k}", ls="--", lw=1, label=f"{name} target")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("parameter value")
    ax2.set_title("parameters")
    if params:
        ax2.legend(fontsize=8)
    ax2.grid(True, alpha=0.3)
    return _finish(fig, path)
