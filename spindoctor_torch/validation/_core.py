"""Rows, cases, the runner and the table writers of the validation suite."""

from __future__ import annotations

import csv
import math
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tqdm.auto import tqdm

__all__ = [
    "LEVELS",
    "REFERENCE_ENV",
    "Case",
    "CaseContext",
    "Check",
    "SkipCase",
    "ValidationRow",
    "ValidationTable",
    "find_reference_dir",
    "format_table",
    "run_cases",
]

LEVELS = ("quick", "full")
REFERENCE_ENV = "SPINDOCTOR_REFERENCE"
"""Environment variable naming the folder that holds SpinDoctor's reference files
(``fem_sphere_r5.json``, ``analytical.json``, ``meshes/``)."""

MISSING_REFERENCE = "skipped: reference data not found"


class SkipCase(Exception):
    """Raised by a case that cannot run here; its message becomes the row status."""


@dataclass(frozen=True)
class Check:
    """One compared number of a case.

    Attributes
    ----------
    quantity : str
        What is compared, with its unit (e.g. ``"E(b=1000, x)"``, ``"ADC_x [µm²/µs]"``).
    reference : float
        The independent value.
    ours : float
        The package's value.
    tolerance : float
        Largest accepted relative error.
    scale : float, optional
        Denominator of the relative error, default ``|reference|`` (give one for quantities
        that may vanish, e.g. the scale of a whole spectrum for its zero eigenvalue).
    """

    quantity: str
    reference: float
    ours: float
    tolerance: float
    scale: float | None = None

    def relative_error(self) -> float:
        ref, ours = float(self.reference), float(self.ours)
        scale = abs(ref) if self.scale is None else abs(float(self.scale))
        diff = abs(ours - ref)
        if not (math.isfinite(diff) and math.isfinite(scale)):
            return math.inf
        if scale == 0.0:
            return 0.0 if diff == 0.0 else math.inf
        return diff / scale


@dataclass(frozen=True)
class ValidationRow:
    """One line of the validation table.

    Attributes
    ----------
    case, quantity : str
    reference, ours : float
        NaN in skipped or failed-to-run rows.
    rel_error : float
        ``|ours − reference| / scale`` (see :class:`Check`).
    tolerance : float
    status : str
        ``"pass"``, ``"fail"``, ``"error: <message>"`` (the case raised) or
        ``"skipped: <reason>"`` (e.g. reference data not found).
    time : float
        Wall time in seconds of the whole case that produced the row (shared by its rows).
    """

    case: str
    quantity: str
    reference: float
    ours: float
    rel_error: float
    tolerance: float
    status: str
    time: float

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def skipped(self) -> bool:
        return self.status.startswith("skipped")

    @property
    def failed(self) -> bool:
        return not (self.passed or self.skipped)


class ValidationTable(list):
    """The list of :class:`ValidationRow` returned by :func:`run_validation`, with helpers."""

    def passed(self) -> bool:
        """True when no row failed or errored (skipped rows do not count as failures)."""
        return not any(r.failed for r in self)

    def failures(self) -> list[ValidationRow]:
        return [r for r in self if r.failed]

    def skipped(self) -> list[ValidationRow]:
        return [r for r in self if r.skipped]

    def format(self) -> str:
        return format_table(self)

    def write_csv(self, path: str | os.PathLike) -> None:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow([f.name for f in fields(ValidationRow)])
            for r in self:
                w.writerow([_csv_value(v) for v in asdict(r).values()])

    def write_markdown(self, path: str | os.PathLike, cases: Iterable[Case] = ()) -> None:
        Path(path).write_text(markdown_table(self, cases), encoding="utf-8")


@dataclass(frozen=True)
class CaseContext:
    """What a case may read: the level it runs at, the reference folder (or None) and the
    quiet switch for nested progress bars."""

    level: str
    reference_dir: Path | None
    quiet: bool = True

    def reference_file(self, name: str) -> Path:
        """Path of a SpinDoctor reference file; raises :class:`SkipCase` when absent."""
        if self.reference_dir is None or not (self.reference_dir / name).exists():
            raise SkipCase(MISSING_REFERENCE)
        return self.reference_dir / name


@dataclass(frozen=True)
class Case:
    """One validation case: a geometry × solver × sequence compared with a reference.

    Attributes
    ----------
    name : str
    level : {"quick", "full"}
        "quick" cases run at both levels, "full" cases only with ``level="full"``.
    group : str
        "exact", "analytical", "mf", "adc", "gradient" or "parity".
    description : str
        Setup, reference and the reason of the tolerance (written into the Markdown).
    run : callable(CaseContext) -> list[Check]
    """

    name: str
    level: str
    group: str
    description: str
    run: Callable[[CaseContext], list[Check]]


