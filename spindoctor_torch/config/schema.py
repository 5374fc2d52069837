"""The setup schema: typed, validated sections parsed from TOML (see the package docstring)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SetupError
from ._tables import (
    _KIND_TEXT,
    _annotation_kinds,
    _check_kwargs,
    _Ctx,
    _did_you_mean,
    _fmt,
    _import,
    _is_number,
    _jsonable,
    _signature_params,
    _Table,
    _value_kind,
    tomllib,
)

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
_DEFAULTS = {"diffusivity": 0.002, "relaxation": math.inf, "density": 1.0}
_PDE_UNITS = {
    "diffusivity": "µm²/µs",
    "relaxation": "µs",
    "density": "dimensionless",
    "permeability": "µm/µs",
    "relaxivity": "µm/µs",
}


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
    from .. import units

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
    from .. import units

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
