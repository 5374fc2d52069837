"""TOML setup files: SpinDoctor's ``setup`` struct as typed, validated Python objects.

A setup file describes one simulation: the geometry (a SpinDoctor cell recipe, a gmsh
primitive or a mesh file), the PDE coefficients per compartment and interface, the gradient
sequences, b/q/g values and directions, the solvers to run, and what to write. Everything is
validated when the file is read: an unknown key, a wrong type, a missing field or an impossible
geometry raises :class:`~spindoctor_torch.errors.SetupError` with a one-line message naming the
file, the field, the value and what is allowed.

Example
-------
.. code-block:: toml

    name = "sphere_nucleus"

    [geometry]                 # SpinDoctor cell recipe (recipe = "cells" is the default)
    cell_shape = "sphere"
    rmin = 5.0
    rmax = 5.0
    in_ratio = 0.6             # nucleus of radius 0.6 r
    ecs_shape = "box"
    ecs_ratio = 0.5
    refinement = 1.0           # TetGen-style max tet volume, µm³ (or h = edge length, µm)

    [pde]                      # by compartment role ("in", "out", "ecs"), index, or one value
    diffusivity = { in = 0.002, out = 0.002, ecs = 0.002 }   # µm²/µs
    relaxation = inf                                          # T2, µs
    permeability = { in_out = 1e-4, out_ecs = 1e-4 }          # µm/µs

    [gradient]
    bvalues = [0, 1000, 2000]  # s/mm² (or qvalues, rad/(µs·µm); or gvalues, T/m)
    directions = { set = "sphere", n = 16 }
    [[gradient.sequences]]
    type = "PGSE"
    delta = 10000.0            # µs
    Delta = 43100.0            # µs

    [solvers.btpde]
    [solvers.mf]
    length_scale = 2.0

    [output]
    directory = "output/sphere_nucleus"

    [tiny]                     # overrides applied by load_setup(..., tiny=True) / --tiny
    geometry.refinement = 10.0

Entry points: :func:`load_setup` (file), :func:`parse_setup` (dict), :func:`run_setup`
(mesh -> model -> experiment -> solvers -> results, optionally written to disk).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import importlib
import inspect
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SetupError

if sys.version_info >= (3, 11):  # pragma: no cover - depends on the interpreter
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Setup",
    "GeometrySpec",
    "PDESpec",
    "GradientSpec",
    "SequenceSpec",
    "DirectionSpec",
    "SolverSpec",
    "OutputSpec",
    "SimulationRun",
    "SOLVERS",
    "RECIPES",
    "load_setup",
    "parse_setup",
    "apply_overrides",
    "build_mesh",
    "build_model",
    "build_experiment",
    "compartment_roles",
    "layered_geometry",
    "run_setup",
    "OptimizationSetup",
    "OptimizationRun",
    "load_optimization",
    "run_optimization",
]

_MISSING = object()

#: Geometry recipes: name -> (module, function) building a TetMesh, or None for special cases.
RECIPES: dict[str, tuple[str, str] | None] = {
    "cells": None,  # geometry.CellSetup + geometry.create_geometry (SpinDoctor packing)
    "file": None,  # mesh.io.read_mesh
    "sphere": ("spindoctor_torch.mesh.gmsh_recipes", "sphere"),
    "cylinder": ("spindoctor_torch.mesh.gmsh_recipes", "cylinder"),
    "box": ("spindoctor_torch.mesh.gmsh_recipes", "box"),
    "slabs": ("spindoctor_torch.mesh.gmsh_recipes", "slabs"),
    "neuron": ("spindoctor_torch.mesh.gmsh_recipes", "soma_dendrites"),
}

#: Solvers a setup may request: name -> (module, candidate function names).
SOLVERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "btpde": ("spindoctor_torch.solvers.btpde", ("solve_btpde",)),
    "mf": ("spindoctor_torch.solvers.mf", ("solve_mf",)),
    "hadc": ("spindoctor_torch.solvers.hadc", ("solve_hadc",)),
    "sta": ("spindoctor_torch.solvers.sta", ("compute_adc_sta", "solve_sta")),
    "mfga": ("spindoctor_torch.solvers.mf", ("solve_mfga", "compute_mfga_signal")),
    "karger": ("spindoctor_torch.solvers.karger", ("solve_karger",)),
    "analytical": ("spindoctor_torch.solvers.analytical", ("solve_analytical",)),
    "free": ("spindoctor_torch.solvers.free", ("free_diffusion", "solve_free")),
}

_SEQUENCE_MODULE = "spindoctor_torch.sequences"
_SEQUENCE_TYPES = ("PGSE", "DoublePGSE", "CosOGSE", "SinOGSE", "CustomProfile")
_DIRECTION_SETS = ("sphere", "hemisphere", "circle", "semicircle")
_VALUE_KINDS = {"bvalues": "s/mm²", "qvalues": "rad/(µs·µm)", "gvalues": "T/m"}
# Parameters the runner passes itself; never setup options.
_RUNNER_ARGS = {
    "model",
    "experiment",
    "quiet",
    "progress",
    "self",
    "mesh",
    "setup",
    "matrices",  # FEMatrices / LaplaceEig objects are built by the runner, not set in files
    "lap",
    "geometry",  # analytical: built from [geometry] and [pde]
    "sequences",
    "bvalues",
    "qvalues",
    "eigenmodes",
    "dtype",
    "device",
}
_DEFAULTS = {"diffusivity": 0.002, "relaxation": math.inf, "density": 1.0}
_PDE_UNITS = {
    "diffusivity": "µm²/µs",
    "relaxation": "µs",
    "density": "dimensionless",
    "permeability": "µm/µs",
    "relaxivity": "µm/µs",
}


# ============================================================================ error helpers
class _Ctx:
    """Where a value came from, for error messages: ``file: [section] key``."""

    def __init__(self, source: str):
        self.source = source

    def error(self, where: str, message: str) -> SetupError:
        return SetupError(
            f"{self.source}: [{where}] {message}" if where else f"{self.source}: {message}"
        )


def _fmt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Table:
    """A TOML table being read: typed getters with precise errors, then :meth:`finish`."""

    def __init__(self, ctx: _Ctx, where: str, data: Any):
        if not isinstance(data, Mapping):
            raise ctx.error(where, f"must be a table, got {_fmt(data)}")
        self.ctx = ctx
        self.where = where
        self.data = dict(data)
        self.seen: set[str] = set()
        self.allowed: list[str] = []

    def err(self, key: str | None, message: str) -> SetupError:
        if key is None:
            return self.ctx.error(self.where, message)
        value = self.data.get(key, _MISSING)
        shown = "" if value is _MISSING else f" = {_fmt(value)}"
        return self.ctx.error(self.where, f"{key}{shown}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = _MISSING, *, required_text: str = "") -> Any:
        if key not in self.allowed:
            self.allowed.append(key)
        if key in self.data:
            self.seen.add(key)
            return self.data[key]
        if default is _MISSING:
            raise self.ctx.error(
                self.where,
                f"missing required key '{key}'" + (f" ({required_text})" if required_text else ""),
            )
        return default

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        unit: str = "",
        positive: bool = False,
        nonneg: bool = False,
        allow_inf: bool = False,
    ) -> Any:
        v = self.raw(key, default, required_text=f"a number{', ' + unit if unit else ''}")
        if v is default and key not in self.data:
            return v
        u = f" ({unit})" if unit else ""
        if not _is_number(v):
            raise self.err(key, f"must be a number{u}")
        v = float(v)
        if math.isnan(v) or (math.isinf(v) and not allow_inf):
            raise self.err(key, f"must be a finite number{u}")
        if positive and not v > 0:
            raise self.err(key, f"must be > 0{u}")
        if nonneg and v < 0:
            raise self.err(key, f"must be >= 0{u}")
        return v

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = None) -> Any:
        v = self.raw(key, default, required_text="an integer")
        if key not in self.data:
            return v
        if not _is_int(v):
            raise self.err(key, "must be an integer")
        if minimum is not None and v < minimum:
            raise self.err(key, f"must be an integer >= {minimum}")
        return int(v)

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        v = self.raw(key, default, required_text="true or false")
        if key in self.data and not isinstance(v, bool):
            raise self.err(key, "must be true or false")
        return v

    def string(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        choices: Sequence[str] | None = None,
        required_text: str = "",
    ) -> Any:
        if not required_text:
            required_text = (
                "one of " + ", ".join(repr(c) for c in choices) if choices else "a string"
            )
        v = self.raw(key, default, required_text=required_text)
        if key not in self.data:
            return v
        if not isinstance(v, str):
            allowed = f"one of {', '.join(repr(c) for c in choices)}" if choices else "a string"
            raise self.err(key, f"must be {allowed}")
        if choices is not None and v not in choices:
            hint = _did_you_mean(v, choices)
            raise self.err(key, f"unknown; allowed: {', '.join(repr(c) for c in choices)}{hint}")
        return v

    def table(self, key: str, default: Any = _MISSING) -> _Table | None:
        v = self.raw(key, default, required_text="a table")
        if key not in self.data:
            return None if v is None else _Table(self.ctx, f"{self.where}.{key}".lstrip("."), v)
        if not isinstance(v, Mapping):
            raise self.err(key, "must be a table")
        return _Table(self.ctx, f"{self.where}.{key}".lstrip("."), v)

    def finish(self, extra_hint: Mapping[str, str] | None = None) -> None:
        """Raise on the first key that no getter asked for."""
        for key in self.data:
            if key in self.seen:
                continue
            hint = (extra_hint or {}).get(key) or _did_you_mean(key, self.allowed)
            allowed = ", ".join(self.allowed) if self.allowed else "none"
            raise self.ctx.error(self.where, f"unknown key '{key}'; allowed: {allowed}{hint}")


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ======================================================================= option checks by signature
def _annotation_kinds(annotation: Any) -> set[str]:
    """Coarse kinds ('number', 'int', 'bool', 'str', 'list', 'table') an annotation admits."""
    text = (
        annotation
        if isinstance(annotation, str)
        else getattr(annotation, "__name__", str(annotation))
    )
    kinds = set()
    for token, kind in (
        ("float", "number"),
        ("Tensor", "number"),
        ("int", "int"),
        ("bool", "bool"),
        ("str", "str"),
        ("Sequence", "list"),
        ("tuple", "list"),
        ("list", "list"),
        ("Tensor", "list"),
        ("dict", "table"),
        ("Mapping", "table"),
        ("Path", "str"),
    ):
        if token in text:
            kinds.add(kind)
    return kinds


def _value_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if _is_int(v):
        return "int"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "str"
    if isinstance(v, list):
        return "list"
    if isinstance(v, Mapping):
        return "table"
    return type(v).__name__


_KIND_TEXT = {
    "number": "a number",
    "int": "an integer",
    "bool": "true or false",
    "str": "a string",
    "list": "a list",
    "table": "a table",
}


def _check_kwargs(
    tab: _Table,
    params: Mapping[str, inspect.Parameter],
    *,
    skip: Iterable[str] = (),
    units: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Validate the keys of ``tab`` against keyword parameters (names, required, coarse types)."""
    skip = set(skip) | _RUNNER_ARGS
    out: dict[str, Any] = {}
    for name, p in params.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        required = p.default is inspect.Parameter.empty
        if not tab.has(name):
            tab.raw(name, None)  # registers the key as allowed
            if required:
                unit = f", {units[name]}" if units and name in units else ""
                raise tab.ctx.error(tab.where, f"missing required key '{name}'{unit}")
            continue
        value = tab.raw(name)
        kinds = (
            _annotation_kinds(p.annotation)
            if p.annotation is not inspect.Parameter.empty
            else set()
        )
        if not kinds and p.default not in (inspect.Parameter.empty, None):
            kinds = {_value_kind(p.default)}
        vk = _value_kind(value)
        ok = not kinds or vk in kinds or (vk == "int" and "number" in kinds)
        if vk == "number" and "int" in kinds and "number" not in kinds:
            ok = False
        if vk == "bool" and "bool" not in kinds and kinds:
            ok = False
        if not ok:
            allowed = " or ".join(_KIND_TEXT.get(k, k) for k in sorted(kinds))
            unit = f" ({units[name]})" if units and name in units else ""
            raise tab.err(name, f"must be {allowed}{unit}")
        if vk == "number" and not math.isfinite(value) and not (math.isinf(value) and value > 0):
            raise tab.err(name, "must be finite")
        out[name] = value
    return out


