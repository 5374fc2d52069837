"""The optimization loop: Adam or L-BFGS with a mesh-quality guard, checkpoints and history."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import MeshError, SetupError, SolverError
from ..mesh.quality import radius_ratios
from .parameterizations import Parameterization, PhysicalParameters

__all__ = ["History", "QualityGuard", "fit", "INVALID_LOSS"]

INVALID_LOSS = 1e30
"""Loss returned to L-BFGS's line search for a trial point with an inverted tetrahedron (the
objective is not evaluated there)."""


@dataclass
class History:
    """Per-iteration record of an optimization: loss, parameter values, timings, quality
    (minimum normalized radius ratio and minimum signed tet volume, µm³, of the accepted
    mesh)."""

    loss: list[float] = field(default_factory=list)
    parameters: list[dict[str, list]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    min_radius_ratio: list[float] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    min_volume: list[float] = field(default_factory=list)

    @property
    def niter(self) -> int:
        return len(self.loss)

    def append(
        self,
        loss: float,
        values: dict,
        seconds: float,
        quality: float,
        min_volume: float = float("nan"),
    ) -> None:
        """Record one iteration: loss, parameter values, seconds, minimum normalized radius
        ratio and minimum signed tet volume (µm³) of the accepted mesh."""
        self.loss.append(float(loss))
        self.parameters.append({k: np.asarray(v).tolist() for k, v in values.items()})
        self.seconds.append(float(seconds))
        self.min_radius_ratio.append(float(quality))
        self.min_volume.append(float(min_volume))

    def trajectory(self, name: str) -> np.ndarray:
        """(niter, ...) values of parameter ``name`` over the iterations."""
        return np.array([p[name] for p in self.parameters])

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "parameters": self.parameters,
            "seconds": self.seconds,
            "min_radius_ratio": self.min_radius_ratio,
            "events": self.events,
            "min_volume": self.min_volume,
        }

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**{k: list(v) for k, v in d.items()})

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    def plot(self, path=None, *, truth: dict | None = None):
        """Loss curve and parameter trajectories (a matplotlib Figure, saved if ``path``);
        see :func:`spindoctor_torch.viz.plot_history`."""
        from ..viz.plots import plot_history

        scalars = {
            name: self.trajectory(name).reshape(self.niter, -1)[:, 0].tolist()
            for name in (self.parameters[0] if self.parameters else {})
            if np.asarray(self.parameters[0][name]).size == 1
        }
        return plot_history({"loss": self.loss, "parameters": scalars}, targets=truth, path=path)


@dataclass
class QualityGuard:
    """Rejects steps that invert or badly degrade tetrahedra.

    A step is accepted when no tet of ``geometry.mesh()`` is inverted and the minimum
    normalized radius ratio stays above ``min_radius_ratio`` (or above ``relative`` × its
    initial value, whichever is lower). A rejected step is retried with half the step size
    (up to ``max_backtracks`` times); if it still fails, the last good state is restored and
    ``remesh`` (a callable taking the parameterization and returning a new one, e.g.
    re-tetrahedralizing the current surface with gmsh) is called when given: the returned
    parameterization replaces the old one in the fitted parameters and the optimizer restarts
    on it (fresh state), so ``remesh`` must also make the objective read it (for example by
    updating the variable the objective closes over). Without ``remesh`` the optimization
    stops with the last good state. Either way an event in :attr:`History.events` names the
    failing measure and its value.
    """

    min_radius_ratio: float = 0.02
    relative: float = 0.2
    max_backtracks: int = 6
    remesh: Callable[[Parameterization], Parameterization] | None = None

    def quality(self, geometry: Parameterization) -> tuple[bool, float]:
        """(no tet inverted, minimum normalized radius ratio) of ``geometry.mesh()``."""
        ok, rr, _ = self.measure(geometry)
        return ok, rr

    def measure(self, geometry: Parameterization) -> tuple[bool, float, float]:
        """(no tet inverted, minimum radius ratio, minimum signed tet volume in µm³)."""
        with torch.no_grad():
            mesh = geometry.mesh()
            vol = mesh.tet_signed_volumes()
            rr = radius_ratios(mesh.points, mesh.tets)
            return bool((vol > 0).all()), float(rr.min()), float(vol.min())


def _groups(params) -> list:
    if isinstance(params, (Parameterization, PhysicalParameters)):
        return [params]
    return list(params)


def fit(
    objective: Callable[[], torch.Tensor],
    params,
    *,
    geometry: Parameterization | None = None,
    optimizer: str = "adam",
    lr: float | dict = 0.05,
    maxiter: int = 100,
    tol: float = 0.0,
    guard: QualityGuard | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
    resume: bool = False,
    seed: int | None = 0,
    callback: Callable[[int, float], None] | None = None,
    quiet: bool = False,
) -> History:
    """Minimize ``objective()`` over the leaf tensors of ``params``.

    Parameters
    ----------
    objective : callable () -> scalar tensor
        Recomputes the loss from the current parameter values (build the mesh with
        ``geometry.mesh()`` inside it).
    params : Parameterization, PhysicalParameters or a list of them
    geometry : Parameterization, optional
        The shape parameterization to guard (default: the first Parameterization in
        ``params``).
    optimizer : {"adam", "lbfgs"}
        L-BFGS (5 inner iterations per outer iteration, strong-Wolfe line search) never
        simulates a trial point whose mesh has an inverted tet: the closure returns
        :data:`INVALID_LOSS` with zero gradient there, and the line search retreats.
    lr : float or {parameter name: float}
        Learning rate (Adam) or initial step (L-BFGS); per-parameter rates for Adam.
    maxiter : int
        Iterations (Adam steps or L-BFGS outer iterations).
    tol : float
        Stop when the relative loss change over 5 iterations is below ``tol``.
    guard : QualityGuard, optional (default QualityGuard())
    checkpoint : path, optional
        Save parameters, optimizer state and history every ``checkpoint_every`` iterations;
        with ``resume=True`` an existing checkpoint is loaded first.
    seed : int, optional
        Seeds torch's RNG (for stochastic objectives); runs are reproducible.

    Returns
    -------
    History
    """
    groups = _groups(params)
    if not groups:
        raise SetupError("params is empty: nothing to optimize")
    if geometry is None:
        geometry = next((g for g in groups if isinstance(g, Parameterization)), None)
    guard = guard or QualityGuard()
    if seed is not None:
        torch.manual_seed(seed)
    if optimizer not in ("adam", "lbfgs"):
        raise SetupError(f"optimizer = {optimizer!r}; allowed: 'adam', 'lbfgs'")

    def make_optimizer() -> torch.optim.Optimizer:
        named = {f"{k}:{n}": t for k, g in enumerate(groups) for n, t in g.parameters.items()}
        if optimizer == "lbfgs":
            return torch.optim.LBFGS(
                list(named.values()),
                lr=float(lr) if not isinstance(lr, dict) else 1.0,
                max_iter=5,
                line_search_fn="strong_wolfe",
            )
        if isinstance(lr, dict):
            plist = [
                {"params": [t], "lr": lr.get(n.split(":", 1)[1], 0.05)} for n, t in named.items()
            ]
        else:
            plist = [{"params": list(named.values()), "lr": lr}]
        return torch.optim.Adam(plist)

    opt = make_optimizer()

    def snapshot() -> dict:
        return {f"{k}:{n}": v for k, g in enumerate(groups) for n, v in g.values().items()}

    def restore(vals: dict) -> None:
        for k, g in enumerate(groups):
            g.set_values({n: vals[f"{k}:{n}"] for n in g.parameters})

    history = History()
    start = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt and resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        restore(state["values"])
        opt.load_state_dict(state["optimizer"])
        history = History.from_dict(state["history"])
        start = history.niter
        history.events.append(f"resumed at iteration {start}")
    initial_ok, initial_quality = guard.quality(geometry) if geometry is not None else (True, 1.0)
    if not initial_ok:
        raise SetupError("the initial geometry has inverted tetrahedra: nothing to start from")
    floor = min(guard.min_radius_ratio, guard.relative * initial_quality)

    from tqdm.auto import tqdm

    bar = tqdm(range(start, maxiter), disable=quiet, desc=f"fit ({optimizer})", leave=False)
    for it in bar:
        t0 = time.perf_counter()
        good = snapshot()
        rejected = [0]

        def closure(it=it, geometry=geometry, rejected=rejected, opt=opt):
            opt.zero_grad()
            if optimizer == "lbfgs" and geometry is not None and not guard.quality(geometry)[0]:
                # A line-search trial point that inverts a tet is never simulated: a huge
                # finite loss with zero gradient makes the strong-Wolfe search bracket it and
                # retreat towards the last valid point.
                rejected[0] += 1
                return torch.tensor(INVALID_LOSS, dtype=torch.float64)
            loss = objective()
            if not torch.isfinite(loss):
                raise SolverError(f"objective returned {float(loss)} at iteration {it}")
            loss.backward()
            return loss

        if optimizer == "adam":
            loss = closure()
            step_scales = [pg["lr"] for pg in opt.param_groups]
            opt.step()
        else:
            loss = opt.step(closure)
        ok, q = guard.quality(geometry) if geometry is not None else (True, 1.0)
        nback = 0
        while geometry is not None and (not ok or q < floor) and nback < guard.max_backtracks:
            # Backtrack: halve the step from the last good state.
            new = snapshot()
            restore({k: good[k] + 0.5 * (new[k] - good[k]) for k in good})
            ok, q = guard.quality(geometry)
            nback += 1
        if geometry is not None and (not ok or q < floor):
            _, _, vmin = guard.measure(geometry)
            why = (
                f"min tet volume {vmin:.6g} µm³ <= 0"
                if not ok
                else f"min radius ratio {q:.6g} < {floor:.6g}"
            )
            why = f"{why} after {nback} halving(s)"
            restore(good)
            if guard.remesh is None:
                history.events.append(f"iteration {it}: quality guard stopped the fit ({why})")
                break
            old_geometry = geometry
            geometry = guard.remesh(geometry)
            history.events.append(f"iteration {it}: remeshed ({why})")
            # Optimize the returned parameterization from now on (its tensors are new leaves,
            # possibly of other shapes): swap it into the groups and restart the optimizer.
            groups[:] = [geometry if g is old_geometry else g for g in groups]
            opt = make_optimizer()
            ok, q = guard.quality(geometry)
            if not ok:
                raise MeshError(
                    f"iteration {it}: the mesh returned by QualityGuard.remesh has inverted or "
                    f"degenerate tets (min tet volume {guard.measure(geometry)[2]:.6g} µm³)"
                )
        if nback:
            history.events.append(f"iteration {it}: step halved {nback} time(s)")
        if rejected[0]:
            history.events.append(
                f"iteration {it}: {rejected[0]} line-search point(s) with inverted tets rejected"
            )
        if optimizer == "adam":
            for pg, s in zip(opt.param_groups, step_scales):
                pg["lr"] = s
        vmin = guard.measure(geometry)[2] if geometry is not None else float("nan")
        value = float(loss.detach())
        history.append(value, snapshot(), time.perf_counter() - t0, q, vmin)
        bar.set_postfix(loss=f"{value:.3e}")
        if callback is not None:
            callback(it, value)
        if ckpt and ((it + 1) % checkpoint_every == 0 or it + 1 == maxiter):
            torch.save(
                {"values": snapshot(), "optimizer": opt.state_dict(), "history": history.to_dict()},
                ckpt,
            )
        if tol > 0 and history.niter > 5:
            old = history.loss[-6]
            if abs(old - history.loss[-1]) <= tol * abs(old):
                history.events.append(f"iteration {it}: converged (tol {tol})")
                break
    return history
