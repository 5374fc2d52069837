"""Bloch-Torrey PDE solver (solve_btpde): accuracy against independent references, the
discrete adjoint against finite differences, symmetries, conservation and bad input.

References (none from the 3-D code): exact 1-D cosine-series matrix formalism for boxes
(``btpde_reference``), a fine 1-D finite-element two-interval solution exact in time for the
permeable slab, the Gaussian-phase series for sphere and cylinder, dense matrix exponentials
of the semi-discrete system for the time-order check, and SpinDoctor's own BTPDE signals on the
same sphere mesh (ode15s at rtol 1e-8).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from btpde_reference import (
    box_signal,
    gpa_adc_cylinder,
    gpa_adc_sphere,
    pgse_pieces,
    two_interval_signal,
)

import spindoctor_torch.mesh as sdt_mesh
import spindoctor_torch.solvers._btpde_system as btsys
from spindoctor_torch.errors import MeshError, SetupError
from spindoctor_torch.experiment import Experiment
from spindoctor_torch.fem.assemble import assemble
from spindoctor_torch.mesh.structured import structured_box, structured_slabs
from spindoctor_torch.mesh.tetmesh import TetMesh
from spindoctor_torch.model import Model
from spindoctor_torch.sequences import PGSE, CosOGSE, DoublePGSE, Waveform3D
from spindoctor_torch.solvers.btpde import solve_btpde

D0 = 0.002  # µm²/µs


def _q(b: float, delta: float, Delta: float) -> float:
    return math.sqrt(b / (delta**2 * (Delta - delta / 3)))


# ------------------------------------------------------------------------- accuracy: box
def test_box_pgse_matches_exact_1d_product():
    """Box [0,10]×[0,8]×[0,6], h = L/12 per axis, PGSE along x and (1,1,0)/√2 against the
    product of exact 1-D cosine-series solutions. Tolerance 0.5% (the issue's bound; the P1
    error measured here is 0.26% (x) and 0.33% ((1,1,0)) at b = 4000, 0.04% at b = 1000)."""
    sides = (10.0, 8.0, 6.0)
    mesh = structured_box(sides, (12, 10, 8))
    delta, Delta = 5000.0, 10000.0
    bvalues = [1000.0, 4000.0]
    dirs = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    exp = Experiment([PGSE(delta, Delta)], bvalues=bvalues, directions=dirs)
    res = solve_btpde(Model(mesh, diffusivity=D0), exp, nsteps=40, quiet=True)
    got = res.normalized().detach()
    for ib, b in enumerate(bvalues):
        for idir, u in enumerate(dirs):
            ref = box_signal(sides, D0, _q(b, delta, Delta), u, pgse_pieces(delta, Delta))
            err = abs(complex(got[ib, 0, idir]) - ref) / abs(ref)
            assert err < 5e-3, f"b={b}, u={u}: |S-S_ref|/|S_ref| = {err:.2e}"
    # the box is symmetric about its centre: the signal is real
    assert float(got.imag.abs().max()) < 1e-10


def test_crank_nicolson_second_order_against_spindoctor(reference_dir):
    """Same sphere mesh as SpinDoctor: the semi-discrete systems coincide, so the difference
    to SpinDoctor's ode15s signal (rtol 1e-8) is the time error of our Crank-Nicolson. Its
    log-log slope in the number of steps must be 2 (±0.1)."""
    ref = json.loads((reference_dir / "fem_sphere_r5.json").read_text())
    data = np.load(reference_dir / "meshes" / "sphere_r5.npz")
    mesh = TetMesh(data["points"], data["tetrahedra"], data["tet_labels"])
    s_ref = np.array(ref["btpde"]["signal_allcmpts_real"])[0, 2:]  # direction x, b = 2000, 4000
    exp = Experiment(
        [PGSE(10000.0, 43100.0)], qvalues=ref["qvalues"][2:], directions=[[1.0, 0.0, 0.0]]
    )
    model = Model(mesh, diffusivity=D0)
    nsteps = [8, 16, 32]
    errs = []
    for n in nsteps:
        s = solve_btpde(model, exp, nsteps=n, solver="splu", quiet=True).signal_allcmpts
        errs.append(np.abs(s.detach()[:, 0, 0].numpy() - s_ref).max() / s_ref.min())
    slope = -np.polyfit(np.log(nsteps), np.log(errs), 1)[0]
    assert abs(slope - 2.0) < 0.1, f"errors {errs}, observed order {slope:.3f}"


@pytest.mark.parametrize("theta, order", [(0.5, 2.0), (1.0, 1.0)])
def test_theta_method_order_against_matrix_exponential(theta, order):
    """Small box, PGSE: the θ-method converges to the exact-in-time solution of the same
    semi-discrete system (dense matrix exponentials of M⁻¹A per interval) with order 2 (CN)
    and 1 (implicit Euler), ±0.1."""
    mesh = structured_box((4.0, 3.0, 3.0), (4, 2, 2))
    model = Model(mesh, diffusivity=D0)
    mats = assemble(model)
    M = mats.M.to_dense().numpy()
    A0 = (mats.K.to_dense() + mats.Q.to_dense()).numpy()
    J = mats.J[0].to_dense().numpy()
    delta, Delta, b = 3000.0, 6000.0, 3000.0
    q = _q(b, delta, Delta)
    xi = np.ones(M.shape[0], dtype=complex)
    for t0, t1, f in pgse_pieces(delta, Delta):
        xi = scipy.linalg.expm(-(t1 - t0) * np.linalg.solve(M, A0 + 1j * q * f * J)) @ xi
    exact = (M @ xi).sum()
    exp = Experiment([PGSE(delta, Delta)], bvalues=[b], directions=[[1.0, 0.0, 0.0]])
    nsteps = [4, 8, 16, 32]
    errs = []
    for n in nsteps:
        s = solve_btpde(model, exp, theta=theta, nsteps=n, quiet=True).signal_allcmpts
        errs.append(abs(complex(s.detach()[0, 0, 0]) - exact) / abs(exact))
    slope = -np.polyfit(np.log(nsteps), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.1, f"theta={theta}: errors {errs}, observed order {slope:.3f}"


# ------------------------------------------------------------- accuracy: permeable slab
def test_two_compartment_slab_matches_1d_reference():
    """Two boxes [0,5] and [5,10] (x) sharing a membrane κ = 1e-4 µm/µs, D = 0.002 and
    0.001 µm²/µs, gradient along x: the total and per-compartment signals agree with a fine
    1-D two-interval P1 solution (200 elements per side, exact in time) within 1% (the
    issue's bound; measured ≤ 0.15%)."""
    mesh = structured_slabs([5.0, 5.0], sides_yz=(1.0, 1.0), h=0.5)
    model = Model(mesh, diffusivity=[0.002, 0.001], permeability=1e-4)
    delta, Delta = 5000.0, 10000.0
    bvalues = [1000.0, 3000.0]
    exp = Experiment([PGSE(delta, Delta)], bvalues=bvalues, directions=[[1.0, 0.0, 0.0]])
    res = solve_btpde(model, exp, nsteps=40, quiet=True)
    s0 = float(res.initial_signal)
    for ib, b in enumerate(bvalues):
        r1, r2 = two_interval_signal(
            (5.0, 5.0), (0.002, 0.001), 1e-4, _q(b, delta, Delta), pgse_pieces(delta, Delta)
        )
        got = res.signal.detach()[:, ib, 0, 0] / s0
        for c, ref in enumerate((r1, r2)):
            err = abs(complex(got[c]) - ref) / abs(ref)
            assert err < 1e-2, f"b={b}, compartment {c}: relative error {err:.2e}"
        total = complex(res.normalized().detach()[ib, 0, 0])
        assert abs(total - (r1 + r2)) / abs(r1 + r2) < 1e-2


# ------------------------------------------------------------ accuracy: sphere, cylinder
def _small_b_adc(model, delta, Delta):
    bvalues = [0.0, 20.0, 40.0]
    exp = Experiment([PGSE(delta, Delta)], bvalues=bvalues, directions=[[1.0, 0.0, 0.0]])
    s = solve_btpde(model, exp, nsteps=40, quiet=True).normalized().detach()[:, 0, 0].real
    return -np.polyfit(bvalues, np.log(s.numpy()), 2)[1]


def test_sphere_small_b_adc_matches_gaussian_phase_series():
    """Sphere R = 5 µm (gmsh, h = R/8), PGSE(5000, 10000): the small-b ADC (quadratic fit of
    ln S at b = 0, 20, 40) within 1% of the Murday-Cotts series (the issue's bound; measured
    −0.57%, mostly the 0.5% volume deficit of the inscribed polyhedron)."""
    mesh = sdt_mesh.sphere(5.0, h=0.625)
    adc = _small_b_adc(Model(mesh, diffusivity=D0), 5000.0, 10000.0)
    ref = gpa_adc_sphere(5.0, D0, 5000.0, 10000.0)
    assert abs(adc / ref - 1) < 1e-2, f"ADC {adc:.6e} vs GPA {ref:.6e}"


def test_cylinder_small_b_adc_matches_gaussian_phase_series():
    """Cylinder R = 5 µm, height 1 µm (gmsh, h = R/8), gradient ⊥ axis: the problem separates,
    so the small-b ADC equals the infinite-cylinder Neuman / van Gelderen series within 1%
    (measured −0.23% at PGSE(5000, 10000))."""
    mesh = sdt_mesh.cylinder(5.0, 1.0, h=0.625)
    adc = _small_b_adc(Model(mesh, diffusivity=D0), 5000.0, 10000.0)
    ref = gpa_adc_cylinder(5.0, D0, 5000.0, 10000.0)
    assert abs(adc / ref - 1) < 1e-2, f"ADC {adc:.6e} vs GPA {ref:.6e}"


# ------------------------------------------------------------------ SpinDoctor parity
def test_parity_with_spindoctor_btpde(reference_dir):
    """SpinDoctor's sphere_r5 mesh and settings (PGSE 10000/43100, four b, three directions):
    our Crank-Nicolson (25 steps per interval) vs SpinDoctor's ode15s at rtol 1e-8. The goal
    is 0.5%; measured 1.6e-5 (the CN time error, 4x smaller per halving); bound 1e-4."""
    ref = json.loads((reference_dir / "fem_sphere_r5.json").read_text())
    data = np.load(reference_dir / "meshes" / "sphere_r5.npz")
    mesh = TetMesh(data["points"], data["tetrahedra"], data["tet_labels"])
    exp = Experiment(
        [PGSE(ref["sequence"]["delta_us"], ref["sequence"]["Delta_us"])],
        qvalues=ref["qvalues"],
        directions=ref["directions"],
    )
    res = solve_btpde(Model(mesh, diffusivity=D0), exp, nsteps=25, quiet=True)
    s_ref = np.array(ref["btpde"]["signal_allcmpts_real"]) + 1j * np.array(
        ref["btpde"]["signal_allcmpts_imag"]
    )  # [direction][b]
    got = res.signal_allcmpts.detach()[:, 0, :].numpy().T
    rel = np.abs(got - s_ref) / np.abs(s_ref)
    assert rel.max() < 1e-4, f"max relative difference {rel.max():.2e}"
    assert abs(float(res.initial_signal) - ref["pde"]["initial_signal_S0"]) < 1e-9


# --------------------------------------------------------------- adaptive (any profile)
def test_adaptive_ogse_matches_exact_1d():
    """CosOGSE along x on a thin box: the adaptive ESDIRK (rtol 1e-5) against the 1-D
    cosine-series solution integrated by DOP853 at rtol 1e-11. Bound 5e-3 relative: the P1
    error at h = 0.25 µm (measured 1.8e-3, second order in h) plus the time error (1.4e-4)."""
    sides = (6.0, 1.0, 1.0)
    mesh = structured_box(sides, (24, 1, 1))
    seq = CosOGSE(4000.0, 5000.0, 2)
    b = 1000.0
    exp = Experiment([seq], bvalues=[b], directions=[[1.0, 0.0, 0.0]])
    res = solve_btpde(Model(mesh, diffusivity=D0), exp, rtol=1e-5, atol=1e-7, quiet=True)
    assert res.info["method"] == "adaptive"
    delta, Delta, n = 4000.0, 5000.0, 2

    def cos_ogse(t: float) -> float:  # written out here, independent of sequences.py
        if t < delta:
            return math.cos(2 * math.pi * n * t / delta)
        if Delta <= t <= Delta + delta:
            return -math.cos(2 * math.pi * n * (t - Delta) / delta)
        return 0.0

    q = math.sqrt(b / (delta**3 / (4 * math.pi**2 * n**2)))  # ∫F² = δ³/(4π²n²)
    ref = box_signal(
        sides,
        D0,
        q,
        [1.0, 0.0, 0.0],
        profile=cos_ogse,
        breakpoints=[delta, Delta],
        echotime=Delta + delta,
        nmodes=40,
    )
    got = complex(res.normalized().detach()[0, 0, 0])
    assert abs(got - ref) / abs(ref) < 5e-3, f"{got} vs {ref}"


def test_adaptive_tolerance_controls_the_time_error():
    """Adaptive runs converge to the same semi-discrete solution: at rtol 1e-3 within 2e-3·S0
    of a run at rtol 1e-5 (global error per unit tolerance ~1; measured 1.5e-3 with TR-BDF2,
    ~1e-3 with the default ESDIRK3)."""
    mesh = structured_box((6.0, 4.0, 4.0), (4, 2, 2))
    exp = Experiment([CosOGSE(4000.0, 5000.0, 2)], bvalues=[3000.0], directions=[[1, 0, 0]])
    model = Model(mesh, diffusivity=D0)
    fine = solve_btpde(model, exp, rtol=1e-5, atol=1e-7, quiet=True).normalized()
    for integrator in ("esdirk3", "trbdf2"):
        coarse = solve_btpde(model, exp, rtol=1e-3, atol=1e-5, integrator=integrator, quiet=True)
        err = float((coarse.normalized() - fine).abs().max())
        assert err < 2e-3, f"{integrator}: error {err:.2e} at rtol 1e-3"


def test_waveform3d_equals_scalar_pgse():
    """A Waveform3D g(t) = f_PGSE(t)·u is the scalar PGSE along u: adaptive runs of both agree
    with the exact box product within 0.5% (the P1 error at h = 0.5 is 0.1%)."""
    sides = (4.0, 3.0, 1.0)
    mesh = structured_box(sides, (8, 6, 1))
    delta, Delta, b = 3000.0, 5000.0, 2000.0
    u = torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64)
    pgse = PGSE(delta, Delta)

    def g(t):
        return pgse.f(t)[..., None] * u

    wave = Waveform3D(g, echotime=Delta + delta, breakpoints=[delta, Delta])
    q = _q(b, delta, Delta)
    exp = Experiment([wave], qvalues=[q])
    res = solve_btpde(Model(mesh, diffusivity=D0), exp, rtol=1e-5, atol=1e-7, quiet=True)
    ref = box_signal(sides, D0, q, u.tolist(), pgse_pieces(delta, Delta))
    got = complex(res.normalized().detach()[0, 0, 0])
    assert abs(got - ref) / abs(ref) < 5e-3, f"{got} vs {ref}"