def _signature_params(func: Callable) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(func).parameters)


def _import(module: str, what: str, ctx: _Ctx, where: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            raise ctx.error(
                where, f"{what} needs {module}, which this installation does not have"
            ) from None
        raise


# ============================================================================ spec dataclasses
@dataclass(frozen=True)
class GeometrySpec:
    """Validated ``[geometry]``.

    Attributes
    ----------
    recipe : one of :data:`RECIPES`.
    options : keyword arguments of the recipe (``CellSetup`` fields for ``"cells"``).
    mesh_file : the mesh to read for ``recipe = "file"`` (absolute path).
    bend, twist : SpinDoctor deformation applied after meshing (non-``cells`` recipes;
        ``cells`` passes them to ``CellSetup``).
    roles : compartment role names in compartment order, when known before meshing.
    """

    recipe: str
    options: dict[str, Any] = field(default_factory=dict)
    mesh_file: Path | None = None
    bend: float = 0.0
    twist: float = 0.0
    roles: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PDESpec:
    """Validated ``[pde]``: each value is a scalar, a per-compartment list, or a table keyed by
    compartment role / index (permeability: by interface ``"in_out"`` / ``"0-1"``)."""

    diffusivity: Any = 0.002
    relaxation: Any = math.inf
    density: Any = 1.0
    permeability: Any = 0.0
    relaxivity: Any = 0.0
    coupling: str = "weighted"


@dataclass(frozen=True)
class SequenceSpec:
    """One ``[[gradient.sequences]]`` entry: a sequence class name and its constructor args."""

    type: str
    params: dict[str, Any]


@dataclass(frozen=True)
class DirectionSpec:
    """Explicit ``vectors`` (ndirection x 3) or a named set: ``sphere`` (Fibonacci, optionally
    rotated by ``seed``), ``hemisphere``, ``circle`` / ``semicircle`` (orthogonal to
    ``normal``), with ``n`` points."""

    vectors: tuple[tuple[float, float, float], ...] | None = None
    set: str | None = None
    n: int = 0
    normal: tuple[float, float, float] = (0.0, 0.0, 1.0)
    seed: int | None = None


@dataclass(frozen=True)
class GradientSpec:
    """Validated ``[gradient]``: sequences, amplitudes of one kind, directions."""

    sequences: tuple[SequenceSpec, ...]
    kind: str  # "bvalues" | "qvalues" | "gvalues"
    values: tuple[float, ...]
    directions: DirectionSpec


@dataclass(frozen=True)
class SolverSpec:
    """One ``[solvers.<name>]`` table: the solver and its keyword options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputSpec:
    """Validated ``[output]``.

    Attributes
    ----------
    directory : where :func:`run_setup` writes (``None``: write nothing).
    save_mesh : also write the mesh (``mesh.msh`` via :func:`write_mesh`, else ``mesh.npz``).
    magnetization : keep ξ(TE) at every dof in the HDF5 results.
    vtu : write ``<solver>_magnetization.vtu`` files for ParaView (implies magnetization).
    plots : write PNG plots (signal vs b, ADC, timings, MF-vs-BTPDE error, mesh render).
    """

    directory: Path | None = None
    save_mesh: bool = True
    magnetization: bool = False
    vtu: bool = False
    plots: bool = True


@dataclass(frozen=True)
class Setup:
    """A complete, validated simulation setup (see the module docstring for the TOML form).

    Attributes
    ----------
    name, description : free text (``name`` names the output files).
    geometry, pde, gradient, output : the validated sections.
    solvers : ordered mapping solver name -> :class:`SolverSpec`.
    device, dtype : where and in which precision to compute ("cpu"/"cuda", "float64"/"float32").
    source : the file it came from (``"<dict>"`` otherwise).
    data : the merged raw dictionary (after ``tiny`` and overrides) that was validated.
    """

    name: str
    description: str
    geometry: GeometrySpec
    pde: PDESpec
    gradient: GradientSpec
    solvers: dict[str, SolverSpec]
    output: OutputSpec
    device: str = "cpu"
    dtype: str = "float64"
    source: str = "<dict>"
    data: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def hash(self) -> str:
        """SHA-256 (16 hex digits) of the canonical JSON of :attr:`data`: two setups with the
        same hash describe the same simulation."""
        text = json.dumps(_jsonable(self.data), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        """The validated raw setup as JSON (``inf`` written as the string ``"inf"``)."""
        return json.dumps(_jsonable(self.data), sort_keys=True, indent=1)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, Path):
        return str(x)
    return x


# ============================================================================ loading
def load_setup(
    path: str | Path, *, tiny: bool = False, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> Setup:
    """Read and validate a TOML setup file.

    Parameters
    ----------
    path : the ``.toml`` file. Relative paths inside it (``geometry.mesh``) are resolved
        against its folder.
    tiny : apply the file's ``[tiny]`` table (a quick variant for tests and smoke runs).
    overrides : ``["gradient.bvalues=[0, 1000]", ...]`` (TOML values; a bare word is a
        string) or a mapping ``{"gradient.bvalues": [0, 1000]}``, applied last.

    Raises
    ------
    SetupError
        One line naming the file, the field, the value and what is allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise SetupError(f"setup file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SetupError(f"{path.name}: not valid TOML: {err}") from None
    return parse_setup(
        data, source=path.name, base_dir=path.resolve().parent, tiny=tiny, overrides=overrides
    )


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> dict:
    """Deep copy of ``data`` with dotted-key overrides applied (see :func:`load_setup`)."""
    out = copy.deepcopy(dict(data))
    items: list[tuple[str, Any]] = []
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        for text in overrides:
            if "=" not in text:
                raise SetupError(f"override {text!r} must look like key.path=value")
            key, value = text.split("=", 1)
            items.append((key.strip(), _parse_toml_value(value.strip())))
    for key, value in items:
        parts = [p for p in key.split(".") if p]
        if not parts:
            raise SetupError(f"override key {key!r} is empty")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise SetupError(f"override {key!r}: {p!r} is not a table")
            node = nxt
        node[parts[-1]] = value
    return out


def _parse_toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _deep_merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_setup(
    data: Mapping[str, Any],
    *,
    source: str = "<dict>",
    base_dir: str | Path | None = None,
    tiny: bool = False,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> Setup:
    """Validate a setup given as a (TOML-like) dictionary; see :func:`load_setup`."""
    ctx = _Ctx(source)
    if not isinstance(data, Mapping):
        raise SetupError(f"{source}: a setup must be a table, got {type(data).__name__}")
    raw = copy.deepcopy(dict(data))
    tiny_table = raw.pop("tiny", None)
    if tiny_table is not None and not isinstance(tiny_table, Mapping):
        raise ctx.error("", f"tiny = {_fmt(tiny_table)}: must be a table of overrides")
    if tiny:
        if tiny_table is None:
            raise ctx.error("", "tiny variant requested but the setup has no [tiny] table")
        if "tiny" in tiny_table:
            raise ctx.error("tiny", "a [tiny] table cannot contain another tiny")
        raw = _deep_merge(raw, tiny_table)
    raw = apply_overrides(raw, overrides)
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    top = _Table(ctx, "", raw)
    name = top.string("name", Path(source).stem if source != "<dict>" else "simulation")
    if not name or any(c in name for c in "/\\"):
        raise top.err("name", "must be a non-empty name without path separators")
    description = top.string("description", "")
    device = top.string("device", "cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise top.err("device", "allowed: 'cpu', 'cuda', 'cuda:N'")
    dtype = top.string("dtype", "float64", choices=("float64", "float32"))
    geometry = _parse_geometry(top.table("geometry"), base)
    pde = _parse_pde(top.table("pde", {}), geometry.roles)
    gradient = _parse_gradient(top.table("gradient"))
    solvers = _parse_solvers(top.table("solvers"))
    output = _parse_output(top.table("output", {}), name)
    top.allowed.append("tiny")
    top.finish({"simulation": " (put device/dtype at the top level)"})
    if tiny_table is not None:
        raw["tiny"] = tiny_table  # kept for provenance; hash covers the effective setup only
    data_eff = {k: v for k, v in raw.items() if k != "tiny"}
    return Setup(
        name=name,
        description=description,
        geometry=geometry,
        pde=pde,
        gradient=gradient,
        solvers=solvers,
        output=output,
        device=device,
        dtype=dtype,
        source=source,
        data=data_eff,
    )


# ============================================================================ [geometry]
def _layer_roles(nlayer: int) -> list[str]:
    if nlayer == 1:
        return ["out"]
    return ["in"] + [f"layer{k}" for k in range(1, nlayer - 1)] + ["out"]


def compartment_roles(geometry: GeometrySpec, ncompartment: int | None = None) -> tuple[str, ...]:
    """Role name of each compartment, in compartment order.

    ``cells``: ``in`` (innermost layer), ``layer1`` ..., ``out`` (outermost layer) for every
    cell, layer by layer (SpinDoctor's ``[in x ncell, out x ncell, ecs]``), then ``ecs``.
    ``sphere``/``cylinder``: the same for one cell, no ECS. ``box``/``neuron``: ``out``.
    ``slabs``: ``slab0``, ``slab1``, ... A mesh file: ``c0``, ``c1``, ...
    """
    if geometry.roles is not None:
        return geometry.roles
    if ncompartment is None:
        raise SetupError("compartment roles of a mesh file are known only after reading it")
    return tuple(f"c{k}" for k in range(ncompartment))


def _parse_geometry(tab: _Table, base: Path) -> GeometrySpec:
    default_recipe = "file" if tab.has("mesh") else "cells"
    recipe = tab.string("recipe", default_recipe, choices=tuple(RECIPES))
    if recipe == "cells":
        return _parse_cells(tab)
    if recipe == "file":
        mesh = tab.raw("mesh", required_text="path of a mesh file: .msh, .vtu, .node/.ele, .npz")
        if not isinstance(mesh, str) or not mesh:
            raise tab.err("mesh", "must be a file path (string)")
        path = Path(mesh).expanduser()
        if not path.is_absolute():
            path = (base / path).resolve()
        if not path.exists() and not path.with_suffix(".1.node").exists():
            raise tab.err("mesh", f"file not found (looked for {path})")
        bend = tab.number("bend", 0.0)
        twist = tab.number("twist", 0.0, unit="rad")
        tab.finish()
        return GeometrySpec("file", {}, path, bend, twist, None)
    module, func_name = RECIPES[recipe]  # type: ignore[misc]
    mod = _import(module, f"recipe = {recipe!r}", tab.ctx, tab.where)
    func = getattr(mod, func_name)
    params = _signature_params(func)
    bend = tab.number("bend", 0.0)
    twist = tab.number("twist", 0.0, unit="rad")
    options = _check_kwargs(tab, params, skip={"msh_path", "stl_path"}, units=_GEOMETRY_UNITS)
    tab.finish()
    _check_primitive(tab, recipe, options)
    if recipe in ("sphere", "cylinder"):
        roles = _layer_roles(len(options.get("layers") or ()) + 1)
    elif recipe == "slabs":
        roles = [f"slab{k}" for k in range(len(options["widths"]))]
    else:
        roles = ["out"]
    return GeometrySpec(recipe, options, None, bend, twist, tuple(roles))


_GEOMETRY_UNITS = {
    "radius": "µm",
    "height": "µm",
    "h": "µm",
    "refinement": "µm³",
    "sides": "µm",
    "widths": "µm",
    "sides_yz": "µm",
    "soma_radius": "µm",
    "dendrite_length": "µm",
    "dendrite_radii": "µm",
}


def _check_primitive(tab: _Table, recipe: str, opt: dict[str, Any]) -> None:
    """Geometric feasibility of the gmsh primitives, checked before meshing."""

    def positive(key: str) -> None:
        v = opt.get(key)
        if v is not None and not (_is_number(v) and v > 0):
            raise tab.err(key, f"must be a number > 0 ({_GEOMETRY_UNITS.get(key, '')})")

    def positive_list(key: str, n: int | None) -> None:
        v = opt.get(key)
        if v is None:
            return
        if not isinstance(v, list) or (n is not None and len(v) != n) or not v:
            size = f"{n} " if n else ""
            raise tab.err(key, f"must be a list of {size}numbers > 0 (µm)")
        if not all(_is_number(x) and x > 0 for x in v):
            raise tab.err(key, "every entry must be a number > 0 (µm)")

    for key in ("radius", "height", "h", "refinement", "soma_radius", "dendrite_length"):
        positive(key)
    if opt.get("h") is not None and opt.get("refinement") is not None:
        raise tab.err("refinement", "give either h (edge length) or refinement (volume), not both")
    if recipe == "box":
        positive_list("sides", 3)
    if recipe == "slabs":
        positive_list("widths", None)
        positive_list("sides_yz", 2)
    if recipe in ("sphere", "cylinder") and opt.get("layers") is not None:
        layers = opt["layers"]
        if not isinstance(layers, list) or not all(_is_number(x) for x in layers):
            raise tab.err("layers", "must be a list of inner radii (µm)")
        r = opt["radius"]
        if any(not 0 < x < r for x in layers) or any(b <= a for a, b in zip(layers, layers[1:])):
            raise tab.err(
                "layers", f"inner radii must increase strictly inside (0, radius = {r}) µm"
            )
    if recipe == "neuron":
        radii = opt.get("dendrite_radii")
        if radii is not None:
            positive_list("dendrite_radii", 2)
            if max(radii) >= opt.get("soma_radius", 5.0):
                raise tab.err("dendrite_radii", "must be smaller than soma_radius")


def _parse_cells(tab: _Table) -> GeometrySpec:
    mod = _import("spindoctor_torch.geometry", "recipe = 'cells'", tab.ctx, tab.where)
    cell_setup = mod.CellSetup
    fields = {f.name: f for f in dataclasses.fields(cell_setup) if f.init}
    hints = {
        "include_in": " (use in_ratio = 0.6 for an inner compartment; omit it for none)",
        "deformation": " (use bend = ... and twist = ...)",
        "tetgen_options": " (meshing is done by gmsh: use h or refinement)",
    }
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if not tab.has(name):
            tab.raw(name, None)
            continue
        value = tab.raw(name)
        kinds = _annotation_kinds(f.type)
        vk = _value_kind(value)
        ok = vk in kinds or (vk == "int" and "number" in kinds)
        if not ok:
            allowed = " or ".join(_KIND_TEXT.get(k, k) for k in sorted(kinds))
            raise tab.err(name, f"must be {allowed}")
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    if kwargs.get("cell_shape") == "neuron":
        raise tab.err(
            "cell_shape",
            "for a neuron use recipe = 'neuron' (gmsh soma + dendrites) or mesh = FILE",
        )
    tab.finish(hints)
    try:
        cs = cell_setup(**kwargs)
    except SetupError as err:
        raise tab.ctx.error(tab.where, str(err)) from None
    except (TypeError, ValueError) as err:
        raise tab.ctx.error(tab.where, str(err)) from None
    roles = [r for r in _layer_roles(cs.nlayer) for _ in range(cs.ncell)]
    if cs.has_ecs:
        roles.append("ecs")
    return GeometrySpec("cells", kwargs, None, 0.0, 0.0, tuple(roles))


# ============================================================================ [pde]
def _parse_pde(tab: _Table | None, roles: tuple[str, ...] | None) -> PDESpec:
    assert tab is not None
    spd: dict[str, Any] = {}
    for key in ("diffusivity", "relaxation", "density"):
        spd[key] = _pde_value(tab, key, _DEFAULTS[key], roles, tensor=(key == "diffusivity"))
    spd["relaxivity"] = _pde_value(tab, "relaxivity", 0.0, roles, tensor=False)
    spd["permeability"] = _permeability_value(tab, roles)
    coupling = tab.string("coupling", "weighted", choices=("weighted", "symmetric"))
    hints = {}
    for key in list(tab.data):
        for base in ("diffusivity", "relaxation", "initial_density", "permeability"):
            if key.startswith(base + "_"):
                role = key[len(base) + 1 :]
                target = "density" if base == "initial_density" else base
                if base == "permeability" and role in ("in", "out", "ecs"):
                    target = "relaxivity"
                hints[key] = f" (write {target} = {{ {role} = ... }})"
    tab.finish(hints)
    return PDESpec(coupling=coupling, **spd)


def _check_scalar(tab: _Table, key: str, v: Any, where: str, *, tensor: bool) -> Any:
    unit = _PDE_UNITS[key]
    if tensor and isinstance(v, list):
        ok = (
            len(v) == 3
            and all(isinstance(r, list) and len(r) == 3 for r in v)
            and all(_is_number(x) and math.isfinite(x) for r in v for x in r)
        )
        if not ok:
            raise tab.ctx.error(
                tab.where, f"{where} = {_fmt(v)}: a tensor must be 3x3 numbers ({unit})"
            )
        v = [[float(x) for x in r] for r in v]
        _unit_check(tab, key, v, where)
        return v
    if not _is_number(v):
        what = "a number or a 3x3 tensor" if tensor else "a number"
        raise tab.ctx.error(tab.where, f"{where} = {_fmt(v)}: must be {what} ({unit})")
    v = float(v)
    if math.isnan(v) or (math.isinf(v) and key != "relaxation"):
        raise tab.ctx.error(tab.where, f"{where} = {v}: must be finite ({unit})")
    if key == "relaxation" and not v > 0:
        raise tab.ctx.error(
            tab.where, f"{where} = {v}: T2 must be > 0 ({unit}; inf = no relaxation)"
        )
    if key != "relaxation" and v < 0:
        raise tab.ctx.error(tab.where, f"{where} = {v}: must be >= 0 ({unit})")
    _unit_check(tab, key, v, where)
    return v


def _unit_check(tab: _Table, key: str, v: Any, where: str) -> None:
    """Values obviously in other units (D = 2e-9 m²/s, T2 = 0.08 s, ...) fail up front."""
    from . import units

    checks = {
        "diffusivity": units.check_diffusivity,
        "relaxation": lambda x, name: units.check_time(x, name, allow_zero=False, allow_inf=True),
        "permeability": units.check_permeability,
        "relaxivity": units.check_permeability,
    }
    check = checks.get(key)
    if check is None or (isinstance(v, float) and v == 0.0):
        return
    try:
        check(v, where)
    except ValueError as err:
        raise tab.ctx.error(tab.where, str(err)) from None


def _pde_value(tab: _Table, key: str, default: Any, roles, *, tensor: bool) -> Any:
    v = tab.raw(key, default)
    if key not in tab.data:
        return v
    if isinstance(v, Mapping):
        valid = _role_keys(roles)
        out = {}
        for k, x in v.items():
            if not _valid_compartment_key(k, roles):
                allowed = ", ".join(valid) if valid else "compartment indices 0, 1, ..."
                raise tab.ctx.error(
                    tab.where,
                    f"{key}.{k}: unknown compartment; allowed: {allowed}{_did_you_mean(k, valid)}",
                )
            out[str(k)] = _check_scalar(tab, key, x, f"{key}.{k}", tensor=tensor)
        return out
    if isinstance(v, list) and not (
        tensor and v and isinstance(v[0], list) and len(v) == 3 and _is_matrix(v)
    ):
        if roles is not None and len(v) != len(roles):
            raise tab.err(
                key,
                f"has {len(v)} values, the geometry has {len(roles)} compartments {list(roles)}",
            )
        return [_check_scalar(tab, key, x, f"{key}[{i}]", tensor=tensor) for i, x in enumerate(v)]
    return _check_scalar(tab, key, v, key, tensor=tensor)


def _is_matrix(v: list) -> bool:
    return all(isinstance(r, list) and len(r) == 3 and all(_is_number(x) for x in r) for r in v)


def _role_keys(roles) -> list[str]:
    return list(dict.fromkeys(roles)) if roles is not None else []


def _valid_compartment_key(k: str, roles) -> bool:
    if roles is None:
        return str(k).isdigit() or str(k).startswith("c")
    return str(k) in roles or (str(k).isdigit() and int(k) < len(roles))


def _permeability_value(tab: _Table, roles) -> Any:
    v = tab.raw("permeability", 0.0)
    if "permeability" not in tab.data:
        return v
    if isinstance(v, Mapping):
        out = {}
        for k, x in v.items():
            pair = _split_pair(str(k), roles)
            if pair is None:
                names = _role_keys(roles)
                examples = ", ".join(f"{a}_{b}" for a, b in zip(names, names[1:])) or "0-1"
                raise tab.ctx.error(
                    tab.where,
                    f"permeability.{k}: not an interface; write role pairs like {examples} "
                    "or index pairs like '0-1'",
                )
            out[str(k)] = _check_scalar(tab, "permeability", x, f"permeability.{k}", tensor=False)
        return out
    if isinstance(v, list):
        return [
            _check_scalar(tab, "permeability", x, f"permeability[{i}]", tensor=False)
            for i, x in enumerate(v)
        ]
    return _check_scalar(tab, "permeability", v, "permeability", tensor=False)


def _split_pair(key: str, roles) -> tuple[str, str] | None:
    for sep in ("-", "_"):
        if key.count(sep) >= 1:
            # role names may contain digits but not '-' or '_' except "layerK" (no separators)
            a, _, b = key.partition(sep)
            if a and b and _valid_compartment_key(a, roles) and _valid_compartment_key(b, roles):
                return a, b
    return None


# ============================================================================ [gradient]
def _parse_gradient(tab: _Table) -> GradientSpec:
    given = [k for k in _VALUE_KINDS if tab.has(k)]
    for k in _VALUE_KINDS:
        tab.raw(k, None)
    if len(given) != 1:
        what = "none" if not given else ", ".join(given)
        raise tab.ctx.error(
            tab.where,
            "give exactly one of bvalues (s/mm²), qvalues (rad/(µs·µm)), gvalues (T/m); "
            f"got {what}",
        )
    kind = given[0]
    values = tab.data[kind]
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, list) or not values:
        raise tab.err(kind, f"must be a non-empty list of numbers ({_VALUE_KINDS[kind]})")
    for i, x in enumerate(values):
        if not _is_number(x) or not math.isfinite(x) or x < 0:
            raise tab.ctx.error(
                tab.where, f"{kind}[{i}] = {_fmt(x)}: must be a number >= 0 ({_VALUE_KINDS[kind]})"
            )
    from . import units

    check = {"bvalues": units.check_bvalue, "gvalues": units.check_gradient_amplitude}.get(kind)
    if check is not None:
        try:
            check([float(x) for x in values], kind)
        except ValueError as err:
            raise tab.ctx.error(tab.where, str(err)) from None
    seqs = tab.raw("sequences", required_text="a list of [[gradient.sequences]] tables")
    if isinstance(seqs, Mapping):
        seqs = [seqs]
    if not isinstance(seqs, list) or not seqs:
        raise tab.err("sequences", "must be a non-empty list of [[gradient.sequences]] tables")
    sequences = tuple(
        _parse_sequence(_Table(tab.ctx, f"gradient.sequences[{i}]", s)) for i, s in enumerate(seqs)
    )
    directions = _parse_directions(tab)
    tab.finish(
        {
            "values": " (write bvalues = [...], qvalues = [...] or gvalues = [...])",
            "values_type": " (write bvalues, qvalues or gvalues)",
        }
    )
    return GradientSpec(sequences, kind, tuple(float(x) for x in values), directions)


def _sequence_class(type_name: str, tab: _Table):
    mod = _import(_SEQUENCE_MODULE, "[[gradient.sequences]]", tab.ctx, tab.where)
    available = [n for n in _SEQUENCE_TYPES if hasattr(mod, n)]
    if type_name not in available:
        lower = {n.lower(): n for n in available}
        if type_name.lower() in lower:
            return getattr(mod, lower[type_name.lower()])
        raise tab.err(
            "type",
            f"unknown sequence; allowed: {', '.join(available)}"
            + _did_you_mean(type_name, available),
        )
    return getattr(mod, type_name)


def _parse_sequence(tab: _Table) -> SequenceSpec:
    type_name = tab.string("type", required_text="PGSE, DoublePGSE, CosOGSE or SinOGSE")
    cls = _sequence_class(type_name, tab)
    params = _signature_params(cls.__init__)
    params.pop("self", None)
    units = {"delta": "µs", "Delta": "µs", "tpause": "µs", "nperiod": "integer"}
    kwargs = _check_kwargs(tab, params, units=units)
    tab.finish()
    for k in ("delta", "Delta"):
        if k in kwargs and not kwargs[k] > 0:
            raise tab.err(k, "must be > 0 (µs)")
    if "delta" in kwargs and "Delta" in kwargs and kwargs["delta"] > kwargs["Delta"]:
        raise tab.err("delta", f"must not exceed Delta = {kwargs['Delta']} µs")
    try:  # the class's own checks (e.g. nperiod), reported with the table's location
        cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise tab.ctx.error(tab.where, str(err)) from None
    return SequenceSpec(cls.__name__, kwargs)


def _parse_directions(tab: _Table) -> DirectionSpec:
    d = tab.raw("directions", [[1.0, 0.0, 0.0]])
    if isinstance(d, Mapping):
        sub = _Table(tab.ctx, "gradient.directions", d)
        kind = sub.string("set", choices=_DIRECTION_SETS)
        n = sub.integer("n", minimum=1)
        normal = sub.raw("normal", [0.0, 0.0, 1.0])
        if not (
            isinstance(normal, list) and len(normal) == 3 and all(_is_number(x) for x in normal)
        ) or not any(normal):
            raise sub.err("normal", "must be a non-zero 3-vector")
        if "normal" in sub.data and kind not in ("circle", "semicircle"):
            raise sub.err("normal", "only applies to set = 'circle' or 'semicircle'")
        seed = sub.integer("seed", None)
        if seed is not None and kind != "sphere":
            raise sub.err("seed", "only applies to set = 'sphere' (a random rotation)")
        sub.finish()
        return DirectionSpec(set=kind, n=n, normal=tuple(float(x) for x in normal), seed=seed)
    if isinstance(d, list) and d and all(_is_number(x) for x in d):
        d = [d]
    if not isinstance(d, list) or not d:
        raise tab.err(
            "directions", "must be a list of 3-vectors or a table { set = 'sphere', n = 32 }"
        )
    vecs = []
    for i, v in enumerate(d):
        if not (
            isinstance(v, list)
            and len(v) == 3
            and all(_is_number(x) and math.isfinite(x) for x in v)
        ):
            raise tab.ctx.error(tab.where, f"directions[{i}] = {_fmt(v)}: must be 3 finite numbers")
        if not any(v):
            raise tab.ctx.error(tab.where, f"directions[{i}] = {_fmt(v)}: must be non-zero")
        vecs.append(tuple(float(x) for x in v))
    return DirectionSpec(vectors=tuple(vecs))


# ============================================================================ [solvers], [output]
def solver_function(name: str) -> Callable:
    """The function behind a ``[solvers.<name>]`` table (imported lazily)."""
    module, names = SOLVERS[name]
    mod = importlib.import_module(module)
    for n in names:
        f = getattr(mod, n, None)
        if f is not None:
            return f
    raise SetupError(f"solver {name!r}: {module} has none of {', '.join(names)}")


def _parse_solvers(tab: _Table) -> dict[str, SolverSpec]:
    out: dict[str, SolverSpec] = {}
    for name in tab.data:
        if name not in SOLVERS:
            raise tab.ctx.error(
                tab.where,
                f"unknown solver '{name}'; allowed: {', '.join(SOLVERS)}"
                + _did_you_mean(name, SOLVERS),
            )
    for name in SOLVERS:
        sub = tab.table(name, None)
        if sub is None:
            continue
        enabled = sub.boolean("enabled", True)
        if not enabled:
            sub.seen.update(sub.data)  # options of a disabled solver are not checked
            continue
        module, names = SOLVERS[name]
        mod = _import(module, f"solver '{name}'", sub.ctx, sub.where)
        func = next((getattr(mod, n) for n in names if hasattr(mod, n)), None)
        if func is None:
            raise sub.ctx.error(
                sub.where, f"solver '{name}' is not available ({module} lacks {names[0]})"
            )
        options = _check_kwargs(sub, _signature_params(func), skip={"enabled"})
        sub.finish()
        out[name] = SolverSpec(name, options)
    if not out:
        raise tab.ctx.error(
            tab.where,
            f"no solver enabled; add at least one of [solvers.{'], [solvers.'.join(SOLVERS)}]",
        )
    return out


def _parse_output(tab: _Table | None, name: str) -> OutputSpec:
    assert tab is not None
    directory = tab.raw("directory", f"output/{name}")
    if directory is not False and not isinstance(directory, str):
        raise tab.err("directory", "must be a folder path (string) or false (write nothing)")
    spec = OutputSpec(
        directory=Path(directory) if directory else None,
        save_mesh=tab.boolean("save_mesh", True),
        magnetization=tab.boolean("magnetization", False),
        vtu=tab.boolean("vtu", False),
        plots=tab.boolean("plots", True),
    )
    tab.finish()
    if spec.vtu and not spec.magnetization:
        spec = dataclasses.replace(spec, magnetization=True)
    return spec


# ============================================================================ building
def _torch_dtype(name: str):
    import torch

    return {"float64": torch.float64, "float32": torch.float32}[name]


def build_mesh(setup: Setup, *, quiet: bool = True):
    """Mesh of ``setup.geometry``: cell recipe, gmsh primitive or mesh file, with the
    geometry's bend/twist applied. Returns a :class:`~spindoctor_torch.mesh.TetMesh`."""
    g = setup.geometry
    ctx = _Ctx(setup.source)
    try:
        if g.recipe == "cells":
            geo = importlib.import_module("spindoctor_torch.geometry")
            cs = geo.CellSetup(**g.options)
            result = geo.create_geometry(cs, quiet=quiet)
            mesh = getattr(result, "mesh", result)
        elif g.recipe == "file":
            io = importlib.import_module("spindoctor_torch.mesh.io")
            mesh = io.read_mesh(g.mesh_file)
        else:
            module, func = RECIPES[g.recipe]  # type: ignore[misc]
            opts = {k: (tuple(v) if isinstance(v, list) else v) for k, v in g.options.items()}
            mesh = getattr(importlib.import_module(module), func)(**opts)
    except SetupError as err:
        raise ctx.error("geometry", str(err)) from None
    except ValueError as err:  # MeshError and friends: the geometry cannot be meshed
        raise ctx.error("geometry", f"cannot build the mesh: {err}") from None
    if g.recipe != "cells" and (g.bend or g.twist):
        deform = importlib.import_module("spindoctor_torch.mesh.deform")
        mesh = mesh.with_points(deform.bend_twist(mesh.points, g.bend, g.twist))
    if g.roles is not None and len(g.roles) != mesh.ncompartment:
        raise ctx.error(
            "geometry",
            f"the mesh has {mesh.ncompartment} compartments, the recipe promised "
            f"{len(g.roles)} {list(g.roles)}; try a smaller h/refinement",
        )
    return mesh.to(dtype=_torch_dtype(setup.dtype), device=setup.device)


def _resolve_per_compartment(
    ctx: _Ctx, key: str, value: Any, roles: Sequence[str], default: Any
) -> Any:
    n = len(roles)
    if isinstance(value, Mapping):
        out = [default] * n
        for k, v in value.items():
            hit = [i for i, r in enumerate(roles) if r == k]
            if not hit and k.isdigit():
                hit = [int(k)] if int(k) < n else []
            if not hit and k.startswith("c") and k[1:].isdigit() and int(k[1:]) < n:
                hit = [int(k[1:])]
            if not hit:
                raise ctx.error(
                    "pde",
                    f"{key}.{k}: no such compartment in this mesh; compartments: {list(roles)}",
                )
            for i in hit:
                out[i] = v
        return _stack(out)
    if isinstance(value, list) and not _is_matrix(value):
        if len(value) != n:
            raise ctx.error(
                "pde", f"{key} has {len(value)} values for {n} compartments {list(roles)}"
            )
        return _stack(value)
    return value


def _stack(values: list) -> Any:
    import torch

    if any(isinstance(v, list) for v in values):
        eye = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]
        mats = [v if isinstance(v, list) else [[v * e for e in row] for row in eye] for v in values]
        return torch.tensor(mats, dtype=torch.float64)
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def _resolve_permeability(ctx: _Ctx, value: Any, roles: Sequence[str], mesh) -> Any:
    if not isinstance(value, Mapping):
        return value
    interfaces = mesh.interfaces
    names = [f"{roles[i]}_{roles[j]}" for _, i, j in interfaces]
    out: dict[tuple[int, int], float] = {}
    for key, kappa in value.items():
        a, b = _split_pair(key, roles) or ("", "")
        matched = False
        for _, i, j in interfaces:
            ids_i = {roles[i], str(i), f"c{i}"}
            ids_j = {roles[j], str(j), f"c{j}"}
            if (a in ids_i and b in ids_j) or (a in ids_j and b in ids_i):
                out[(i, j)] = kappa
                matched = True
        if not matched:
            raise ctx.error(
                "pde",
                f"permeability.{key}: no such interface in this mesh; interfaces: "
                f"{sorted(set(names)) or 'none'}",
            )
    return out


def build_model(setup: Setup, mesh):
    """:class:`~spindoctor_torch.model.Model` of ``setup.pde`` on ``mesh``."""
    from .model import Model

    ctx = _Ctx(setup.source)
    roles = compartment_roles(setup.geometry, mesh.ncompartment)
    p = setup.pde
    kw = {
        key: _resolve_per_compartment(ctx, key, getattr(p, key), roles, _DEFAULTS.get(key, 0.0))
        for key in ("diffusivity", "relaxation", "density", "relaxivity")
    }
    kw["permeability"] = _resolve_permeability(ctx, p.permeability, roles, mesh)
    if isinstance(kw["permeability"], list):
        import torch

        kw["permeability"] = torch.tensor(kw["permeability"], dtype=torch.float64)
    try:
        return Model(mesh, coupling=p.coupling, **kw)
    except SetupError as err:
        raise ctx.error("pde", str(err)) from None


def build_experiment(setup: Setup):
    """:class:`~spindoctor_torch.experiment.Experiment` of ``setup.gradient``."""
    import torch

    from . import experiment as expmod
    from . import sequences as seqmod

    g = setup.gradient
    seqs = [getattr(seqmod, s.type)(**s.params) for s in g.sequences]
    dtype = _torch_dtype(setup.dtype)
    d = g.directions
    if d.vectors is not None:
        dirs = torch.tensor(d.vectors, dtype=dtype)
    else:
        dirs = _direction_set(expmod, d).to(dtype)
    values = torch.tensor(g.values, dtype=dtype)
    try:
        return expmod.Experiment(sequences=seqs, directions=dirs, **{g.kind: values})
    except (ValueError, TypeError) as err:
        raise _Ctx(setup.source).error("gradient", str(err)) from None


def _direction_set(expmod, d: DirectionSpec):
    import torch

    if d.set == "sphere":
        return expmod.unit_sphere(d.n, seed=d.seed)
    if d.set == "hemisphere":
        return expmod.half_sphere(d.n)
    normal = torch.tensor(d.normal, dtype=torch.float64)
    return expmod.unit_circle(d.n, half=d.set == "semicircle", normal=normal)


# ============================================================================ running
@dataclass
class SimulationRun:
    """Everything :func:`run_setup` produced.

    Attributes
    ----------
    setup : the validated setup.
    mesh, model, experiment : the objects built from it.
    results : solver name -> its return value (a :class:`~spindoctor_torch.result.Result` for
        signal solvers; the solver's own object or tensor for ADC solvers).
    timings : stage -> wall time in seconds (``mesh``, ``model``, ``<solver>``, ``write``).
    files : name -> path of every file written.
    """

    setup: Setup
    mesh: Any
    model: Any
    experiment: Any
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)


def _call_solver(name: str, func: Callable, options: dict, run: SimulationRun, quiet: bool):
    if name == "analytical":
        return _run_analytical(run, options, quiet)
    params = inspect.signature(func).parameters
    kwargs = dict(options)
    if "quiet" in params:
        kwargs["quiet"] = quiet
    if "progress" in params:
        kwargs["progress"] = not quiet
    if name in ("btpde", "mf") and run.setup.output.magnetization:
        if "return_magnetization" in params and "return_magnetization" not in kwargs:
            kwargs["return_magnetization"] = True
    if "lap" in params:  # mf and mfga with the same truncation share one eigendecomposition
        key = (kwargs.get("length_scale"), kwargs.get("neig_max", 400))
        lap = run.cache.get(("lap", key))
        if lap is None and _count_lap_users(run.setup, key) > 1:
            from .solvers.mf import compute_laplace_eig

            lap = compute_laplace_eig(run.model, key[0], key[1], quiet=quiet)
            run.cache[("lap", key)] = lap
        if lap is not None:
            kwargs["lap"] = lap
    return func(run.model, run.experiment, **kwargs)


def _count_lap_users(setup: Setup, key) -> int:
    return sum(
        1
        for n in ("mf", "mfga")
        if n in setup.solvers
        and (
            setup.solvers[n].options.get("length_scale"),
            setup.solvers[n].options.get("neig_max", 400),
        )
        == key
    )


def layered_geometry(setup: Setup, model):
    """The :class:`~spindoctor_torch.solvers.analytical.LayeredGeometry` equivalent to a
    setup's geometry and PDE coefficients (for the analytical solver).

    Only concentric geometries have one: one cell (``cells`` with ``ncell = 1`` and no ECS or a
    ``tight_wrap`` ECS, which for one cell is a concentric shell of gap ``ecs_ratio·rmean``),
    the ``sphere`` and ``cylinder`` recipes, and ``slabs``. Cylinders are treated as infinite
    (SpinDoctor's analytical cylinder), with the setup's height scaling the volumes.

    Raises
    ------
    SetupError
        Any other geometry, or coefficients the analytical module cannot represent
        (anisotropic diffusion, several outer-wall relaxivities).
    """
    from .solvers.analytical import LayeredGeometry

    g = setup.geometry
    ctx = _Ctx(setup.source)
    height, area = 1.0, 1.0
    if g.recipe == "cells":
        o = g.options
        if o.get("ncell", 1) != 1 or g.roles is None:
            raise ctx.error("solvers.analytical", "needs one cell (ncell = 1)")
        ecs = o.get("ecs_shape", "none")
        if ecs not in ("none", "no_ecs", "tight_wrap"):
            raise ctx.error(
                "solvers.analytical",
                f"needs a concentric ECS: ecs_shape 'none' or 'tight_wrap', got {ecs!r}",
            )
        r = float(o.get("rmin", 2.0))
        if float(o.get("rmax", 6.0)) != r:
            raise ctx.error("solvers.analytical", "needs rmin = rmax (one known radius)")
        ratios = o.get("in_ratio") or ()
        ratios = (ratios,) if isinstance(ratios, (int, float)) else tuple(ratios)
        radii = [q * r for q in ratios] + [r]
        if ecs == "tight_wrap":
            radii.append(r + float(o["ecs_ratio"]) * r)
        shape = o.get("cell_shape", "sphere")
        height = float(o.get("height") or 1.0)
    elif g.recipe in ("sphere", "cylinder"):
        radii = list(g.options.get("layers") or []) + [float(g.options["radius"])]
        shape = g.recipe
        height = float(g.options.get("height", 1.0))
    elif g.recipe == "slabs":
        import numpy as np

        radii = np.cumsum(g.options["widths"]).tolist()
        shape = "slab"
        ly, lz = g.options["sides_yz"]
        area = float(ly) * float(lz)
    else:
        raise ctx.error(
            "solvers.analytical",
            f"needs a layered sphere, cylinder or slab geometry, not recipe = {g.recipe!r}",
        )
    d = model.diffusivity.detach()
    iso = _eye_like(d) * d.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None]
    if not bool((d - iso).abs().max() <= 1e-12 * d.abs().max()):
        raise ctx.error("solvers.analytical", "needs isotropic diffusivities")
    nb = model.mesh.nboundary
    bc = model.mesh.topology.boundary_compartments
    walls = [b for b in range(nb) if bc[b, 1] < 0]
    kappa = model.boundary_kappa.detach()
    w = {float(kappa[b]) for b in walls if int(bc[b, 0]) == len(radii) - 1}
    inner_walls = [b for b in walls if int(bc[b, 0]) != len(radii) - 1]
    if len(w) > 1 or any(float(kappa[b]) != 0.0 for b in inner_walls):
        raise ctx.error(
            "solvers.analytical", "needs one relaxivity on the outermost wall and none elsewhere"
        )
    perm = [0.0] * (len(radii) - 1)
    for b, i, j in model.mesh.interfaces:
        if j == i + 1:
            perm[i] = float(kappa[b])
    try:
        return LayeredGeometry(
            shape=shape,
            radii=radii,
            diffusivity=d.diagonal(dim1=1, dim2=2).mean(-1).tolist(),
            relaxation=model.relaxation.detach().tolist(),
            density=model.density.detach().tolist(),
            permeability=perm,
            relaxivity=w.pop() if w else 0.0,
            height=height,
            area=area,
        )
    except (SetupError, ValueError) as err:
        raise ctx.error("solvers.analytical", str(err)) from None


