"""Cases on boxes and slab stacks: BTPDE, HADC and STA against exact 1-D references, and
gradients against finite differences."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..experiment import Experiment
from ..mesh.structured import structured_box, structured_slabs
from ..model import Model
from ..sequences import PGSE, CosOGSE, DoublePGSE
from . import _reference1d as ref
from ._core import Case, CaseContext, Check

__all__ = ["CASES"]

D0 = 0.002  # µm²/µs


def _dirs_label(u: np.ndarray) -> str:
    names = {(1.0, 0.0, 0.0): "x", (0.0, 1.0, 0.0): "y", (0.0, 0.0, 1.0): "z"}
    key = tuple(float(v) for v in np.round(u, 12))
    if key in names:
        return names[key]
    return "(" + ",".join(f"{v:.3g}" for v in u) + ")"


def _unit(rows) -> np.ndarray:
    u = np.asarray(rows, dtype=np.float64)
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def column_mesh(length: float, h: float):
    """A one-cell-thick structured column ``[0, length] × [0, h] × [0, h]``: the 3-D code on a
    problem that is exactly one-dimensional for gradients along x, at a fine resolution."""
    return structured_box((length, h, h), (max(1, round(length / h)), 1, 1))


# ------------------------------------------------------------------------------ BTPDE box
def box_btpde(
    ctx: CaseContext,
    *,
    sides,
    h,
    nsteps,
    bvalues,
    directions,
    seq,
    profile,
    tol,
    method="theta",
    column=False,
) -> list[Check]:
    """BTPDE on a structured box (or a column along x) vs the product of exact cosine series."""
    from ..solvers.btpde import solve_btpde

    if column:
        mesh = column_mesh(sides[0], h)
        sides = (sides[0], h, h)
    else:
        mesh = structured_box(sides, [max(1, round(s / h)) for s in sides])
    u = _unit(directions)
    exp = Experiment([seq], bvalues=bvalues, directions=u)
    kw = (
        {"nsteps": nsteps}
        if method == "theta"
        else {"method": "adaptive", "rtol": 1e-5, "atol": 1e-7}
    )
    res = solve_btpde(Model(mesh, D0), exp, quiet=ctx.quiet, **kw)
    ours = res.normalized()[:, 0, :].detach().cpu().numpy()
    q = exp.qvalues[:, 0].detach().cpu().numpy()
    checks = []
    for m, um in enumerate(u):
        exact = ref.box_attenuation(sides, D0, q, um, profile)
        for a, b in enumerate(bvalues):
            checks.append(
                Check(
                    f"E(b={b:g}, {_dirs_label(um)})",
                    float(exact[a].real),
                    float(ours[a, m].real),
                    tol,
                )
            )
    return checks


# -------------------------------------------------------------------- BTPDE slab stack
def slabs_btpde(
    ctx: CaseContext,
    *,
    widths,
    h,
    nsteps,
    bvalues,
    diffusivity,
    permeability,
    relaxation,
    density,
    delta,
    Delta,
    tol,
) -> list[Check]:
    """Permeable multi-compartment slab stack (gradient ⊥ the layers) vs the converged 1-D
    reference, per compartment."""
    from ..solvers.btpde import solve_btpde

    mesh = structured_slabs(widths, (h, h), h)
    model = Model(
        mesh,
        diffusivity=list(diffusivity),
        relaxation=list(relaxation),
        permeability=permeability,
        density=list(density),
    )
    exp = Experiment([PGSE(delta, Delta)], bvalues=bvalues, directions=[[1.0, 0.0, 0.0]])
    res = solve_btpde(model, exp, nsteps=nsteps, quiet=ctx.quiet)
    ours = res.signal[:, :, 0, 0].detach().cpu().numpy().real / (h * h)  # per unit area
    q = exp.qvalues[:, 0].detach().cpu().numpy()
    kappa = [permeability] * (len(widths) - 1)
    exact, _ = ref.slab_stack_signal(
        widths,
        diffusivity,
        kappa,
        q,
        ref.pgse(delta, Delta),
        relaxation=relaxation,
        density=density,
    )
    s0 = np.asarray(widths) * np.asarray(density)
    checks = []
    for a, b in enumerate(bvalues):
        for i in range(len(widths)):
            checks.append(
                Check(
                    f"S_{i}/S_{i}(0) (b={b:g})",
                    float(exact[a, i].real / s0[i]),
                    float(ours[i, a] / s0[i]),
                    tol,
                )
            )
        checks.append(
            Check(
                f"E_total (b={b:g})",
                float(exact[a].real.sum() / s0.sum()),
                float(ours[:, a].sum() / s0.sum()),
                tol,
            )
        )
    return checks


# ------------------------------------------------------------------------------ HADC
def box_hadc(ctx: CaseContext, *, sides, h, directions, delta, Delta, tol) -> list[Check]:
    """HADC on a box vs the GPA cosine series: ADC(u) = Σ_k u_k² ADC_k(L_k)."""
    from ..solvers.hadc import solve_hadc

    mesh = structured_box(sides, [max(1, round(s / h)) for s in sides])
    u = _unit(directions)
    exp = Experiment([PGSE(delta, Delta)], bvalues=[0.0], directions=u)
    res = solve_hadc(Model(mesh, D0), exp, rtol=1e-6, quiet=ctx.quiet)
    per_axis = np.array([ref.gpa_adc_interval(L, D0, delta, Delta) for L in sides])
    checks = []
    for m, um in enumerate(u):
        exact = float(np.sum(um**2 * per_axis))
        checks.append(
            Check(f"ADC {_dirs_label(um)} [µm²/µs]", exact, float(res.adc_allcmpts[0, m]), tol)
        )
    return checks


def slabs_hadc(ctx: CaseContext, *, widths, h, diffusivity, delta, Delta, tol) -> list[Check]:
    """HADC per compartment of a slab stack (impermeable model) vs each interval's series."""
    from ..solvers.hadc import solve_hadc

    mesh = structured_slabs(widths, (h, h), h)  # one cell thick: 1-D along x
    exp = Experiment([PGSE(delta, Delta)], bvalues=[0.0], directions=[[1.0, 0.0, 0.0]])
    res = solve_hadc(Model(mesh, diffusivity=list(diffusivity)), exp, rtol=1e-6, quiet=ctx.quiet)
    return [
        Check(
            f"ADC_{i} x [µm²/µs]",
            ref.gpa_adc_interval(w, d, delta, Delta),
            float(res.adc[i, 0, 0]),
            tol,
        )
        for i, (w, d) in enumerate(zip(widths, diffusivity))
    ]


