"""Issue 7 acceptance: geometry recovered by gradient descent through the simulator.

Each test runs one of the example scripts in ``examples/`` (their ``run`` function) and
asserts the issue's numbers. Targets never come from the optimized mesh: the radius and the
myelin fits use the analytical radial eigenbasis of infinite (layered) cylinders
(:mod:`spindoctor_torch.solvers.analytical`), the bend/twist and free-form fits an
independently generated finer mesh. The tolerances are the issue's; the comments give the
measured errors and their dominant source (discretization of the optimized mesh).

Default tests (radius, radius with noise, the L-BFGS guard and the surface metric) take about
a minute on one core; the full-size fits are ``@pytest.mark.slow``.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spindoctor_torch.mesh.structured import structured_box
from spindoctor_torch.optimize import (
    INVALID_LOSS,
    Affine,
    fit,
    point_surface_distance,
    surface_distances,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str):
    """Import ``examples/<name>.py`` as a module (examples are scripts, not a package)."""
    key = f"_sdt_example_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


# ------------------------------------------------------------------------- cylinder radius
def test_radius_recovered_within_1_percent():
    """R = 3 → 4.2 µm from exact analytical signals (6 in-plane directions, 2 PGSE, b ≤ 4000).

    Measured 0.27 % (fit 4.2115 µm): the inscribed polygon of the h = 0.5 mesh has a slightly
    smaller effective radius, so the fit overshoots a little. Tolerance: the issue's 1 %."""
    s = _example("fit_radius").run(maxiter=2, confirm=False, render=False, quiet=True)
    assert s["relative_error"] < 0.01, s["radius_fit"]
    assert s["history"].loss[-1] < 1e-3 * s["history"].loss[0]


def test_radius_with_rician_noise_within_3_percent():
    """Same fit on magnitudes with 2 % Rician noise (seed 0), Rician negative log-likelihood.

    Measured 0.64 % (seeds 1-3: 0.33, 0.87, 0.73 %). Tolerance: the issue's 3 %."""
    s = _example("fit_radius").run(
        noise=0.02, seed=0, maxiter=2, confirm=False, render=False, quiet=True
    )
    assert s["relative_error"] < 0.03, s["radius_fit"]


# ------------------------------------------------------------------------ loop guard, metric
def test_lbfgs_line_search_never_simulates_an_inverted_mesh():
    """The loss pulls an isotropic scale towards −0.5 (every tet inverted). L-BFGS trial
    points with inverted tets are answered with INVALID_LOSS without calling the objective,
    so the objective only ever sees valid meshes and the fit ends on a valid one."""
    cube = structured_box((2.0, 2.0, 2.0), (2, 2, 2), origin=(-1.0, -1.0, -1.0))
    par = Affine(cube, "isotropic")
    seen = []

    def objective():
        m = par.mesh()
        seen.append(float(m.tet_signed_volumes().detach().min()))
        return (par.parameters["scale"] + 0.5) ** 2

    hist = fit(objective, par, optimizer="lbfgs", lr=1.0, maxiter=3, quiet=True)
    assert min(seen) > 0.0
    assert float(par.parameters["scale"].detach()) > 0.0
    assert min(hist.min_volume) > 0.0
    assert any("rejected" in e for e in hist.events), hist.events
    assert INVALID_LOSS > 1e20


def test_point_surface_distance_closed_forms():
    """Distances to the triangle (0,0,0), (1,0,0), (0,1,0): above the interior (plane
    distance), beyond an edge, beyond a vertex; and between concentric spheres."""
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float64)
    pts = torch.tensor(
        [[0.2, 0.2, 0.5], [0.2, 0.2, -0.5], [2, 0, 0], [-1, -1, 0], [1, 1, 1], [0.5, -1, 0.3]],
        dtype=torch.float64,
    )
    expected = [0.5, 0.5, 1.0, math.sqrt(2), math.sqrt(1.5), math.sqrt(1.09)]
    d = point_surface_distance(pts, v, [[0, 1, 2]])
    np.testing.assert_allclose(d.numpy(), expected, rtol=0, atol=1e-15)
    # Two parallel unit squares 0.5 apart: every sample projects inside the other square.
    sq = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float64)
    faces = [[0, 1, 2], [0, 2, 3]]
    chamfer, hausdorff = surface_distances(sq, faces, sq + torch.tensor([0, 0, 0.5]), faces)
    assert abs(float(chamfer) - 0.5) < 1e-14 and abs(float(hausdorff) - 0.5) < 1e-14