def _eye_like(d):
    import torch

    return torch.eye(3, dtype=d.dtype, device=d.device).expand_as(d)


def _run_analytical(run: SimulationRun, options: dict, quiet: bool):
    """SpinDoctor's analytical solver on the setup's layered geometry, as a Result with the
    experiment's axes (the value is the same for every direction of a sphere; cylinders
    accept only directions perpendicular to their axis, as SpinDoctor)."""
    import torch

    from .result import Result
    from .solvers.analytical import solve_analytical

    geom = layered_geometry(run.setup, run.model)
    exp = run.experiment
    if geom.shape == "cylinder" and bool((exp.directions[:, 2].abs() > 1e-12).any()):
        raise _Ctx(run.setup.source).error(
            "solvers.analytical",
            "the analytical cylinder needs gradient directions perpendicular to its axis (z)",
        )
    if geom.shape == "slab" and bool((exp.directions[:, 1:].abs() > 1e-12).any()):
        raise _Ctx(run.setup.source).error(
            "solvers.analytical", "the analytical slab needs gradient directions along x"
        )
    out = solve_analytical(geom, exp.sequences, qvalues=exp.qvalues, quiet=quiet, **options)
    ndir = exp.ndirection
    sig = out.signal[..., None].expand(-1, -1, -1, ndir).to(torch.complex128)
    info = dict(out.info)
    info["geometry"] = dataclasses.asdict(geom)
    return Result(
        signal=sig.contiguous(),
        signal_allcmpts=sig.sum(0),
        initial_signal=out.initial_signal,
        method="analytical",
        timings=dict(out.timings),
        info=info,
        experiment=exp,
    )


