"""TOML setups: parsing, defaults, compartment roles, overrides and the objects built from them.

References are the values written in the setup itself, SpinDoctor's documented conventions
(compartment order ``[in x ncell, out x ncell, ecs]``, γ = 2.67513e-4 rad/(µs·µm·T/m)) and
closed forms (unit-circle directions, free diffusion exp(−D b)).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from spindoctor_torch.config import (
    build_experiment,
    build_mesh,
    build_model,
    compartment_roles,
    load_setup,
    parse_setup,
    run_setup,
)
from spindoctor_torch.errors import SetupError

GAMMA_DOC = 2.67513e-4  # rad/(µs·µm·T/m), DESIGN.md §1 (SpinDoctor.jl's value)

BASE = {
    "name": "t",
    "geometry": {"recipe": "sphere", "radius": 3.0, "layers": [1.5], "h": 1.5},
    "gradient": {
        "bvalues": [0.0, 1000.0],
        "sequences": [{"type": "PGSE", "delta": 5000.0, "Delta": 10000.0}],
    },
    "solvers": {"free": {}},
    "output": {"directory": False},
}


def setup_with(**sections):
    data = copy.deepcopy(BASE)
    for key, value in sections.items():
        replace = key == "geometry" and "recipe" in value
        if isinstance(value, dict) and isinstance(data.get(key), dict) and not replace:
            data[key].update(value)
        else:
            data[key] = value
    return parse_setup(data)


@pytest.fixture(scope="module")
def two_layer_mesh():
    return build_mesh(setup_with())


def test_defaults_follow_spindoctor():
    s = setup_with()
    assert s.pde.diffusivity == 0.002  # SpinDoctor's default D, µm²/µs
    assert math.isinf(s.pde.relaxation) and s.pde.density == 1.0
    assert s.pde.permeability == 0.0 and s.pde.relaxivity == 0.0
    assert s.pde.coupling == "weighted"
    assert s.device == "cpu" and s.dtype == "float64"
    assert s.output.directory is None
    assert s.gradient.directions.vectors == ((1.0, 0.0, 0.0),)
    assert list(s.solvers) == ["free"]


def test_cell_roles_follow_spindoctor_order():
    s = setup_with(
        geometry={
            "recipe": "cells",
            "cell_shape": "sphere",
            "ncell": 2,
            "rmin": 2.0,
            "rmax": 3.0,
            "in_ratio": 0.5,
            "ecs_shape": "box",
            "ecs_ratio": 0.3,
        }
    )
    # SpinDoctor prepare_pde.m: [in x ncell, out x ncell, ecs]
    assert compartment_roles(s.geometry) == ("in", "in", "out", "out", "ecs")
    no_layer = setup_with(geometry={"recipe": "cells", "cell_shape": "cylinder", "height": 2.0})
    assert compartment_roles(no_layer.geometry) == ("out",)


def test_model_takes_values_by_role(two_layer_mesh):
    s = setup_with(
        pde={
            "diffusivity": {"in": 0.001, "out": 0.003},
            "relaxation": {"out": 50e3},
            "density": [1.0, 0.5],
            "permeability": {"in_out": 1e-4},
            "relaxivity": {"out": 2e-5},
        }
    )
    model = build_model(s, two_layer_mesh)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.equal(model.diffusivity[0], 0.001 * eye)
    assert torch.equal(model.diffusivity[1], 0.003 * eye)
    assert math.isinf(float(model.relaxation[0])) and float(model.relaxation[1]) == 50e3
    assert model.density.tolist() == [1.0, 0.5]
    ((b_if, i, j),) = two_layer_mesh.interfaces
    assert (i, j) == (0, 1) and float(model.boundary_kappa[b_if]) == 1e-4
    walls = [b for b in range(two_layer_mesh.nboundary) if b != b_if]
    assert [float(model.boundary_kappa[b]) for b in walls] == [2e-5]


def test_tensor_diffusivity_and_index_keys(two_layer_mesh):
    tensor = [[0.002, 0.0005, 0.0], [0.0005, 0.001, 0.0], [0.0, 0.0, 0.0015]]
    s = setup_with(pde={"diffusivity": {"0": tensor, "1": 0.0025}, "permeability": {"0-1": 3e-4}})
    model = build_model(s, two_layer_mesh)
    assert torch.equal(model.diffusivity[0], torch.tensor(tensor, dtype=torch.float64))
    assert torch.equal(model.diffusivity[1], 0.0025 * torch.eye(3, dtype=torch.float64))
    ((b_if, _, _),) = two_layer_mesh.interfaces
    assert float(model.boundary_kappa[b_if]) == 3e-4


def test_missing_interface_is_named_at_build_time():
    s = setup_with(
        geometry={"layers": [1.0, 2.0]}, pde={"permeability": {"in_out": 1e-4}}
    )  # in touches layer1 only
    mesh = build_mesh(s)
    with pytest.raises(SetupError, match=r"permeability\.in_out: no such interface.*in_layer1"):
        build_model(s, mesh)


def test_gvalues_become_q_with_the_documented_gamma():
    data = copy.deepcopy(BASE)
    del data["gradient"]["bvalues"]
    data["gradient"]["gvalues"] = [0.05, 0.2]  # T/m
    exp = build_experiment(parse_setup(data))
    q = torch.tensor([0.05, 0.2], dtype=torch.float64) * GAMMA_DOC
    torch.testing.assert_close(exp.qvalues[:, 0], q, rtol=1e-15, atol=0)
    # b = q² δ²(Δ − δ/3) for PGSE (closed form), δ = 5000, Δ = 10000 µs
    b = q**2 * 5000.0**2 * (10000.0 - 5000.0 / 3)
    torch.testing.assert_close(exp.bvalues[:, 0], b, rtol=1e-13, atol=0)


def test_direction_sets():
    s = setup_with(gradient={"directions": {"set": "semicircle", "n": 4}})
    u = build_experiment(s).directions
    theta = torch.arange(4, dtype=torch.float64) * math.pi / 4  # SpinDoctor unitsemicircle
    ref = torch.stack([theta.cos(), theta.sin(), torch.zeros(4, dtype=torch.float64)], 1)
    torch.testing.assert_close(u, ref, rtol=0, atol=1e-15)
    s = setup_with(gradient={"directions": {"set": "hemisphere", "n": 10}})
    u = build_experiment(s).directions
    assert u.shape == (10, 3) and bool((u[:, 2] > 0).all())
    torch.testing.assert_close(u.norm(dim=1), torch.ones(10, dtype=torch.float64))
    s = setup_with(gradient={"directions": [[0.0, 0.0, 2.0], [1.0, 1.0, 0.0]]})
    u = build_experiment(s).directions
    torch.testing.assert_close(u[1], torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) / 2**0.5)


def test_tiny_overrides_and_hash(tmp_path):
    text = """
