"""The fit loop's mesh-quality guard: backtracking, remeshing, stopping.

The problems are tiny on purpose: an isotropic :class:`Affine` scale s of an unjittered
2 × 2 × 2 box, with the loss ``mesh.volume()`` (= V₀ s³, gradient 3 V₀ s² > 0). Adam's first
step from a fresh state is −lr · g / (|g| + ε) = −lr up to a relative 1e-8/|g| (ε = 1e-8), so
a large learning rate drives s negative: every tet is inverted (signed volume s³ V_tet < 0),
while isotropic scaling leaves every radius ratio unchanged. The expected numbers below
(accepted scales, losses, volumes, a plain two-step Adam) are closed forms, not outputs of
the loop.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from spindoctor_torch.errors import MeshError
from spindoctor_torch.mesh.structured import structured_box
from spindoctor_torch.optimize import Affine, QualityGuard, fit

BOX = dict(sides=(2.0, 2.0, 2.0), divisions=(2, 2, 2), origin=(-1.0, -1.0, -1.0))
V0 = 8.0  # µm³, volume of the 2 µm box
# Adam's step is lr·(1 - ε/|g|) with |g| ≥ 0.7 here: relative error ≤ 2e-8 per step.
ADAM_TOL = 1e-7


@pytest.fixture(scope="module")
def box():
    return structured_box(**BOX)


def plain_tet_volumes(points: np.ndarray, tets: np.ndarray) -> np.ndarray:
    """Signed tet volumes by the scalar triple product (independent of TetMesh)."""
    p = points[tets]
    a, b, c = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]
    return np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0


def plain_radius_ratio(p: np.ndarray) -> float:
    """3·r_in / r_circ of one tet (4, 3): r_in = 3V / area, circumcentre from the 3 × 3
    system 2 (x_k − x_0)·c = |x_k|² − |x_0|² (a different route from mesh.quality's)."""
    vol = abs(np.linalg.det(p[1:] - p[0])) / 6.0
    area = sum(
        0.5 * np.linalg.norm(np.cross(p[j] - p[i], p[k] - p[i]))
        for i, j, k in ((1, 2, 3), (0, 2, 3), (0, 1, 3), (0, 1, 2))
    )
    centre = np.linalg.solve(2.0 * (p[1:] - p[0]), (p[1:] ** 2).sum(1) - (p[0] ** 2).sum())
    return 3.0 * (3.0 * vol / area) / np.linalg.norm(centre - p[0])


def test_inverting_step_is_backtracked_to_the_first_valid_fraction(box):
    """lr = 4.5 proposes s = 1 − 4.5 = −3.5; halving from the last good state gives −1.25,
    −0.125 (inverted) and then s = 1 − 4.5/8 = 0.4375, the first valid point."""
    par = Affine(box, "isotropic")
    hist = fit(lambda: par.mesh().volume(), par, optimizer="adam", lr=4.5, maxiter=1, quiet=True)
    s = 1.0 - 4.5 / 8.0
    assert hist.niter == 1
    assert hist.events == ["iteration 0: step halved 3 time(s)"]
    assert abs(hist.parameters[0]["0:scale"] - s) < ADAM_TOL
    assert abs(float(par.values()["scale"]) - s) < ADAM_TOL
    # The accepted geometry: every tet positive, exactly s³ times its reference volume.
    ref = plain_tet_volumes(box.points.numpy(), box.tets.numpy())
    vol = plain_tet_volumes(par.points().detach().numpy(), box.tets.numpy())
    assert (vol > 0).all()
    np.testing.assert_allclose(vol, s**3 * ref, rtol=3 * ADAM_TOL)
    assert abs(hist.min_volume[0] - s**3 * ref.min()) < 3 * ADAM_TOL * s**3 * ref.min()
    # The loss is recorded before the step (V₀ at s = 1, closed form up to rounding).
    assert abs(hist.loss[0] - V0) < 1e-12


def test_second_iteration_starts_from_the_backtracked_geometry(box):
    """With two iterations, the loss of iteration 1 is V₀ s³ at the accepted s = 0.4375."""
    par = Affine(box, "isotropic")
    hist = fit(lambda: par.mesh().volume(), par, optimizer="adam", lr=4.5, maxiter=2, quiet=True)
    s = 1.0 - 4.5 / 8.0
    assert abs(hist.loss[1] - V0 * s**3) < 3 * ADAM_TOL * V0 * s**3


def plain_adam(grad, x0: float, lr: float, nstep: int) -> list[float]:
    """Iterates of textbook Adam (β = 0.9, 0.999, ε = 1e-8) on a scalar."""
    x, m, v, out = x0, 0.0, 0.0, []
    for t in range(1, nstep + 1):
        g = grad(x)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        x = x - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        out.append(x)
    return out


def test_remesh_called_once_and_fit_continues_on_the_returned_geometry(box):
    """max_backtracks = 0 and lr = 4.5: iteration 0 inverts and cannot be repaired, so
    ``remesh`` is called once with the restored parameterization (s = 1). It returns the
    same 2 µm box as a 3 × 3 × 3 mesh of a 0.2 µm reference box with scale 10, on which
    the Adam steps (−4.5, then ≈ −3.86) stay valid: no further remesh, and the fit must go on
    optimizing the returned scale from 10 (fresh Adam state)."""
    first = Affine(box, "isotropic")
    current = {"geometry": first}
    calls = []
    fine = structured_box((0.2, 0.2, 0.2), (3, 3, 3), origin=(-0.1, -0.1, -0.1))
    v_ref = 0.2**3

    def remesh(geometry):
        calls.append((geometry, float(geometry.values()["scale"])))
        new = Affine(fine, "isotropic")
        new.set_values({"scale": np.array(10.0)})
        current["geometry"] = new
        return new

    def objective():
        return current["geometry"].mesh().volume()

    guard = QualityGuard(max_backtracks=0, remesh=remesh)
    hist = fit(objective, first, optimizer="adam", lr=4.5, maxiter=3, quiet=True, guard=guard)

    assert len(calls) == 1
    assert calls[0][0] is first
    assert calls[0][1] == 1.0  # the last good state, not the rejected s = −3.5
    assert float(first.values()["scale"]) == 1.0
    assert len(hist.events) == 1 and hist.events[0].startswith("iteration 0: remeshed")
    new = current["geometry"]
    # Independent trajectory of the returned scale: Adam on V_ref s³ from s = 10.
    s1, s2 = plain_adam(lambda s: 3.0 * v_ref * s * s, 10.0, 4.5, 2)
    assert abs(s1 - 5.5) < 1e-6 and s2 > 0  # both steps valid, as the docstring says
    expected_loss = [V0, v_ref * 10.0**3, v_ref * s1**3]
    np.testing.assert_allclose(hist.loss, expected_loss, rtol=1e-12 + 3 * ADAM_TOL)
    scales = [p["0:scale"] for p in hist.parameters]
    np.testing.assert_allclose(scales, [10.0, s1, s2], rtol=ADAM_TOL)
    assert abs(float(new.values()["scale"]) - s2) < ADAM_TOL * s2
    # The recorded minimum volume is the returned mesh's: (10 · 0.2/3)³ / 6 per tet at it 0.
    ref_fine = plain_tet_volumes(fine.points.numpy(), fine.tets.numpy())
    assert abs(hist.min_volume[0] - 1e3 * ref_fine.min()) < 1e-12


def test_remesh_is_called_in_every_failing_iteration(box):
    """If the returned geometry fails again (scale 1, Adam restarts with a −4.5 step), each
    iteration remeshes once, with the geometry returned by the previous call."""
    first = Affine(box, "isotropic")
    current = {"geometry": first}
    calls = []

    def remesh(geometry):
        calls.append(geometry)
        current["geometry"] = Affine(box, "isotropic")
        return current["geometry"]

    guard = QualityGuard(max_backtracks=0, remesh=remesh)
    hist = fit(
        lambda: current["geometry"].mesh().volume(),
        first,
        optimizer="adam",
        lr=4.5,
        maxiter=3,
        quiet=True,
        guard=guard,
    )
    assert len(calls) == 3
    assert calls[0] is first and calls[1] is not first and calls[2] is not calls[1]
    assert [e.split(" (")[0] for e in hist.events] == [
        f"iteration {it}: remeshed" for it in range(3)
    ]
    np.testing.assert_allclose(hist.loss, [V0] * 3, rtol=1e-12)


def test_without_remesh_the_fit_stops_and_names_the_inverted_volume(box):
    """Same failure without ``remesh``: the fit stops at iteration 0 with the last good
    state, and the event names the minimum tet volume at the rejected s = −3.5:
    (−3.5)³ · V_tet,min."""
    par = Affine(box, "isotropic")
    guard = QualityGuard(max_backtracks=0)
    hist = fit(lambda: par.mesh().volume(), par, lr=4.5, maxiter=3, quiet=True, guard=guard)
    assert hist.niter == 0
    assert float(par.values()["scale"]) == 1.0
    assert len(hist.events) == 1
    event = hist.events[0]
    assert event.startswith("iteration 0: quality guard stopped the fit")
    m = re.search(r"min tet volume (\S+) µm³", event)
    assert m is not None, event
    ref = plain_tet_volumes(box.points.numpy(), box.tets.numpy())
    # Printed with 6 significant digits: relative 1e-5 covers rounding and Adam's ε.
    assert abs(float(m.group(1)) - (-3.5) ** 3 * ref.min()) < 1e-5 * 3.5**3 * ref.min()


def test_without_remesh_a_flattening_step_names_the_radius_ratio(box):
    """Anisotropic scale, loss = s_x: Adam's first step (lr = 0.9) flattens x to s_x = 0.1
    without inverting anything; with the floor min(0.65, 1.0 × initial 0.717) = 0.65 both
    that trial and its halving (s_x = 0.55, radius ratio 0.627) are rejected, so the fit
    stops, and the event names the minimum radius ratio of the last trial and the floor."""
    par = Affine(box, "anisotropic")
    guard = QualityGuard(min_radius_ratio=0.65, relative=1.0, max_backtracks=1)
    hist = fit(lambda: par.parameters["scale"][0], par, lr=0.9, maxiter=2, quiet=True, guard=guard)
    assert hist.niter == 0
    np.testing.assert_array_equal(par.values()["scale"], [1.0, 1.0, 1.0])
    assert len(hist.events) == 1
    m = re.search(r"min radius ratio (\S+) < (\S+) after 1 halving", hist.events[0])
    assert m is not None, hist.events
    tets = box.tets.numpy()
    initial = min(plain_radius_ratio(box.points.numpy()[t]) for t in tets)
    pts = box.points.numpy() * np.array([0.55, 1.0, 1.0])
    expected = min(plain_radius_ratio(pts[t]) for t in tets)
    assert expected < 0.65 < initial  # the premises of the test
    # 6 printed digits (and Adam's ε moving s_x by ~1e-8): relative 1e-5.
    assert abs(float(m.group(1)) - expected) < 1e-5 * expected
    assert float(m.group(2)) == 0.65


def test_remesh_returning_an_inverted_mesh_raises(box):
    """A ``remesh`` that hands back a mesh with inverted tets (a reflected copy) is a bug
    in the caller's callable: the loop must not optimize on it but raise, naming the volume."""
    first = Affine(box, "isotropic")
    bad_points = box.points.clone()
    bad_points[:, 0] = -bad_points[:, 0]  # a reflection: every tet inverted
    bad = Affine(box.with_points(bad_points), "isotropic")
    v_min = float(plain_tet_volumes(bad_points.numpy(), box.tets.numpy()).min())
    assert v_min < 0

    guard = QualityGuard(max_backtracks=0, remesh=lambda geometry: bad)
    with pytest.raises(MeshError, match=r"remesh .*min tet volume -") as err:
        fit(lambda: first.mesh().volume(), first, lr=4.5, maxiter=2, quiet=True, guard=guard)
    reported = float(re.search(r"min tet volume (-[0-9.e-]+)", str(err.value)).group(1))
    assert abs(reported - v_min) <= 1e-5 * abs(v_min)
