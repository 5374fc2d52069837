"""The validation suite: every quick row passes, SpinDoctor parity within 0.5 %, the table
machinery, and the 1-D yardsticks against limits derived independently.

The quick level runs once per session (module fixture, ~60 s on one busy core); it puts
``spindoctor-torch validate --quick`` into ``make test``.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from spindoctor_torch.validation import (
    Case,
    CaseContext,
    Check,
    SkipCase,
    find_reference_dir,
    list_cases,
    run_validation,
)
from spindoctor_torch.validation import _reference1d as ref
from spindoctor_torch.validation._core import MISSING_REFERENCE, run_cases

REFERENCE = find_reference_dir()
PARITY_GOAL = 5e-3  # issue 6: ≤ 0.5 % on SpinDoctor's BTPDE/MF signals at the same mesh


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("validation")
    return run_validation("quick", output_dir=out, quiet=True), out


def _describe(rows) -> str:
    return "\n".join(
        f"{r.case} | {r.quantity} | ref {r.reference:.10g} | ours {r.ours:.10g} | "
        f"err {r.rel_error:.3g} > tol {r.tolerance:.3g} | {r.status}"
        for r in rows
    )


def test_quick_level_every_row_passes(quick):
    table, _ = quick
    assert len(table) > 50
    bad = table.failures()
    assert not bad, "validation rows failed:\n" + _describe(bad)
    skipped = table.skipped()
    if REFERENCE is None:
        # Only the parity cases may skip, and only for the missing reference folder.
        assert all(r.case.startswith("parity") for r in skipped)
        assert all(r.status == MISSING_REFERENCE for r in skipped)
    else:
        assert not skipped, _describe(skipped)
    assert table.passed()


def test_quick_level_writes_csv_and_markdown(quick):
    table, out = quick
    with open(out / "validation_quick.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(table)
    assert rows[0]["case"] == table[0].case
    assert float(rows[0]["rel_error"]) == pytest.approx(table[0].rel_error, rel=1e-15)
    md = (out / "validation_quick.md").read_text(encoding="utf-8")
    lines = md.splitlines()
    assert sum(line.startswith("| ") for line in lines) == len(table) + 1  # header + rows
    assert "## Cases" in md and "Tolerance" in md


@pytest.mark.skipif(REFERENCE is None, reason="SpinDoctor reference folder not found")
def test_spindoctor_parity_signals_within_half_percent(quick):
    """SpinDoctor's BTPDE (ode15s, rtol 1e-8) and MF (ℓ = 2 µm) signals on its own mesh:
    4 b-values × 3 directions each. Measured: BTPDE 4e-5 (our CN time error at 16
    steps/interval), MF 1e-13."""
    table, _ = quick
    btpde = [r for r in table if r.case == "parity_btpde" and r.quantity.startswith("S(")]
    mf = [r for r in table if r.case == "parity_mf_ls2" and r.quantity.startswith("S_MF(")]
    assert len(btpde) == 12 and len(mf) == 12
    worst = max(btpde + mf, key=lambda r: r.rel_error)
    assert worst.rel_error <= PARITY_GOAL, _describe([worst])
    # The same-mesh, same-truncation MF agrees to the eigensolver's accuracy.
    assert max(r.rel_error for r in mf) < 1e-8


def test_full_level_contains_quick_and_more():
    quick_names = {c.name for c in list_cases("quick")}
    full_names = {c.name for c in list_cases("full")}
    assert quick_names < full_names
    assert {c.group for c in list_cases("quick")} == {
        "exact",
        "analytical",
        "mf",
        "adc",
        "gradient",
        "parity",
    }
    with pytest.raises(ValueError, match="level"):
        list_cases("medium")
    with pytest.raises(ValueError, match="matches no case"):
        run_validation("quick", quiet=True, cases="no_such_case*")


# ------------------------------------------------------------------------- table machinery
def test_rows_statuses_and_relative_errors():
    def ok(ctx):
        return [
            Check("a", 2.0, 2.002, 1.5e-3),
            Check("b", 2.0, 2.01, 1e-3),
            Check("zero", 0.0, 1e-12, 1e-9, scale=1e-2),
        ]

    def crash(ctx):
        raise RuntimeError("boom")

    def skip(ctx):
        raise SkipCase("skipped: no data")

    def missing(ctx):
        return [Check("x", 1.0, 1.0, 0.0)] if ctx.reference_file("nope.json") else []

    cases = [
        Case("ok", "quick", "exact", "", ok),
        Case("crash", "quick", "exact", "", crash),
        Case("skip", "quick", "exact", "", skip),
        Case("missing", "quick", "parity", "", missing),
    ]
    table = run_cases(cases, CaseContext("quick", None), quiet=True)
    assert [r.status for r in table[:3]] == ["pass", "fail", "pass"]
    assert table[0].rel_error == pytest.approx(1e-3, rel=1e-12)
    assert table[1].rel_error == pytest.approx(5e-3, rel=1e-12)
    assert table[2].rel_error == pytest.approx(1e-10, rel=1e-12)  # scale 1e-2, not |0|
    assert table[3].status.startswith("error: RuntimeError: boom")
    assert table[4].status == "skipped: no data" and table[4].skipped
    assert table[5].status == MISSING_REFERENCE
    assert not table.passed() and len(table.failures()) == 2
    text = table.format()
    assert "6 rows: 2 passed, 2 failed, 2 skipped" in text


def test_reference_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPINDOCTOR_REFERENCE", str(tmp_path))
    assert find_reference_dir() == tmp_path
    monkeypatch.setenv("SPINDOCTOR_REFERENCE", str(tmp_path / "absent"))
    assert find_reference_dir() is None


# ----------------------------------------------------------------- the 1-D yardsticks
def test_interval_series_converged_and_small_q_limit_is_gpa():
    """The default 60 modes agree with 240 to 1e-10 (measured 3e-11; the truncation error
    decays algebraically); at small q, −log E / b equals the independently summed GPA series to
    O(b·ADC) (here 1e-6)."""
    p = ref.pgse(5000.0, 10000.0)
    q = np.array([2e-5, 6e-5, 1.2e-4])
    e60 = ref.interval_attenuation(6.0, 0.002, q, p)
    e240 = ref.interval_attenuation(6.0, 0.002, q, p, nmode=240)
    assert np.abs(e60 - e240).max() < 1e-10
    q0 = np.array([1e-7])
    b = q0**2 * 5000.0**2 * (10000.0 - 5000.0 / 3)
    adc = -math.log(ref.interval_attenuation(6.0, 0.002, q0, p).real[0]) / b[0]
    assert adc == pytest.approx(ref.gpa_adc_interval(6.0, 0.002, 5000.0, 10000.0), rel=1e-6)


def test_stack_reference_decouples_at_zero_permeability():
    """κ = 0: each layer of the 1-D finite-element stack is an independent interval, whose
    exact cosine series it must reproduce: after Richardson extrapolation to 1e-7 (measured
    5e-9); the reported uncertainty (the fine grid's own error) stays below 1e-5."""
    p = ref.pgse(5000.0, 10000.0)
    q = np.array([3e-5, 8e-5])
    sig, unc = ref.slab_stack_signal([2.0, 3.0], [0.002, 0.001], [0.0], q, p)
    assert (unc / np.abs(sig)).max() < 1e-5
    for i, (w, d) in enumerate(((2.0, 0.002), (3.0, 0.001))):
        exact = ref.interval_attenuation(w, d, q, p)
        np.testing.assert_allclose(sig[:, i] / w, exact, rtol=1e-7, atol=0)


def test_sphere_gpa_series_short_time_limit_is_mitra():
    """Murday-Cotts at short times → D(1 − (4/3)√(D t_STA/π)·A_u/V), A_u/V = (S/V)/3 = 1/R,
    up to the curvature term O(D·TE/R²) = 3e-3 (measured 1.4e-3)."""
    delta, Delta, R, D = 100.0, 500.0, 20.0, 0.002
    mitra = D * (1 - 4 / 3 * math.sqrt(D * ref.sta_time_pgse(delta, Delta) / math.pi) / R)
    assert ref.gpa_adc_sphere(R, D, delta, Delta) == pytest.approx(mitra, rel=3e-3)