name = "demo"
[geometry]
recipe = "box"
sides = [2.0, 2.0, 2.0]
h = 1.0
[gradient]
bvalues = [0, 1000, 2000, 3000]
[[gradient.sequences]]
type = "PGSE"
delta = 5000.0
Delta = 10000.0
[solvers.free]
[tiny]
gradient.bvalues = [0, 3000]
geometry.h = 2.0
"""
    path = tmp_path / "demo.toml"
    path.write_text(text)
    full = load_setup(path)
    tiny = load_setup(path, tiny=True)
    assert full.gradient.values == (0.0, 1000.0, 2000.0, 3000.0)
    assert tiny.gradient.values == (0.0, 3000.0) and tiny.geometry.options["h"] == 2.0
    assert full.geometry.options["sides"] == [2.0, 2.0, 2.0]
    assert full.hash == load_setup(path).hash != tiny.hash
    over = load_setup(path, overrides=["gradient.bvalues=[0, 500]", "name=other"])
    assert over.gradient.values == (0.0, 500.0) and over.name == "other"
    assert load_setup(path, overrides={"geometry.h": 2.0, "gradient.bvalues": [0, 3000]}).hash == (
        tiny.hash
    )
    with pytest.raises(SetupError, match="no \\[tiny\\] table"):
        parse_setup({**BASE}, tiny=True)


def test_mesh_file_is_resolved_against_the_setup_folder(tmp_path):
    from spindoctor_torch.mesh.io import write_mesh
    from spindoctor_torch.mesh.structured import structured_box

    mesh = structured_box((1.0, 1.0, 1.0), (2, 2, 2))
    (tmp_path / "meshes").mkdir()
    write_mesh(mesh, tmp_path / "meshes" / "m.npz")
    text = BASE_TOML.replace("GEOMETRY", 'mesh = "meshes/m.npz"')
    (tmp_path / "s.toml").write_text(text)
    s = load_setup(tmp_path / "s.toml")
    assert s.geometry.recipe == "file" and s.geometry.mesh_file == tmp_path / "meshes" / "m.npz"
    assert compartment_roles(s.geometry, 1) == ("c0",)
    m = build_mesh(s)
    assert m.npoint == 27 and float(m.volume()) == pytest.approx(1.0, rel=1e-14)
    (tmp_path / "bad.toml").write_text(BASE_TOML.replace("GEOMETRY", 'mesh = "nope.msh"'))
    with pytest.raises(SetupError, match=r"bad\.toml: \[geometry\] mesh = 'nope\.msh': file not"):
        load_setup(tmp_path / "bad.toml")


BASE_TOML = """
[geometry]
GEOMETRY
[gradient]
bvalues = [0, 1000]
[[gradient.sequences]]
type = "PGSE"
delta = 5000.0
Delta = 10000.0
[solvers.free]
"""


def test_solver_option_types_follow_the_signature():
    ok = setup_with(solvers={"btpde": {"theta": 1, "nsteps": 5}})  # int for float is fine
    assert ok.solvers["btpde"].options == {"theta": 1, "nsteps": 5}
    with pytest.raises(SetupError, match=r"\[solvers\.btpde\] method = 3: must be a string"):
        setup_with(solvers={"btpde": {"method": 3}})
    off = setup_with(solvers={"free": {}, "btpde": {"enabled": False, "whatever": 1}})
    assert list(off.solvers) == ["free"]


def test_run_setup_free_diffusion_matches_closed_form(two_layer_mesh):
    s = setup_with(pde={"diffusivity": {"in": 0.001, "out": 0.003}})
    run = run_setup(s, quiet=True)
    res = run.results["free"]
    vol = run.mesh.compartment_volumes()
    b = torch.tensor([0.0, 1000.0], dtype=torch.float64)
    ref = vol[:, None] * torch.exp(-torch.tensor([0.001, 0.003], dtype=torch.float64)[:, None] * b)
    torch.testing.assert_close(res.signal[:, :, 0, 0].real, ref, rtol=1e-13, atol=0)
    assert set(run.timings) >= {"mesh", "model", "free"} and not run.files
