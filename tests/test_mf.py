"""Matrix formalism (spindoctor_torch.solvers.mf).

References: the exact 1-D cosine-series solution of a box (written here independently: analytic
eigenfunctions and moments, SciPy ``expm`` / ``solve_ivp``), ``solve_btpde`` on the same mesh,
SpinDoctor's own eigenvalues and MF signals (../shared/reference/spindoctor), closed-form
factors (T2), and central finite differences for gradients.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.integrate as sint
import scipy.linalg as sla
import torch

from spindoctor_torch.errors import SetupError, SpinDoctorWarning
from spindoctor_torch.experiment import Experiment
from spindoctor_torch.mesh.structured import structured_box, structured_slabs
from spindoctor_torch.mesh.tetmesh import TetMesh
from spindoctor_torch.model import Model
from spindoctor_torch.sequences import PGSE, CosOGSE, DoublePGSE
from spindoctor_torch.solvers.mf import (
    _reduce,
    compute_laplace_eig,
    compute_mf_diffusion_tensor,
    solve_mf,
    solve_mfga,
)

D0 = 0.002  # µm²/µs
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ 1-D exact cosine series
def _cosine_basis(L: float, nmode: int, d: float):
    """Neumann eigenpairs of d·(−∂²) on [0, L]: λ_l = d(lπ/L)², φ_0 = 1/√L,
    φ_l = √(2/L) cos(lπx/L); the moment matrix ∫ x φ_l φ_m dx (analytic)."""
    lv = np.arange(nmode)
    lam = d * (lv * np.pi / L) ** 2

    def icos(c):  # ∫_0^L x cos(c x) dx for c = kπ/L
        c = np.asarray(c, dtype=float)
        out = np.full(c.shape, L**2 / 2)
        nz = c != 0
        out[nz] = (np.cos(c[nz] * L) - 1) / c[nz] ** 2
        return out

    li, mi = np.meshgrid(lv, lv, indexing="ij")
    a = np.sqrt(np.where(li == 0, 1 / L, 2 / L)) * np.sqrt(np.where(mi == 0, 1 / L, 2 / L))
    # cos·cos = ½[cos((l−m)πx/L) + cos((l+m)πx/L)]; for l = m = 0 the product is 1
    A = a * 0.5 * (icos((li - mi) * np.pi / L) + icos((li + mi) * np.pi / L))
    A[0, 0] = L / 2
    return lam, A


def exact_1d_signal(L, d, q, pieces, nmode=120):
    """Normalized signal of the 1-D PGSE-type experiment: pieces [(duration, f)], q along x."""
    lam, A = _cosine_basis(L, nmode, d)
    nu = np.zeros(nmode, complex)
    nu[0] = np.sqrt(L)
    for dt, f in pieces:
        nu = sla.expm(-dt * (np.diag(lam) + 1j * q * f * A)) @ nu
    return nu[0] * np.sqrt(L) / L


def cos_ogse_profile(t: float, delta: float, Delta: float, n: int) -> float:
    """CosOGSE effective profile: cos(2πnt/δ) on [0, δ), −cos(2πn(t−Δ)/δ) on [Δ, Δ+δ)."""
    if 0.0 <= t < delta:
        return math.cos(2 * math.pi * n * t / delta)
    if Delta <= t < Delta + delta:
        return -math.cos(2 * math.pi * n * (t - Delta) / delta)
    return 0.0


def exact_1d_signal_ode(L, d, q, delta, Delta, n, nmode=60):
    """Normalized 1-D CosOGSE signal by an adaptive ODE solve (DOP853, rtol 1e-11) of the
    cosine-series system, interval by interval."""
    lam, A = _cosine_basis(L, nmode, d)

    def rhs(t, y):
        nu = y[:nmode] + 1j * y[nmode:]
        dnu = -(lam * nu + 1j * q * cos_ogse_profile(t, delta, Delta, n) * (A @ nu))
        return np.concatenate([dnu.real, dnu.imag])

    y = np.zeros(2 * nmode)
    y[0] = np.sqrt(L)
    eps = 1e-9 * delta
    for a, b in ((0.0, delta), (delta, Delta), (Delta, Delta + delta)):
        if b > a:
            sol = sint.solve_ivp(
                rhs, (a + eps, b - eps), y, method="DOP853", rtol=1e-11, atol=1e-13
            )
            y = sol.y[:, -1]
    return (y[0] + 1j * y[nmode]) * np.sqrt(L) / L


@pytest.fixture(scope="module")
def rod():
    """Box 10 × 1 × 1 µm (gradient along x is a 1-D problem), h_x = 0.2 µm."""
    mesh = structured_box((10.0, 1.0, 1.0), (50, 1, 1))
    model = Model(mesh, diffusivity=D0)
    lap = compute_laplace_eig(model, length_scale=0.5, neig_max=200, quiet=True)
    return model, lap


def test_box_pgse_and_double_pgse_match_exact_cosine_series(rod):
    model, lap = rod
    bvals = [500.0, 1000.0, 2000.0, 4000.0]
    seqs = [PGSE(5000.0, 20000.0), DoublePGSE(3000.0, 10000.0, tpause=2000.0)]
    exp = Experiment(seqs, bvalues=bvals, directions=[[1.0, 0.0, 0.0]])
    res = solve_mf(model, exp, lap=lap, quiet=True)
    got = res.normalized()[:, :, 0].detach().numpy()
    for s, seq in enumerate(seqs):
        pieces = [(t1 - t0, v) for t0, t1, v in seq.constant_pieces()]
        for a in range(len(bvals)):
            q = float(exp.qvalues[a, s])
            ref = exact_1d_signal(10.0, D0, q, pieces)
            # acceptance 0.5 %; P1 error of the λ_1 = D(π/10)² mode at h = 0.2 is ~3e-5
            assert abs(got[a, s] / ref - 1) < 5e-3, (seq, bvals[a], got[a, s], ref)


def test_box_pgse_strongly_oscillatory_stays_accurate(rod):
    """q·‖A‖·δ = 100 (δ = 5 ms, q = 4e-3 rad/(µs·µm) on the 10 µm rod; the same phase as a
    100 µm cell at b ≈ 1.7e4 s/mm²): one Chebyshev series of exp(−δK) carries terms ~e^70
    times the result, and before the series was split into substeps this returned
    S/S0 = 2.5e7. Against the exact cosine series (2.115e-8): the absolute error is the
    truncation of the ℓ = 0.5 µm basis (measured 4e-10), asserted below 2e-9."""
    model, lap = rod
    delta, Delta, q = 5000.0, 6000.0, 4e-3
    exp = Experiment([PGSE(delta, Delta)], qvalues=[q], directions=[[1.0, 0.0, 0.0]])
    got = complex(solve_mf(model, exp, lap=lap, quiet=True).normalized()[0, 0, 0])
    pieces = [(t1 - t0, v) for t0, t1, v in PGSE(delta, Delta).constant_pieces()]
    ref = exact_1d_signal(10.0, D0, q, pieces)
    assert abs(got - ref) < 2e-9, (got, ref)


def test_box_cos_ogse_converges_to_1d_ode(rod):
    """CosOGSE by ``ninterval`` constant pieces (values averaged over each piece's ends, as
    SpinDoctor): the error against the 1-D ODE solution shrinks at least 4x per 4x pieces,
    and is below 0.3 % at 400 pieces (ℓ = 0.5 µm basis)."""
    model, lap = rod
    delta, Delta, n = 5000.0, 7000.0, 2
    exp = Experiment([CosOGSE(delta, Delta, n)], bvalues=[1000.0], directions=[[1.0, 0, 0]])
    ref = exact_1d_signal_ode(10.0, D0, float(exp.qvalues[0, 0]), delta, Delta, n)
    errs = []
    for ni in (100, 400):
        res = solve_mf(model, exp, lap=lap, ninterval=ni, quiet=True)
        errs.append(abs(complex(res.normalized()[0, 0, 0]) / ref - 1))
    assert errs[1] < 3e-3 and errs[1] < errs[0] / 4, errs


def test_mf_effective_tensor_matches_1d_series(rod):
    """D_xx of a rod = (1/L) Σ a_l² j(λ_l) with a_l = ∫ x φ_l (analytic) and the PGSE j."""
    model, lap = rod
    delta, Delta = 5000.0, 20000.0
    Dc, Dall = compute_mf_diffusion_tensor(model, PGSE(delta, Delta), lap=lap)
    L = 10.0
    lv = np.arange(1, 400)
    lam = D0 * (lv * np.pi / L) ** 2
    a = np.sqrt(2 / L) * (L / (lv * np.pi)) ** 2 * ((-1.0) ** lv - 1)

    def j(x):
        num = (
            np.exp(-x * (Delta + delta))
            + np.exp(-x * (Delta - delta))
            - 2 * np.exp(-x * delta)
            - 2 * np.exp(-x * Delta)
            + 2 * (1 - x * delta)
        )
        return -num / (x**2 * delta**2 * (Delta - delta / 3))

    dxx = float((a**2 * j(lam)).sum() / L)
    # truncation at ℓ = 0.5 µm and P1 error on the kept modes: 0.2 % is generous
    assert abs(float(Dall[0, 0, 0]) / dxx - 1) < 2e-3, (float(Dall[0, 0, 0]), dxx)
    # y and z: the 1-µm cross-section is resolved by one cell only, but the tensor is diagonal
    assert float(Dc[0, 0].abs().max()) == pytest.approx(float(Dc[0, 0].diagonal().abs().max()))


def test_uniform_t2_is_an_exact_factor_and_b0_gives_volume(rod):
    model, lap = rod
    t2 = 50e3
    m2 = model.with_parameters(relaxation=t2)
    seq = PGSE(5000.0, 20000.0)
    exp = Experiment([seq], bvalues=[0.0, 2000.0], directions=[[1.0, 0.0, 0.0], [0, 0.6, 0.8]])
    r1 = solve_mf(model, exp, lap=lap, quiet=True)
    r2 = solve_mf(m2, exp, lap=lap, quiet=True)
    ratio = (r2.signal_allcmpts / r1.signal_allcmpts).detach()
    expected = math.exp(-seq.echotime / t2)
    assert float((ratio - expected).abs().max()) < 1e-9
    # b = 0 without T2: ρ|Ω| = 10 µm³
    assert float((r1.signal_allcmpts[0] - 10.0).abs().max()) < 1e-9


def test_magnetization_integrates_to_the_signal(rod):
    model, lap = rod
    exp = Experiment(
        [PGSE(5000.0, 20000.0), CosOGSE(4000.0, 6000.0, 1)],
        bvalues=[1500.0],
        directions=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    )
    res = solve_mf(model, exp, lap=lap, return_magnetization=True, ninterval=100, quiet=True)
    assert res.signal.shape == (1, 1, 2, 2)
    assert res.magnetization.shape == (1, 2, 2, lap.funcs.shape[0])
    w = lap.fem.mass_weights().to(res.magnetization.dtype)
    integ = (res.magnetization * w).sum(-1)
    torch.testing.assert_close(integ, res.signal_allcmpts, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------- MF versus BTPDE
def _btpde(model, exp):
    from spindoctor_torch.solvers.btpde import solve_btpde

    return solve_btpde(model, exp, nsteps=200, quiet=True)


def test_mf_matches_btpde_two_permeable_compartments():
    """Two slabs, κ = 1e-3 µm/µs, different T2 (the reduced T is not diagonal)."""
    mesh = structured_slabs([2.0, 2.0], (1.0, 1.0), h=0.25)
    model = Model(mesh, diffusivity=D0, permeability=1e-3, relaxation=[60e3, 40e3])
    exp = Experiment(
        [PGSE(5000.0, 10000.0)],
        bvalues=[1000.0, 3000.0],
        directions=[[1.0, 0.0, 0.0], [1 / math.sqrt(3)] * 3],
    )
    ref = _btpde(model, exp).signal.detach()
    lap = compute_laplace_eig(model, length_scale=0.5, neig_max=500, quiet=True)
    errs = []
    for ls in (2.0, 1.0, 0.7):
        res = solve_mf(model, exp, lap=lap.truncate(ls), quiet=True)
        errs.append(float((res.signal.detach() / ref - 1).abs().max()))
    # acceptance: ≤ 0.5 % at ℓ ≤ 1 µm, shrinking with ℓ (per-compartment signals)
    assert errs[1] <= 5e-3 and errs[2] <= 5e-3, errs
    assert errs[0] > errs[1] > errs[2], errs


def test_mf_matches_btpde_cylinder_with_ecs():
    """Axon in myelin in a box ECS (meshes/cylinder_myelin_ecs.msh), κ = 1e-4 µm/µs."""
    from spindoctor_torch.mesh.io import read_mesh

    mesh = read_mesh(REPO / "meshes" / "cylinder_myelin_ecs.msh")
    model = Model(mesh, diffusivity=D0, permeability=1e-4)
    exp = Experiment(
        [PGSE(5000.0, 10000.0)], bvalues=[3000.0], directions=[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    )
    ref = _btpde(model, exp).signal_allcmpts.detach()
    lap = compute_laplace_eig(model, length_scale=0.8, neig_max=800, quiet=True)
    errs = []
    for ls in (2.0, 1.0, 0.8):
        res = solve_mf(model, exp, lap=lap.truncate(ls), quiet=True)
        errs.append(float((res.signal_allcmpts.detach() / ref - 1).abs().max()))
    assert errs[1] <= 5e-3 and errs[2] <= 5e-3, errs
    assert errs[0] > errs[1] > errs[2], errs


# ------------------------------------------------------- propagation paths (no grad / grad)
def test_grouped_no_grad_path_matches_grad_path_and_exact_series(rod):
    """3 directions × 5 amplitudes: without derivatives one batched product per direction runs
    (GroupedOperator); with q requiring grad the stacked series with its hand-written backward
    runs. Signals and ν(TE) agree to 1e-9 (each a Chebyshev series at tol 1e-10 on the same
    reduced operator), the mirror directions ±x agree (the rod is symmetric about x = 5 µm),
    and ±x match the exact 1-D series within the 0.5 % acceptance of the test above."""
    model, lap = rod
    seq = PGSE(5000.0, 20000.0)
    q = torch.sqrt(torch.tensor([500.0, 1000.0, 2000.0, 3000.0, 4000.0]) / seq.bvalue_no_q)
    dirs = [[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.6, 0.8, 0.0]]
    kw = dict(lap=lap, return_magnetization=True, quiet=True)
    with torch.no_grad():
        r0 = solve_mf(model, Experiment([seq], qvalues=q, directions=dirs), **kw)
    qg = q.clone().requires_grad_(True)
    r1 = solve_mf(model, Experiment([seq], qvalues=qg, directions=dirs), **kw)
    s0, s1 = r0.signal_allcmpts[:, 0], r1.signal_allcmpts[:, 0].detach()  # (namp, ndir)
    assert float(((s0 - s1).abs() / s1.abs()).max()) < 1e-9
    m0, m1 = r0.magnetization, r1.magnetization.detach()
    assert float((m0 - m1).abs().max() / m1.abs().max()) < 1e-9
    assert float(((s0[:, 0] - s0[:, 1]).abs() / s0[:, 0].abs()).max()) < 1e-10
    pieces = [(t1 - t0, v) for t0, t1, v in seq.constant_pieces()]
    for a in range(q.shape[0]):
        ref = exact_1d_signal(10.0, D0, float(q[a]), pieces)
        assert abs(complex(s0[a, 0]) / 10.0 / ref - 1) < 5e-3


def test_no_grad_and_grad_agree_with_a_non_diagonal_reduced_t2():
    """Two permeable slabs with different T2 (L + T not diagonal: a shared block in every
    product) and two compartments per pair: no-grad (grouped) and grad (stacked) paths,
    PGSE and DoublePGSE, agree to 1e-9."""
    mesh = structured_slabs([2.0, 2.0], (1.0, 1.0), h=0.25)
    model = Model(mesh, diffusivity=D0, permeability=1e-3, relaxation=[60e3, 40e3])
    lap = compute_laplace_eig(model, length_scale=1.0, neig_max=200, quiet=True)
    seqs = [PGSE(5000.0, 10000.0), DoublePGSE(3000.0, 6000.0, tpause=1000.0)]
    q = torch.tensor([1e-4, 2e-4, 3e-4, 4e-4], dtype=torch.float64)
    dirs = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1 / math.sqrt(3)] * 3]
    with torch.no_grad():
        r0 = solve_mf(model, Experiment(seqs, qvalues=q, directions=dirs), lap=lap, quiet=True)
    qg = q.clone().requires_grad_(True)
    r1 = solve_mf(model, Experiment(seqs, qvalues=qg, directions=dirs), lap=lap, quiet=True)
    s0, s1 = r0.signal, r1.signal.detach()
    assert float(((s0 - s1).abs() / s1.abs()).max()) < 1e-9


def test_piecewise_path_on_a_moved_mesh_matches_dense_exponentials(rod):
    """The rod moved by (40, −25, 60) µm (the solver takes positions about the centroid and
    restores the origin by a phase): ν(TE) of a DoublePGSE (general piecewise path) against
    the product of dense ``matrix_exp(−dt(Λ + i q f Φᵀ J(u) Φ))`` with positions about the
    origin, 2 directions × 4 amplitudes: 1e-9 (both exact on the same basis; Chebyshev tol
    1e-10). PGSE signals of the moved and unmoved rod agree to 1e-8 (two eigensolves)."""
    from spindoctor_torch.fem.assemble import assemble
    from spindoctor_torch.linalg.eig import project

    model, lap = rod
    shift = torch.tensor([40.0, -25.0, 60.0], dtype=torch.float64)
    model2 = Model(model.mesh.with_points(model.mesh.points + shift), diffusivity=D0)
    lap2 = compute_laplace_eig(model2, length_scale=0.5, neig_max=200, quiet=True)
    seq = DoublePGSE(2000.0, 5000.0, tpause=1000.0)
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]], dtype=torch.float64)
    q = torch.tensor([1e-4, 2e-4, 3e-4, 5e-4], dtype=torch.float64)
    exp = Experiment([seq], qvalues=q, directions=dirs)
    res = solve_mf(model2, exp, lap=lap2, return_magnetization=True, quiet=True)
    phi = lap2.funcs.detach()
    fem = assemble(model2)
    J = torch.stack([project(Jd, phi).detach() for Jd in fem.J])  # about the origin
    L = torch.diag(lap2.values.detach()).to(torch.complex128)
    nu0 = (phi.T @ fem.mass_weights().detach()).to(torch.complex128)
    for g in range(2):
        Au = torch.einsum("d,dkl->kl", dirs[g], J).to(torch.complex128)
        for a in range(4):
            nu = nu0
            for t0, t1, v in seq.constant_pieces():
                nu = torch.linalg.matrix_exp(-(t1 - t0) * (L + 1j * float(q[a]) * v * Au)) @ nu
            ref = phi.to(nu.dtype) @ nu
            got = res.magnetization[a, 0, g].detach()
            assert float((got - ref).abs().max() / ref.abs().max()) < 1e-9, (g, a)
    # centred position operators: the imaginary bound (hence the degree) ignores the shift
    b1 = _reduce(model, lap.fem, lap.funcs).imag_bound(dirs, q[None].expand(2, 4))
    b2 = _reduce(model2, lap2.fem, lap2.funcs).imag_bound(dirs, q[None].expand(2, 4))
    assert b2 == pytest.approx(b1, rel=1e-6)
    exp1 = Experiment([PGSE(5000.0, 20000.0)], qvalues=q, directions=dirs)
    s1 = solve_mf(model, exp1, lap=lap, quiet=True).signal_allcmpts.detach()
    s2 = solve_mf(model2, exp1, lap=lap2, quiet=True).signal_allcmpts.detach()
    assert float(((s1 - s2).abs() / s1.abs()).max()) < 1e-8


def test_propagation_in_single_precision(rod):
    """The reduced operator in float32: complex64 signals within 2e-5 of float64, relative to
    the largest signal (measured 2.4e-6 PGSE, 4e-6 CosOGSE: ~110 series terms of single
    precision rounding, 6e-8 each), on both no-grad layouts and the piecewise path."""
    import dataclasses

    from spindoctor_torch.solvers.mf import _propagate_sequence, _Reduced

    class _Bar:
        def update(self, _):
            pass

    model, lap = rod
    red = _reduce(model, lap.fem, lap.funcs.detach())
    f32 = {f.name: getattr(red, f.name) for f in dataclasses.fields(_Reduced)}
    for name in ("sigma", "E", "A", "W", "rho"):
        f32[name] = f32[name].detach().float()
    red32 = _Reduced(**f32)
    q = torch.tensor([1e-4, 2e-4, 3e-4, 5e-4], dtype=torch.float64)
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.6, 0.0, 0.8]])
    for seq in (PGSE(5000.0, 20000.0), CosOGSE(4000.0, 6000.0, 1)):
        for grouped in (None, False):
            with torch.no_grad():
                ref = _propagate_sequence(red, seq, q, dirs.double(), 40, False, 1e-10, _Bar())[0]
                got = _propagate_sequence(
                    red32, seq, q.float(), dirs, 40, False, 1e-6, _Bar(), grouped=grouped
                )[0]
            assert got.dtype == torch.complex64
            err = float((got.to(ref.dtype) - ref).abs().max() / ref.abs().max())
            assert err < 2e-5, (type(seq).__name__, grouped, err)


# ----------------------------------------------------------------------------- gradients
def _smooth(points, seed=5):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(3, 3, generator=g, dtype=points.dtype)
    return 0.01 * torch.sin(points @ W + 0.3)


@pytest.mark.parametrize("backend", ["dense", "splu"])
@pytest.mark.parametrize("kappa0", [1e-3, 0.0])
def test_mf_gradient_matches_finite_differences_on_cube(backend, kappa0):
    """Cube split into two compartments at x = 0.5 µm: each half has exactly degenerate
    (y, z) mode pairs. Gradient of an MF loss w.r.t. the points (smooth random displacement)
    and κ; at κ = 0 the compartments are solved separately and dκ couples them."""
    mesh = structured_box((1.0, 1.0, 1.0), (6, 4, 4), x_interfaces=[0.5])
    exp = Experiment(
        [PGSE(3000.0, 6000.0)],
        bvalues=[2000.0, 6000.0],
        directions=[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1 / math.sqrt(3)] * 3],
    )

    def loss(points, kappa):
        model = Model(mesh.with_points(points), diffusivity=D0, permeability=kappa)
        res = solve_mf(model, exp, length_scale=0.25, neig_max=60, backend=backend, quiet=True)
        return (res.signal.abs() ** 2).sum()

    p0 = mesh.points
    p = p0.clone().requires_grad_(True)
    k = torch.tensor(kappa0, dtype=torch.float64, requires_grad=True)
    loss(p, k).backward()
    d = _smooth(p0)
    an = float((p.grad * d).sum())
    eps = 1e-4
    k0 = torch.tensor(kappa0, dtype=torch.float64)
    fd = (float(loss(p0 + eps * d, k0)) - float(loss(p0 - eps * d, k0))) / (2 * eps)
    assert abs(an - fd) <= 1e-4 * abs(fd), ("points", an, fd)
    h = 1e-7  # relative step 1e-4 at κ = 1e-3: truncation ~1e-8, round-off ~1e-8
    if kappa0 > 0:
        fdk = (float(loss(p0, k0 + h)) - float(loss(p0, k0 - h))) / (2 * h)
    else:  # κ ≥ 0: second-order one-sided difference
        f0, f1, f2 = (float(loss(p0, k0 + s * h)) for s in (0, 1, 2))
        fdk = (-3 * f0 + 4 * f1 - f2) / (2 * h)
    assert abs(float(k.grad) - fdk) <= 1e-4 * abs(fdk), ("kappa", float(k.grad), fdk)


# ------------------------------------------------------------- SpinDoctor parity (sphere)
@pytest.fixture(scope="module")
def sphere_ref(reference_dir):
    data = np.load(reference_dir / "meshes" / "sphere_r5.npz")
    mesh = TetMesh(data["points"], data["tetrahedra"], data["tet_labels"])
    ref = json.loads((reference_dir / "fem_sphere_r5.json").read_text())
    model = Model(mesh, diffusivity=ref["pde"]["diffusivity_um2_per_us"])
    exp = Experiment(
        [PGSE(ref["sequence"]["delta_us"], ref["sequence"]["Delta_us"])],
        qvalues=torch.tensor(ref["qvalues"]),
        directions=torch.tensor(ref["directions"]),
    )
    return model, exp, ref


def _parity(model, exp, ref, index):
    r = ref["mf"][index]
    lap = compute_laplace_eig(model, length_scale=r["length_scale_um"], neig_max=400, quiet=True)
    ev = np.array(r["eigenvalues_per_us"])
    assert lap.nmode == r["neig_found"]
    lam = lap.values.detach().numpy()
    # SpinDoctor's eigs vs ours on the same matrices: agreement to round-off
    assert np.abs(lam - ev).max() <= 1e-10 * ev.max(), np.abs(lam - ev).max() / ev.max()
    res = solve_mf(model, exp, lap=lap, quiet=True)
    sref = np.array(r["signal_allcmpts_real"]).T  # [b][direction]
    got = res.signal_allcmpts[:, 0, :].real.detach().numpy()
    # both are exact products of exponentials on the same basis; 1e-7 covers the 16-digit
    # rounding of the q-values in the file and the Krylov tolerance
    assert np.abs(got / sref - 1).max() < 1e-7, np.abs(got / sref - 1).max()
    ga = solve_mfga(model, exp, lap=lap, quiet=True)
    np.testing.assert_allclose(
        ga.info["tensors_allcmpts"][0].detach().numpy(),
        np.array(r["effective_diffusion_tensor_um2_per_us"]),
        rtol=0,
        atol=1e-10 * 5e-5,
    )
    mref = np.array(r["mfga_signal"]).T
    got = ga.signal_allcmpts[:, 0, :].real.detach().numpy()
    assert np.abs(got / mref - 1).max() < 1e-7


def test_sphere_parity_with_spindoctor_length_scale_2(sphere_ref):
    _parity(*sphere_ref, 0)


@pytest.mark.slow
def test_sphere_parity_with_spindoctor_length_scale_1(sphere_ref):
    _parity(*sphere_ref, 1)


# ---------------------------------------------------------------- options, cache, errors
def test_neig_max_cap_warns():
    mesh = structured_box((4.0, 1.0, 1.0), (12, 3, 3))
    model = Model(mesh, diffusivity=D0)
    with pytest.warns(SpinDoctorWarning, match="neig_max"):
        lap = compute_laplace_eig(model, length_scale=0.5, neig_max=5, quiet=True)
    assert lap.nmode <= 5


def test_cache_roundtrip_and_key_changes_with_the_mesh(tmp_path):
    mesh = structured_box((2.0, 1.0, 1.0), (6, 3, 3), jitter=0.1)
    model = Model(mesh, diffusivity=D0)
    lap1 = compute_laplace_eig(model, length_scale=0.6, cache_dir=tmp_path, quiet=True)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    lap2 = compute_laplace_eig(model, length_scale=0.6, cache_dir=tmp_path, quiet=True)
    assert lap2.info.backend == "cache"
    torch.testing.assert_close(lap1.values, lap2.values, rtol=0, atol=0)
    p = mesh.points.clone()
    p[0, 0] += 0.01
    compute_laplace_eig(
        Model(mesh.with_points(p), diffusivity=D0), length_scale=0.6, cache_dir=tmp_path, quiet=True
    )
    assert len(list(tmp_path.glob("*.npz"))) == 2
    # the cached basis is still differentiable
    pts = mesh.points.clone().requires_grad_(True)
    lap3 = compute_laplace_eig(
        Model(mesh.with_points(pts), diffusivity=D0),
        length_scale=0.6,
        cache_dir=tmp_path,
        quiet=True,
    )
    assert lap3.info.backend == "cache"
    (lap3.values.sum() + (lap3.funcs**4).sum()).backward()
    assert bool(torch.isfinite(pts.grad).all()) and float(pts.grad.abs().max()) > 0


def test_bad_input_is_rejected(rod):
    model, lap = rod
    exp = Experiment([PGSE(5000.0, 20000.0)], bvalues=[1000.0], directions=[[1.0, 0, 0]])
    with pytest.raises(SetupError, match="length_scale"):
        compute_laplace_eig(model, length_scale=-1.0, quiet=True)
    with pytest.raises(SetupError, match="neig_max"):
        compute_laplace_eig(model, length_scale=1.0, neig_max=0, quiet=True)
    with pytest.raises(SetupError, match="ninterval"):
        solve_mf(model, exp, lap=lap, ninterval=0, quiet=True)
    with pytest.raises(SetupError, match="Experiment"):
        solve_mf(model, "PGSE", lap=lap, quiet=True)