def run_setup(
    setup: Setup | str | Path,
    *,
    output_dir: str | Path | None | bool = None,
    quiet: bool = False,
    solvers: Sequence[str] | None = None,
) -> SimulationRun:
    """Build mesh, model and experiment of a setup, run its solvers, and write the outputs.

    Parameters
    ----------
    setup : a :class:`Setup` or the path of a TOML setup file.
    output_dir : overrides ``[output] directory``; ``False`` writes nothing.
    quiet : no progress bars or messages.
    solvers : run only these of the setup's solvers (default: all, in setup order).

    Returns
    -------
    SimulationRun
    """
    if not isinstance(setup, Setup):
        setup = load_setup(setup)
    names = list(setup.solvers)
    if solvers is not None:
        unknown = [s for s in solvers if s not in setup.solvers]
        if unknown:
            raise SetupError(f"{setup.source}: solvers {unknown} are not in the setup ({names})")
        names = [n for n in names if n in solvers]
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    say(f"[{setup.name}] building the mesh ({setup.geometry.recipe})")
    mesh = build_mesh(setup, quiet=quiet)
    timings["mesh"] = time.perf_counter() - t0
    say(f"[{setup.name}] {mesh.npoint} points, {mesh.ntet} tets, {mesh.ncompartment} compartments")
    t0 = time.perf_counter()
    model = build_model(setup, mesh)
    experiment = build_experiment(setup)
    timings["model"] = time.perf_counter() - t0
    run = SimulationRun(setup, mesh, model, experiment, timings=timings)
    for name in names:
        say(f"[{setup.name}] running {name}")
        func = solver_function(name)
        t0 = time.perf_counter()
        out = _call_solver(name, func, setup.solvers[name].options, run, quiet)
        timings[name] = time.perf_counter() - t0
        run.results[name] = out
    directory = setup.output.directory if output_dir is None else output_dir
    if directory:
        from .io.outputs import write_run

        t0 = time.perf_counter()
        run.files = write_run(run, Path(directory), quiet=quiet)
        timings["write"] = time.perf_counter() - t0
        say(f"[{setup.name}] wrote {Path(directory)}")
    return run


