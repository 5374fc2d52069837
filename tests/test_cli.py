"""The ``spindoctor-torch`` command, run in-process through ``main(argv)``.

References: SpinDoctor's recorded mesh volume (513.5105743543198 µm³ for its sphere_r5 mesh),
free diffusion exp(−D b)·|Ω| (closed form) and files read back independently.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import matplotlib.image
import numpy as np
import pytest

from spindoctor_torch.cli import main
from spindoctor_torch.io import load_results

SUBCOMMANDS = ["mesh", "info", "simulate", "optimize", "view", "compare", "validate"]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

BOX_SETUP = """
name = "box"
[geometry]
recipe = "box"
sides = [2.0, 1.0, 1.0]
h = 0.5
[pde]
diffusivity = 0.0025
[gradient]
bvalues = [0, 1000, 3000]
directions = [[0.0, 0.0, 1.0]]
[[gradient.sequences]]
type = "PGSE"
delta = 5000.0
Delta = 10000.0
[solvers.free]
[output]
directory = "OUT"
"""


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("sub", [None, *SUBCOMMANDS])
def test_help_everywhere(sub, capsys):
    with pytest.raises(SystemExit) as exc:
        main([sub, "--help"] if sub else ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spindoctor-torch") and "--quiet" in out


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_info_on_spindoctors_mesh(reference_dir, capsys):
    code, out, _ = run(["info", str(reference_dir / "meshes" / "sphere_r5.npz")], capsys)
    assert code == 0
    assert "2686 points, 10638 tets" in out  # SpinDoctor's README numbers
    assert "volume 513.511 µm³" in out  # fem_sphere_r5.json: 513.5105743543198
    assert "0 inverted" in out
    code, out, _ = run(["info", str(reference_dir / "fem_sphere_r5.json")], capsys)
    assert code == 0 and "btpde: signal (1, 4, 1, 3)" in out
    # the file's normalized BTPDE signals lie in [0.8150781534947218, 0.9750512717976372]
    assert "|S|/S0 in [0.8151, 0.9751]" in out


def test_simulate_info_view_round_trip(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "box.toml").write_text(BOX_SETUP.replace("OUT", "out"))
    code, out, err = run(["simulate", "box.toml", "--no-plots"], capsys)
    assert code == 0, err
    assert "results: out/results.h5" in out
    content = load_results(tmp_path / "out" / "results.h5")
    free = content.results["free"]
    b = np.array([0.0, 1000.0, 3000.0])
    np.testing.assert_allclose(
        free.signal_allcmpts[:, 0, 0].real.numpy(), 2.0 * np.exp(-0.0025 * b), rtol=1e-13
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    np.testing.assert_allclose(
        np.array(summary["results"]["free"]["normalized_signal_abs"])[:, 0, 0],
        np.exp(-0.0025 * b),
        rtol=1e-13,
    )
    code, out, _ = run(["info", "out/results.h5"], capsys)
    assert code == 0 and "free: signal (1, 3, 1, 1)" in out and "setup_hash" in out
    code, out, _ = run(["info", "box.toml"], capsys)
    assert code == 0 and "recipe box" in out and "compartments: ['out']" in out
    code, _, err = run(["view", "out/results.h5", "--screenshot", "v.png", "-q"], capsys)
    assert code == 0, err
    img = matplotlib.image.imread(tmp_path / "v.png")
    assert img.std() > 0.05
    code, out, _ = run(["-q", "simulate", "box.toml", "--no-plots", "-o", "out2"], capsys)
    assert code == 0 and out == "" and (tmp_path / "out2" / "results.h5").is_file()


def test_mesh_command_writes_a_readable_mesh(tmp_path, capsys):
    from spindoctor_torch.mesh.io import read_mesh

    (tmp_path / "box.toml").write_text(BOX_SETUP)
    target = tmp_path / "box.msh"
    code, out, _ = run(["mesh", str(tmp_path / "box.toml"), "-o", str(target)], capsys)
    assert code == 0 and f"wrote {target}" in out
    mesh = read_mesh(target)
    assert float(mesh.volume()) == pytest.approx(2.0, rel=1e-12)  # 2 x 1 x 1 µm box
    assert f"TetMesh: {mesh.npoint} points" in out


def test_bad_setup_is_one_line(tmp_path, capsys):
    bad = BOX_SETUP.replace("sides = [2.0, 1.0, 1.0]", "sides = [2.0, -1.0, 1.0]")
    (tmp_path / "bad.toml").write_text(bad)
    code, out, err = run(["simulate", str(tmp_path / "bad.toml")], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("spindoctor-torch: error: bad.toml: [geometry] sides")
    code, _, err = run(["simulate", str(tmp_path / "missing.toml")], capsys)
    assert code == 1 and "does not exist" in err and err.count("\n") == 1


def test_compare_table_and_tolerance(reference_dir, tmp_path, capsys):
    ref = reference_dir / "fem_sphere_r5.json"
    code, out, _ = run(
        [
            "compare",
            str(ref),
            str(ref),
            "--only",
            "btpde",
            "--tolerance",
            "1e-12",
            "--json",
            str(tmp_path / "c.json"),
        ],
        capsys,
    )
    assert code == 0
    assert "btpde" in out and "0.000e+00" in out
    rows = json.loads((tmp_path / "c.json").read_text())
    assert rows[0]["max_error"] == 0.0
    # a copy with one signal changed by 1 %: relative error 0.01 · |S| / max_dir |S|
    data = json.loads(ref.read_text())
    s = data["btpde"]["signal_allcmpts_real"]
    expected = 0.01 * abs(s[1][3]) / max(abs(s[d][3]) for d in range(3))
    s[1][3] *= 1.01
    (tmp_path / "changed.json").write_text(json.dumps(data))
    code, out, err = run(
        [
            "compare",
            str(tmp_path / "changed.json"),
            str(ref),
            "--only",
            "btpde",
            "--tolerance",
            "1e-3",
        ],
        capsys,
    )
    assert code == 1 and "exceed tolerance 0.001" in err
    assert f"{expected:.3e}" in out


def test_missing_validation_and_bad_optimization_file(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "spindoctor_torch.validation", None)
    code, _, err = run(["validate", "--quick"], capsys)
    assert code == 1 and "validation suite" in err and err.count("\n") == 1
    code, _, err = run(["optimize", str(tmp_path / "x.toml")], capsys)
    assert code == 1 and "x.toml' does not exist" in err
    bad = (EXAMPLES / "optimize" / "radius_fit.toml").read_text()
    bad = bad.replace('setup = "../setups/', f'setup = "{EXAMPLES}/setups/')
    bad = bad.replace('setup = "target_axon', f'setup = "{EXAMPLES}/optimize/target_axon')
    (tmp_path / "bad.toml").write_text(bad.replace("knots = [3.0]", "knots = [3.0, 2.0]"))
    code, _, err = run(["optimize", str(tmp_path / "bad.toml")], capsys)
    assert code == 1 and "bad.toml: [parameters] knots = [3.0, 2.0]: must increase" in err


def test_optimize_recovers_the_radius(tmp_path, capsys):
    config = EXAMPLES / "optimize" / "radius_fit.toml"
    code, out, err = run(["optimize", str(config), "--tiny", "-o", str(tmp_path), "-q"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    # target: myelin radius 3.6 µm (target_axon_r3.6.toml), its own mesh, BTPDE; the tiny
    # meshes (h = 2 µm) limit the recovery to about 1 % (mesh-to-mesh signal differences)
    assert summary["parameters"]["radii"][0] == pytest.approx(3.6, rel=0.02)
    assert summary["loss_final"] < 1e-3 * summary["loss_initial"]
    for f in ("results.h5", "history.png", "overlay.png"):
        assert (tmp_path / f).is_file()


def test_results_file_has_provenance(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "box.toml").write_text(BOX_SETUP.replace("OUT", "o"))
    assert main(["-q", "simulate", "box.toml", "--no-plots"]) == 0
    from spindoctor_torch import __version__
    from spindoctor_torch.config import load_setup

    with h5py.File(tmp_path / "o" / "results.h5", "r") as f:
        assert f.attrs["package_version"] == __version__
        assert f.attrs["setup_hash"] == load_setup(tmp_path / "box.toml").hash


def test_validate_runs_selected_cases(reference_dir, tmp_path, capsys):
    code, out, err = run(
        ["validate", "--cases", "parity_analytical_sphere", "-o", str(tmp_path), "-q"], capsys
    )
    assert code == 0, err
    rows = (tmp_path / "validation_quick.csv").read_text().splitlines()
    assert rows[0].startswith("case,") and len(rows) > 2
    assert all(",pass," in r for r in rows[1:])
    code, _, err = run(["validate", "--cases", "nothing*", "-q"], capsys)
    assert code == 1 and "matches no case" in err