# ------------------------------------------------------------------------------ STA
def box_sta(
    ctx: CaseContext, *, sides, h, directions, delta, Delta, tol_formula, tol_series
) -> list[Check]:
    """STA on a box: (a) vs Mitra's formula with the exact box areas (A_u/V) and the
    finite-pulse factor written out here; (b) vs the exact GPA series (short times)."""
    from ..solvers.sta import compute_adc_sta

    mesh = structured_box(sides, [max(1, round(s / h)) for s in sides])
    u = _unit(directions)
    exp = Experiment([PGSE(delta, Delta)], bvalues=[0.0], directions=u)
    res = compute_adc_sta(Model(mesh, D0), exp)
    lx, ly, lz = sides
    volume = lx * ly * lz
    t_sta = ref.sta_time_pgse(delta, Delta)
    per_axis = np.array([ref.gpa_adc_interval(L, D0, delta, Delta) for L in sides])
    checks = []
    for m, um in enumerate(u):
        area_u = 2.0 * (ly * lz * um[0] ** 2 + lx * lz * um[1] ** 2 + lx * ly * um[2] ** 2)
        formula = D0 * (
            1 - 4.0 / 3.0 * math.sqrt(D0 / math.pi) * area_u / volume * math.sqrt(t_sta)
        )
        ours = float(res.adc_allcmpts[0, m])
        lab = _dirs_label(um)
        checks.append(Check(f"ADC {lab} vs formula [µm²/µs]", formula, ours, tol_formula))
        checks.append(
            Check(
                f"ADC {lab} vs GPA series [µm²/µs]",
                float(np.sum(um**2 * per_axis)),
                ours,
                tol_series,
            )
        )
    return checks