# ============================================================================ optimization files
_PARAM_KINDS = ("scale", "anisotropic", "radial", "bend_twist")
_LOSSES = ("mse", "log_mse")


@dataclass(frozen=True)
class OptimizationSetup:
    """A validated optimization file (``spindoctor-torch optimize CONFIG``).

    .. code-block:: toml

        name = "radius_fit"
        setup = "axon_myelin_ecs.toml"     # the model: mesh, PDE, gradient, solver options
        [target]
        results = "target/results.h5"      # ours (.h5), SpinDoctor (.mat) or reference (.json)
        name = "btpde"                     # which result (default: the first signal result)
        # or: setup = "target.toml"        # simulate it (its first signal solver)
        [parameters]
        kind = "radial"                    # scale, anisotropic, radial, bend_twist
        knots = [1.8, 3.0]                 # radial: reference radii (µm) whose images are fitted
        fixed_outer = 6.0                  # radial: radii beyond this stay in place (µm)
        [fit]
        solver = "mf"                      # forward model: mf or btpde
        loss = "log_mse"                   # or mse, on |S|/S0
        optimizer = "lbfgs"                # or adam
        maxiter = 10
        [output]
        directory = "output/radius_fit"

    ``[parameters]`` of kind ``radial`` also takes ``axis`` (default [0, 0, 1]; ``spherical =
    true`` for distances to ``center``) and ``center``; ``bend_twist`` takes initial ``bend``
    and ``twist``. ``[fit]`` also takes ``lr`` (default 1 for L-BFGS, 0.05 for Adam) and
    ``tol``.
    """

    name: str
    setup: Setup
    target_results: Path | None
    target_name: str | None
    target_setup: Setup | None
    parameters: dict[str, Any]
    solver: str
    loss: str
    optimizer: str
    lr: float
    maxiter: int
    tol: float
    directory: Path | None
    source: str = "<dict>"


