"""Matrix-formalism cases: Laplace eigenvalues vs the exact box spectrum, MF vs BTPDE on a
multi-compartment mesh, MF-GA and HADC vs the Gaussian-phase series, MF gradients vs finite
differences."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from ..experiment import Experiment
from ..mesh.structured import structured_box
from ..model import Model
from ..sequences import PGSE
from . import _reference1d as ref
from ._cases_analytical import layered_mesh
from ._core import Case, CaseContext, Check

__all__ = ["CASES"]

D0 = 0.002


def box_eigenvalues(ctx: CaseContext, *, sides, h, nmode, c_tol) -> list[Check]:
    """Lowest nonzero Laplace eigenvalues of a structured box vs D π² Σ (n_k/L_k)², each with
    the a-priori P1 tolerance ``c_tol · (|k| h)² / 12`` (|k|² = λ/D)."""
    from ..solvers.mf import compute_laplace_eig

    mesh = structured_box(sides, [max(1, round(s / h)) for s in sides])
    exact = sorted(
        D0 * math.pi**2 * sum((n / L) ** 2 for n, L in zip(ns, sides))
        for ns in itertools.product(range(6), repeat=3)
    )
    # P1 eigenvalues lie above the exact ones: compute a margin beyond the last one wanted.
    lap = compute_laplace_eig(Model(mesh, D0), eiglim=exact[nmode] * 1.2, quiet=ctx.quiet)
    ours = lap.values.detach().cpu().numpy()
    checks = [Check("λ_0 [1/µs] (scale λ_1)", 0.0, float(ours[0]), 1e-8, scale=exact[1])]
    for k in range(1, nmode + 1):
        tol = c_tol * (exact[k] / D0) * h**2 / 12.0
        checks.append(Check(f"λ_{k} [1/µs]", exact[k], float(ours[k]), tol))
    return checks


def mf_vs_btpde(
    ctx: CaseContext,
    *,
    shape,
    radii,
    diffusivity,
    permeability,
    h,
    length_scale,
    nsteps,
    bvalues,
    delta,
    Delta,
    tol,
) -> list[Check]:
    """MF signals vs BTPDE signals on the same multi-compartment mesh (BTPDE with many steps as
    the reference)."""
    from ..solvers.btpde import solve_btpde
    from ..solvers.mf import solve_mf

    mesh = layered_mesh(shape, radii, h)
    model = Model(mesh, diffusivity=list(diffusivity), permeability=permeability)
    exp = Experiment(
        [PGSE(delta, Delta)], bvalues=bvalues, directions=[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    )
    bt = solve_btpde(model, exp, nsteps=nsteps, quiet=ctx.quiet)
    mf = solve_mf(model, exp, length_scale=length_scale, quiet=ctx.quiet)
    s_bt = bt.signal[:, :, 0, :].detach().cpu().numpy().real
    s_mf = mf.signal[:, :, 0, :].detach().cpu().numpy().real
    checks = []
    for m, lab in enumerate(("x", "z")):
        for a, b in enumerate(bvalues):
            for i in range(len(radii)):
                checks.append(
                    Check(
                        f"S_{i} (b={b:g}, {lab}) [µm³]",
                        float(s_bt[i, a, m]),
                        float(s_mf[i, a, m]),
                        tol,
                    )
                )
    return checks


def box_mfga(ctx: CaseContext, *, sides, h, length_scale, delta, Delta, tol) -> list[Check]:
    """MF-GA ADC (MF effective tensor) on the structured box vs the GPA cosine series."""
    from ..solvers.mf import solve_mfga

    mesh = structured_box(sides, [max(1, round(s / h)) for s in sides])
    u = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]) / np.array(
        [[1.0], [1.0], [math.sqrt(3.0)]]
    )
    exp = Experiment([PGSE(delta, Delta)], bvalues=[1000.0], directions=u)
    res = solve_mfga(Model(mesh, D0), exp, length_scale=length_scale, quiet=ctx.quiet)
    adc = res.info["adc_allcmpts"][0].detach().cpu().numpy()
    per_axis = np.array([ref.gpa_adc_interval(L, D0, delta, Delta) for L in sides])
    labels = ("x", "z", "(1,1,1)")
    return [
        Check(f"ADC {labels[m]} [µm²/µs]", float(np.sum(u[m] ** 2 * per_axis)), float(adc[m]), tol)
        for m in range(3)
    ]


def sphere_adc(ctx: CaseContext, *, radius, h, delta, Delta, tol) -> list[Check]:
    """HADC and MF-GA on a gmsh sphere vs the Murday-Cotts GPA series."""
    from ..solvers.hadc import solve_hadc
    from ..solvers.mf import solve_mfga

    model = Model(layered_mesh("sphere", (radius,), h), D0)
    exp = Experiment([PGSE(delta, Delta)], bvalues=[1000.0], directions=[[1.0, 0.0, 0.0]])
    exact = ref.gpa_adc_sphere(radius, D0, delta, Delta)
    hadc = float(solve_hadc(model, exp, rtol=1e-6, quiet=ctx.quiet).adc_allcmpts[0, 0])
    mfga = solve_mfga(model, exp, length_scale=1.0, quiet=ctx.quiet)
    return [
        Check("HADC x [µm²/µs]", exact, hadc, tol),
        Check("MF-GA ADC x [µm²/µs]", exact, float(mfga.info["adc_allcmpts"][0, 0]), tol),
    ]


def mf_gradient(ctx: CaseContext, *, eps_points, tol) -> list[Check]:
    """d(Σ Re S_MF)/d points (eigen-adjoint) vs central finite differences on a jittered box."""
    from ..solvers.mf import solve_mf

    mesh0 = structured_box((3.0, 2.0, 2.0), (6, 4, 4), jitter=0.15, seed=5)
    exp = Experiment([PGSE(2000.0, 4000.0)], bvalues=[2000.0], directions=[[1.0, 0.5, 0.2]])
    gen = torch.Generator().manual_seed(13)
    v = torch.randn(mesh0.points.shape, generator=gen, dtype=torch.float64)

    def signal(points):
        model = Model(mesh0.with_points(points), D0)
        return solve_mf(model, exp, length_scale=0.8, quiet=True).signal_allcmpts.real.sum()

    p = mesh0.points.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(signal(p), (p,))
    with torch.no_grad():
        fd = (signal(p.detach() + eps_points * v) - signal(p.detach() - eps_points * v)) / (
            2 * eps_points
        )
    return [Check("dS_MF/dpoints · V [µm²]", float(fd), float((g * v).sum()), tol)]


def _case(name, level, group, description, fn, **kw) -> Case:
    return Case(name, level, group, description, lambda ctx: fn(ctx, **kw))


_TWO = dict(radii=(1.5, 3.0), diffusivity=(0.001, 0.002), permeability=2e-4)

CASES = [
    _case(
        "box_laplace_eigenvalues",
        "quick",
        "mf",
        "compute_laplace_eig on the structured 5×4×3 µm box, h = 0.5 µm: λ_0 = 0 (tolerance "
        "1e-8 of λ_1) and the lowest 8 nonzero eigenvalues vs Dπ²Σ(n_k/L_k)². Tolerance per "
        "mode 2·(|k|h)²/12: P1 eigenvalues are high by (|k|h)²/12 for axis-aligned modes and "
        "up to ~1.5 times that for oblique ones on Kuhn tetrahedra (measured).",
        box_eigenvalues,
        sides=(5.0, 4.0, 3.0),
        h=0.5,
        nmode=8,
        c_tol=2.0,
    ),
    _case(
        "sphere2_mf_vs_btpde",
        "quick",
        "mf",
        "MF (ℓ = 1 µm) vs BTPDE (CN, 60 steps/interval) on the same two-layer permeable gmsh "
        "sphere (h = 0.6 µm), per compartment, two directions. Tolerance 1e-3: MF truncation "
        "plus the BTPDE's O(Δt²) error.",
        mf_vs_btpde,
        shape="sphere",
        h=0.6,
        length_scale=1.0,
        nsteps=60,
        bvalues=[1000.0, 3000.0],
        delta=5000.0,
        Delta=10000.0,
        tol=1e-3,
        **_TWO,
    ),
    _case(
        "box_mfga",
        "quick",
        "adc",
        "MF-GA ADC (ℓ = 0.5 µm) on the structured 5×4×3 µm box, h = 0.5 µm, PGSE(5000, 10000) "
        "µs, vs the GPA cosine series. Tolerance 3e-2: P1 eigenvalue error as for the HADC.",
        box_mfga,
        sides=(5.0, 4.0, 3.0),
        h=0.5,
        length_scale=0.5,
        delta=5000.0,
        Delta=10000.0,
        tol=3e-2,
    ),
    _case(
        "sphere_hadc_mfga",
        "quick",
        "adc",
        "HADC and MF-GA ADC (ℓ = 1 µm) on a gmsh sphere R = 3 µm, h = 0.6 µm, PGSE(5000, "
        "10000) µs, vs "
        "the Murday-Cotts series (300 roots). Tolerance 3e-2 (P1 and polyhedral-sphere error).",
        sphere_adc,
        radius=3.0,
        h=0.6,
        delta=5000.0,
        Delta=10000.0,
        tol=3e-2,
    ),
    _case(
        "mf_gradient_fd",
        "quick",
        "gradient",
        "d(Σ Re S_MF)/d points (ℓ = 0.8 µm; eigen-adjoint) on a jittered box vs central finite "
        "differences (1e-5 µm). Tolerance 1e-5: FD truncation and eigensolver tolerance.",
        mf_gradient,
        eps_points=1e-5,
        tol=1e-5,
    ),
]
