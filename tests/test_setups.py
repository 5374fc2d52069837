"""Every example setup runs (tiny variant), writes its outputs, and reloads to the same numbers;
bad setups fail up front with one line naming the field, the value and what is allowed.

Independent references: SpinDoctor's own results for its sphere mesh (fem_sphere_r5.json),
mass conservation at b = 0 (|S|/S0 = 1 without relaxation), free diffusion exp(−D b).
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import meshio
import numpy as np
import pytest
import torch

from spindoctor_torch.config import load_setup, parse_setup, run_setup, tomllib
from spindoctor_torch.errors import SetupError
from spindoctor_torch.io import load_results, read_spindoctor_json
from spindoctor_torch.mesh.io import read_mesh
from spindoctor_torch.result import Result

SETUPS = Path(__file__).resolve().parents[1] / "examples" / "setups"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "spindoctor"
NAMES = sorted(p.stem for p in SETUPS.glob("*.toml"))
# Setups whose plots and mesh render are checked (one is enough: the others skip them).
WITH_PLOTS = "sphere_nucleus_ecs"
NO_RELAXATION = {"sphere_nucleus_ecs", "spheres_15", "neuron", "sphere_r5_parity"}


def test_the_common_spindoctor_setups_are_there():
    assert set(NAMES) >= {
        "sphere_nucleus_ecs",
        "cylinders_myelin_ecs",
        "spheres_15",
        "neuron",
        "cylinders_full_settings",
    }
    for name in NAMES:  # the full variants are valid too (not run here: minutes each)
        full = load_setup(SETUPS / f"{name}.toml")
        assert full.name == name and full.solvers


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> (run, output folder) of the tiny variant, computed once per module."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            if name == "sphere_r5_parity" and not REFERENCE.is_dir():
                pytest.skip(f"SpinDoctor reference mesh not found at {REFERENCE}")
            setup = load_setup(
                SETUPS / f"{name}.toml", tiny=True, overrides={"output.plots": name == WITH_PLOTS}
            )
            out = tmp_path_factory.mktemp(name)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # e.g. negative STA ADCs at long diffusion times
                run = run_setup(setup, output_dir=out, quiet=True)
            failed = [str(w.message) for w in caught if str(w.message).startswith("could not")]
            assert not failed, failed  # an optional output (plot, render, VTU) failed
            cache[name] = (setup, run, out)
        return cache[name]

    return get


@pytest.fixture(params=NAMES)
def tiny_run(request, runs):
    _, run, out = runs(request.param)
    return request.param, run, out


def test_outputs_exist_and_reload_to_the_same_numbers(tiny_run):
    name, run, out = tiny_run
    for f in ("results.h5", "summary.json", "setup.json", "mesh.msh"):
        assert (out / f).is_file(), f
    content = load_results(out / "results.h5")
    assert list(content.results) == list(run.results)
    for key, value in run.results.items():
        back = content.results[key]
        if isinstance(value, Result):
            assert torch.equal(back.signal, value.signal.detach()), key
            assert torch.equal(back.signal_allcmpts, value.signal_allcmpts.detach()), key
            assert float(back.initial_signal) == float(value.initial_signal)
            if value.magnetization is not None:
                assert torch.equal(back.magnetization, value.magnetization.detach())
        else:
            assert torch.equal(back.adc, value.adc.detach()), key
    assert torch.equal(content.experiment.bvalues, run.experiment.bvalues)
    assert torch.equal(content.mesh.points, run.mesh.points)
    assert content.attrs["setup_hash"] == run.setup.hash
    mesh = read_mesh(out / "mesh.msh")
    assert (mesh.npoint, mesh.ntet, mesh.nboundary) == (
        run.mesh.npoint,
        run.mesh.ntet,
        run.mesh.nboundary,
    )
    torch.testing.assert_close(
        mesh.compartment_volumes(), run.mesh.compartment_volumes(), rtol=1e-13, atol=0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["setup_hash"] == run.setup.hash
    for key, value in run.results.items():
        if isinstance(value, Result):
            np.testing.assert_allclose(
                summary["results"][key]["normalized_signal_abs"],
                value.normalized().abs().detach().numpy(),
                rtol=1e-15,
            )
    if run.setup.output.vtu:
        assert (out / "btpde_magnetization.vtu").is_file()
        if "snapshot_times" in run.setup.solvers["btpde"].options:
            times = run.setup.solvers["btpde"].options["snapshot_times"]
            frames = sorted((out / "btpde_snapshots_frames").glob("*.vtu"))
            assert len(frames) == len(times)
            # the last snapshot is at the echo time of sequence 0: it is ξ(TE) of that sequence
            seq0 = run.experiment.sequences[0]
            assert times[-1] == seq0.echotime
            last = meshio.read(frames[-1]).point_data["magnetization_real"]
            mag = run.results["btpde"].magnetization[-1, 0, 0].real.detach().numpy()
            np.testing.assert_allclose(last, mag, rtol=0, atol=1e-12)
    if name == WITH_PLOTS:
        for f in (
            "signal.png",
            "adc.png",
            "mf_vs_btpde.png",
            "hardi.png",
            "timings.png",
            "mesh.png",
        ):
            assert (out / f).stat().st_size > 5000, f


def test_b0_conserves_mass_and_free_diffusion(tiny_run):
    name, run, _ = tiny_run
    b = run.experiment.bvalues
    for key, value in run.results.items():
        if not isinstance(value, Result) or key == "karger":
            continue
        att = value.normalized().abs().detach()
        zero = b == 0
        if name in NO_RELAXATION and bool(zero.any()):
            # no T2, no relaxivity: the b = 0 signal is Σρ|Ω| (θ-scheme and MF conserve mass
            # up to the linear-solver / eigensolver tolerances)
            torch.testing.assert_close(att[zero], torch.ones_like(att[zero]), rtol=0, atol=1e-8)
        if key == "free":
            d = run.model.diffusivity.diagonal(dim1=1, dim2=2).mean(-1)
            vol = run.mesh.compartment_volumes() * run.model.density
            ref = (vol[:, None, None] * torch.exp(-d[:, None, None] * b)).sum(0)
            torch.testing.assert_close(value.signal_allcmpts[..., 0].real, ref, rtol=1e-12, atol=0)


def test_parity_with_spindoctor(runs, reference_dir):
    _, run, _ = runs("sphere_r5_parity")
    ref = read_spindoctor_json(reference_dir / "fem_sphere_r5.json")
    cols = [0, 3]  # the tiny variant keeps b = 500 and 4000 of the reference's 500..4000
    bt = run.results["btpde"].signal_allcmpts.detach()
    bt_ref = ref["btpde"].signal_allcmpts[cols]
    # Crank-Nicolson with 20 steps per interval vs ode15s at rtol 1e-8: O(dt²) ~ 1e-5
    torch.testing.assert_close(bt.real, bt_ref.real, rtol=1e-4, atol=0)
    mf = run.results["mf"].signal_allcmpts.detach()
    # same mesh, same truncation (ℓ = 2 µm, 40 modes): only eigensolver round-off differs
    torch.testing.assert_close(mf.real, ref["mf_ls2"].signal_allcmpts[cols].real, rtol=1e-8, atol=0)


# ============================================================================ bad setups
BASE = tomllib.loads((SETUPS / "sphere_nucleus_ecs.toml").read_text())
DELETE = object()


def mutate(*changes):
    """The base setup (without [tiny]) with ``(dotted.path, value)`` changes applied."""
    data = copy.deepcopy(BASE)
    data.pop("tiny")
    for path, value in changes:
        *head, last = path.split(".")
        node = data
        for key in head:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return data


BAD = [
    # unknown keys, with a suggestion
    ([("geometri", {})], r"unknown key 'geometri'; allowed: .* \(did you mean 'geometry'\?\)"),
    ([("geometry.rmni", 5.0)], r"\[geometry\] unknown key 'rmni'.*did you mean 'rmin'"),
    ([("solvers.btpd", {})], r"unknown solver 'btpd'; allowed: btpde.*did you mean 'btpde'"),
    (
        [("solvers.mf.lengthscale", 2.0)],
        r"\[solvers\.mf\] unknown key 'lengthscale'.*'length_scale'",
    ),
    ([("pde.diffusivity_in", 0.002)], r"unknown key 'diffusivity_in'.*write diffusivity = \{ in ="),
    # wrong types
    ([("geometry.rmin", "five")], r"\[geometry\] rmin = 'five': must be a number"),
    ([("geometry.ncell", 1.5)], r"\[geometry\] ncell = 1\.5: must be an integer"),
    ([("solvers.btpde.nsteps", 2.5)], r"\[solvers\.btpde\] nsteps = 2\.5: must be an integer"),
    ([("gradient.directions", "x")], r"directions = 'x': must be a list of 3-vectors or a table"),
    ([("pde.diffusivity", {"in": "fast"})], r"diffusivity\.in = 'fast': must be a number"),
    # missing fields
    ([("gradient.sequences", DELETE)], r"\[gradient\] missing required key 'sequences'"),
    ([("gradient.gvalues", DELETE)], r"give exactly one of bvalues .*; got none"),
    ([("gradient.sequences.0.Delta", DELETE)], r"sequences\[0\]\] missing required key 'Delta'"),
    ([("solvers", {})], r"no solver enabled"),
    # impossible geometry, physics or units
    ([("geometry.rmax", 4.0)], r"rmin = 5\.0 must not exceed rmax = 4\.0"),
    ([("geometry.in_ratio", 1.2)], r"in_ratio = 1\.2 must lie in \(0, 1\)"),
    (
        [("geometry.ncell", 3), ("geometry.ecs_shape", "none")],
        r"ncell = 3 needs an extracellular space",
    ),
    ([("geometry.ecs_shape", "cube")], r"ecs_shape = 'cube' is unknown"),
    ([("gradient.sequences.0.delta", 60000.0)], r"delta = 60000\.0: must not exceed Delta"),
    ([("gradient.gvalues", [0.1, -0.2])], r"gvalues\[1\] = -0\.2: must be a number >= 0"),
    ([("pde.diffusivity", 2e-9)], r"diffusivity = 2e-09 .*looks like m²/s"),
    ([("pde.relaxation", {"ecs": 0.08})], r"relaxation\.ecs = 0\.08 .*looks like seconds"),
    (
        [("pde.diffusivity", {"nucleus": 0.002})],
        r"diffusivity\.nucleus: unknown compartment; allowed: in, out, ecs",
    ),
    (
        [("geometry", {"mesh": "missing.msh"})],
        r"\[geometry\] mesh = 'missing\.msh': file not found",
    ),
]


@pytest.mark.parametrize("changes,message", BAD, ids=[c[0][0][0] for c in BAD])
def test_bad_setup_message(changes, message):
    with pytest.raises(SetupError) as exc:
        parse_setup(mutate(*changes), source="sphere_nucleus_ecs.toml")
    text = str(exc.value)
    assert "\n" not in text
    assert text.startswith("sphere_nucleus_ecs.toml: ")
    assert re.search(message, text), text


def test_interface_that_the_mesh_lacks_is_named(tmp_path):
    data = mutate(
        ("pde.permeability", {"in_ecs": 1e-4}), ("geometry.h", 2.5), ("solvers", {"free": {}})
    )
    setup = parse_setup(data, source="sphere_nucleus_ecs.toml")  # roles valid: meshed to check
    with pytest.raises(
        SetupError,
        match=r"permeability\.in_ecs: no such interface in this mesh; "
        r"interfaces: \['in_out', 'out_ecs'\]",
    ):
        run_setup(setup, output_dir=False, quiet=True)


def test_invalid_toml_is_one_line(tmp_path):
    (tmp_path / "x.toml").write_text("[geometry\nrmin = 1")
    with pytest.raises(SetupError, match=r"^x\.toml: not valid TOML: ") as exc:
        load_setup(tmp_path / "x.toml")
    assert "\n" not in str(exc.value)


@pytest.mark.slow
def test_demo_quick(tmp_path):
    """``make demo``'s script, coarse: it writes its report and recovers the radius."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo", SETUPS.parent / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(["--output", str(tmp_path), "--quick"]) == 0
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    # the target (R = 3.6 µm) comes from its own mesh and the BTPDE; the coarse meshes
    # (h = 2 µm) limit the recovery (measured -0.4 %; mesh-to-mesh signal differences of
    # ~0.05 % map to ~0.5 % in radius): 2 %
    assert abs(summary["radius_error_rel"]) < 0.02
    assert summary["signal_error_after"] < 0.2 * summary["signal_error_before"]
    for f in (
        "report.md",
        "fit/overlay.png",
        "fit/history.png",
        "simulation/mesh.png",
        "fit/results.h5",
    ):
        assert (tmp_path / f).is_file(), f
