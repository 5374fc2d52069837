"""Convergence of the BTPDE solver in space (mesh size h) and in time (step Δt).

User story: "how fine must my mesh and my time step be?" This script measures both errors of
:func:`spindoctor_torch.solvers.btpde.solve_btpde` on a box, where the exact signal is known
(a product of Neumann cosine series, see :mod:`spindoctor_torch.validation._reference1d`):

* **space**: structured boxes of decreasing h, each with a time step fine enough that the
  Crank-Nicolson error is negligible; error against the exact series. P1 elements should give
  order 2.
* **time**: one coarse mesh (a longer box, for more phase), Crank-Nicolson (θ = 1/2) and
  implicit Euler (θ = 1) at decreasing Δt; error against the *time-exact* solution of the same
  semi-discrete system (dense generalized eigen-decomposition of (K, M) and exact exponentials,
  written here with SciPy), so that the space error does not mask the time error. Expected
  orders 2 and 1.

The observed orders (least-squares slopes of log error vs log h / log Δt, and pairwise) are
printed and the errors plotted to ``<output>/convergence.png`` (data in ``convergence.csv``).

Run::

    python examples/convergence_study.py --output convergence_output [--quick]

Units: µm, µs, D in µm²/µs, b in s/mm².
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from scipy import linalg

from spindoctor_torch.experiment import Experiment
from spindoctor_torch.fem.assemble import assemble
from spindoctor_torch.mesh.structured import structured_box
from spindoctor_torch.model import Model
from spindoctor_torch.sequences import PGSE
from spindoctor_torch.solvers.btpde import solve_btpde
from spindoctor_torch.validation import _reference1d as ref

SIDES = (4.0, 2.0, 1.0)  # µm, box of the space study; every h below divides each side
TIME_SIDES = (10.0, 2.0, 2.0)  # µm, box of the time study (more phase: a clearer time error)
D = 0.002  # µm²/µs
DELTA, BIG_DELTA = 5000.0, 10000.0  # µs
BVALUES = [1000.0, 3000.0]  # s/mm²
DIRECTION = np.array([1.0, 1.0, 1.0]) / np.sqrt(3.0)


def _experiment() -> Experiment:
    return Experiment([PGSE(DELTA, BIG_DELTA)], bvalues=BVALUES, directions=[DIRECTION])


def _box(h: float, sides=SIDES):
    return structured_box(sides, [round(s / h) for s in sides])


def _max_rel_error(ours: np.ndarray, exact: np.ndarray) -> float:
    return float(np.max(np.abs(ours - exact) / np.abs(exact)))


def space_study(hs, nsteps: int) -> list[tuple[float, int, float, float]]:
    """(h, ndof, error, seconds) per mesh size, CN with ``nsteps`` steps per interval."""
    exp = _experiment()
    q = exp.qvalues[:, 0].numpy()
    exact = ref.box_attenuation(SIDES, D, q, DIRECTION, ref.pgse(DELTA, BIG_DELTA))
    out = []
    for h in hs:
        mesh = _box(h)
        t0 = time.perf_counter()
        res = solve_btpde(Model(mesh, D), exp, nsteps=nsteps, quiet=True)
        secs = time.perf_counter() - t0
        ours = res.normalized()[:, 0, 0].detach().numpy()
        out.append((h, mesh.ndof, _max_rel_error(ours, exact), secs))
        print(f"  h = {h:.4f} µm  ndof = {mesh.ndof:6d}  error = {out[-1][2]:.3e}  ({secs:.1f} s)")
    return out


def time_exact_signal(model: Model, exp: Experiment) -> np.ndarray:
    """Normalized signals of the semi-discrete system M ξ' = −(K + i q f J_u) ξ, exact in time
    (dense; small meshes only)."""
    mats = assemble(model)
    M = mats.M.to_scipy().toarray()
    K = mats.K.to_scipy().toarray()
    J = mats.J_direction(exp.directions[0]).to_scipy().toarray()
    _, phi = linalg.eigh(K, M)  # M-orthonormal basis: Λ = φᵀKφ
    lam = phi.T @ K @ phi
    B = phi.T @ J @ phi
    w = phi.T @ M.sum(axis=1)  # ∫ξ = wᵀν ; ν(0) = φᵀ M 1 = w
    out = []
    for q in exp.qvalues[:, 0].numpy():
        nu = w.astype(np.complex128)
        for tau, v in ref.pgse(DELTA, BIG_DELTA).pieces:
            nu = linalg.expm(-tau * (lam + 1j * v * q * B)) @ nu
        out.append(w @ nu / (w @ w))  # S0 = wᵀw = 1ᵀM1 = volume
    return np.array(out)


def time_study(h: float, nsteps_list, thetas=(0.5, 1.0)) -> dict[float, list]:
    """{θ: [(Δt of the gradient lobes, error, seconds), ...]} on one mesh."""
    exp = _experiment()
    model = Model(_box(h, TIME_SIDES), D)
    exact = time_exact_signal(model, exp)
    out: dict[float, list] = {}
    for theta in thetas:
        rows = []
        for n in nsteps_list:
            t0 = time.perf_counter()
            res = solve_btpde(model, exp, theta=theta, nsteps=n, quiet=True)
            secs = time.perf_counter() - t0
            err = _max_rel_error(res.normalized()[:, 0, 0].detach().numpy(), exact)
            rows.append((DELTA / n, err, secs))
            print(
                f"  θ = {theta:.1f}  steps/interval = {n:4d}  Δt = {DELTA / n:7.1f} µs  "
                f"error = {err:.3e}"
            )
        out[theta] = rows
    return out


def observed_orders(x, err) -> tuple[float, list[float]]:
    """Least-squares slope of log(err) vs log(x), and the pairwise slopes."""
    lx, le = np.log(np.asarray(x)), np.log(np.asarray(err))
    slope = float(np.polyfit(lx, le, 1)[0])
    pairs = [float((le[i + 1] - le[i]) / (lx[i + 1] - lx[i])) for i in range(len(lx) - 1)]
    return slope, pairs


def plot(space, times, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    h = np.array([r[0] for r in space])
    e = np.array([r[2] for r in space])
    p, _ = observed_orders(h, e)
    a1.loglog(h, e, "o-", label=f"BTPDE, CN (observed order {p:.2f})")
    a1.loglog(h, e[0] * (h / h[0]) ** 2, "k--", lw=0.8, label="slope 2")
    a1.set_xlabel("mesh size h [µm]")
    a1.set_ylabel("max relative signal error")
    a1.set_title("space: box vs exact cosine series", fontsize=10)
    a1.legend()
    for theta, rows in times.items():
        dt = np.array([r[0] for r in rows])
        err = np.array([r[1] for r in rows])
        p, _ = observed_orders(dt, err)
        name = "Crank-Nicolson" if theta == 0.5 else "implicit Euler"
        a2.loglog(dt, err, "o-", label=f"{name} (observed order {p:.2f})")
    a2.set_xlabel("time step Δt in the gradient lobes [µs]")
    a2.set_ylabel("max relative signal error")
    a2.set_title("time: vs the time-exact semi-discrete solution", fontsize=10)
    a2.legend()
    a1.xaxis.set_minor_formatter(NullFormatter())
    a1.set_xticks(h, [f"{v:.3g}" for v in h])
    a2.xaxis.set_minor_formatter(NullFormatter())
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="convergence_output", help="output folder")
    parser.add_argument("--quick", action="store_true", help="fewer, coarser runs")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    hs = [0.5, 1 / 3, 0.25] if args.quick else [0.5, 1 / 3, 0.25, 0.2, 1 / 6]
    nsteps_list = [8, 16, 32, 64] if args.quick else [8, 16, 32, 64, 128, 256]
    print(f"Space study (box {SIDES} µm, PGSE({DELTA:g}, {BIG_DELTA:g}) µs, b = {BVALUES}):")
    space = space_study(hs, nsteps=200 if args.quick else 400)
    print(f"Time study (box {TIME_SIDES} µm, h = 0.5 µm):")
    times = time_study(0.5, nsteps_list)

    p_space, pairs_space = observed_orders([r[0] for r in space], [r[2] for r in space])
    pairwise = ", ".join(f"{v:.2f}" for v in pairs_space)
    print(f"\nobserved order in h: {p_space:.2f} (pairwise {pairwise})")
    orders = {"space": p_space}
    for theta, rows in times.items():
        p, pairs = observed_orders([r[0] for r in rows], [r[1] for r in rows])
        orders[f"time_theta{theta}"] = p
        print(
            f"observed order in Δt, θ = {theta}: {p:.2f} "
            f"(pairwise {', '.join(f'{v:.2f}' for v in pairs)})"
        )

    with open(out / "convergence.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["study", "theta", "h_um", "dt_us", "ndof", "max_rel_error", "seconds"])
        for h, ndof, err, secs in space:
            w.writerow(["space", 0.5, h, "", ndof, err, secs])
        for theta, rows in times.items():
            for dt, err, secs in rows:
                w.writerow(["time", theta, 0.5, dt, "", err, secs])
    plot(space, times, out / "convergence.png")
    print(f"wrote {out / 'convergence.png'} and {out / 'convergence.csv'}")
    return orders


if __name__ == "__main__":
    main()
