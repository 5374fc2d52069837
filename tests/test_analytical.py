"""Tests of the analytical multilayer solver (Grebenkov's radial matrix formalism).

References, none computed by the code under test:
* SpinDoctor's own analytical results (``shared/reference/spindoctor/analytical.json``);
* the exact cosine-series solution of one slab, written here in NumPy/SciPy;
* Gaussian-phase series (Murday-Cotts, Neuman) written here in their classical form, and the
  published long-pulse (motional narrowing) limits 8/175, 7/96, 1/120;
* for a spherical shell, its n = 1 Neumann modes found here by brute force;
* a two-layer slab by an independent 1-D finite-volume discretisation (Richardson-extrapolated);
* the closed-form MF quantity j(lambda) of the OGSE sequences (spindoctor_torch.sequences).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import optimize, special
from scipy.linalg import expm

from spindoctor_torch.errors import SetupError
from spindoctor_torch.sequences import PGSE, CosOGSE, DoublePGSE, SinOGSE
from spindoctor_torch.solvers._analytical_radial import count_below, find_roots, split_groups
from spindoctor_torch.solvers.analytical import (
    LayeredGeometry,
    compute_radial_eigenmodes,
    gpa_adc_cylinder,
    gpa_adc_slab,
    gpa_adc_sphere,
    solve_analytical,
)
from spindoctor_torch.units import UnitWarning

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "spindoctor"
D0 = 0.002  # µm²/µs
SEQ = PGSE(10000.0, 43100.0)  # the reference PGSE, µs


def _reference_cases() -> dict[str, dict]:
    path = REFERENCE / "analytical.json"
    if not REFERENCE.is_dir():
        pytest.skip(f"SpinDoctor reference folder {REFERENCE} is absent")
    return {case["name"]: case for case in json.loads(path.read_text())["cases"]}


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _small_b_adc(signal: np.ndarray, bvalues: np.ndarray) -> float:
    """ADC at b -> 0 from signals at b, 2b, 4b (third-order Richardson of -ln S / b)."""
    a = -np.log(signal / signal[0])[1:] / bvalues[1:]
    return (8 * a[0] - 6 * a[1] + a[2]) / 3


SMALL_B = np.array([0.0, 10.0, 20.0, 40.0])  # s/mm²: b * ADC ~ 1e-3, ln S accurate to ~1e-12


# --------------------------------------------------------------------------------------------
# Parity with SpinDoctor
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "levels", "finest"),
    [
        ("sphere", ["A1_sphere_ls1", "A1_sphere_ls0.7", "A1_sphere_ls0.5"], "A1_sphere_ls0.5"),
        ("cylinder", ["A2_cylinder_ls0.5"], "A2_cylinder_ls0.2"),
    ],
)
def test_parity_with_spindoctor(shape, levels, finest):
    """Same truncation: eigenvalues to 1e-9 and signals to 1e-9 relative (measured 2e-11 and
    5e-11: SpinDoctor's root tolerance). Against SpinDoctor's finest level: 1e-6 (the cylinder
    at length scale 0.5 differs from 0.2 by 4e-8 in SpinDoctor's own numbers)."""
    cases = _reference_cases()
    geo = LayeredGeometry(shape, [5.0], D0, height=50.0)
    for name in levels:
        case = cases[name]
        modes = compute_radial_eigenmodes(geo, case["analytical_params"]["length_scale_um"])
        assert modes.nmode == case["n_eigenmodes"], name
        lam_ref = np.sort(case["eigen_lambda_per_s"])[1:] * 1e-6  # 1/s -> 1/µs, skip 0
        assert _rel(modes.eigenvalues.numpy()[1:], lam_ref) < 1e-9, name
        res = solve_analytical(geo, SEQ, bvalues=case["bvalues_s_per_mm2"], eigenmodes=modes)
        assert res.signal.shape == (1, 7, 1) and res.signal_allcmpts.shape == (7, 1)
        assert float(res.signal_allcmpts.imag.abs().max()) < 1e-12 * case["S0_total_volume"]
        assert res.initial_signal.item() == pytest.approx(case["S0_total_volume"], rel=1e-14)
        raw = res.signal_allcmpts.real[:, 0].numpy()
        assert _rel(raw, case["signal_raw_real"]) < 1e-9, name
        normalized = res.normalized().real[:, 0].numpy()
        assert _rel(normalized, cases[finest]["signal_normalized"]) < 1e-6, name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["A2_cylinder_ls0.3", "A2_cylinder_ls0.2"])
def test_parity_with_spindoctor_fine_cylinder(name):
    """364 and 803 modes (~10 s and ~80 s on one core): same tolerances as above."""
    case = _reference_cases()[name]
    geo = LayeredGeometry("cylinder", [5.0], D0, height=50.0)
    res = solve_analytical(
        geo,
        SEQ,
        bvalues=case["bvalues_s_per_mm2"],
        length_scale=case["analytical_params"]["length_scale_um"],
    )
    assert res.info["nmode"] == case["n_eigenmodes"]
    assert _rel(res.signal_allcmpts.real[:, 0].numpy(), case["signal_raw_real"]) < 1e-9


# --------------------------------------------------------------------------------------------
# One slab: exact cosine series
# --------------------------------------------------------------------------------------------


def _slab_cosine_signal(thickness, diffusivity, pieces, q, nmode=160):
    """E(q) of a reflecting slab [0, L] by the Neumann cosine basis, in plain NumPy/SciPy.

    phi_0 = 1/sqrt(L), phi_k = sqrt(2/L) cos(k pi x / L); A_kl = int x phi_k phi_l in closed
    form; c <- expm(-dt (Lambda + i q f A)) c over the constant pieces.
    """
    L = thickness
    k = np.arange(nmode)
    lam = diffusivity * (k * np.pi / L) ** 2
    norm = np.where(k == 0, np.sqrt(1 / L), np.sqrt(2 / L))

    def x_cos(m):  # int_0^L x cos(m pi x / L) dx
        m = np.asarray(m, dtype=float)
        out = np.full(m.shape, L**2 / 2)
        nz = m > 0
        out[nz] = L**2 * ((-1.0) ** m[nz] - 1) / (m[nz] * np.pi) ** 2
        return out

    kk, ll = np.meshgrid(k, k, indexing="ij")
    moments = np.outer(norm, norm) * 0.5 * (x_cos(abs(kk - ll)) + x_cos(kk + ll))
    c = np.zeros(nmode, complex)
    c[0] = np.sqrt(L)
    for dt, f in pieces:
        c = expm(-dt * (np.diag(lam) + 1j * q * f * moments)) @ c
    return np.sqrt(L) * c[0] / L


@pytest.mark.parametrize("seq", [PGSE(5000.0, 20000.0), DoublePGSE(3000.0, 8000.0, 2000.0)])
def test_one_layer_slab_matches_cosine_series(seq):
    """1e-8 at b up to 30000 (measured 1e-9: the truncation at length scale 0.12 µm, 84 modes;
    the reference keeps 160 modes)."""
    thickness = 10.0
    bvalues = np.array([0.0, 100.0, 1000.0, 5000.0, 10000.0, 30000.0])
    geo = LayeredGeometry("slab", [thickness], D0, area=3.0)
    res = solve_analytical(geo, seq, bvalues=bvalues, length_scale=0.12)
    pieces = [(t1 - t0, f) for t0, t1, f in seq.constant_pieces()]
    ref = [
        _slab_cosine_signal(thickness, D0, pieces, math.sqrt(b / seq.bvalue_no_q)) for b in bvalues
    ]
    assert res.initial_signal.item() == pytest.approx(30.0, rel=1e-14)
    assert _rel(res.normalized()[:, 0].numpy(), ref) < 1e-8


# --------------------------------------------------------------------------------------------
# Gaussian phase approximation
# --------------------------------------------------------------------------------------------


def _murday_cotts(radius, diffusivity, delta, Delta, roots, shift):
    """Classical GPA series: ln E = -2 q^2 sum c_m [2 delta/(a^2 D) - (...)/(a^2 D)^2]."""
    a2 = (roots / radius) ** 2
    lam = a2 * diffusivity
    bracket = (
        2 * delta / lam
        - (
            2
            + np.exp(-lam * (Delta - delta))
            - 2 * np.exp(-lam * delta)
            - 2 * np.exp(-lam * Delta)
            + np.exp(-lam * (Delta + delta))
        )
        / lam**2
    )
    minus_ln_e_over_q2 = 2 * np.sum(bracket / (a2 * (a2 * radius**2 - shift)))
    return minus_ln_e_over_q2 / (delta**2 * (Delta - delta / 3))


def _sphere_derivative_zeros(count):
    """Zeros of j_1' by sign changes of scipy's spherical_jn derivative on a fine grid."""
    x = np.linspace(0.5, (count + 1) * np.pi, 200 * (count + 1))
    f = special.spherical_jn(1, x, derivative=True)
    idx = np.nonzero(np.sign(f[:-1]) != np.sign(f[1:]))[0][:count]

    def fun(z):
        return special.spherical_jn(1, z, derivative=True)

    return np.array([optimize.brentq(fun, x[i], x[i + 1], xtol=1e-15) for i in idx])


def test_gpa_functions_match_classical_series():
    """Package GPA vs the Murday-Cotts / Neuman series written here (200 terms): 1e-11
    (the packaged series sums 1000 terms; the tail beyond 200 is ~1e-13)."""
    sphere_roots = _sphere_derivative_zeros(200)
    cyl_roots = special.jnp_zeros(1, 200)
    for radius, delta, Delta in [
        (5.0, 10000.0, 43100.0),
        (2.0, 2500.0, 4000.0),
        (8.0, 500.0, 500.0),
    ]:
        ref_s = _murday_cotts(radius, D0, delta, Delta, sphere_roots, 2.0)
        ref_c = _murday_cotts(radius, D0, delta, Delta, cyl_roots, 1.0)
        assert gpa_adc_sphere(radius, D0, delta, Delta).item() == pytest.approx(ref_s, rel=1e-11)
        assert gpa_adc_cylinder(radius, D0, delta, Delta).item() == pytest.approx(ref_c, rel=1e-11)
    # broadcasting and gradients
    radius = torch.tensor([3.0, 5.0], dtype=torch.float64, requires_grad=True)
    adc = gpa_adc_sphere(radius, D0, 10000.0, 43100.0)
    adc.sum().backward()
    h = 1e-6
    fd = (
        gpa_adc_sphere(radius.detach() + h, D0, 10000.0, 43100.0)
        - gpa_adc_sphere(radius.detach() - h, D0, 10000.0, 43100.0)
    ) / (2 * h)
    torch.testing.assert_close(radius.grad, fd, rtol=1e-7, atol=0.0)


def test_gpa_published_limits():
    """Free diffusion at short times (ADC -> D when R >> sqrt(D Delta): 1e-3, the surface-to-
    volume correction is ~3e-4 here) and the motional-narrowing limits for delta = Delta >>
    R^2/D: -ln E = c q^2 R^4 T / D with T = 2 delta the total gradient time and c = 8/175
    (sphere), 7/96 (cylinder), 1/120 (slab, R = L) (Neuman 1974). The O(R^2/(D delta))
    corrections (~1.5 R^2/(x_1^2 D delta)) are below 5e-6 at R = 1 µm, delta = 1e8 µs."""
    assert gpa_adc_sphere(5000.0, D0, 100.0, 200.0).item() == pytest.approx(D0, rel=1e-3)
    assert gpa_adc_slab(5000.0, D0, 100.0, 200.0).item() == pytest.approx(D0, rel=1e-3)
    delta = 1e8
    radius = 1.0
    bnq = delta**2 * (delta - delta / 3)
    for fn, c in [(gpa_adc_sphere, 8 / 175), (gpa_adc_cylinder, 7 / 96), (gpa_adc_slab, 1 / 120)]:
        minus_ln_e_over_q2 = fn(radius, D0, delta, delta).item() * bnq
        assert minus_ln_e_over_q2 == pytest.approx(c * radius**4 * 2 * delta / D0, rel=1e-5)


@pytest.mark.parametrize("shape", ["sphere", "cylinder", "slab"])
def test_small_b_adc_matches_gpa(shape):
    """-ln S / b of the solver as b -> 0 equals the GPA series written here (sphere,
    cylinder) and the packaged slab series: 3e-7 (measured 1e-7: the eigenvalue truncation at
    length scale 0.5 µm). The slab series itself is checked against the cosine series."""
    size = 10.0 if shape == "slab" else 5.0
    geo = LayeredGeometry(shape, [size], D0)
    res = solve_analytical(geo, SEQ, bvalues=SMALL_B, length_scale=0.5)
    adc = _small_b_adc(res.signal_allcmpts.real[:, 0].numpy(), SMALL_B)
    if shape == "sphere":
        ref = _murday_cotts(size, D0, 1e4, 4.31e4, _sphere_derivative_zeros(150), 2.0)
    elif shape == "cylinder":
        ref = _murday_cotts(size, D0, 1e4, 4.31e4, special.jnp_zeros(1, 150), 1.0)
    else:
        ref = gpa_adc_slab(size, D0, 1e4, 4.31e4).item()
        pieces = [(t1 - t0, f) for t0, t1, f in SEQ.constant_pieces()]
        cos_adc = [
            -np.log(_slab_cosine_signal(size, D0, pieces, math.sqrt(b / SEQ.bvalue_no_q)).real) / b
            for b in SMALL_B[1:]
        ]
        cos_small_b = (8 * cos_adc[0] - 6 * cos_adc[1] + cos_adc[2]) / 3
        assert ref == pytest.approx(cos_small_b, rel=1e-8)
    assert adc == pytest.approx(ref, rel=3e-7)


# --------------------------------------------------------------------------------------------
# Multilayer: permeability limits, relaxation, density
# --------------------------------------------------------------------------------------------


def test_two_layers_large_permeability_is_one_layer():
    """Equal D and kappa = 10 µm/µs (kappa R / D = 2.5e4): the interface resistance is
    negligible, signals equal the one-layer sphere to 1e-4 (measured ~1e-6)."""
    bvalues = [0.0, 1000.0, 3000.0, 10000.0]
    one = solve_analytical(LayeredGeometry("sphere", [5.0], D0), SEQ, bvalues=bvalues)
    with pytest.warns(UnitWarning):
        geo = LayeredGeometry("sphere", [3.0, 5.0], D0, permeability=10.0)
    two = solve_analytical(geo, SEQ, bvalues=bvalues)
    assert two.signal.shape == (2, 4, 1)
    assert _rel(two.normalized().real.numpy(), one.normalized().real.numpy()) < 1e-4


def _shell_gpa_adc(inner, outer, diffusivity, delta, Delta):
    """GPA ADC of a reflecting spherical shell from its n = 1 Neumann modes, found by brute
    force: R(r) = y1'(x a) j1(x r) - j1'(x a) y1(x r), roots of R'(b) by sign changes on a fine
    grid (x < 150), moments by 800-point Gauss-Legendre quadrature."""
    a, b = inner, outer

    def j(x, r, d=False):
        return special.spherical_jn(1, x * r, derivative=d)

    def y(x, r, d=False):
        return special.spherical_yn(1, x * r, derivative=d)

    def det(x):
        return j(x, a, True) * y(x, b, True) - y(x, a, True) * j(x, b, True)

    xs = np.linspace(1e-3, 150.0, 300001)
    f = det(xs)
    idx = np.nonzero(np.sign(f[:-1]) != np.sign(f[1:]))[0]
    x = np.array([optimize.brentq(det, xs[i], xs[i + 1], xtol=1e-15) for i in idx])[:, None]
    nodes, weights = np.polynomial.legendre.leggauss(800)
    r = 0.5 * (b - a) * nodes + 0.5 * (b + a)
    w = 0.5 * (b - a) * weights
    radial = y(x, a, True) * j(x, r) - j(x, a, True) * y(x, r)
    norm = (radial**2 * r**2) @ w
    first = (radial * r**3) @ w
    volume = 4 * np.pi / 3 * (b**3 - a**3)
    b2 = 4 * np.pi / 3 * first**2 / norm / volume  # |int z u|^2 / |Omega|
    lam = diffusivity * x[:, 0] ** 2
    bracket = (
        2 * delta / lam
        - (
            2
            + np.exp(-lam * (Delta - delta))
            - 2 * np.exp(-lam * delta)
            - 2 * np.exp(-lam * Delta)
            + np.exp(-lam * (Delta + delta))
        )
        / lam**2
    )
    # sanity of the brute-force modes: sum B^2 = <z^2> = <r^2>/3
    assert b2.sum() == pytest.approx(0.2 * (b**5 - a**5) / (b**3 - a**3), rel=1e-8)
    return float(b2 @ bracket) / (delta**2 * (Delta - delta / 3))


def test_two_layers_impermeable_are_independent():
    """kappa = 0: the inner layer is a sphere of radius 3 (1e-10 vs the one-layer solver with
    the same eigenvalue limit), the shell's small-b ADC is the shell GPA computed here by brute
    force (3e-7, measured 1.3e-7: truncation), b = 0 gives rho_i |Omega_i| exp(-TE/T2_i) per layer,
    and the shell does not see the inner layer's D, T2 or density (1e-10)."""
    bvalues = np.concatenate([SMALL_B, [1000.0, 5000.0]])
    te = SEQ.echotime
    geo = LayeredGeometry(
        "sphere", [3.0, 5.0], [0.001, D0], relaxation=[3e4, math.inf], density=[2.0, 0.5]
    )
    res = solve_analytical(geo, SEQ, bvalues=bvalues, eiglim=0.07)  # length scale ~0.5 µm
    vol = geo.volumes.numpy()
    b0 = res.signal[:, 0, 0]
    assert b0.real.numpy() == pytest.approx(
        [2.0 * vol[0] * math.exp(-te / 3e4), 0.5 * vol[1]], rel=1e-12
    )
    inner = solve_analytical(
        LayeredGeometry("sphere", [3.0], 0.001, relaxation=3e4),
        SEQ,
        bvalues=bvalues,
        eiglim=0.07,
    )
    assert _rel(res.signal[0, :, 0].numpy(), 2.0 * inner.signal[0, :, 0].numpy()) < 1e-10
    shell = res.signal[1, :4, 0].real.numpy()
    ref = _shell_gpa_adc(3.0, 5.0, D0, 1e4, 4.31e4)
    assert _small_b_adc(shell, SMALL_B) == pytest.approx(ref, rel=3e-7)
    other = LayeredGeometry("sphere", [3.0, 5.0], [0.0005, D0], relaxation=[1e4, math.inf])
    res2 = solve_analytical(other, SEQ, bvalues=bvalues, eiglim=0.07)
    assert _rel(res2.signal[1].numpy(), 2.0 * res.signal[1].numpy()) < 1e-10  # density 1 vs 0.5


def test_uniform_relaxation_is_an_exact_factor():
    """Uniform T2 (layers coupled by kappa = 1e-4, two D's): every signal is the T2-free one
    times exp(-TE/T2), to 1e-11 (round-off of the matrix exponentials, measured 1.5e-12)."""
    bvalues = [0.0, 1000.0, 4000.0]
    seqs = [SEQ, DoublePGSE(2000.0, 6000.0, 1000.0)]
    kwargs = dict(permeability=1e-4, density=[1.0, 0.8])
    base = LayeredGeometry("cylinder", [2.0, 4.0], [0.0015, D0], **kwargs)
    relaxed = LayeredGeometry("cylinder", [2.0, 4.0], [0.0015, D0], relaxation=4e4, **kwargs)
    a = solve_analytical(base, seqs, bvalues=bvalues, length_scale=0.8)
    b = solve_analytical(relaxed, seqs, bvalues=bvalues, length_scale=0.8)
    factor = torch.tensor([math.exp(-s.echotime / 4e4) for s in seqs], dtype=torch.float64)
    torch.testing.assert_close(b.signal, a.signal * factor, rtol=1e-11, atol=0.0)


def _finite_volume_slab(edges, diffusivity, kappa, relaxivity, t2, rho, pieces, q, ncell, weighted):
    """Per-layer signals of a layered slab by cell-centred finite volumes (second order).

    Interior faces have conductance D/h; the membrane between cells j (left, layer i) and j+1
    (layer i+1) carries the flux F = (b m_j - a m_{j+1}) / (1/kappa + b h_j/(2 D_i) + a
    h_{j+1}/(2 D_{i+1})), obtained by eliminating the two membrane-side values from
    F = 2 D_i (m_j - m_-)/h_j = 2 D_{i+1} (m_+ - m_{j+1})/h_{j+1} = kappa (b m_- - a m_+),
    with a = 2 rho_i/(rho_i + rho_{i+1}), b = 2 rho_{i+1}/(rho_i + rho_{i+1}) (weighted
    coupling) or a = b = 1 (symmetric). Robin walls in series with the half cell; exact
    exponentials in time.
    """
    x, h, layer = [], [], []
    for i in range(len(diffusivity)):
        e = np.linspace(edges[i], edges[i + 1], ncell[i] + 1)
        x.append(0.5 * (e[1:] + e[:-1]))
        h.append(np.diff(e))
        layer.append(np.full(ncell[i], i))
    x, h, layer = np.concatenate(x), np.concatenate(h), np.concatenate(layer)
    d = np.asarray(diffusivity)[layer]
    n = len(x)
    flux = np.zeros((n, n))  # d/dt (h m) = -flux @ m + ...
    for j in range(n - 1):
        if layer[j] == layer[j + 1]:
            a = b = 1.0
            c = d[j] / h[j]
        else:
            ri, rj = rho[layer[j]], rho[layer[j + 1]]
            a, b = (2 * ri / (ri + rj), 2 * rj / (ri + rj)) if weighted else (1.0, 1.0)
            c = 1 / (1 / kappa[layer[j]] + b * h[j] / (2 * d[j]) + a * h[j + 1] / (2 * d[j + 1]))
        flux[j, j] += b * c
        flux[j, j + 1] -= a * c
        flux[j + 1, j] -= b * c
        flux[j + 1, j + 1] += a * c
    for j in (0, n - 1):
        flux[j, j] += 1 / (h[j] / (2 * d[j]) + 1 / relaxivity)
    gen = flux / h[:, None] + np.diag(1 / np.asarray(t2)[layer])
    m = np.asarray(rho, dtype=complex)[layer]
    for dt, f in pieces:
        m = expm(-dt * (gen + 1j * q * f * np.diag(x))) @ m
    return np.array([np.sum((h * m)[layer == i]) for i in range(len(diffusivity))])


@pytest.mark.parametrize("coupling", ["weighted", "symmetric"])
def test_two_layer_slab_matches_finite_volumes(coupling):
    """Two layers, unequal D, T2 and density, kappa = 3e-4, relaxing walls: complex per-layer
    signals vs finite volumes extrapolated from 100 and 200 cells (Richardson): 1e-7
    (measured ~1e-8). The two membrane laws differ here by ~1e-2 (unequal densities)."""
    seq = PGSE(4000.0, 15000.0)
    edges, d, kappa, w = [0.0, 4.0, 10.0], [0.002, 0.0008], [3e-4], 2e-5
    t2, rho = [4e4, 2.5e4], [1.0, 0.7]
    geo = LayeredGeometry(
        "slab",
        edges[1:],
        d,
        relaxation=t2,
        density=rho,
        permeability=kappa,
        relaxivity=w,
        coupling=coupling,
    )
    bvalues = [0.0, 500.0, 3000.0]
    res = solve_analytical(geo, seq, bvalues=bvalues, length_scale=0.15)
    pieces = [(t1 - t0, f) for t0, t1, f in seq.constant_pieces()]
    weighted = coupling == "weighted"
    for ib, b in enumerate(bvalues):
        q = math.sqrt(b / seq.bvalue_no_q)
        args = (edges, d, kappa, w, t2, rho, pieces, q)
        coarse = _finite_volume_slab(*args, [40, 60], weighted)
        fine = _finite_volume_slab(*args, [80, 120], weighted)
        ref = (4 * fine - coarse) / 3
        if b > 0:
            assert abs(ref.imag).max() > 1e-3  # a genuinely complex signal
        assert _rel(res.signal[:, ib, 0].numpy(), ref) < 1e-7
        other = _finite_volume_slab(*args, [80, 120], not weighted)
        assert _rel(other, ref) > 1e-3  # the coupling matters in this setup


# --------------------------------------------------------------------------------------------
# General profiles
# --------------------------------------------------------------------------------------------


class _ProfileOnly:
    """A sequence seen only through f(t): hides the piecewise-constant structure."""

    def __init__(self, seq):
        self._seq = seq
        self.echotime = seq.echotime
        self.bvalue_no_q = seq.bvalue_no_q
        self.intervals = seq.intervals

    def f(self, t):
        return self._seq.f(t)


def test_profile_path_is_exact_for_pgse():
    """A PGSE given only as f(t): the Magnus pieces of a constant f are exact: 1e-11."""
    geo = LayeredGeometry("sphere", [2.0, 5.0], [0.001, D0], permeability=2e-4)
    modes = compute_radial_eigenmodes(geo, 1.0)
    seq = PGSE(5000.0, 12000.0)
    exact = solve_analytical(geo, seq, bvalues=[1000.0, 5000.0], eigenmodes=modes)
    sampled = solve_analytical(
        geo, _ProfileOnly(seq), bvalues=[1000.0, 5000.0], eigenmodes=modes, ninterval=40
    )
    assert exact.info["exact"] == [True] and sampled.info["exact"] == [False]
    torch.testing.assert_close(sampled.signal, exact.signal, rtol=1e-11, atol=0.0)


@pytest.mark.parametrize("seq", [CosOGSE(8000.0, 10000.0, 2), SinOGSE(6000.0, 9000.0, 3)])
def test_ogse_small_b_converges_at_fourth_order(seq):
    """Slab, small b: -ln S / b tends to sum_k B_k^2 j(lambda_k) over the kept modes (the
    GPA of the truncated basis, with the closed-form j of the sequence). The error falls ~16x
    per doubling of ninterval (fourth order); 2e-6 at ninterval = 240 (measured 7e-7)."""
    thickness = 10.0
    geo = LayeredGeometry("slab", [thickness], D0)
    modes = compute_radial_eigenmodes(geo, 0.5)
    k = np.rint(np.sqrt(modes.eigenvalues.numpy() / D0) * thickness / np.pi)
    k = k[k % 2 == 1]
    b2 = 8 * thickness**2 / (k * np.pi) ** 4
    ref = float(
        (torch.as_tensor(b2) * seq.j(torch.as_tensor(D0 * (k * np.pi / thickness) ** 2))).sum()
    )
    errors = []
    for nint in (120, 240):
        res = solve_analytical(geo, seq, bvalues=SMALL_B, eigenmodes=modes, ninterval=nint)
        adc = _small_b_adc(res.signal_allcmpts.real[:, 0].numpy(), SMALL_B)
        errors.append(abs(adc - ref) / ref)
    assert errors[1] < 2e-6
    assert errors[0] / errors[1] > 10


def test_sequences_and_amplitudes_are_batched():
    """Several sequences and a [namp, nseq] table of q-values in one call equal separate
    calls (1e-13), and bvalues -> q = sqrt(b / bvalue_no_q)."""
    geo = LayeredGeometry("cylinder", [5.0], D0)
    modes = compute_radial_eigenmodes(geo, 1.0)
    seqs = [SEQ, PGSE(2000.0, 8000.0), DoublePGSE(2000.0, 5000.0)]
    q = torch.tensor([[0.0, 0.0, 0.0], [1e-5, 3e-5, 2e-5], [3e-5, 5e-5, 4e-5]])
    joint = solve_analytical(geo, seqs, qvalues=q, eigenmodes=modes)
    assert joint.signal.shape == (1, 3, 3)
    for s, seq in enumerate(seqs):
        alone = solve_analytical(geo, seq, qvalues=q[:, s], eigenmodes=modes)
        torch.testing.assert_close(joint.signal[:, :, s], alone.signal[:, :, 0], rtol=1e-13, atol=0)
        assert joint.bvalues[:, s].numpy() == pytest.approx(
            (q[:, s].double() ** 2 * seq.bvalue_no_q).numpy(), rel=1e-14
        )
    res = joint.as_result()
    assert res.signal.shape == (1, 3, 3, 1) and res.method == "analytical"
    torch.testing.assert_close(res.normalized()[..., 0], joint.normalized(), rtol=0, atol=0)
    byb = solve_analytical(geo, seqs[1], bvalues=[1000.0], eigenmodes=modes)
    assert byb.qvalues.item() == pytest.approx(math.sqrt(1000.0 / seqs[1].bvalue_no_q), rel=1e-15)


# --------------------------------------------------------------------------------------------
# Eigenmodes
# --------------------------------------------------------------------------------------------


def test_eigenmode_matrices():
    """Orthonormality (per-layer masses sum to I, 1e-12), the b = 0 invariants U and the
    closed-form eigenvalues of one sphere (zeros of j_n', 1e-12)."""
    geo = LayeredGeometry("sphere", [1.5, 4.0], [0.001, D0], permeability=5e-4, relaxivity=1e-5)
    modes = compute_radial_eigenmodes(geo, 0.8)
    eye = torch.eye(modes.nmode, dtype=torch.float64)
    torch.testing.assert_close(modes.layer_mass.sum(0), eye, rtol=0, atol=1e-12)
    # sum_k U_ik^2 is the squared norm of the projection of the layer's indicator on the kept
    # modes: it tends to |Omega_i| from below, slowly (the indicator jumps at the interface);
    # measured 7e-4 and 4e-5 short at this truncation.
    u = modes.layer_integrals
    ratio = (u * u).sum(1) / geo.volumes
    assert bool((ratio < 1).all()) and bool((ratio > 1 - 1e-3).all())
    torch.testing.assert_close(modes.moments, modes.moments.T, rtol=0, atol=1e-14)
    assert float(modes.length_scales.min()) >= 0.8 * (1 - 1e-12)  # the truncation rule
    assert float(modes.eigenvalues.max()) <= modes.eiglim
    one = compute_radial_eigenmodes(LayeredGeometry("sphere", [1.0], D0), eiglim=0.4)
    lam = one.eigenvalues.numpy() / (2e-3)
    n = one.angular_index.numpy()
    for nn in range(3):
        x = np.sqrt(lam[n == nn])
        if nn == 0:
            x = x[1:]  # the zero mode
        ref = [
            optimize.brentq(
                lambda z, nn=nn: special.spherical_jn(nn, z, derivative=True), a, a + 0.01
            )
            for a in np.arange(0.05, x.max() + 0.5, 0.01)
            if special.spherical_jn(nn, a, derivative=True)
            * special.spherical_jn(nn, a + 0.01, derivative=True)
            < 0
        ]
        assert x == pytest.approx(np.array(ref[: len(x)]), rel=1e-12)


def test_close_roots_are_all_found():
    """Two slab layers of equal D whose decoupled spectra coincide (k pi / 3 = m pi / 7 for
    k = 3j, m = 7j): with kappa = 1e-7 µm/µs the pairs split by ~1e-5 relative, far below
    the bracketing grid; the Pruefer count must recover every root. Reference: the union of
    the decoupled spectra (cos modes of each layer) to 1e-3 relative, with the same count."""
    geo = LayeredGeometry("slab", [3.0, 10.0], D0, permeability=1e-7)
    modes = compute_radial_eigenmodes(geo, eiglim=0.02)
    lam = np.sort(modes.eigenvalues.numpy())
    k = np.arange(0, 40)
    ref = np.sort(np.concatenate([D0 * (k * np.pi / 3.0) ** 2, D0 * (k * np.pi / 7.0) ** 2]))
    ref = ref[ref <= 0.02]
    assert len(lam) == len(ref)
    assert np.allclose(lam[2:], ref[2:], rtol=1e-3)  # the first two are 0 and ~kappa
    gaps = np.diff(lam)
    assert gaps.min() < 1e-5 * lam.max()  # the test does exercise close pairs
    # the count agrees with the number of roots on either side of every root
    problem = geo._dimensionless()
    group = split_groups(problem)[0]
    alpha = find_roots(problem, group, 0, 10.0)
    mid = 0.5 * (alpha[1:] + alpha[:-1])
    assert [count_below(problem, group, 0, a) for a in mid] == list(range(2, len(alpha) + 1))


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(shape="cube", radii=[1.0], diffusivity=D0), SetupError, "shape"),
        (dict(shape="sphere", radii=[2.0, 1.0], diffusivity=D0), SetupError, "radii"),
        (dict(shape="sphere", radii=[1.0, 1.0], diffusivity=D0), SetupError, "radii"),
        (dict(shape="sphere", radii=[], diffusivity=D0), SetupError, "radii"),
        (dict(shape="sphere", radii=[1.0, 2.0], diffusivity=[D0]), SetupError, "diffusivity"),
        (dict(shape="sphere", radii=[1.0, 2.0], diffusivity=-D0), ValueError, "diffusivity"),
        (dict(shape="sphere", radii=[1.0], diffusivity=0.0), SetupError, "diffusivity"),
        (dict(shape="sphere", radii=[1.0], diffusivity=2e-9), ValueError, "m²/s"),
        (
            dict(shape="sphere", radii=[1.0, 2.0, 3.0], diffusivity=D0, permeability=[1e-4]),
            SetupError,
            "permeability",
        ),
        (
            dict(shape="sphere", radii=[1.0, 2.0], diffusivity=D0, permeability=-1e-4),
            ValueError,
            "permeability",
        ),
        (dict(shape="sphere", radii=[1.0], diffusivity=D0, relaxivity=-1.0), ValueError, "relax"),
        (dict(shape="sphere", radii=[1.0], diffusivity=D0, relaxation=0.0), ValueError, "relax"),
        (dict(shape="sphere", radii=[1.0], diffusivity=D0, density=-1.0), SetupError, "density"),
        (dict(shape="cylinder", radii=[1.0], diffusivity=D0, height=0.0), SetupError, "height"),
        (dict(shape="sphere", radii=[5e-6], diffusivity=D0), ValueError, "radii"),
        (dict(shape="sphere", radii=[1.0], diffusivity=D0, coupling="c=1"), SetupError, "coupl"),
        (
            dict(shape="sphere", radii=[1.0, 2.0], diffusivity=D0, density=[0.0, 1.0]),
            SetupError,
            "coupling",
        ),
    ],
)
def test_bad_geometry(kwargs, error, match):
    with pytest.raises(error, match=match):
        LayeredGeometry(**kwargs)


def test_bad_solver_input():
    geo = LayeredGeometry("sphere", [5.0], D0)
    with pytest.raises(SetupError, match="exactly one"):
        solve_analytical(geo, SEQ)
    with pytest.raises(SetupError, match="exactly one"):
        solve_analytical(geo, SEQ, bvalues=[1.0], qvalues=[1e-5])
    with pytest.raises(SetupError, match="namplitude"):
        solve_analytical(geo, [SEQ, SEQ], bvalues=np.ones((2, 3)), length_scale=2.0)
    with pytest.raises(ValueError, match="bvalues"):
        solve_analytical(geo, SEQ, bvalues=[-1.0], length_scale=2.0)
    with pytest.raises(SetupError, match="not both"):
        compute_radial_eigenmodes(geo, length_scale=1.0, eiglim=0.1)
    with pytest.raises(SetupError, match="another geometry"):
        modes = compute_radial_eigenmodes(LayeredGeometry("sphere", [4.0], D0), 2.0)
        solve_analytical(geo, SEQ, bvalues=[1.0], eigenmodes=modes)
    with pytest.raises(TypeError, match="LayeredGeometry"):
        solve_analytical({"shape": "sphere"}, SEQ, bvalues=[1.0])
