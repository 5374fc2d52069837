"""Results I/O: HDF5 round trips, SpinDoctor .mat (v7, v7.3) and JSON readers, comparison
tables and VTU/PVD export.

References: the arrays written (bit-for-bit round trips), files written by independent writers
(scipy.io.savemat for MATLAB v7; MATLAB's documented v7.3 HDF5 layout built with h5py), the raw
JSON numbers of SpinDoctor's reference file, meshio's reading of our VTU, and closed-form
counts (split-node grids have npoint + interface nodes points).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import h5py
import meshio
import numpy as np
import pytest
import torch

import spindoctor_torch
from spindoctor_torch.experiment import Experiment, unit_sphere
from spindoctor_torch.io import (
    compare_results,
    format_comparison,
    load_result,
    load_results,
    read_results_any,
    read_spindoctor_json,
    read_spindoctor_mat,
    save_result,
    save_results,
    write_pvd,
    write_vtu,
)
from spindoctor_torch.mesh.structured import structured_box
from spindoctor_torch.result import Result
from spindoctor_torch.sequences import PGSE, CosOGSE


def make_result(seed=0, method="btpde", magnetization=False, ndof=10):
    gen = torch.Generator().manual_seed(seed)
    exp = Experiment(
        [PGSE(5000.0, 10000.0), CosOGSE(5000.0, 10000.0, 2)],
        bvalues=[0.0, 1000.0, 2000.0],
        directions=unit_sphere(4),
    )
    sig = torch.randn(2, 3, 2, 4, dtype=torch.complex128, generator=gen)
    mag = (
        torch.randn(3, 2, 4, ndof, dtype=torch.complex128, generator=gen) if magnetization else None
    )
    return Result(
        sig,
        sig.sum(0),
        torch.tensor(7.25, dtype=torch.float64),
        method,
        magnetization=mag,
        timings={"total": 1.5, "solve": 1.0},
        info={"steps": 40, "rtol": 1e-4, "tol_inf": float("inf"), "nested": {"a": [1, 2]}},
        experiment=exp,
    )


# ============================================================================ HDF5
def test_result_round_trip_is_bit_identical(tmp_path):
    res = make_result(magnetization=True)
    path = save_result(tmp_path / "r.h5", res)
    back = load_result(path)
    assert isinstance(back, Result) and back.method == "btpde"
    for name in ("signal", "signal_allcmpts", "initial_signal", "magnetization"):
        a, b = getattr(res, name), getattr(back, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert back.timings == res.timings and back.info == res.info
    exp = back.experiment
    assert [repr(s) for s in exp.sequences] == [repr(s) for s in res.experiment.sequences]
    assert torch.equal(exp.bvalues, res.experiment.bvalues)
    torch.testing.assert_close(exp.directions, res.experiment.directions, rtol=0, atol=1e-15)


def test_file_layout_named_axes_units_provenance(tmp_path):
    from spindoctor_torch.config import parse_setup

    setup = parse_setup(
        {
            "geometry": {"recipe": "box", "sides": [1.0, 1.0, 1.0]},
            "gradient": {
                "bvalues": [0, 1000],
                "sequences": [{"type": "PGSE", "delta": 1e3, "Delta": 2e3}],
            },
            "solvers": {"free": {}},
        }
    )
    path = save_results(tmp_path / "r.h5", {"btpde": make_result()}, setup=setup)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "spindoctor_torch-results"
        assert f.attrs["package_version"] == spindoctor_torch.__version__
        assert f.attrs["setup_hash"] == setup.hash
        assert json.loads(f.attrs["setup_json"])["gradient"]["bvalues"] == [0, 1000]
        ds = f["results/btpde/signal"]
        assert [d.label for d in ds.dims] == ["compartment", "amplitude", "sequence", "direction"]
        assert ds.attrs["units"] == "µm³" and ds.dtype == np.complex128
        b = f["experiment/bvalues"]
        assert [d.label for d in b.dims] == ["amplitude", "sequence"]
        np.testing.assert_array_equal(b[()], [[0.0, 0.0], [1000.0, 1000.0], [2000.0, 2000.0]])
    assert load_results(path).setup["gradient"]["bvalues"] == [0, 1000]


def test_several_results_adc_dataclasses_and_mesh(tmp_path):
    from spindoctor_torch.solvers.sta import STAResult

    mesh = structured_box((2.0, 1.0, 1.0), (4, 2, 2), x_interfaces=[1.0], jitter=0.1)
    sta = STAResult(adc=torch.rand(2, 2, 4, dtype=torch.float64), adc_allcmpts=torch.rand(2, 4))
    res = {
        "btpde": make_result(1),
        "mf": make_result(2, "mf"),
        "sta": sta,
        "eig": torch.arange(5.0),
    }
    path = save_results(tmp_path / "r.h5", res, mesh=mesh)
    content = load_results(path)
    assert list(content.results) == ["btpde", "mf", "sta", "eig"]
    assert isinstance(content.results["sta"], STAResult)
    assert torch.equal(content.results["sta"].adc, sta.adc)
    assert torch.equal(content.results["eig"], torch.arange(5.0))
    assert torch.equal(content.results["mf"].signal, res["mf"].signal)
    m = content.mesh
    assert torch.equal(m.points, mesh.points)
    assert np.array_equal(m.topology.tets_array, mesh.topology.tets_array)
    assert np.array_equal(m.topology.boundary_compartments, mesh.topology.boundary_compartments)
    torch.testing.assert_close(m.boundary_areas(), mesh.boundary_areas(), rtol=0, atol=0)


def test_bad_files_and_names(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match="not a spindoctor_torch results file"):
        load_results(tmp_path / "other.h5")
    save_results(tmp_path / "two.h5", {"a": make_result(), "b": make_result(1)})
    with pytest.raises(KeyError, match=r"no result 'c'; it holds \['a', 'b'\]"):
        load_result(tmp_path / "two.h5", "c")
    with pytest.raises(ValueError, match="holds 2 results"):
        load_result(tmp_path / "two.h5")
    with pytest.raises(TypeError, match="sparse tensors cannot be stored"):
        save_results(tmp_path / "s.h5", {"m": torch.eye(3).to_sparse()})


# ============================================================================ SpinDoctor files
def spindoctor_struct(rng):
    """Signals as SpinDoctor stores them: [ncmpt x namp x nseq x ndir], 2 cmpts, 3 amplitudes,
    1 sequence, 1 direction, so MATLAB saves the signal as 2 x 3 (trailing ones dropped)."""
    sig = rng.standard_normal((2, 3, 1, 1)) + 1j * rng.standard_normal((2, 3, 1, 1))
    return sig


def test_read_mat_v7_written_by_scipy(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    sig = spindoctor_struct(rng)
    savemat(
        tmp_path / "run.mat",
        {
            "btpde": {
                "signal": sig[:, :, 0, 0],
                "signal_allcmpts": sig.sum(0)[:, :, 0],
                "totaltime": 12.5,
                "itertimes": np.array([[1.0, 2.0, 3.0]]),
            },
            "setup": {
                "pde": {"initial_signal": 42.0},
                "gradient": {
                    "bvalues": np.array([[0.0], [500.0], [1000.0]]),
                    "directions": np.array([[1.0], [0.0], [0.0]]),
                },
            },
        },
    )
    out = read_spindoctor_mat(tmp_path / "run.mat")
    r = out["btpde"]
    assert r.signal.shape == (2, 3, 1, 1) and r.signal_allcmpts.shape == (3, 1, 1)
    np.testing.assert_array_equal(r.signal.numpy(), sig)
    assert float(r.initial_signal) == 42.0 and r.timings == {"total": 12.5}
    assert r.info["bvalues"] == [[0.0], [500.0], [1000.0]]
    assert r.info["directions"] == [[1.0, 0.0, 0.0]]
    assert read_results_any(tmp_path / "run.mat")["btpde"].method == "btpde"


def _h5_matlab(group, name, value):
    """Write ``value`` the way MATLAB -v7.3 does: column-major (axes reversed), complex as a
    (real, imag) compound, structs as groups, class names in ``MATLAB_class``."""
    if isinstance(value, dict):
        sub = group.create_group(name)
        sub.attrs["MATLAB_class"] = np.bytes_("struct")
        for k, v in value.items():
            _h5_matlab(sub, k, v)
        return
    arr = np.atleast_2d(np.asarray(value))
    if np.iscomplexobj(arr):
        comp = np.empty(arr.shape, dtype=[("real", "<f8"), ("imag", "<f8")])
        comp["real"], comp["imag"] = arr.real, arr.imag
        arr = comp
    ds = group.create_dataset(name, data=arr.T)
    ds.attrs["MATLAB_class"] = np.bytes_("double")


def test_read_mat_v73_hdf5_layout(tmp_path):
    rng = np.random.default_rng(1)
    sig = rng.standard_normal((1, 3, 2, 4)) + 1j * rng.standard_normal((1, 3, 2, 4))
    path = tmp_path / "run73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        _h5_matlab(f, "mf", {"signal": sig, "signal_allcmpts": sig[0], "totaltime": 3.0})
        _h5_matlab(f, "femesh", {"volumes": np.array([[10.0, 5.0]])})
    with open(path, "r+b") as fh:  # MATLAB's text header in the user block
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")
    r = read_spindoctor_mat(path)["mf"]
    np.testing.assert_array_equal(r.signal.numpy(), sig)
    np.testing.assert_array_equal(r.signal_allcmpts.numpy(), sig[0])
    assert float(r.initial_signal) == 15.0  # sum of femesh.volumes (ρ = 1)


def test_mat_without_initial_signal_is_refused(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "x.mat", {"res": {"signal_allcmpts": np.ones((2, 1))}})
    with pytest.raises(ValueError, match="pass initial_signal="):
        read_spindoctor_mat(tmp_path / "x.mat")
    r = read_spindoctor_mat(tmp_path / "x.mat", initial_signal=2.0)["res"]
    assert r.signal.shape == (1, 2, 1, 1) and float(r.normalized()[0, 0, 0].real) == 0.5
    savemat(tmp_path / "y.mat", {"a": np.ones(3)})
    with pytest.raises(ValueError, match="holds no SpinDoctor result"):
        read_spindoctor_mat(tmp_path / "y.mat")


def test_reference_json_reader_matches_the_raw_file(reference_dir):
    path = reference_dir / "fem_sphere_r5.json"
    raw = json.loads(path.read_text())
    ref = read_spindoctor_json(path)
    bt = ref["btpde"]
    assert bt.signal.shape == (1, 4, 1, 3)
    for d in range(3):
        for a in range(4):
            assert (
                float(bt.signal_allcmpts[a, 0, d].real)
                == raw["btpde"]["signal_allcmpts_real"][d][a]
            )
            assert float(bt.normalized()[a, 0, d].real) == pytest.approx(
                raw["btpde"]["signal_normalized"][d][a], rel=1e-14
            )
    # The experiment rebuilt from the file's q-values gives back its b-values (b = q² δ²(Δ−δ/3))
    torch.testing.assert_close(
        bt.experiment.bvalues[:, 0],
        torch.tensor(raw["bvalues"], dtype=torch.float64),
        rtol=1e-12,
        atol=0,
    )
    assert ref["eigenvalues_ls2"].shape == (raw["mf"][0]["neig_found"],)
    assert ref["sta"].shape == (1, 1, 3)
    assert float(ref["sta"][0, 0, 2]) == raw["sta"]["adc_per_compartment_per_direction"][2][0]
    ana = read_spindoctor_json(reference_dir / "analytical.json")
    case = json.loads((reference_dir / "analytical.json").read_text())["cases"][0]
    r = ana[f"analytical_{case['name']}"]
    np.testing.assert_array_equal(
        r.normalized().real[:, 0, 0].numpy(),
        np.asarray(case["signal_raw_real"]) / case["S0_total_volume"],
    )


# ============================================================================ comparison
def test_compare_reports_spindoctors_relative_error():
    ref = make_result()
    eps = 1e-3
    ours = Result(
        ref.signal * (1 + eps),
        ref.signal_allcmpts * (1 + eps),
        ref.initial_signal,
        "btpde",
        experiment=ref.experiment,
    )
    other = Result(ref.signal, ref.signal_allcmpts, ref.initial_signal, "karger")
    rows = compare_results({"btpde": ours, "karger": other}, {"btpde": ref})
    # |S(1+ε) − S| / max_dir |S| = ε |S| / max_dir |S|: its maximum is ε exactly
    assert rows[0].reference == "btpde" and rows[0].max_error == pytest.approx(eps, rel=1e-12)
    assert len(rows[0].per_amplitude) == 3
    assert rows[1].note == "no matching reference" and np.isnan(rows[1].max_error)
    table = format_comparison(rows, tolerance=2e-3)
    assert "1.000e-03" in table and " ok" in table
    assert not rows[0].passed(5e-4)


def test_compare_mf_against_every_length_scale(reference_dir):
    ref = read_spindoctor_json(reference_dir / "fem_sphere_r5.json")
    rows = compare_results({"mf": ref["mf_ls0.5"]}, ref)
    got = {r.reference: r.max_error for r in rows}
    assert set(got) == {"mf_ls2", "mf_ls1", "mf_ls0.5"} and got["mf_ls0.5"] == 0.0
    # the file's own numbers: MF at ℓ = 2 µm differs from ℓ = 0.5 µm by ~1e-5 (40 vs 787 modes)
    assert 1e-6 < got["mf_ls2"] < 1e-4


# ============================================================================ VTK
def test_split_node_vtu_and_pvd(tmp_path):
    mesh = structured_box((2.0, 1.0, 1.0), (4, 2, 2), x_interfaces=[1.0])
    # 5 x 3 x 3 = 45 nodes; the 3 x 3 interface nodes are duplicated -> 54 dofs
    assert mesh.npoint == 45 and mesh.ndof == 54
    field = torch.randn(
        mesh.ndof, dtype=torch.complex128, generator=torch.Generator().manual_seed(3)
    )
    path = write_vtu(tmp_path / "m.vtu", mesh, {"mag": field})
    grid = meshio.read(path)
    assert grid.points.shape == (54, 3)
    types = [c.type for c in grid.cells]
    assert types == ["tetra", "triangle"]
    cmpt = grid.cell_data["compartment"]
    np.testing.assert_array_equal(cmpt[0], mesh.topology.tet_compartment)
    np.testing.assert_array_equal(grid.cell_data["boundary"][1], mesh.topology.facet_boundary)
    np.testing.assert_array_equal(grid.point_data["mag_real"], field.real.numpy())
    # numpy's and torch's complex abs may differ in the last bit
    np.testing.assert_allclose(grid.point_data["mag_abs"], field.abs().numpy(), rtol=4e-16)
    # every tet of compartment c uses dofs of compartment c only
    dof_c = grid.point_data["compartment"]
    assert np.all(dof_c[grid.cells[0].data] == cmpt[0][:, None])
    frames = torch.stack([field, 2 * field])
    pvd = write_pvd(tmp_path / "series.pvd", mesh, [0.0, 250.0], frames)
    root = ET.parse(pvd).getroot()
    sets = root.findall("./Collection/DataSet")
    assert [float(s.get("timestep")) for s in sets] == [0.0, 250.0]
    second = meshio.read(tmp_path / sets[1].get("file"))
    np.testing.assert_array_equal(second.point_data["magnetization_imag"], 2 * field.imag.numpy())
    with pytest.raises(ValueError, match="has 3 values, the mesh has 54 dofs"):
        write_vtu(tmp_path / "bad.vtu", mesh, {"x": torch.ones(3)})