# ------------------------------------------------------------- relaxation, symmetries
def test_t2_gives_exactly_the_exponential_factor():
    """One T2 for every compartment: the uniform rate is factored out exactly, so the signal
    is the T2-free signal times exp(−TE/T2) to rounding (1e-12), for θ and adaptive."""
    mesh = structured_slabs([2.0, 2.0], sides_yz=(2.0, 2.0), h=1.0)
    seqs = [PGSE(2000.0, 5000.0)]
    exp = Experiment(seqs, bvalues=[0.0, 1500.0], directions=[[1.0, 0.5, 0.0]])
    t2 = 20000.0
    for kwargs in ({"nsteps": 8}, {"method": "adaptive", "rtol": 1e-3}):
        free = solve_btpde(Model(mesh, permeability=1e-4), exp, quiet=True, **kwargs)
        relax = solve_btpde(
            Model(mesh, permeability=1e-4, relaxation=t2),
            exp,
            quiet=True,
            step_times=free.info["step_times"] if "method" in kwargs else None,
            **kwargs,
        )
        factor = math.exp(-seqs[0].echotime / t2)
        diff = (relax.signal - factor * free.signal).abs().max()
        assert float(diff) < 1e-12 * float(free.initial_signal), kwargs


def test_symmetries_and_conservation():
    """Two compartments, unequal densities (density-weighted coupling), permeable membrane:
    b = 0 keeps every compartment at ρ_i|Ω_i| (to 1e-12); S(−u) = conj S(u) exactly for the
    discrete scheme; |S(u)| ≤ S(b = 0) with impermeable walls and no relaxation."""
    mesh = structured_slabs([2.0, 3.0], sides_yz=(2.0, 2.0), h=1.0, jitter=0.1)
    rho = torch.tensor([1.0, 0.6], dtype=torch.float64)
    model = Model(mesh, diffusivity=[0.002, 0.0015], permeability=2e-4, density=rho)
    u = [0.3, -0.5, 0.8]
    exp = Experiment(
        [PGSE(2000.0, 4000.0), DoublePGSE(1000.0, 2000.0, 500.0)],
        bvalues=[0.0, 800.0, 2500.0],
        directions=[u, [-x for x in u]],
    )
    for solver in ("splu", "cocg"):
        res = solve_btpde(model, exp, nsteps=6, solver=solver, quiet=True)
        vol = mesh.compartment_volumes().detach()
        b0 = res.signal.detach()[:, 0]  # (ncmpt, nseq, ndir)
        expect = (rho * vol)[:, None, None].expand_as(b0)
        assert float((b0 - expect).abs().max()) < 1e-12 * float((rho * vol).sum()), solver
        s = res.signal_allcmpts.detach()
        assert float((s[..., 1] - s[..., 0].conj()).abs().max()) < 1e-10 * float(s.abs().max())
        assert bool((s.abs() <= s[0:1].abs() * (1 + 1e-12)).all())


