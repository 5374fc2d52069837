"""Building the mesh, the model and the experiment of a validated setup."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import SetupError
from ._tables import _Ctx
from .schema import (
    _DEFAULTS,
    RECIPES,
    DirectionSpec,
    Setup,
    _is_matrix,
    _split_pair,
    compartment_roles,
)


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
    from ..model import Model

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

    from .. import experiment as expmod
    from .. import sequences as seqmod

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
