"""ADC/kurtosis polynomial fit and tensor fit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from spindoctor_torch.errors import SpinDoctorWarning
from spindoctor_torch.experiment import unit_sphere
from spindoctor_torch.postprocess import fit_adc_small_b, fit_signal, fit_tensor

B = np.linspace(0.0, 3000.0, 7)  # s/mm²


def _kurtosis_signal(b, d, k, s0=1.0, c3=0.0):
    return s0 * np.exp(-b * d + b**2 * d**2 * k / 6 + c3 * b**3)


def _matlab_process_signal_poly(b, data):
    """Plain transcription of SpinDoctor's process_signal_poly stopping rules with numpy."""
    logdata = np.log(data)
    adc_old, kur_old, found = 1.0, 1.0, False
    degree = 0
    while not found and degree <= len(b) - 2:
        degree += 1
        coeffs = np.polyfit(b, logdata, degree)  # highest power first
        adc = -coeffs[degree - 1]
        kur = 0.0 if degree == 1 else coeffs[degree - 2] / adc**2 * 6
        diff = np.polyval(coeffs, b) - logdata
        converged = np.max(np.abs(diff)) <= 1e-3 * np.max(np.abs(logdata))
        adc_stable = abs(adc - adc_old) <= 1e-6 or abs(adc - adc_old) <= 0.05 * abs(adc_old)
        kur_stable = (
            kur_old <= 0.15 or abs(kur - kur_old) < 0.15 * abs(kur_old) or abs(kur - kur_old) < 0.15
        )
        found = converged and adc_stable and kur_stable
        adc_old, kur_old = adc, kur
    return adc, kur, np.exp(coeffs[-1]), degree, found


