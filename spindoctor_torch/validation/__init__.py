r"""Validation suite: our numbers against independent references, as a table.

``spindoctor-torch validate [--quick|--full]`` and :func:`run_validation` run a curated
registry of cases (geometry × solver × sequence). Each case compares some of our numbers with a
reference that does not come from the code under test and yields rows

    case | quantity | reference | ours | relative error | tolerance | pass/fail | time (s)

(:class:`ValidationRow`; the relative error is ``|ours − reference| / |reference|`` unless a
case gives another scale, e.g. for a zero eigenvalue). ``level="quick"`` (< 2 min on two busy
cores; part of ``make test`` through ``tests/test_validation.py``) runs the coarse cases,
``level="full"`` adds finer meshes, more sequences and every SpinDoctor truncation level.

Catalogue of the references
---------------------------
=============  ==========================================================================
group          cases and reference
=============  ==========================================================================
exact          boxes and one-cell-thick columns: BTPDE vs products of exact Neumann cosine
               series (PGSE, DoublePGSE exactly; CosOGSE by DOP853 at rtol 1e-11); a
               permeable three-slab stack (different D, T2, ρ, ρ-weighted coupling) vs a
               converged 1-D finite-element reference exact in time
               (:mod:`._reference1d`, NumPy/SciPy only)
analytical     one- and two-layer (permeable) spheres and cylinders vs
               :func:`~spindoctor_torch.solvers.analytical.solve_analytical`; the
               analytical slab stack vs the 1-D reference
mf             Laplace eigenvalues of a box vs Dπ²Σ(n_k/L_k)²; MF vs BTPDE on the same
               two-layer permeable sphere
adc            HADC, MF-GA and STA vs the Gaussian-phase series (cosine, Murday-Cotts) and
               Mitra's formula with exact box areas
gradient       d(signal)/d(points, κ, D) of BTPDE and MF, dADC_HADC/d(points) vs central
               finite differences
parity         SpinDoctor's own results (below)
=============  ==========================================================================

Tolerances are stated per case (``Case.description``, written under the Markdown table) with
their reason: the discretization error expected at that mesh size and time step (P1: O(h²),
eigenvalues high by ≈ (|k|h)²/12; Crank-Nicolson: O(Δt²); see
``examples/convergence_study.py`` for the measured orders 1.9 in h and 2.0 in Δt), or rounding
where the comparison is exact.

SpinDoctor parity
-----------------
SpinDoctor's MATLAB code (run under GNU Octave) computed ``fem_sphere_r5.json`` on its own
TetGen sphere (R = 5 µm, 2686 nodes, ``meshes/sphere_r5.npz``; D = 0.002 µm²/µs, PGSE(10000,
43100) µs, b = 500…4000 s/mm², 3 directions) and ``analytical.json``. The reference folder is
``$SPINDOCTOR_REFERENCE`` if set, else ``<repo>/../shared/reference/spindoctor``; without it the
parity cases give rows with status ``"skipped: reference data not found"`` (never a silent
pass). Measured relative differences, same mesh, same settings:

* BTPDE signals: 4e-5 with Crank-Nicolson at 16 steps per interval (quick level), 1e-6 at 100
  (full level). The difference falls as Δt² (×39 for ×6.25 steps): it is *our* time error;
  SpinDoctor's ode15s at rtol 1e-8 / atol 1e-10 contributes nothing visible. ADCs fitted by
  the same adaptive polynomial fit to both signal sets: 1.7e-4 and 4e-6 (the fit amplifies the
  signal difference).
* MF signals at ℓ = 2, 1, 0.5 µm: ≤ 4e-12; eigenvalues ≤ 3e-12 with the same number of modes
  below each cut (40, 203, 787). A different mode count would show far more: truncation is
  the MF's own error (SpinDoctor's MF at ℓ = 2 µm differs from its BTPDE by 1.2e-5 at
  b = 4000, at ℓ = 0.5 µm by 2e-8). MF-GA ADCs: 1e-12. STA ADCs: 1e-14.
* Analytical module vs SpinDoctor's ``solve_analytical`` at the same length scale (spheres at
  ℓ = 1, 0.7, 0.5 µm, cylinders at ℓ = 0.5, 0.3, 0.2 µm, b up to 10000): same mode counts,
  eigenvalues ≤ 1e-10, signals ≤ 6e-11.
* γ: SpinDoctor MATLAB uses γ = 0.2675222005 rad/(µs·mT) with g in mT/m, we use
  :data:`~spindoctor_torch.units.GAMMA` = 2.67513e-4 rad/(µs·µm·T/m) (SpinDoctor.jl's value).
  They differ by 3.4e-5 relative, so equal *g*-values give b-values 6.9e-5 apart (signal
  differences ≈ 6.9e-5·b·ADC, ~1e-5 here). The parity cases pass SpinDoctor's q-values
  (``Experiment(qvalues=...)``), which sidesteps γ entirely.
* Coupling: the reference mesh has one compartment, so the interface convention is not
  exercised by it. SpinDoctor MATLAB's ``solve_btpde`` couples symmetrically (c = 1), its MF
  and SpinDoctor.jl ρ-weighted (c_ij = 2ρ_i/(ρ_i+ρ_j)); they agree for equal densities.
  :class:`~spindoctor_torch.model.Model` defaults to ρ-weighted (``coupling="symmetric"``
  reproduces ``solve_btpde``); the ``slabs_btpde_permeable`` case checks the ρ-weighted law
  with unequal densities against an independent 1-D implementation.
* The FEM mesh volume is 1.9 % below the exact sphere: compare FEM results with the FEM file
  on the same mesh, not with ``analytical.json``.

Examples
--------
>>> from spindoctor_torch.validation import run_validation
>>> table = run_validation("quick", output_dir="validation_output")  # doctest: +SKIP
>>> table.passed()  # doctest: +SKIP
True
"""

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
    """Run the validation suite and return its table.

    Parameters
    ----------
    level : {"quick", "full"}
        "quick": the coarse cases (< 2 min on two cores); "full": every case.
    output_dir : str or path, optional
        Folder (created if needed) for ``validation_<level>.csv`` and ``validation_<level>.md``
        (the table, then each case's description with its reference and tolerance).
    quiet : bool
        No progress bar and no printed table.
    cases : str or list of str, optional
        Only the cases whose names match these shell patterns (e.g. ``"parity_*"``).

    Returns
    -------
    ValidationTable
        A list of :class:`ValidationRow` (``case, quantity, reference, ours, rel_error,
        tolerance, status, time``) with ``passed()``, ``failures()``, ``skipped()``,
        ``format()``, ``write_csv()`` and ``write_markdown()``.

    Raises
    ------
    ValueError
        Unknown level, or ``cases`` matching nothing.

    Notes
    -----
    A case that raises becomes one row with status ``"error: ..."`` (a failure) and the suite
    goes on; a case whose reference data is missing becomes a ``"skipped: ..."`` row.
    """
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