def load_optimization(path: str | Path, *, tiny: bool = False) -> OptimizationSetup:
    """Read and validate an optimization file (see :class:`OptimizationSetup`); paths inside
    it are relative to its folder. ``tiny`` applies the ``[tiny]`` tables of both setups."""
    path = Path(path)
    if not path.is_file():
        raise SetupError(f"optimization file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SetupError(f"{path.name}: not valid TOML: {err}") from None
    ctx = _Ctx(path.name)
    base = path.resolve().parent
    top = _Table(ctx, "", data)
    name = top.string("name", path.stem)

    def setup_file(tab: _Table, key: str) -> Setup:
        rel = tab.string(key)
        p = (base / rel) if not Path(rel).is_absolute() else Path(rel)
        if not p.is_file():
            raise tab.err(key, f"setup file not found (looked for {p})")
        return load_setup(p, tiny=tiny)

    setup = setup_file(top, "setup")
    fit_tab = top.table("fit", {})
    solver = fit_tab.string("solver", "mf", choices=("mf", "btpde"))
    if solver not in setup.solvers:
        raise fit_tab.err("solver", f"the setup {setup.source} has no [solvers.{solver}] table")
    loss = fit_tab.string("loss", "log_mse", choices=_LOSSES)
    optimizer = fit_tab.string("optimizer", "lbfgs", choices=("lbfgs", "adam"))
    lr = fit_tab.number("lr", 1.0 if optimizer == "lbfgs" else 0.05, positive=True)
    maxiter = fit_tab.integer("maxiter", 10, minimum=1)
    tol = fit_tab.number("tol", 1e-6, nonneg=True)
    fit_tab.finish()

    tgt = top.table("target")
    target_results = target_name = target_setup = None
    if tgt.has("setup") == tgt.has("results"):
        raise tgt.err(None, "give exactly one of results = FILE or setup = FILE")
    if tgt.has("setup"):
        target_setup = setup_file(tgt, "setup")
    else:
        rel = tgt.string("results")
        target_results = (base / rel).resolve()
        if not target_results.is_file():
            raise tgt.err("results", f"file not found (looked for {target_results})")
    target_name = tgt.string("name", None)
    tgt.finish()

    ptab = top.table("parameters")
    kind = ptab.string("kind", choices=_PARAM_KINDS)
    params: dict[str, Any] = {"kind": kind}
    if kind == "radial":
        knots = ptab.raw("knots", required_text="reference radii, µm")
        if not (isinstance(knots, list) and knots and all(_is_number(k) and k > 0 for k in knots)):
            raise ptab.err("knots", "must be a non-empty list of radii > 0 (µm)")
        if any(b <= a for a, b in zip(knots, knots[1:])):
            raise ptab.err("knots", "must increase strictly")
        params["knots"] = [float(k) for k in knots]
        spherical = ptab.boolean("spherical", False)
        axis = ptab.raw("axis", [0.0, 0.0, 1.0])
        center = ptab.raw("center", [0.0, 0.0, 0.0])
        for key, v in (("axis", axis), ("center", center)):
            if not (isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v)):
                raise ptab.err(key, "must be 3 numbers")
        params["axis"] = None if spherical else [float(x) for x in axis]
        params["center"] = [float(x) for x in center]
        outer = ptab.number("fixed_outer", None, positive=True)
        if outer is not None and outer <= params["knots"][-1]:
            raise ptab.err("fixed_outer", f"must exceed the last knot {params['knots'][-1]} µm")
        params["fixed_outer"] = outer
    elif kind == "bend_twist":
        params["bend"] = ptab.number("bend", 0.0)
        params["twist"] = ptab.number("twist", 0.0, unit="rad")
    ptab.finish()
    out = top.table("output", {})
    directory = out.raw("directory", f"output/{name}")
    if directory is not False and not isinstance(directory, str):
        raise out.err("directory", "must be a folder path (string) or false")
    out.finish()
    top.finish()
    return OptimizationSetup(
        name=name,
        setup=setup,
        target_results=target_results,
        target_name=target_name,
        target_setup=target_setup,
        parameters=params,
        solver=solver,
        loss=loss,
        optimizer=optimizer,
        lr=float(lr),
        maxiter=int(maxiter),
        tol=float(tol),
        directory=Path(directory) if directory else None,
        source=path.name,
    )


