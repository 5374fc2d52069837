"""Plots and renders: PNGs are written, are not blank, and show the numbers they claim.

Off-screen rendering uses VTK's EGL window (set up by conftest.py, as in the Makefile). The
plotted data are checked against closed forms (free diffusion exp(−D b), SpinDoctor's MF error
metric on a signal scaled by 1+ε, Euler's formula for the triangulated HARDI sphere).
"""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pytest
import torch

from spindoctor_torch.experiment import Experiment, unit_sphere
from spindoctor_torch.mesh.structured import structured_box
from spindoctor_torch.model import Model
from spindoctor_torch.result import Result
from spindoctor_torch.sequences import PGSE
from spindoctor_torch.viz import (
    plot_adc,
    plot_hardi,
    plot_history,
    plot_mf_error,
    plot_signal,
    plot_timings,
    render_field,
    render_mesh,
    render_overlay,
)


@pytest.fixture(scope="module")
def mesh():
    return structured_box((2.0, 1.0, 1.0), (8, 4, 4), x_interfaces=[1.0])


def assert_not_blank(img: np.ndarray, *, min_fraction: float = 0.05):
    """At least ``min_fraction`` of the pixels differ from the background, and the picture
    has real content (many colours, spread intensities)."""
    img = np.asarray(img)[..., :3].astype(float)
    if img.max() <= 1.0:
        img = img * 255
    background = np.median(img.reshape(-1, 3)[:100], axis=0)  # top-left rows
    fg = np.abs(img - background).sum(-1) > 30
    assert fg.mean() > min_fraction, f"only {fg.mean():.3%} non-background pixels"
    assert img.std() > 10
    assert len(np.unique(img.reshape(-1, 3).round(), axis=0)) > 20
    return fg


def test_render_mesh_shows_both_compartments(tmp_path, mesh):
    path = tmp_path / "mesh.png"
    img = render_mesh(mesh, path, labels=["in", "out"], window_size=(400, 300))
    assert img.shape == (300, 400, 3)
    disk = (matplotlib.image.imread(path)[..., :3] * 255).round()
    np.testing.assert_array_equal(disk, img)
    fg = assert_not_blank(img, min_fraction=0.15)
    r, g, b = (img[..., k].astype(int) for k in range(3))
    blue = fg & (b > r + 30)  # compartment 0 colour #4c72b0, any shading
    orange = fg & (r > b + 30)  # compartment 1 colour #dd8452
    assert blue.mean() > 0.02 and orange.mean() > 0.02


def test_render_field_and_overlay(tmp_path, mesh):
    x = mesh.points[torch.as_tensor(mesh.topology.dof_node)][:, 0]
    field = torch.exp(1j * math.pi * x.to(torch.complex128))
    img = render_field(mesh, field, tmp_path / "f.png", part="real", window_size=(400, 300))
    assert (tmp_path / "f.png").is_file()
    assert_not_blank(img)
    with pytest.raises(ValueError, match="part = 'phase'"):
        render_field(mesh, field, None, part="phase")
    bigger = mesh.with_points(mesh.points * 1.3)
    img = render_overlay(
        {"before": mesh, "after": bigger, "target": bigger},
        tmp_path / "o.png",
        window_size=(400, 300),
    )
    assert_not_blank(img)


def _result(model, exp, scale=1.0):
    vol = model.mesh.compartment_volumes()
    b = exp.bvalues  # [namp, nseq]
    d = torch.tensor([0.0010, 0.0006], dtype=torch.float64)
    sig = vol[:, None, None, None] * torch.exp(-d[:, None, None, None] * b[None, :, :, None])
    sig = (sig * scale).expand(-1, -1, -1, exp.ndirection).to(torch.complex128)
    return Result(sig, sig.sum(0), model.initial_signal(), "btpde", experiment=exp)


@pytest.fixture(scope="module")
def model_exp(mesh):
    model = Model(mesh, diffusivity=[0.002, 0.001])
    exp = Experiment(
        [PGSE(5000.0, 10000.0)], bvalues=[0.0, 500.0, 1000.0, 2000.0], directions=unit_sphere(6)
    )
    return model, exp


def test_plot_signal_curves(tmp_path, model_exp):
    model, exp = model_exp
    res = _result(model, exp)
    fig = plot_signal({"btpde": res}, model=model, path=tmp_path / "s.png")
    assert_not_blank(matplotlib.image.imread(tmp_path / "s.png"))
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    b = exp.bvalues[:, 0].numpy()
    vol = model.mesh.compartment_volumes().numpy()
    total = (vol[0] * np.exp(-0.001 * b) + vol[1] * np.exp(-0.0006 * b)) / vol.sum()
    np.testing.assert_allclose(lines["btpde: all"].get_ydata(), total, rtol=1e-14)
    np.testing.assert_allclose(
        lines["btpde: compartment 1"].get_ydata(), np.exp(-0.0006 * b), rtol=1e-14
    )
    free = lines["free, D = 0.002 µm²/µs"]
    np.testing.assert_allclose(free.get_ydata(), np.exp(-0.002 * free.get_xdata()), rtol=1e-14)
    assert any(label.startswith("fit: ADC = ") for label in lines)


def test_plot_mf_error_is_spindoctors_metric(model_exp):
    model, exp = model_exp
    eps = 2e-3
    fig = plot_mf_error(_result(model, exp, 1 + eps), _result(model, exp))
    (line,) = fig.axes[0].get_lines()
    # |S(1+ε) − S| / max_dir |S| = ε for direction-independent signals
    np.testing.assert_allclose(line.get_ydata(), eps, rtol=1e-10)
    np.testing.assert_array_equal(line.get_xdata(), exp.bvalues[:, 0].numpy())


def test_plot_hardi_triangulates_the_sphere():
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    u = unit_sphere(20)
    fig = plot_hardi(u, u[:, 2].abs(), title="test")
    (coll,) = [c for c in fig.axes[0].collections if isinstance(c, Poly3DCollection)]
    # ±u: V = 40 points on a sphere; a convex triangulation has F = 2V − 4 faces (Euler)
    assert len(coll.get_facecolor()) == 2 * 40 - 4


def test_plot_adc_timings_history(tmp_path):
    adc = torch.tensor([[[1.0, 2.0, 3.0]], [[4.0, 4.0, 4.0]]], dtype=torch.float64) * 1e-4
    fig = plot_adc({"hadc": adc}, compartment_names=["in", "out"])
    heights = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(heights, [2e-4, 4e-4], rtol=1e-14)  # direction means
    fig = plot_timings({"mesh": 0.5, "btpde": 3.0})
    assert [p.get_width() for p in fig.axes[0].patches] == [0.5, 3.0]
    hist = {"loss": [1.0, 0.1, 0.01], "parameters": [{"r": 3.0}, {"r": 3.9}, {"r": 4.2}]}
    fig = plot_history(hist, targets={"r": 4.2}, path=tmp_path / "hist.png")
    (loss,) = fig.axes[0].get_lines()
    np.testing.assert_array_equal(loss.get_ydata(), [1.0, 0.1, 0.01])
    assert list(fig.axes[1].get_lines()[0].get_ydata()) == [3.0, 3.9, 4.2]
    assert_not_blank(matplotlib.image.imread(tmp_path / "hist.png"), min_fraction=0.02)
