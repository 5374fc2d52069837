"""Batched exponential actions (spindoctor_torch.linalg.expm): ColumnOperator, GroupedOperator.

Reference: dense ``torch.linalg.matrix_exp`` of every column's matrix, built independently
from the same factors (diag + Σ c M), and autograd through it for the derivatives.
"""

from __future__ import annotations

import pytest
import torch

from spindoctor_torch.linalg import expm
from spindoctor_torch.linalg.expm import ColumnOperator, GroupedOperator, expmv_chebyshev

K, N = 14, 6


def _factors(seed: int = 0, dtype=torch.float64):
    """A stiff diagonal (spread 60), three symmetric blocks, imaginary column coefficients
    (the matrix-formalism structure K_n = diag σ + i q_n Σ_d u_nd A_d) and a complex start."""
    g = torch.Generator().manual_seed(seed)
    diag = torch.linspace(0.0, 60.0, K, dtype=dtype)
    M = torch.randn(3, K, K, generator=g, dtype=dtype)
    M = 0.5 * (M + M.transpose(1, 2))
    c = 1j * torch.randn(3, N, generator=g, dtype=dtype)
    ctype = torch.complex128 if dtype == torch.float64 else torch.complex64
    v = torch.randn(K, N, generator=g, dtype=ctype)
    return diag, M, c.to(ctype), v


def _dense(diag, M, c):
    """(N, K, K) complex: diag(d) + Σ_j c_jn M_j, column by column."""
    ctype = c.dtype
    return torch.diag_embed(diag).to(ctype)[None] + torch.einsum("jn,jkl->nkl", c, M.to(ctype))


def _bounds(diag, M, c):
    imag = float((c.abs().T @ torch.linalg.eigvalsh(M).abs().amax(1).to(c.real.dtype)).max())
    return float(diag.min()), float(diag.max()), imag


def test_column_operator_products_match_dense():
    diag, M, c, v = _factors()
    op = ColumnOperator(diag, M, c)
    ref = torch.einsum("nkl,ln->kn", _dense(diag, M, c), v)
    torch.testing.assert_close(op.matvec(v), ref, rtol=1e-13, atol=1e-12)
    out = torch.randn_like(v)
    expect = ref - 0.5 * out
    torch.testing.assert_close(op.matvec_(v, out, beta=-0.5), expect, rtol=1e-13, atol=1e-12)
    two_b = op.shifted(3.0, 2.0)  # 2(K − 3)
    torch.testing.assert_close(two_b.matvec(v), 2.0 * (ref - 3.0 * v), rtol=1e-13, atol=1e-12)