# ------------------------------------------------------------- coarse versions (default)
def test_bend_and_twist_coarse_within_5_percent():
    """Bend 0.06 → 0.12 and twist 1.5 → 3.0 rad on an h = 0.35 mesh (964 nodes) against an
    h = 0.2 target mesh; 15 directions, 2 PGSE, 3 b-values.

    Measured 0.6 % (bend) and 3.2 % (twist): the twist is the weakly determined parameter and
    the coarse mesh's discretization error shifts it (the linearized bias against an
    h = 0.16 target is 2.4 % at h = 0.35, 0.9 % at h = 0.25). Tolerance: the issue's 5 %."""
    s = _example("fit_bend_twist").run(h=0.35, h_target=0.2, render=False, quiet=True)
    assert s["relative_error"]["bend"] < 0.05, s["fit"]
    assert s["relative_error"]["twist"] < 0.05, s["fit"]


def test_myelin_coarse_within_5_percent():
    """Axon radius 2 → 2.6, outer radius 3 → 3.5 µm and κ 2e-4 → 5e-5 µm/µs on an h = 0.6
    two-compartment mesh, one in-plane direction, against the analytical two-layer cylinder.

    Measured 0.29 %, 0.27 %, 0.38 %. Tolerance: the issue's 5 %."""
    s = _example("fit_myelin").run(h=0.6, ndirection=1, maxiter=5, render=False, quiet=True)
    for k, err in s["relative_error"].items():
        assert err < 0.05, (k, s["fit"])


# ---------------------------------------------------------------------- full-size (slow)
@pytest.mark.slow
def test_bend_and_twist_recovered_within_5_percent():
    """Bend 0.06 → 0.12 and twist 1.5 → 3.0 rad on an h = 0.25 mesh; target from an h = 0.16
    mesh deformed by SpinDoctor's rule; 15 directions, 2 PGSE, 3 b-values.

    Measured 0.36 % (bend) and 0.44 % (twist); the linearized bias of the mesh
    discretization predicts 0.3 % and 0.9 %. Tolerance: the issue's 5 %."""
    s = _example("fit_bend_twist").run(render=False, quiet=True)
    assert s["relative_error"]["bend"] < 0.05, s["fit"]
    assert s["relative_error"]["twist"] < 0.05, s["fit"]


@pytest.mark.slow
def test_myelin_radii_and_permeability_within_5_percent():
    """Axon radius 2 → 2.6, outer radius 3 → 3.5 µm and κ 2e-4 → 5e-5 µm/µs against the
    analytical two-layer cylinder (3 PGSE with different TE, T2 and D per layer).

    Measured 0.11 %, 0.06 % and 1.0 % (h = 0.5 mesh, 6 L-BFGS iterations; κ, the least
    determined, is still converging). Tolerance: the issue's 5 %."""
    s = _example("fit_myelin").run(ndirection=2, render=False, quiet=True)
    for k, err in s["relative_error"].items():
        assert err < 0.05, (k, s["fit"])


@pytest.mark.slow
def test_freeform_sphere_to_ellipsoid():
    """Ball of the same volume → ellipsoid (6, 4, 3) µm from 32 directions × 3 b-values × 2
    diffusion times: Chamfer distance to the target surface reduced by ≥ 70 % and no
    inverted tet at any iteration (minimum tet volume recorded per iteration).

    Measured 0.591 → 0.099 µm (83 %) in 45 Adam iterations; smallest tet volume over all
    iterations 0.033 µm³ (0.038 at the start)."""
    s = _example("fit_freeform").run(render=False, quiet=True)
    assert s["chamfer_reduction"] >= 0.70, (s["chamfer_start"], s["chamfer_final"])
    assert min(s["history"].min_volume) > 0.0
    assert len(s["history"].min_volume) == s["history"].niter