# ----------------------------------------------------------------------- gradients
def _fd_check(loss, params, seed=0, rel=1e-5):
    """Directional derivatives of ``loss`` along random directions vs central differences.
    The step 1e-6 relative keeps the float64 truncation and rounding errors ~1e-9."""
    value = loss(*params)
    grads = torch.autograd.grad(value, params)
    gen = torch.Generator().manual_seed(seed)
    for i, (p, g) in enumerate(zip(params, grads)):
        if i == len(params) - 1:  # points: a random smooth displacement field
            x = p.detach()
            k = torch.randn(3, 3, generator=gen, dtype=torch.float64) * 0.5
            ph = torch.rand(3, generator=gen, dtype=torch.float64) * 6.0
            d = torch.sin(x @ k + ph) * 1e-5
        else:
            d = torch.randn(p.shape, generator=gen, dtype=torch.float64) * p.detach().abs()
            d = d * 1e-6
        with torch.no_grad():
            plus = [q.detach() + (d if j == i else 0) for j, q in enumerate(params)]
            minus = [q.detach() - (d if j == i else 0) for j, q in enumerate(params)]
            fd = (loss(*plus) - loss(*minus)) / 2
        an = (g * d).sum()
        err = abs(float(fd - an)) / abs(float(fd))
        assert err < rel, f"parameter {i}: adjoint {float(an):.10e} vs FD {float(fd):.10e}"