@dataclass
class OptimizationRun:
    """What :func:`run_optimization` produced: the model run, the parameterization (with its
    fitted values), the optimization history, target and fitted signals, written files."""

    config: OptimizationSetup
    run: SimulationRun
    parameterization: Any
    history: Any
    target: Any
    fitted: Any
    files: dict[str, Path] = field(default_factory=dict)


def _parameterization(opt: OptimizationSetup, mesh):
    from . import optimize

    p = opt.parameters
    if p["kind"] in ("scale", "anisotropic"):
        kind = "isotropic" if p["kind"] == "scale" else "anisotropic"
        return optimize.Affine(mesh, kind)
    if p["kind"] == "radial":
        return optimize.RadialMap(
            mesh, p["knots"], center=p["center"], axis=p["axis"], fixed_outer=p["fixed_outer"]
        )
    return optimize.BendTwist(mesh, p["bend"], p["twist"])


def _target_result(opt: OptimizationSetup, quiet: bool):
    from .io.spindoctor import read_results_any

    if opt.target_setup is not None:
        trun = run_setup(opt.target_setup, output_dir=False, quiet=quiet)
        results = trun.results
    else:
        results = read_results_any(opt.target_results)
    signals = {k: v for k, v in results.items() if hasattr(v, "signal_allcmpts")}
    ctx = _Ctx(opt.source)
    if not signals:
        raise ctx.error("target", "holds no signal result")
    if opt.target_name is not None:
        if opt.target_name not in signals:
            raise ctx.error(
                "target", f"name = {opt.target_name!r} is not there; signals: {list(signals)}"
            )
        return signals[opt.target_name]
    return next(iter(signals.values()))