# ------------------------------------------------------------------------------ gradients
def btpde_gradient(ctx: CaseContext, *, eps_points, eps_rel, tol) -> list[Check]:
    """d S / d(points, κ, D) of the BTPDE by autograd vs central finite differences."""
    from ..solvers.btpde import solve_btpde

    mesh0 = structured_box((3.0, 2.0, 2.0), (6, 4, 4), x_interfaces=[1.5], jitter=0.15, seed=3)
    exp = Experiment([PGSE(2000.0, 4000.0)], bvalues=[2000.0], directions=[[1.0, 0.5, 0.2]])
    gen = torch.Generator().manual_seed(7)
    v = torch.randn(mesh0.points.shape, generator=gen, dtype=torch.float64)
    kappa0, d0 = 1e-3, D0

    def signal(points, kappa, diff):
        model = Model(
            mesh0.with_points(points), diffusivity=diff, permeability=kappa, density=[1.0, 0.7]
        )
        res = solve_btpde(model, exp, nsteps=10, quiet=True)
        return res.signal_allcmpts.real.sum()

    p = mesh0.points.detach().clone().requires_grad_(True)
    k = torch.tensor(kappa0, dtype=torch.float64, requires_grad=True)
    d = torch.tensor(d0, dtype=torch.float64, requires_grad=True)
    s = signal(p, k, d)
    gp, gk, gd = torch.autograd.grad(s, (p, k, d))
    pd = p.detach()
    with torch.no_grad():
        fd_p = (
            signal(pd + eps_points * v, kappa0, d0) - signal(pd - eps_points * v, kappa0, d0)
        ) / (2 * eps_points)
        hk, hd = eps_rel * kappa0, eps_rel * d0
        fd_k = (signal(pd, kappa0 + hk, d0) - signal(pd, kappa0 - hk, d0)) / (2 * hk)
        fd_d = (signal(pd, kappa0, d0 + hd) - signal(pd, kappa0, d0 - hd)) / (2 * hd)
    return [
        Check("dS/dpoints · V [µm²]", float(fd_p), float((gp * v).sum()), tol),
        Check("dS/dκ [µm³/(µm/µs)]", float(fd_k), float(gk), tol),
        Check("dS/dD [µm³/(µm²/µs)]", float(fd_d), float(gd), tol),
    ]


def hadc_gradient(ctx: CaseContext, *, eps_points, tol) -> list[Check]:
    """d ADC_HADC / d points by autograd vs central finite differences (fixed grid)."""
    from ..solvers.hadc import solve_hadc

    mesh0 = structured_box((3.0, 2.0, 2.0), (6, 4, 4), jitter=0.15, seed=5)
    exp = Experiment([PGSE(2000.0, 4000.0)], bvalues=[0.0], directions=[[1.0, 0.5, 0.2]])
    gen = torch.Generator().manual_seed(11)
    v = torch.randn(mesh0.points.shape, generator=gen, dtype=torch.float64)

    def adc(points):
        res = solve_hadc(Model(mesh0.with_points(points), D0), exp, nstep=64, quiet=True)
        return res.adc_allcmpts.sum()

    p = mesh0.points.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(adc(p), (p,))
    with torch.no_grad():
        fd = (adc(p.detach() + eps_points * v) - adc(p.detach() - eps_points * v)) / (
            2 * eps_points
        )
    return [Check("dADC/dpoints · V [µm/µs]", float(fd), float((g * v).sum()), tol)]