@pytest.mark.parametrize("case", ["splu", "cocg", "adaptive"])
def test_gradients_match_finite_differences(case, monkeypatch):
    """∂(loss)/∂(D, κ, T2, ρ, points) on a jittered two-compartment mesh with unequal
    densities (non-symmetric flux matrix, row-scaled COCG), against float64 central
    differences: ≤ 1e-5 relative. COCG runs with the dof renumbering forced on and a tight
    linear tolerance; the adaptive case replays a frozen step sequence."""
    monkeypatch.setattr(btsys, "REORDER_MIN_DOF", 0)
    mesh = structured_slabs([2.0, 2.0], sides_yz=(2.0, 2.0), h=1.0, jitter=0.15)
    seq = CosOGSE(2000.0, 3000.0, 1) if case == "adaptive" else PGSE(2000.0, 5000.0)
    dirs = [[1.0, 0.2, 0.0]] if case == "adaptive" else [[1.0, 0.2, 0.0], [0, 1.0, 0.5]]
    exp = Experiment([seq], bvalues=[500.0, 2000.0], directions=dirs)
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(2, 2, 1, len(dirs), generator=gen, dtype=torch.complex128)
    kwargs = {"quiet": True, "linear_rtol": 1e-13}
    if case == "adaptive":
        base = solve_btpde(Model(mesh), exp, rtol=1e-2, quiet=True)
        kwargs.update(step_times=base.info["step_times"], method="adaptive", solver="splu")
    else:
        kwargs.update(nsteps=6, solver=case)

    def loss(D, kappa, T2, rho, pts):
        model = Model(
            mesh.with_points(pts),
            diffusivity=D,
            permeability=kappa,
            relaxation=T2,
            density=rho,
        )
        return (solve_btpde(model, exp, **kwargs).signal * w).real.sum()

    params = [
        torch.tensor([0.002, 0.001], dtype=torch.float64, requires_grad=True),
        torch.tensor(1e-4, dtype=torch.float64, requires_grad=True),
        torch.tensor([5e3, 8e3], dtype=torch.float64, requires_grad=True),
        torch.tensor([1.0, 0.7], dtype=torch.float64, requires_grad=True),
        mesh.points.detach().clone().requires_grad_(True),
    ]
    _fd_check(loss, params)


