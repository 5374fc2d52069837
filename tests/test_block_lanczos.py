"""Thick-restart block Lanczos (spindoctor_torch.linalg.block_lanczos).

Reference: SciPy's dense generalized ``eigh`` of the same pencil. The shift-invert solver
is SciPy's SuperLU here, so the tests need no optional extra (the method is the forward of
the ``cholmod`` backend when scikit-sparse is installed).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from spindoctor_torch.errors import SolverError
from spindoctor_torch.fem.assemble import assemble
from spindoctor_torch.linalg.block_lanczos import block_shift_invert_eigsh, linear_rayleigh_shift
from spindoctor_torch.mesh.structured import structured_box
from spindoctor_torch.model import Model


def _pencil(mesh):
    fem = assemble(Model(mesh, diffusivity=0.002))
    A = (fem.K + fem.Q).to_scipy().tocsr()
    A = sp.csr_matrix(0.5 * (A + A.T))
    return A, fem.M.to_scipy().tocsr(), mesh.points.detach().numpy()


def _solver(A, B, sigma):
    lu = spla.splu(sp.csc_matrix(A - sigma * B))
    return lu.solve


@pytest.fixture(scope="module")
def jittered_box():
    return _pencil(structured_box((1.0, 1.3, 0.8), (8, 10, 7), jitter=0.2))


@pytest.mark.parametrize("block", [1, 4, 8])
def test_matches_dense_eigh(jittered_box, block):
    A, B, x = jittered_box
    ref = sla.eigh(A.toarray(), B.toarray(), eigvals_only=True)
    sigma = linear_rayleigh_shift(A, B, x)
    nev = 40
    w, V, stats = block_shift_invert_eigsh(A, B, nev, _solver(A, B, sigma), sigma, block=block)
    # tol 1e-11 on the scale-aware residual: eigenvalues to ~1e-12 relative of λ_max
    np.testing.assert_allclose(w, ref[:nev], rtol=0, atol=1e-11 * ref[nev - 1])
    assert abs(w[0]) < 1e-12 * ref[nev - 1]  # Neumann constant mode
    gram = V.T @ (B @ V)
    assert np.abs(gram - np.eye(nev)).max() < 1e-10
    res = np.linalg.norm(A @ V - (B @ V) * w, axis=0) / (w[-1] * np.linalg.norm(B @ V, axis=0))
    assert res.max() < 1e-10
    assert stats["nsolve"] >= nev and stats["residual"] <= 1e-11


def test_degenerate_cube_clusters():
    """Cube (Kuhn grid): exactly degenerate pairs come out with equal eigenvalues, also when
    ``nev`` ends inside the spectrum's clusters."""
    A, B, x = _pencil(structured_box((1.0, 1.0, 1.0), (7, 7, 7)))
    ref = sla.eigh(A.toarray(), B.toarray(), eigvals_only=True)
    sigma = linear_rayleigh_shift(A, B, x)
    solve = _solver(A, B, sigma)
    w1, V1, _ = block_shift_invert_eigsh(A, B, 12, solve, sigma)
    np.testing.assert_allclose(w1, ref[:12], rtol=0, atol=1e-11 * ref[11])
    pairs = np.flatnonzero(np.abs(np.diff(ref[:12])) < 1e-12 * ref[11])
    assert pairs.size >= 1  # the grid's symmetry makes exact pairs
    for i in pairs:
        assert abs(w1[i + 1] - w1[i]) < 1e-10 * ref[11]
    w2, V2, _ = block_shift_invert_eigsh(A, B, 30, solve, sigma, block=16)
    np.testing.assert_allclose(w2, ref[:30], rtol=0, atol=1e-11 * ref[29])
    assert np.abs(V2.T @ (B @ V2) - np.eye(30)).max() < 1e-10


def test_shift_lies_below_the_first_nonzero_eigenvalue(jittered_box):
    A, B, x = jittered_box
    ref = sla.eigh(A.toarray(), B.toarray(), eigvals_only=True)
    sigma = linear_rayleigh_shift(A, B, x)
    assert -0.1 * ref[1] < sigma < 0  # 5 % of a quotient within 2× of λ_1


def test_bad_input():
    A, B, x = _pencil(structured_box((1.0, 1.0, 1.0), (2, 2, 2)))
    solve = _solver(A, B, -1e-3)
    with pytest.raises(ValueError, match="nev"):
        block_shift_invert_eigsh(A, B, A.shape[0], solve, -1e-3)
    with pytest.raises(SolverError, match="no convergence"):
        block_shift_invert_eigsh(A, B, 5, solve, -1e-3, maxiter=1, tol=1e-30)
