"""Validation suite (placeholder docstring, replaced below)."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from ._cases_analytical import CASES as _ANALYTICAL
from ._cases_exact import CASES as _EXACT
from ._cases_mf import CASES as _MF
from ._cases_parity import CASES as _PARITY
from ._core import (
    LEVELS,
    REFERENCE_ENV,
    Case,
    CaseContext,
    Check,
    SkipCase,
    ValidationRow,
    ValidationTable,
    find_reference_dir,
    format_table,
    run_cases,
)

__all__ = [
    "CASES",
    "Case",
    "CaseContext",
    "Check",
    "LEVELS",
    "REFERENCE_ENV",
    "SkipCase",
    "ValidationRow",
    "ValidationTable",
    "find_reference_dir",
    "format_table",
    "list_cases",
    "run_validation",
]

CASES: list[Case] = [*_EXACT, *_ANALYTICAL, *_MF, *_PARITY]


def list_cases(level: str = "full") -> list[Case]:
    """The registered cases that run at ``level`` ("quick" ⊂ "full")."""
    if level not in LEVELS:
        raise ValueError(f"level = {level!r}; allowed: {', '.join(LEVELS)}")
    return [c for c in CASES if level == "full" or c.level == "quick"]


def run_validation(
    level: str = "quick",
    output_dir: str | os.PathLike | None = None,
    quiet: bool = False,
    *,
    cases: str | list[str] | None = None,
) -> ValidationTable:
    """Run the validation suite and return its table."""
    selected = list_cases(level)
    if cases is not None:
        patterns = [cases] if isinstance(cases, str) else list(cases)
        selected = [c for c in selected if any(fnmatch.fnmatch(c.name, p) for p in patterns)]
        if not selected:
            raise ValueError(f"cases = {cases!r} matches no case at level {level!r}")
    ctx = CaseContext(level=level, reference_dir=find_reference_dir(), quiet=True)
    table = run_cases(selected, ctx, quiet)
    if not quiet:
        print(table.format())
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        table.write_csv(out / f"validation_{level}.csv")
        table.write_markdown(out / f"validation_{level}.md", selected)
    return table