def test_gradient_wrt_q_and_checkpointing():
    """∂S/∂q (q-values of the experiment) against central differences (≤ 1e-6 relative),
    and checkpointed backward sweeps (every 3rd state kept, segments recomputed) give the
    same gradients as storing every state (1e-12)."""
    mesh = structured_box((3.0, 2.0, 2.0), (3, 2, 2), jitter=0.1)
    D = torch.tensor(0.002, dtype=torch.float64, requires_grad=True)

    def run(q, checkpoint=None):
        exp = Experiment([PGSE(2000.0, 4000.0)], qvalues=q, directions=[[1.0, 1.0, 0.0]])
        res = solve_btpde(
            Model(mesh, diffusivity=D), exp, nsteps=7, checkpoint=checkpoint, quiet=True
        )
        return res.signal_allcmpts.abs().sum()

    q = torch.tensor([2e-5, 4e-5], dtype=torch.float64, requires_grad=True)
    gq, gD = torch.autograd.grad(run(q), (q, D))
    gq3, gD3 = torch.autograd.grad(run(q, checkpoint=3), (q, D))
    assert torch.allclose(gq, gq3, rtol=1e-12, atol=0) and torch.allclose(gD, gD3, rtol=1e-12)
    eps = 1e-10
    for i in range(2):
        dq = torch.zeros(2, dtype=torch.float64)
        dq[i] = eps
        with torch.no_grad():
            fd = (run(q.detach() + dq) - run(q.detach() - dq)) / (2 * eps)
        assert abs(float(fd) - float(gq[i])) < 1e-6 * abs(float(fd))