def run_optimization(
    opt: OptimizationSetup | str | Path,
    *,
    output_dir: str | Path | None | bool = None,
    quiet: bool = False,
) -> OptimizationRun:
    """Fit the parameters of an optimization file: simulate the model setup (mesh, model,
    experiment), get the target signal, minimize the loss on |S|/S0 through the mesh
    parameterization, and write ``results.h5`` (target, initial and fitted signals, history,
    fitted mesh), ``history.png``, ``overlay.png`` and ``summary.json``."""
    import torch

    from . import optimize

    if not isinstance(opt, OptimizationSetup):
        opt = load_optimization(opt)
    ctx = _Ctx(opt.source)
    run = run_setup(opt.setup, output_dir=False, quiet=quiet, solvers=[opt.solver])
    target_res = _target_result(opt, quiet)
    target = target_res.normalized().abs().detach().to(run.mesh.dtype)
    initial = run.results[opt.solver]
    if tuple(target.shape) != tuple(initial.signal_allcmpts.shape):
        raise ctx.error(
            "target",
            f"signal shape {tuple(target.shape)} [amplitude, sequence, direction] differs from "
            f"the model's {tuple(initial.signal_allcmpts.shape)}",
        )
    geo = _parameterization(opt, run.mesh)
    func = solver_function(opt.solver)
    options = dict(opt.setup.solvers[opt.solver].options)
    options.pop("return_magnetization", None)
    loss_fn = optimize.log_mse_loss if opt.loss == "log_mse" else optimize.mse_loss

    def simulate():
        return func(run.model.with_mesh(geo.mesh()), run.experiment, quiet=True, **options)

    def objective():
        return loss_fn(simulate().normalized().abs(), target)

    history = optimize.fit(
        objective,
        geo,
        optimizer=opt.optimizer,
        lr=opt.lr,
        maxiter=opt.maxiter,
        tol=opt.tol,
        quiet=quiet,
    )
    with torch.no_grad():
        fitted = simulate()
    out = OptimizationRun(opt, run, geo, history, target_res, fitted)
    directory = opt.directory if output_dir is None else output_dir
    if directory:
        out.files = _write_optimization(out, Path(directory))
    return out


def _write_optimization(out: OptimizationRun, directory: Path) -> dict[str, Path]:
    from . import viz
    from .io.hdf5 import save_results
    from .io.outputs import _try

    directory.mkdir(parents=True, exist_ok=True)
    mesh = out.parameterization.mesh().detach()
    files = {
        "results": save_results(
            directory / "results.h5",
            {
                "target": out.target.detach(),
                "initial": out.run.results[out.config.solver].detach(),
                "fitted": out.fitted.detach(),
                "history": out.history.to_dict(),
            },
            experiment=out.run.experiment,
            mesh=mesh,
            setup=out.config.setup,
        )
    }
    values = {k: v.tolist() for k, v in out.parameterization.values().items()}
    summary = {
        "name": out.config.name,
        "parameters": values,
        "loss_initial": out.history.loss[0] if out.history.loss else None,
        "loss_final": out.history.loss[-1] if out.history.loss else None,
        "iterations": out.history.niter,
        "events": out.history.events,
    }
    files["summary"] = directory / "summary.json"
    files["summary"].write_text(json.dumps(summary, indent=1), encoding="utf-8")
    traj = {
        k.split(":", 1)[-1]: [p[k] for p in out.history.parameters]
        for k in (out.history.parameters[0] if out.history.parameters else {})
    }
    scalar = {k: v for k, v in traj.items() if all(isinstance(x, float) for x in v)}
    if not scalar:  # vector parameters: one curve per component
        scalar = {
            f"{k}[{i}]": [x[i] for x in v]
            for k, v in traj.items()
            for i in range(len(v[0]) if v and isinstance(v[0], list) else 0)
        }
    p = directory / "history.png"
    if (
        _try(
            "history plot",
            viz.plot_history,
            {"loss": out.history.loss, "parameters": scalar},
            path=p,
        )
        is not None
    ):
        files["history"] = p
    p = directory / "overlay.png"
    if (
        _try(
            "overlay render",
            viz.render_overlay,
            {"before": out.run.mesh, "after": mesh},
            p,
            title=out.config.name,
        )
        is not None
    ):
        files["overlay"] = p
    return files
