"""Compare two sets of results (ours, SpinDoctor's, or another run of ours).

The metric is SpinDoctor's driver metric: for every amplitude, sequence and direction,

    e = |S − S_ref| / max_direction |S_ref|

(signals of all compartments, µm³, so the normalization is the largest signal of that b-value
and sequence). A row reports the largest e overall and per amplitude. ADC tensors are compared
elementwise: |A − A_ref| / max |A_ref|.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["ComparisonRow", "compare_results", "format_comparison"]


@dataclass
class ComparisonRow:
    """One comparison: ``name`` (ours) against ``reference``.

    Attributes
    ----------
    quantity : ``"signal"`` or ``"adc"``.
    max_error : largest relative error (see module doc), or NaN when not comparable.
    per_amplitude : largest relative error for each amplitude (signals only).
    note : why a pair was not comparable, or a caveat (different b-values ...).
    """

    name: str
    reference: str
    quantity: str
    max_error: float
    per_amplitude: list[float] = field(default_factory=list)
    note: str = ""

    def passed(self, tolerance: float) -> bool:
        return bool(np.isfinite(self.max_error)) and self.max_error <= tolerance


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().resolve_conj().numpy()
    return np.asarray(x)


def _is_signal(x: Any) -> bool:
    return hasattr(x, "signal_allcmpts")


def _adc_array(x: Any) -> np.ndarray | None:
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return np.real(_np(x))
    for key in ("adc",):
        v = x.get(key) if isinstance(x, Mapping) else getattr(x, key, None)
        if v is not None:
            return np.real(_np(v))
    return None


def _bvalues(x: Any) -> np.ndarray | None:
    exp = getattr(x, "experiment", None)
    b = getattr(exp, "bvalues", None)
    if b is None:
        info = getattr(x, "info", {}) or {}
        b = info.get("bvalues")
    return None if b is None else np.asarray(_np(b), dtype=np.float64)


def _match(name: str, ours: Any, reference: Mapping[str, Any]) -> list[str]:
    if name in reference:
        return [name]
    method = getattr(ours, "method", name)
    hits = [r for r in reference if r.startswith(name + "_") or r.startswith(method + "_")]
    hits += [
        r
        for r in reference
        if r not in hits and getattr(reference[r], "method", None) == method and _is_signal(ours)
    ]
    return hits


def compare_results(
    ours: Mapping[str, Any],
    reference: Mapping[str, Any],
    *,
    pairs: Mapping[str, str] | None = None,
) -> list[ComparisonRow]:
    """Relative errors of ``ours`` against ``reference``.

    Parameters
    ----------
    ours, reference : name -> Result (signals) or ADC tensor / object with ``adc``.
    pairs : explicit ``{our name: reference name}``; by default names are matched exactly,
        then ``mf`` matches ``mf_ls1`` etc., then by the results' ``method``.

    Returns
    -------
    list of :class:`ComparisonRow`, one per matched pair (unmatched names of ours get a row
    with a note).
    """
    rows: list[ComparisonRow] = []
    for name, mine in ours.items():
        refs = [pairs[name]] if pairs and name in pairs else _match(name, mine, reference)
        if not refs:
            rows.append(ComparisonRow(name, "-", "-", float("nan"), note="no matching reference"))
            continue
        for rname in refs:
            rows.append(_compare_one(name, mine, rname, reference[rname]))
    return rows


def _compare_one(name: str, mine: Any, rname: str, ref: Any) -> ComparisonRow:
    if _is_signal(mine) and _is_signal(ref):
        s = _np(mine.signal_allcmpts)
        r = _np(ref.signal_allcmpts)
        if s.shape != r.shape:
            return ComparisonRow(
                name, rname, "signal", float("nan"), note=f"shapes differ: {s.shape} vs {r.shape}"
            )
        scale = np.abs(r).max(axis=-1, keepdims=True)
        err = np.abs(s - r) / np.where(scale > 0, scale, 1.0)
        note = ""
        bm, br = _bvalues(mine), _bvalues(ref)
        if bm is not None and br is not None and bm.shape == br.shape:
            if not np.allclose(bm, br, rtol=1e-6, atol=1e-9):
                note = "b-values differ"
        return ComparisonRow(
            name,
            rname,
            "signal",
            float(err.max()),
            per_amplitude=[float(e) for e in err.reshape(err.shape[0], -1).max(1)],
            note=note,
        )
    a, b = _adc_array(mine), _adc_array(ref)
    if a is None or b is None:
        return ComparisonRow(name, rname, "-", float("nan"), note="not comparable (signal vs ADC?)")
    if a.size != b.size:
        return ComparisonRow(
            name, rname, "adc", float("nan"), note=f"shapes differ: {a.shape} vs {b.shape}"
        )
    a, b = a.reshape(-1), b.reshape(-1)
    scale = np.abs(b).max()
    return ComparisonRow(
        name, rname, "adc", float(np.abs(a - b).max() / (scale if scale > 0 else 1.0))
    )


def format_comparison(rows: list[ComparisonRow], *, tolerance: float | None = None) -> str:
    """A plain-text table of the rows (one line each; per-amplitude errors in brackets)."""
    head = f"{'ours':<16} {'reference':<22} {'quantity':<8} {'max rel. error':>14}  per amplitude"
    if tolerance is not None:
        head += "  (pass?)"
    lines = [head, "-" * len(head)]
    for r in rows:
        per = "[" + ", ".join(f"{e:.2e}" for e in r.per_amplitude) + "]" if r.per_amplitude else ""
        err = f"{r.max_error:.3e}" if np.isfinite(r.max_error) else "n/a"
        line = f"{r.name:<16} {r.reference:<22} {r.quantity:<8} {err:>14}  {per}"
        if tolerance is not None and np.isfinite(r.max_error):
            line += "  ok" if r.passed(tolerance) else "  FAIL"
        if r.note:
            line += f"  ({r.note})"
        lines.append(line)
    return "\n".join(lines)