def _csv_value(v):
    return repr(float(v)) if isinstance(v, float) else v


def find_reference_dir() -> Path | None:
    """SpinDoctor reference folder: ``$SPINDOCTOR_REFERENCE`` if set, else
    ``<repo>/../shared/reference/spindoctor``, else ``./../shared/reference/spindoctor``;
    None when none exists."""
    env = os.environ.get(REFERENCE_ENV)
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    repo = Path(__file__).resolve().parents[2]
    for p in (
        repo.parent / "shared" / "reference" / "spindoctor",
        Path.cwd().parent / "shared" / "reference" / "spindoctor",
    ):
        if p.is_dir():
            return p
    return None


def _rows_for(case: Case, ctx: CaseContext) -> list[ValidationRow]:
    nan = math.nan
    t0 = time.perf_counter()
    try:
        checks = case.run(ctx)
    except SkipCase as skip:
        return [
            ValidationRow(case.name, "-", nan, nan, nan, nan, str(skip), time.perf_counter() - t0)
        ]
    except Exception as err:  # a crashing case is a failed row, the suite goes on
        last = traceback.extract_tb(err.__traceback__)[-1]
        msg = f"error: {type(err).__name__}: {err} ({Path(last.filename).name}:{last.lineno})"
        return [
            ValidationRow(
                case.name, "-", nan, nan, nan, nan, msg.replace("\n", " "), time.perf_counter() - t0
            )
        ]
    elapsed = time.perf_counter() - t0
    rows = []
    for c in checks:
        err = float(c.relative_error())
        status = "pass" if err <= c.tolerance else "fail"
        rows.append(
            ValidationRow(
                case.name,
                c.quantity,
                float(c.reference),
                float(c.ours),
                err,
                float(c.tolerance),
                status,
                elapsed,
            )
        )
    if not rows:
        rows.append(
            ValidationRow(
                case.name, "-", nan, nan, nan, nan, "error: the case compared nothing", elapsed
            )
        )
    return rows


def run_cases(cases: list[Case], ctx: CaseContext, quiet: bool) -> ValidationTable:
    table = ValidationTable()
    bar = tqdm(cases, desc="validation", disable=quiet, leave=False)
    for case in bar:
        bar.set_postfix_str(case.name)
        table.extend(_rows_for(case, ctx))
    bar.close()
    return table


# ----------------------------------------------------------------------------- formatting
_HEAD = ("case", "quantity", "reference", "ours", "rel. error", "tolerance", "status", "time (s)")


def _cells(r: ValidationRow) -> list[str]:
    def num(x: float) -> str:
        return "" if math.isnan(x) else f"{x:.8g}"

    def err(x: float) -> str:
        return "" if math.isnan(x) else f"{x:.2e}"

    return [
        r.case,
        r.quantity,
        num(r.reference),
        num(r.ours),
        err(r.rel_error),
        err(r.tolerance),
        r.status,
        f"{r.time:.2f}",
    ]


def format_table(rows: Iterable[ValidationRow]) -> str:
    """Plain-text table with aligned columns and a summary line."""
    rows = list(rows)
    body = [_cells(r) for r in rows]
    widths = [max([len(h)] + [len(b[k]) for b in body]) for k, h in enumerate(_HEAD)]
    right = {2, 3, 4, 5, 7}

    def line(cells):
        return "  ".join(
            c.rjust(w) if k in right else c.ljust(w) for k, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [line(_HEAD), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    out.append(_summary(rows))
    return "\n".join(out)


def _summary(rows: list[ValidationRow]) -> str:
    npass = sum(r.passed for r in rows)
    nskip = sum(r.skipped for r in rows)
    nfail = len(rows) - npass - nskip
    total = sum({r.case: r.time for r in rows}.values())
    return (
        f"{len(rows)} rows: {npass} passed, {nfail} failed, {nskip} skipped "
        f"({len({r.case for r in rows})} cases, {total:.1f} s)"
    )


def markdown_table(rows: Iterable[ValidationRow], cases: Iterable[Case] = ()) -> str:
    """Markdown table, followed by each case's description (reference and tolerance)."""
    rows = list(rows)
    out = ["| " + " | ".join(_HEAD) + " |", "|" + "|".join(["---"] * len(_HEAD)) + "|"]
    for r in rows:
        cells = [c.replace("|", "\\|") for c in _cells(r)]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", _summary(rows), ""]
    names = {r.case for r in rows}
    described = [c for c in cases if c.name in names]
    if described:
        out += ["## Cases", ""]
        out += [f"- **{c.name}** ({c.group}): {c.description}" for c in described]
        out.append("")
    return "\n".join(out)