def test_recovers_adc_and_kurtosis_of_cumulant_signal():
    """log S exactly quadratic (and cubic) in b: the accepted polynomial reproduces D, K and
    S0 to round-off (rtol 1e-8, conditioning of a degree ≤ 4 fit on 7 points)."""
    d = np.array([0.5e-3, 1e-3, 2e-3, 3e-3])
    k = np.array([0.0, 0.5, 1.0, 1.5])
    data = np.stack([_kurtosis_signal(B, di, ki, s0=2.5) for di, ki in zip(d, k)], axis=1)
    fit = fit_signal(torch.tensor(B), torch.tensor(data))
    np.testing.assert_allclose(fit.adc.numpy(), d, rtol=1e-8)
    np.testing.assert_allclose(fit.kurtosis.numpy(), k, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(fit.S0.numpy(), 2.5, rtol=1e-10)
    assert bool(fit.converged.all())
    data3 = _kurtosis_signal(B, 2e-3, 1.0, c3=-2e-11)
    fit3 = fit_signal(B, data3)
    assert float(fit3.adc) == pytest.approx(2e-3, rel=1e-8)
    assert float(fit3.kurtosis) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize(
    "fractions, diffusivities",
    [((0.6, 0.4), (2e-3, 5e-4)), ((0.3, 0.7), (3e-3, 1e-4)), ((1.0,), (1e-3,))],
)
def test_matches_spindoctor_rules_on_multiexponential_signals(fractions, diffusivities):
    """Biexponential signals: the vectorized fit takes the same degree and gives the same ADC,
    kurtosis and S0 as a plain numpy transcription of SpinDoctor's loop (rtol 1e-9), and the
    ADC is within 3% of the true initial slope Σ f_i D_i."""
    b = np.linspace(0.0, 2500.0, 9)
    data = sum(f * np.exp(-b * dd) for f, dd in zip(fractions, diffusivities))
    adc, kur, s0, degree, found = _matlab_process_signal_poly(b, data)
    assert found
    fit = fit_signal(torch.tensor(b), torch.tensor(data))
    assert int(fit.degree) == degree and bool(fit.converged) == found
    assert float(fit.adc) == pytest.approx(adc, rel=1e-9)
    assert float(fit.kurtosis) == pytest.approx(kur, rel=1e-7, abs=1e-9)
    assert float(fit.S0) == pytest.approx(s0, rel=1e-9)
    assert float(fit.adc) == pytest.approx(np.dot(fractions, diffusivities), rel=3e-2)


def test_batched_axis_per_sequence_bvalues_and_complex():
    """Signals [ncompartment, namplitude, nsequence] with b-values per sequence, complex with
    a phase: fitted along axis 1 with the magnitude; equals fitting each curve alone."""
    b = np.stack([B, 2 * B], axis=1)  # (namp, nseq)
    d = np.array([[1e-3, 2e-3], [0.7e-3, 1.5e-3]])  # (ncmpt, nseq)
    k = np.array([[0.3, 0.8], [1.1, 0.0]])
    sig = np.stack(
        [
            np.stack([_kurtosis_signal(b[:, s], d[i, s], k[i, s]) for s in range(2)], axis=1)
            for i in range(2)
        ]
    )  # (ncmpt, namp, nseq)
    phase = np.exp(1j * 0.3 * np.arange(7))[None, :, None]
    fit = fit_signal(torch.tensor(b)[None], torch.tensor(sig * phase), axis=1)
    assert fit.adc.shape == (2, 2)
    np.testing.assert_allclose(fit.adc.numpy(), d, rtol=1e-8)
    np.testing.assert_allclose(fit.kurtosis.numpy(), k, rtol=1e-7, atol=1e-8)
    one = fit_signal(torch.tensor(b[:, 1]), torch.tensor(sig[1, :, 1]))
    assert float(one.adc) == pytest.approx(float(fit.adc[1, 1]), rel=1e-12)


def test_two_bvalues_and_small_b_fit():
    """Two b-values: a straight line with a warning, exact for a monoexponential; the
    small-b helper is the same straight line."""
    b = np.array([0.0, 500.0])
    data = 3.0 * np.exp(-b * 1.7e-3)
    with pytest.warns(SpinDoctorWarning, match="two b-values"):
        fit = fit_signal(b, data)
    assert float(fit.adc) == pytest.approx(1.7e-3, rel=1e-12)
    assert int(fit.degree) == 1 and float(fit.kurtosis) == 0.0 and bool(fit.converged)
    adc, s0 = fit_adc_small_b(B, 3.0 * np.exp(-B * 1.7e-3))
    assert float(adc) == pytest.approx(1.7e-3, rel=1e-12)
    assert float(s0) == pytest.approx(3.0, rel=1e-12)


def test_gradient_of_adc_with_respect_to_signal():
    """d ADC / d signal through the QR least squares equals central differences."""
    data = torch.tensor(_kurtosis_signal(B, 1.2e-3, 0.7), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpinDoctorWarning)
        fit = fit_signal(torch.tensor(B), data)
        fit.adc.backward()
        direction = torch.linspace(-1.0, 1.0, 7, dtype=torch.float64) * 1e-3
        eps = 1e-6
        hi = fit_signal(torch.tensor(B), data.detach() + eps * direction).adc
        lo = fit_signal(torch.tensor(B), data.detach() - eps * direction).adc
    fd = (hi - lo) / (2 * eps)
    assert (data.grad * direction).sum().item() == pytest.approx(fd.item(), rel=1e-6)


def test_fit_signal_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        fit_signal([1000.0], [0.5])
    with pytest.raises(ValueError, match="zeros"):
        fit_signal(B, np.zeros(7))
    with pytest.raises(ValueError, match="NaN"):
        fit_signal(B, np.full(7, np.nan))
    with pytest.raises(ValueError, match="distinct"):
        fit_signal(np.zeros(7), np.ones(7))
    with pytest.raises(ValueError, match="entries"):
        fit_signal(B[:5], np.ones(7))
    with pytest.raises(ValueError, match="broadcast"):
        fit_signal(np.ones((7, 3)), np.ones((7, 2)))
    with pytest.raises(TypeError, match="real"):
        fit_signal(torch.tensor(B, dtype=torch.complex128), np.ones(7))


def test_fit_tensor_recovers_known_tensor():
    """ADCs uᵀDu of a full symmetric tensor in 30 Fibonacci directions: the six components
    come back to round-off; with noise, the result equals numpy's least squares."""
    rot, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    tensor = rot @ np.diag([2e-3, 1e-3, 3e-4]) @ rot.T
    u = unit_sphere(30)
    adc = torch.einsum("nd,de,ne->n", u, torch.tensor(tensor), u)
    np.testing.assert_allclose(fit_tensor(u, adc).numpy(), tensor, rtol=0, atol=1e-17)
    batch = torch.stack([adc, 2 * adc])[:, None]  # (2, 1, ndir)
    np.testing.assert_allclose(
        fit_tensor(u, batch).numpy(), np.stack([tensor, 2 * tensor])[:, None], atol=1e-17
    )
    noisy = adc + 1e-5 * torch.tensor(np.random.default_rng(4).normal(size=30))
    un = u.numpy()
    design = np.stack(
        [
            un[:, 0] ** 2,
            un[:, 1] ** 2,
            un[:, 2] ** 2,
            2 * un[:, 0] * un[:, 1],
            2 * un[:, 0] * un[:, 2],
            2 * un[:, 1] * un[:, 2],
        ],
        axis=1,
    )
    comp = np.linalg.lstsq(design, noisy.numpy(), rcond=None)[0]
    got = fit_tensor(u, noisy).numpy()
    np.testing.assert_allclose(
        [got[0, 0], got[1, 1], got[2, 2], got[0, 1], got[0, 2], got[1, 2]], comp, rtol=1e-10
    )


def test_fit_tensor_bad_input():
    u = unit_sphere(10)
    with pytest.raises(ValueError, match="at least 6"):
        fit_tensor(u[:5], torch.ones(5))
    with pytest.raises(ValueError, match="shape"):
        fit_tensor(u, torch.ones(9))
    with pytest.raises(ValueError, match=r"\(ndirection, 3\)"):
        fit_tensor(torch.ones(10, 2), torch.ones(10))
    planar = torch.tensor([[np.cos(a), np.sin(a), 0.0] for a in np.linspace(0, 3, 8)])
    with pytest.raises(ValueError, match="degenerate"):
        fit_tensor(planar, torch.ones(8))
    with pytest.raises(ValueError, match="zero vector"):
        fit_tensor(torch.cat([u, torch.zeros(1, 3)]), torch.ones(11))
    with pytest.raises(ValueError, match="finite"):
        fit_tensor(u, torch.full((10,), float("nan")))
