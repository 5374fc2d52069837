"""The solvers on a CUDA device against the same computation on the CPU.

Reference: the CPU results of the same code (the CPU paths are checked against closed forms,
1-D references and SpinDoctor elsewhere); here the question is only whether every tensor
stays on the device and the numbers agree. Tolerances are round-off level (float64), stated
per test. The whole module is skipped on machines without CUDA (CI has none; it runs on the
project's lent GPU machines: ``pytest tests/test_cuda.py``).
"""

from __future__ import annotations

import math

import pytest
import torch

from spindoctor_torch.experiment import Experiment
from spindoctor_torch.fem.assemble import assemble
from spindoctor_torch.mesh.structured import structured_box
from spindoctor_torch.model import Model
from spindoctor_torch.sequences import PGSE
from spindoctor_torch.solvers.btpde import solve_btpde
from spindoctor_torch.solvers.mf import solve_mf

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CUDA = torch.device("cuda")


def _mesh():
    """Two permeable compartments, jittered (no symmetric accidents), 1,536 tets."""
    return structured_box((2.0, 1.0, 1.0), (8, 4, 4), x_interfaces=[1.0], jitter=0.1)


def _experiment(device):
    return Experiment(
        [PGSE(2000.0, 5000.0)],
        bvalues=torch.tensor([500.0, 2000.0], device=device),
        directions=torch.tensor(
            [[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [1 / math.sqrt(3)] * 3], device=device
        ),
    )


def _model(points, kappa):
    mesh = _mesh().with_points(points)
    return Model(mesh, diffusivity=0.002, permeability=kappa)


def _smooth(points):
    return torch.sin(points[:, [1, 2, 0]] * 1.3) * 0.05


def _on(device):
    p = _mesh().points.to(device).clone().requires_grad_(True)
    k = torch.tensor(1e-3, dtype=torch.float64, device=device, requires_grad=True)
    return p, k


def test_assembly_values_and_gradients_match_cpu():
    """Every matrix value to 1e-12 relative; d(Σ w·values)/d(points, κ) to 1e-11."""
    out = {}
    for dev in ("cpu", "cuda"):
        p, k = _on(dev)
        fem = assemble(_model(p, k))
        mats = [fem.M, fem.K, fem.Q, *fem.J]
        g = torch.Generator().manual_seed(0)
        loss = sum(
            (m.values * torch.randn(m.values.shape, generator=g, dtype=torch.float64).to(dev)).sum()
            for m in mats
        )
        loss.backward()
        assert all(m.values.device.type == dev for m in mats)
        out[dev] = ([m.values.detach().cpu() for m in mats], p.grad.cpu(), k.grad.cpu())
    for a, b in zip(out["cpu"][0], out["cuda"][0]):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12 * float(a.abs().max()))
    torch.testing.assert_close(out["cuda"][1], out["cpu"][1], rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(out["cuda"][2], out["cpu"][2], rtol=1e-11, atol=0.0)


def test_solve_mf_signal_and_gradient_match_cpu():
    """MF signals to 1e-10 relative and the gradient of Σ|S|² w.r.t. points and κ to 1e-8
    (the eigenpairs are computed on the CPU either way; the reduction, the exponentials and
    the backward run on the device)."""
    out = {}
    for dev in ("cpu", "cuda"):
        p, k = _on(dev)
        res = solve_mf(_model(p, k), _experiment(dev), length_scale=0.3, neig_max=80, quiet=True)
        assert res.signal.device.type == dev
        (res.signal.abs() ** 2).sum().backward()
        out[dev] = (res.signal.detach().cpu(), (p.grad * _smooth(p.detach())).sum().cpu(), k.grad)
    s_cpu, s_gpu = out["cpu"][0], out["cuda"][0]
    assert float((s_gpu - s_cpu).abs().max() / s_cpu.abs().max()) < 1e-10
    for i in (1, 2):
        a, b = float(out["cpu"][i]), float(out["cuda"][i])
        assert abs(a - b) <= 1e-8 * abs(a), (i, a, b)


def test_solve_btpde_signal_and_gradient_match_cpu():
    """BTPDE signals (Crank-Nicolson, 40 steps) to 1e-9 relative; the gradient of Σ|S|²
    w.r.t. the points to 1e-7 (iterative solves on the device, direct ones on the CPU)."""
    out = {}
    for dev in ("cpu", "cuda"):
        p, k = _on(dev)
        res = solve_btpde(_model(p, k), _experiment(dev), nsteps=40, quiet=True)
        assert res.signal.device.type == dev
        (res.signal.abs() ** 2).sum().backward()
        out[dev] = (res.signal.detach().cpu(), (p.grad * _smooth(p.detach())).sum().cpu())
    s_cpu, s_gpu = out["cpu"][0], out["cuda"][0]
    assert float((s_gpu - s_cpu).abs().max() / s_cpu.abs().max()) < 1e-9
    a, b = float(out["cpu"][1]), float(out["cuda"][1])
    assert abs(a - b) <= 1e-7 * abs(a), (a, b)