# ------------------------------------------------------------------------------ registry
_B2 = [1000.0, 3000.0]
_DIRS2 = [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
_PGSE = dict(seq=PGSE(5000.0, 10000.0), profile=ref.pgse(5000.0, 10000.0))
_SLABS = dict(
    widths=(2.0, 3.0, 2.0),
    diffusivity=(0.002, 0.001, 0.002),
    permeability=5e-4,
    relaxation=(math.inf, 40000.0, math.inf),
    density=(1.0, 0.8, 1.0),
    delta=5000.0,
    Delta=10000.0,
)


def _case(name, level, group, description, fn, **kw) -> Case:
    return Case(name, level, group, description, lambda ctx: fn(ctx, **kw))


CASES = [
    _case(
        "box_btpde_pgse",
        "quick",
        "exact",
        "BTPDE (Crank-Nicolson, 40 steps/interval) on a structured 5×4×3 µm box, h = 0.5 µm, "
        "D = 0.002, PGSE(5000, 10000) µs, vs the product of exact Neumann cosine series "
        "(60 modes, exact exponentials). Tolerance 5e-3: P1 (O(h²)) plus CN (O(Δt²)) error, "
        "measured 1.6e-3 at b = 3000; both shrink with h and Δt (examples/convergence_study.py).",
        box_btpde,
        sides=(5.0, 4.0, 3.0),
        h=0.5,
        nsteps=40,
        bvalues=_B2,
        directions=_DIRS2,
        tol=5e-3,
        **_PGSE,
    ),
    _case(
        "box_btpde_pgse_fine",
        "full",
        "exact",
        "As box_btpde_pgse with h = 0.25 µm and 160 steps/interval. Tolerance 1e-3 "
        "(measured 4e-4).",
        box_btpde,
        sides=(5.0, 4.0, 3.0),
        h=0.25,
        nsteps=160,
        bvalues=_B2,
        directions=_DIRS2,
        tol=1e-3,
        **_PGSE,
    ),
    _case(
        "column_btpde_pgse",
        "quick",
        "exact",
        "BTPDE (CN, 100 steps/interval) on a one-cell-thick 5 µm column, h = 0.1 µm, gradient "
        "along it, PGSE(5000, 10000) µs, vs the exact cosine series. Tolerance 2e-4 (P1 error "
        "(kh)²/12 and CN error, measured < 1e-4).",
        box_btpde,
        sides=(5.0,),
        h=0.1,
        nsteps=100,
        bvalues=_B2,
        directions=_DIRS2[:1],
        tol=2e-4,
        column=True,
        **_PGSE,
    ),
    _case(
        "column_btpde_doublepgse",
        "full",
        "exact",
        "BTPDE (CN, 100 steps/interval) on the 5 µm column, h = 0.1 µm, DoublePGSE(3000, 6000, "
        "tpause 1000) µs, vs the exact cosine series. Tolerance 2e-4.",
        box_btpde,
        sides=(5.0,),
        h=0.1,
        nsteps=100,
        bvalues=_B2,
        directions=_DIRS2[:1],
        seq=DoublePGSE(3000.0, 6000.0, 1000.0),
        profile=ref.double_pgse(3000.0, 6000.0, 1000.0),
        tol=2e-4,
        column=True,
    ),
    _case(
        "column_btpde_cosogse",
        "full",
        "exact",
        "BTPDE (adaptive, rtol 1e-5) on the 5 µm column, h = 0.1 µm, CosOGSE(5000, 10000, "
        "n = 2) µs, vs the cosine series integrated by DOP853 at rtol 1e-11. Tolerance 3e-3: "
        "the P1 error (kh)²/12 at the largest phase wavenumber q·max|F| (0.78 rad/µm at "
        "b = 3000) is 5e-4 per unit of −log E, and E = 0.016 there (measured 1.3e-3; 4.0e-4 "
        "at h = 0.05 µm: order 1.7).",
        box_btpde,
        sides=(5.0,),
        h=0.1,
        nsteps=None,
        bvalues=_B2,
        directions=_DIRS2[:1],
        seq=CosOGSE(5000.0, 10000.0, 2),
        profile=ref.cos_ogse(5000.0, 10000.0, 2),
        tol=3e-3,
        method="adaptive",
        column=True,
    ),
    _case(
        "slabs_btpde_permeable",
        "quick",
        "exact",
        "BTPDE on three structured slabs (2, 3, 2 µm; D = 0.002/0.001/0.002; T2 = ∞/40 ms/∞; "
        "ρ = 1/0.8/1, ρ-weighted coupling; κ = 5e-4 µm/µs), one cell thick, h = 0.25 µm, 40 CN "
        "steps/interval, gradient ⊥ layers, vs a converged 1-D reference (P1 at h = 0.1 and "
        "0.05 µm, Richardson-extrapolated, exact exponentials). Tolerance 1e-3 (P1 + CN error, "
        "measured 2e-4).",
        slabs_btpde,
        h=0.25,
        nsteps=40,
        bvalues=_B2,
        tol=1e-3,
        **_SLABS,
    ),
    _case(
        "box_hadc",
        "quick",
        "adc",
        "HADC on the structured 5×4×3 µm box, h = 0.5 µm, PGSE(5000, 10000) µs, vs the GPA "
        "cosine series Σ_k u_k² ADC(L_k) (4000 terms). Tolerance 3e-2: at this long time the "
        "ADC is set by the lowest eigenvalues, which P1 overestimates by (πh/L)²/12 "
        "(2.3% for L = 3 µm, h = 0.5 µm).",
        box_hadc,
        sides=(5.0, 4.0, 3.0),
        h=0.5,
        directions=[[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]],
        delta=5000.0,
        Delta=10000.0,
        tol=3e-2,
    ),
    _case(
        "slabs_hadc",
        "quick",
        "adc",
        "HADC per compartment of the 2/3/2 µm slab stack (impermeable model; D = 0.002/0.001/"
        "0.002), one cell thick with h = 0.05 µm, vs each interval's GPA series. Tolerance "
        "1e-3 (P1 eigenvalue error (πh/L)²/12 ≤ 5e-4).",
        slabs_hadc,
        widths=(2.0, 3.0, 2.0),
        h=0.05,
        diffusivity=(0.002, 0.001, 0.002),
        delta=5000.0,
        Delta=10000.0,
        tol=1e-3,
    ),
    _case(
        "box_sta",
        "quick",
        "adc",
        "STA on a 20×16×12 µm box at short times (PGSE(500, 1000) µs): vs Mitra's formula with "
        "the exact areas and the finite-pulse factor written independently (tolerance 1e-10, "
        "rounding only), and vs the exact GPA series: for flat walls the STA is exact up to "
        "terms exponentially small in L²/(D·TE) (tolerance 1e-7, measured < 1e-9).",
        box_sta,
        sides=(20.0, 16.0, 12.0),
        h=4.0,
        directions=[[1, 0, 0], [0, 0, 1], [1, 1, 1]],
        delta=500.0,
        Delta=1000.0,
        tol_formula=1e-10,
        tol_series=1e-7,
    ),
    _case(
        "btpde_gradient_fd",
        "quick",
        "gradient",
        "d(Σ Re S)/d(points, κ, D) of the BTPDE (discrete adjoint) on a jittered two-compartment "
        "box (ρ = 1/0.7) vs central finite differences (steps 1e-5 µm along a random field; "
        "1e-4 relative for κ and D). Tolerance 1e-6: FD truncation O(ε²) and rounding.",
        btpde_gradient,
        eps_points=1e-5,
        eps_rel=1e-4,
        tol=1e-6,
    ),
    _case(
        "hadc_gradient_fd",
        "quick",
        "gradient",
        "d ADC_HADC / d points (discrete adjoint, fixed 64-step grid) vs central finite "
        "differences (1e-5 µm). Tolerance 1e-6.",
        hadc_gradient,
        eps_points=1e-5,
        tol=1e-6,
    ),
]
