"""Karger model: against its ODE solved by SciPy, closed forms, HADC tensors, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _gpa_series import gpa_adc_slab, j_pgse
from scipy.integrate import solve_ivp

from spindoctor_torch.errors import SetupError
from spindoctor_torch.experiment import Experiment
from spindoctor_torch.mesh.structured import structured_slabs
from spindoctor_torch.model import Model
from spindoctor_torch.sequences import PGSE, CosOGSE, Waveform3D
from spindoctor_torch.solvers.karger import solve_karger

WIDTHS = (3.0, 5.0)
SIDES = (2.0, 2.0)
KAPPA = 1e-4
T2 = (50e3, 80e3)
RHO = (1.0, 0.8)
DTENS = np.array(
    [
        [[1e-4, 0.0, 0.0], [0.0, 5e-4, 1e-5], [0.0, 1e-5, 4e-4]],
        [[2e-4, 0.0, 0.0], [0.0, 6e-4, 0.0], [0.0, 0.0, 6e-4]],
    ]
)


def _big_f_pgse(delta, Delta):
    return lambda t: min(t, delta) - min(max(t - Delta, 0.0), delta)


def _big_f_cos(delta, Delta, n):
    w = 2 * math.pi * n / delta
    return lambda t: (
        math.sin(w * min(t, delta)) / w - (math.sin(w * (t - Delta)) / w if t >= Delta else 0.0)
    )


@pytest.fixture(scope="module")
def two_slabs():
    mesh = structured_slabs(list(WIDTHS), SIDES, h=1.0, jitter=0.1)
    return Model(mesh, diffusivity=0.002, permeability=KAPPA, relaxation=T2, density=RHO)


def test_matches_scipy_ode(two_slabs):
    """Two compartments exchanging through one interface, T2 and unequal densities, PGSE and
    CosOGSE: the Magnus/exact-exponential signals equal SciPy DOP853 at rtol 1e-12 of the ODE
    assembled here from the exact volumes and interface area, to 1e-9 (measured 2e-10)."""
    seqs = [PGSE(5000.0, 20000.0), CosOGSE(5000.0, 15000.0, 2)]
    bigf = [_big_f_pgse(5000.0, 20000.0), _big_f_cos(5000.0, 15000.0, 2)]
    dirs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    exp = Experiment(seqs, bvalues=[500.0, 3000.0], directions=dirs)
    res = solve_karger(two_slabs, exp, difftensors=torch.tensor(DTENS))

    vol = np.array(WIDTHS) * SIDES[0] * SIDES[1]
    area = SIDES[0] * SIDES[1]
    rate = KAPPA * area
    a = np.array([[-rate / vol[0], rate / vol[1]], [rate / vol[0], -rate / vol[1]]])
    r = np.diag(1 / np.array(T2))
    s0 = np.array(RHO) * vol
    u = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    bnq = [5000.0**2 * (20000.0 - 5000.0 / 3), 5000.0**3 / (4 * math.pi**2 * 4)]
    for s, seq in enumerate(seqs):
        for ia, b in enumerate([500.0, 3000.0]):
            q2 = b / bnq[s]
            for idir in range(2):
                dd = np.diag(np.einsum("d,ide,e->i", u[idir], DTENS, u[idir]))

                def rhs(t, y, s=s, q2=q2, dd=dd):
                    return (a - q2 * bigf[s](t) ** 2 * dd - r) @ y

                sol = solve_ivp(
                    rhs, (0.0, seq.echotime), s0, method="DOP853", rtol=1e-12, atol=1e-12
                )
                got = res.signal[:, ia, s, idir].real.numpy()
                np.testing.assert_allclose(got, sol.y[:, -1], rtol=1e-9)
    assert res.signal.shape == (2, 2, 2, 2)
    np.testing.assert_allclose(res.signal_allcmpts.numpy(), res.signal.sum(0).numpy())
    np.testing.assert_allclose(res.signal.imag.numpy(), 0.0)


def test_impermeable_is_gaussian_per_compartment(two_slabs):
    """κ = 0: every compartment decays as ρ|Ω| exp(−b uᵀDu − TE/T2) (rtol 1e-10: Magnus
    integration of q²F² on the lobes)."""
    model = two_slabs.with_parameters(permeability=0.0)
    seq = PGSE(4000.0, 12000.0)
    b = np.array([0.0, 1000.0, 4000.0])
    exp = Experiment([seq], bvalues=b, directions=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    res = solve_karger(model, exp, difftensors=torch.tensor(DTENS))
    vol = np.array(WIDTHS) * SIDES[0] * SIDES[1]
    adc = np.stack([np.diagonal(DTENS, axis1=1, axis2=2)[:, 0], DTENS[:, 1, 1]], axis=1)
    decay = np.exp(-16000.0 / np.array(T2))
    expect = (np.array(RHO) * vol * decay)[:, None, None] * np.exp(
        -b[None, :, None] * adc[:, None, :]
    )
    np.testing.assert_allclose(res.signal[:, :, 0].real.numpy(), expect, rtol=1e-10)


def test_default_tensors_come_from_hadc_of_the_chosen_sequence():
    """Without difftensors, D_eff comes from HADC (50 directions + tensor fit): across the
    slabs D_xx equals the 1-D Gaussian-phase series of each width (P1 error at h = 0.25,
    ≤ 0.5%); tensor_sequence picks the sequence (first vs last give their own values)."""
    mesh = structured_slabs([4.0, 6.0], (1.0, 1.0), h=0.25)
    model = Model(mesh, diffusivity=0.002, permeability=1e-5)
    seqs = [PGSE(1000.0, 2000.0), PGSE(2500.0, 5000.0)]
    exp = Experiment(seqs, bvalues=[1000.0], directions=[1.0, 0.0, 0.0])
    for index in (-1, 0):
        seq = seqs[index]
        res = solve_karger(model, exp, tensor_sequence=index, quiet=True)
        dxx = res.info["difftensors"][:, 0, 0].numpy()
        jfun = lambda lam, seq=seq: j_pgse(lam, seq.delta, seq.Delta)  # noqa: E731
        ref = [gpa_adc_slab(w, 0.002, jfun) for w in (4.0, 6.0)]
        np.testing.assert_allclose(dxx, ref, rtol=5e-3)
        off = res.info["difftensors"][:, 0, 1:].abs().max().item()
        assert off < 1e-3 * dxx.min()


def test_gradient_in_permeability_and_tensors(two_slabs):
    """Autograd through matrix_exp and the product tree equals central differences in κ and in
    the tensors (rtol 1e-7)."""
    exp = Experiment([PGSE(5000.0, 20000.0)], bvalues=[2000.0], directions=[1.0, 1.0, 0.0])
    dt0 = torch.tensor(DTENS)

    def loss(kappa, dt):
        model = two_slabs.with_parameters(permeability=kappa)
        return solve_karger(model, exp, difftensors=dt).signal_allcmpts.real.sum()

    k = torch.tensor(KAPPA, dtype=torch.float64, requires_grad=True)
    dt = dt0.clone().requires_grad_(True)
    loss(k, dt).backward()
    eps = 1e-7
    fd = (loss(KAPPA + eps, dt0) - loss(KAPPA - eps, dt0)) / (2 * eps)
    assert k.grad.item() == pytest.approx(fd.item(), rel=1e-7)
    ddt = torch.zeros_like(dt0)
    ddt[:, 0, 0] = torch.tensor([1.0, -2.0])
    eps = 1e-8
    fd = (loss(KAPPA, dt0 + eps * ddt) - loss(KAPPA, dt0 - eps * ddt)) / (2 * eps)
    assert (dt.grad * ddt).sum().item() == pytest.approx(fd.item(), rel=1e-7)


def test_bad_input(two_slabs):
    exp = Experiment([PGSE(1000.0, 2000.0)], bvalues=[10.0], directions=[1.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="model"):
        solve_karger(None, exp)
    with pytest.raises(SetupError, match="difftensors"):
        solve_karger(two_slabs, exp, difftensors=torch.zeros(3, 3, 3))
    with pytest.raises(SetupError, match="symmetric"):
        solve_karger(
            two_slabs, exp, difftensors=torch.tensor([[1e-3, 1e-4, 0], [0, 1e-3, 0], [0, 0, 1e-3]])
        )
    with pytest.raises(SetupError, match="nstep"):
        solve_karger(two_slabs, exp, difftensors=1e-3, nstep=0)
    with pytest.raises(SetupError, match="tensor_sequence"):
        solve_karger(two_slabs, exp, tensor_sequence=3)
    with pytest.raises(SetupError, match="ndirection"):
        solve_karger(two_slabs, exp, ndirection=3)
    with pytest.raises(SetupError, match="hadc_options"):
        solve_karger(two_slabs, exp, hadc_options={"reltol": 1e-3})
    wave = Waveform3D(([0.0, 500.0, 1000.0], [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0, 0]]))
    with pytest.raises(SetupError, match="vector"):
        solve_karger(two_slabs, Experiment([wave], bvalues=[10.0]), difftensors=1e-3)