# ------------------------------------------------------------- outputs and bad input
def test_magnetization_and_snapshots():
    """ξ(TE) integrates to the signal; snapshots at 0 and TE are ρ and ξ(TE)."""
    mesh = structured_slabs([2.0, 2.0], sides_yz=(1.0, 1.0), h=1.0)
    model = Model(mesh, density=[1.0, 0.5], permeability=1e-4)
    seq = PGSE(1000.0, 2000.0)
    exp = Experiment([seq], bvalues=[1000.0], directions=[[1.0, 0.0, 0.0], [0, 1.0, 0]])
    res = solve_btpde(
        model,
        exp,
        nsteps=4,
        return_magnetization=True,
        snapshot_times=[0.0, 1500.0, 3000.0],
        quiet=True,
    )
    mats = assemble(model)
    mag = res.magnetization.detach()  # [namp, nseq, ndir, ndof]
    sig = mats.compartment_integrals(mag.permute(3, 0, 1, 2)).detach()
    assert torch.allclose(sig, res.signal.detach(), rtol=1e-13, atol=0)
    snaps = res.snapshots["magnetization"]  # [namp, nseq, ndir, nt, ndof]
    rho = model.initial_magnetization()
    assert torch.allclose(snaps[0, 0, 0, 0].real, rho, atol=1e-14)
    assert torch.allclose(snaps[..., 2, :], mag, rtol=1e-13, atol=1e-15)


def test_bad_input_raises_clear_errors():
    mesh = structured_box((2.0, 2.0, 2.0), (2, 2, 2))
    model = Model(mesh)
    exp = Experiment([PGSE(1000.0, 2000.0)], bvalues=[1000.0], directions=[[1.0, 0, 0]])
    with pytest.raises(ValueError, match="at least one value"):
        Experiment([PGSE(1000.0, 2000.0)], bvalues=[], directions=[[1.0, 0, 0]])
    with pytest.raises(ValueError, match="zero length"):
        Experiment([PGSE(1000.0, 2000.0)], bvalues=[1.0], directions=[[0.0, 0, 0]])
    with pytest.raises(SetupError, match="larger than the interval"):
        solve_btpde(model, exp, timestep=1500.0, quiet=True)
    with pytest.raises(SetupError, match="either timestep"):
        solve_btpde(model, exp, timestep=10.0, nsteps=3, quiet=True)
    with pytest.raises(SetupError, match="theta"):
        solve_btpde(model, exp, theta=0.2, quiet=True)
    with pytest.raises(SetupError, match="piecewise-constant"):
        ogse = Experiment([CosOGSE(1000.0, 2000.0, 1)], bvalues=[10.0], directions=[[1, 0, 0]])
        solve_btpde(model, ogse, method="theta", quiet=True)
    with pytest.raises(SetupError, match="solver"):
        solve_btpde(model, exp, solver="magic", quiet=True)
    with pytest.raises(TypeError, match="Experiment"):
        solve_btpde(model, {"bvalues": [1.0]}, quiet=True)
    with pytest.raises(MeshError, match="not finite"):
        bad = mesh.points.clone()
        bad[3, 1] = float("nan")
        mesh.with_points(bad)
    nan_model = Model(mesh)
    with torch.no_grad():
        nan_model.mesh.points[0, 0] = float("nan")  # corrupted after construction
    with pytest.raises(SetupError, match="not finite"):
        solve_btpde(nan_model, exp, quiet=True)