def test_grouped_operator_products_match_dense():
    """Groups of m = 3 columns share M_g; a shared real symmetric F is added."""
    g = torch.Generator().manual_seed(1)
    G, m = 2, 3
    diag = torch.linspace(0.0, 5.0, K, dtype=torch.float64)
    Mg = torch.randn(G, K, K, generator=g, dtype=torch.float64)
    Mg = Mg + Mg.transpose(1, 2)
    F = torch.randn(K, K, generator=g, dtype=torch.float64)
    F = F + F.T
    s = torch.randn(G, m, generator=g, dtype=torch.float64)
    v = torch.randn(K, G * m, generator=g, dtype=torch.complex128)
    Kd = (
        torch.diag_embed(diag)[None, None] + F[None, None] + 1j * s[:, :, None, None] * Mg[:, None]
    ).reshape(G * m, K, K)
    ref = torch.einsum("nkl,ln->kn", Kd, v)
    op = GroupedOperator(diag, Mg, s, F)
    x = op.to_internal(v)
    torch.testing.assert_close(op.from_internal(x), v)
    out = op.to_internal(torch.ones_like(v))
    got = op.from_internal(op.matvec_(x, out, beta=2.0))
    torch.testing.assert_close(got, ref + 2.0 * torch.ones_like(v), rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("grad", [False, True])
def test_expmv_column_operator_matches_matrix_exp(grad):
    """In-place recurrence (no grad) and the autograd recurrence against matrix_exp; 1e-12
    is the series tolerance (the Chebyshev bound is ≤ (1+√2)·tol)."""
    diag, M, c, v = _factors(2)
    tau = 0.7
    lo, hi, imag = _bounds(diag, M, c)
    with torch.set_grad_enabled(grad):
        y = expmv_chebyshev(ColumnOperator(diag, M, c), v, tau, lo, hi, imag, tol=1e-12)
    ref = torch.einsum("nkl,ln->kn", torch.linalg.matrix_exp(-tau * _dense(diag, M, c)), v)
    assert float((y - ref).abs().max() / v.abs().max()) < 1e-11


def test_expmv_grouped_operator_matches_matrix_exp():
    diag, M, c, v = _factors(3)
    # the same matrices as groups: column n uses M_g(n) = Σ_d u_d M_d with q_n as the scale
    G, m = 2, 3
    g = torch.Generator().manual_seed(4)
    u = torch.nn.functional.normalize(torch.randn(G, 3, generator=g, dtype=torch.float64), dim=1)
    q = torch.rand(G, m, generator=g, dtype=torch.float64) * 3.0
    Mg = torch.einsum("gd,dkl->gkl", u, M)
    cc = (1j * q[None] * u.T[:, :, None]).reshape(3, G * m)
    lo, hi, imag = _bounds(diag, M, cc)
    tau = 0.7
    y = expmv_chebyshev(GroupedOperator(diag, Mg, q), v, tau, lo, hi, imag, tol=1e-12)
    ref = torch.einsum("nkl,ln->kn", torch.linalg.matrix_exp(-tau * _dense(diag, M, cc)), v)
    assert float((y - ref).abs().max() / v.abs().max()) < 1e-11
    y2 = expmv_chebyshev(ColumnOperator(diag, M, cc), v, tau, lo, hi, imag, tol=1e-12)
    assert float((y - y2).abs().max() / v.abs().max()) < 1e-12


def test_grouped_series_in_cache_blocks_equals_one_block(monkeypatch):
    """The in-place series runs block of groups by block (cache blocking): one group per
    block gives the same numbers as all groups at once (same operations per column)."""
    diag, M, c, v = _factors(8)
    g = torch.Generator().manual_seed(9)
    G, m = 3, 2
    u = torch.nn.functional.normalize(torch.randn(G, 3, generator=g, dtype=torch.float64), dim=1)
    Mg = torch.einsum("gd,dkl->gkl", u, M)
    q = torch.rand(G, m, generator=g, dtype=torch.float64)
    fixed = dict(adaptive=False)  # the a posteriori stop may end blocks at other terms
    y1 = expmv_chebyshev(GroupedOperator(diag, Mg, q), v, 0.5, 0.0, 60.0, 20.0, **fixed)
    monkeypatch.setattr(expm, "_CACHE_BLOCK_BYTES", 1)
    assert len(GroupedOperator(diag, Mg, q).cache_blocks()) > 1
    y2 = expmv_chebyshev(GroupedOperator(diag, Mg, q), v, 0.5, 0.0, 60.0, 20.0, **fixed)
    torch.testing.assert_close(y2, y1, rtol=0, atol=1e-14)


def _count_products(monkeypatch, cls):
    calls = []
    orig = cls.matvec_

    def counted(self, *args, **kwargs):
        calls.append(1)
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(cls, "matvec_", counted)
    return calls


@pytest.mark.parametrize("imag_scale", [0.1, 1.0])
def test_adaptive_stop_meets_tolerance_with_fewer_terms(monkeypatch, imag_scale):
    """The a posteriori end of the derivative-free series: against matrix_exp to the series
    tolerance (1e-10, with the Crouzeix factor 1+√2), for a nearly Hermitian batch (imaginary
    extent 3.5 % of the real spread: the matrix formalism's regime) and a far from Hermitian
    one (35 %, split into 3 substeps). Measured here: 56 products against the a priori 73, and
    115 against 3 × 69."""
    diag, M, c, v = _factors(11)
    c = c * imag_scale
    tau, tol = 2.0, 1e-10
    lo, hi, imag = _bounds(diag, M, c)
    # the a priori product count: s substeps (round-off guard) of the fixed degree each
    nsub = expm._substeps(tau, lo, hi, imag, tol, torch.finfo(torch.float64).eps)
    sub = expm.chebyshev_coefficients(tau / nsub, lo, hi, imag, tol / nsub)[0].size - 1
    degree = nsub * sub
    ref = torch.einsum("nkl,ln->kn", torch.linalg.matrix_exp(-tau * _dense(diag, M, c)), v)
    calls = _count_products(monkeypatch, ColumnOperator)
    y = expmv_chebyshev(ColumnOperator(diag, M, c), v, tau, lo, hi, imag, tol=tol)
    err = torch.linalg.vector_norm(y - ref, dim=0) / torch.linalg.vector_norm(v, dim=0)
    assert float(err.max()) < (1 + 2**0.5) * tol
    assert len(calls) < 0.9 * degree
    calls.clear()
    y_fixed = expmv_chebyshev(ColumnOperator(diag, M, c), v, tau, lo, hi, imag, adaptive=False)
    assert len(calls) == degree
    err_fixed = torch.linalg.vector_norm(y_fixed - ref, dim=0) / torch.linalg.vector_norm(v, dim=0)
    assert float(err_fixed.max()) < (1 + 2**0.5) * tol


def test_expmv_column_operator_gradients_match_matrix_exp():
    """d/d(diag, blocks, coefs, v) of Re Σ w·exp(−τK)v against autograd through matrix_exp;
    the fixed polynomial differentiates to ~tol (1e-12 asked)."""
    diag0, M0, c0, v0 = _factors(5)
    tau = 0.5
    lo, hi, imag = _bounds(diag0, M0, c0)
    w = torch.randn(v0.shape, generator=torch.Generator().manual_seed(6), dtype=v0.dtype)

    def run(dense: bool):
        diag, M, c, v = (t.clone().requires_grad_(True) for t in (diag0, M0, c0, v0))
        if dense:
            y = torch.einsum("nkl,ln->kn", torch.linalg.matrix_exp(-tau * _dense(diag, M, c)), v)
        else:
            y = expmv_chebyshev(ColumnOperator(diag, M, c), v, tau, lo, hi, imag, tol=1e-12)
        (y * w).real.sum().backward()
        return [t.grad for t in (diag, M, c, v)]

    for got, ref in zip(run(False), run(True)):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-11)