def test_box_convergence_in_space():
    """Box PGSE along x: the P1 error against the exact 1-D product falls by ~4 per halving
    of h (second order in space, slope 2 ± 0.3)."""
    sides = (8.0, 4.0, 4.0)
    delta, Delta, b = 5000.0, 10000.0, 3000.0
    ref = box_signal(sides, D0, _q(b, delta, Delta), [1, 0, 0], pgse_pieces(delta, Delta))
    exp = Experiment([PGSE(delta, Delta)], bvalues=[b], directions=[[1.0, 0.0, 0.0]])
    hs, errs = [], []
    for nx in (8, 16, 32):
        mesh = structured_box(sides, (nx, 2, 2))
        res = solve_btpde(Model(mesh, diffusivity=D0), exp, nsteps=200, quiet=True)
        errs.append(abs(complex(res.normalized().detach()[0, 0, 0]) - ref) / abs(ref))
        hs.append(sides[0] / nx)
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(slope - 2.0) < 0.3, f"errors {errs}, order {slope:.2f}"


# ---------------------------------------------------------------------- slow, larger
@pytest.mark.slow
def test_parity_with_spindoctor_fine_steps_slow(reference_dir):
    """SpinDoctor parity at 100 Crank-Nicolson steps per interval: measured 9.8e-7, bound 2e-6
    (the CN error falls 4x per halving of the step: 1.6e-5 at 25, 3.9e-6 at 50)."""
    ref = json.loads((reference_dir / "fem_sphere_r5.json").read_text())
    data = np.load(reference_dir / "meshes" / "sphere_r5.npz")
    mesh = TetMesh(data["points"], data["tetrahedra"], data["tet_labels"])
    exp = Experiment([PGSE(10000.0, 43100.0)], qvalues=ref["qvalues"], directions=ref["directions"])
    res = solve_btpde(Model(mesh, diffusivity=D0), exp, nsteps=100, quiet=True)
    s_ref = np.array(ref["btpde"]["signal_allcmpts_real"]) + 1j * np.array(
        ref["btpde"]["signal_allcmpts_imag"]
    )
    got = res.signal_allcmpts.detach()[:, 0, :].numpy().T
    assert (np.abs(got - s_ref) / np.abs(s_ref)).max() < 2e-6


@pytest.mark.slow
def test_cocg_amg_agrees_with_superlu_slow():
    """On a 6k-node gmsh ball (AMG-preconditioned COCG with RCM renumbering) the signals and
    the gradient w.r.t. D agree with the SuperLU path: linear_rtol 1e-12 → 1e-9 relative."""
    mesh = sdt_mesh.sphere(5.0, h=0.45)
    exp = Experiment([PGSE(5000.0, 10000.0)], bvalues=[1000.0, 3000.0], directions=[[1, 1, 0]])
    out = {}
    for solver in ("splu", "cocg"):
        D = torch.tensor(D0, dtype=torch.float64, requires_grad=True)
        res = solve_btpde(
            Model(mesh, diffusivity=D),
            exp,
            nsteps=20,
            solver=solver,
            preconditioner="amg",
            linear_rtol=1e-12,
            quiet=True,
        )
        (gD,) = torch.autograd.grad(res.signal_allcmpts.abs().sum(), D)
        out[solver] = (res.signal_allcmpts.detach(), gD)
    s1, g1 = out["splu"]
    s2, g2 = out["cocg"]
    assert float((s1 - s2).abs().max() / s1.abs().max()) < 1e-9
    assert abs(float(g1 - g2)) < 1e-9 * abs(float(g1))