def test_expmv_float32_column_and_grouped():
    """complex64: accuracy at the single-precision level (5e-5 relative: ~90 products)."""
    diag, M, c, v = _factors(7, dtype=torch.float32)
    tau = 0.3
    lo, hi, imag = _bounds(diag, M, c)
    y = expmv_chebyshev(ColumnOperator(diag, M, c), v, tau, lo, hi, imag, tol=1e-6)
    assert y.dtype == torch.complex64
    Kd = _dense(diag.double(), M.double(), c.to(torch.complex128))
    ref = torch.einsum("nkl,ln->kn", torch.linalg.matrix_exp(-tau * Kd), v.to(torch.complex128))
    assert float((y.to(ref.dtype) - ref).abs().max() / ref.abs().max()) < 5e-5


def test_grouped_operator_refuses_gradients_and_bad_shapes():
    diag, M, c, v = _factors()
    op = GroupedOperator(diag, M[:2], torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="no derivative"):
        expmv_chebyshev(op, v.clone().requires_grad_(True), 1.0, 0.0, 60.0, 5.0)
    op = GroupedOperator(
        diag, M[:2].clone().requires_grad_(True), torch.ones(2, 3, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="no derivative"):
        expmv_chebyshev(op, v, 1.0, 0.0, 60.0, 5.0)
    with pytest.raises(ValueError, match="complex"):
        expmv_chebyshev(ColumnOperator(diag, M, c), v.real, 1.0, 0.0, 60.0, 5.0)
    with pytest.raises(ValueError, match="coefs"):
        ColumnOperator(diag, M, c.real)
    with pytest.raises(ValueError, match="scales"):
        GroupedOperator(diag, M, torch.ones(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("grad", [False, True])
def test_strongly_oscillatory_action_is_split_into_accurate_substeps(grad):
    """τ·‖imaginary part‖ ≈ 200 (a large cell at high b): one series would carry terms up to
    e^{τ(a−d)} ≈ 1e30 times the result and lose every digit (measured before the split: error
    5.7e12 on the MF benchmark's reduction at q = 3e-3, δ = 10 ms). The action is split into
    substeps; it must agree with matrix_exp to the series tolerance, with and without the
    derivative path."""
    diag, M, c, v = _factors(12)
    tau, tol = 10.0, 1e-10
    lo, hi, imag = _bounds(diag, M, c)
    assert tau * imag > 150
    eps = torch.finfo(torch.float64).eps
    assert expm._substeps(tau, lo, hi, imag, tol, eps) > 1
    assert expm._substeps(0.01, lo, hi, imag, tol, eps) == 1
    ref = torch.einsum("nkl,ln->kn", torch.linalg.matrix_exp(-tau * _dense(diag, M, c)), v)
    with torch.set_grad_enabled(grad):
        vv = v.clone().requires_grad_(grad)
        y = expmv_chebyshev(ColumnOperator(diag, M, c), vv, tau, lo, hi, imag, tol=tol)
    err = torch.linalg.vector_norm(y.detach() - ref, dim=0) / torch.linalg.vector_norm(v, dim=0)
    assert float(err.max()) < (1 + 2**0.5) * tol


def test_non_finite_input_raises():
    diag, M, c, v = _factors(13)
    v[3, 2] = float("nan")
    lo, hi, imag = _bounds(diag, M, c)
    with pytest.raises(expm.SolverError, match="non-finite"):
        expmv_chebyshev(ColumnOperator(diag, M, c), v, 0.5, lo, hi, imag)
