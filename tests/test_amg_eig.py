"""Factorization-free eigensolver (spindoctor_torch.linalg.amg_eig).

References used here, none from the code under test: dense ``scipy.linalg.eigh`` of the same
pencil; ARPACK shift-invert (``scipy.sparse.linalg.eigsh`` with SuperLU) where the mesh is too
large for a dense solve; the exact null space of a Neumann Laplacian (constants per connected
compartment, since every row of the P1 stiffness matrix sums to zero); dense inverses for the
preconditioner.

Tolerances (measured values in the tests' comments): eigenvalues to 1e-11 relative. The
relative eigenvalue error of a Ritz value is about the square of its relative residual (≤ 1e-10
here), so what remains is round-off of the solver and of the reference (measured ≤ 6e-14); an
unconverged pair would be off by 1e-4 or more. Eigenvectors: the sine of the angle to the
reference is about residual/relative gap, ≤ 1e-9 here (measured ≤ 3e-11). Residuals are
recomputed here from the returned pairs.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from spindoctor_torch.errors import SolverError, SpinDoctorWarning
from spindoctor_torch.fem.assemble import assemble
from spindoctor_torch.linalg.amg_eig import BlockAMG, lobpcg_amg
from spindoctor_torch.mesh.gmsh_recipes import sphere
from spindoctor_torch.mesh.structured import structured_box
from spindoctor_torch.model import Model

D0 = 0.002  # µm²/µs


def pencil(mesh, **kw) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(A, B) = (K + Q, M) as SciPy CSR: stiffness·D (µm³/µs) and mass (µm³)."""
    fem = assemble(Model(mesh, diffusivity=D0, **kw))
    return sp.csr_matrix((fem.K + fem.Q).to_scipy()), sp.csr_matrix(fem.M.to_scipy())


def dense_pairs(A, B, k):
    Ad, Bd = A.toarray(), B.toarray()
    return sla.eigh(0.5 * (Ad + Ad.T), Bd, subset_by_index=(0, k - 1))


def brief_residuals(A, B, w, V):
    """‖Aφ − λBφ‖ / (|λ|‖Bφ‖ + ‖Aφ‖) per column (the accuracy the adjoint needs)."""
    AV, BV = A @ V, B @ V
    num = np.linalg.norm(AV - BV * w, axis=0)
    return num / (np.abs(w) * np.linalg.norm(BV, axis=0) + np.linalg.norm(AV, axis=0))


def subspace_sine(V, U, B):
    """Largest principal-angle sine between span(V) and span(U) (same dimension, both
    B-orthonormal): the B-norm of V's component B-orthogonal to span(U) (accurate for small
    angles, unlike √(1 − cos²))."""
    Z = V - U @ (U.T @ (B @ V))
    return float(np.sqrt(max(0.0, np.linalg.eigvalsh(Z.T @ (B @ Z))[-1])))


@pytest.fixture(scope="module")
def jittered_box():
    return pencil(structured_box((1.0, 1.2, 0.9), (10, 12, 9), jitter=0.15))  # 1430 nodes


def test_matches_dense_eigh_on_a_jittered_box(jittered_box):
    """Eigenvalues, eigenvectors (per cluster), B-orthonormality and residuals against dense
    eigh; dense_max=0 forces the iterative path on this small pencil."""
    A, B = jittered_box
    nev = 12
    w, V, info = lobpcg_amg(A, B, nev, tol=1e-10, dense_max=0)
    assert info["iterations"] > 0 and info["amg"] is not None
    ref, U = dense_pairs(A, B, nev + 1)
    assert w.shape == (nev,) and V.shape == (A.shape[0], nev)
    np.testing.assert_allclose(w[1:], ref[1:nev], rtol=1e-11)  # measured 6e-14
    # null eigenvalue: zero up to round-off on the scale of the spectrum (measured 8e-17)
    assert abs(w[0]) < 1e-12 * ref[nev - 1]
    gram = V.T @ (B @ V)
    assert np.abs(gram - np.eye(nev)).max() < 1e-12  # measured 1.4e-15
    res = brief_residuals(A, B, w[1:], V[:, 1:])  # measured 4.2e-11
    assert res.max() <= 1e-10 * 1.01, res.max()
    assert np.allclose(info["residuals"][1:], res, rtol=1e-6, atol=1e-14)
    # eigenvectors: this spectrum (jittered mesh) is simple, so each vector matches its dense
    # counterpart up to sign; the sine of the angle is ≈ residual / gap
    for j in range(1, nev):
        assert subspace_sine(V[:, [j]], U[:, [j]], B) < 1e-9, j  # measured ≤ 3.2e-11


def test_null_vector_is_the_constant(jittered_box):
    """Neumann Laplacian: A·1 = 0 exactly, so φ_0 = 1/√(1ᵀB1) (positive by the sign rule)."""
    A, B = jittered_box
    assert np.abs(A @ np.ones(A.shape[0])).max() < 1e-15 * np.abs(A).max()  # premise
    w, V, _ = lobpcg_amg(A, B, 4, dense_max=0)
    one = np.ones(A.shape[0])
    const = one / np.sqrt(one @ (B @ one))
    np.testing.assert_allclose(V[:, 0], const, rtol=1e-11)  # measured 1.6e-13


def test_two_compartments_give_a_two_dimensional_null_space():
    """Two slabs without permeability: A is block diagonal, λ_0 = λ_1 = 0 and the null space
    is spanned by the two compartment indicators (exact), whatever the basis returned."""
    mesh = structured_box((2.0, 1.0, 1.0), (16, 8, 8), x_interfaces=(1.0,))
    A, B = pencil(mesh)  # interface nodes are duplicated: 2 x 729 dofs
    nev = 10
    w, V, info = lobpcg_amg(A, B, nev, dense_max=0)
    ref, _ = dense_pairs(A, B, nev)
    assert np.abs(w[:2]).max() < 1e-12 * ref[nev - 1]
    np.testing.assert_allclose(w[2:], ref[2:nev], rtol=1e-11)
    graph = A.copy()
    graph.eliminate_zeros()  # the pattern holds the (zero) permeability coupling entries
    ncomp, labels = sp.csgraph.connected_components(graph, directed=False)
    assert ncomp == 2  # premise: no coupling between the compartments
    ind = np.stack([(labels == c).astype(float) for c in range(2)], axis=1)
    ind /= np.sqrt(np.einsum("ij,ij->j", ind, B @ ind))
    assert subspace_sine(V[:, :2], ind, B) < 1e-9


def test_cube_triple_eigenvalue_converges_as_a_subspace():
    """Unit cube on a Kuhn grid: the first nonzero eigenvalue is triple in the continuum (x, y,
    z modes); the grid's diagonals split it by only ~3e-6 relative, far below the gap to the
    next eigenvalue (a factor 2). Individual vectors inside such a cluster are determined only
    to residual/splitting ~ 1e-5, but the cluster's span to residual/gap: it must match."""
    A, B = pencil(structured_box((1.0, 1.0, 1.0), (10, 10, 10)))  # 1331 nodes
    nev = 8  # 0, triple, then a cluster 4-6 and one more: no cluster is cut
    w, V, _ = lobpcg_amg(A, B, nev, dense_max=0)
    ref, U = dense_pairs(A, B, nev + 1)
    assert ref[nev] - ref[nev - 1] > 1e-3 * ref[nev - 1]  # premise: the cut is in a gap
    # premise: a triple cluster (split < 1e-5 relative), well separated from λ_4
    assert ref[3] - ref[1] < 1e-5 * ref[3] and ref[4] > 1.5 * ref[3]
    np.testing.assert_allclose(w[1:], ref[1:nev], rtol=1e-11)  # measured 5e-14
    # measured: 3e-12 for the cluster, 1e-11 for all 8 (single vectors: 1e-9 and 1.0)
    assert subspace_sine(V[:, 1:4], U[:, 1:4], B) < 1e-9
    assert subspace_sine(V, U[:, :nev], B) < 1e-9


def test_sphere_from_gmsh_matches_dense():
    """A ball (gmsh, 885 nodes): near-degenerate multiplets (2l+1) of spherical harmonics."""
    A, B = pencil(sphere(5.0, h=0.9))
    nev = 20
    w, V, info = lobpcg_amg(A, B, nev, tol=1e-10, dense_max=0)
    ref, _ = dense_pairs(A, B, nev)
    np.testing.assert_allclose(w[1:], ref[1:], rtol=1e-11)  # measured 6e-14
    assert brief_residuals(A, B, w[1:], V[:, 1:]).max() <= 1.01e-10  # measured 4.7e-11


def test_coarse_cascade_matches_arpack_on_a_larger_box():
    """10k nodes: the start block comes from the AMG coarse level (cascade path); reference:
    ARPACK shift-invert with SuperLU, an independent method."""
    A, B = pencil(structured_box((1.0, 1.2, 0.9), (20, 24, 18), jitter=0.15))  # 9975 nodes
    nev = 30
    w, V, info = lobpcg_amg(A, B, nev)
    assert len(info["levels"]) >= 2  # levels 9975 → 499 → 16; the start comes from 499
    ref = np.sort(spla.eigsh(A.tocsc(), k=nev, M=B.tocsc(), sigma=-1e-6, return_eigenvectors=False))
    np.testing.assert_allclose(w[1:], ref[1:], rtol=1e-11)  # measured 4.4e-15
    assert abs(w[0]) < 1e-12 * ref[-1]
    assert brief_residuals(A, B, w[1:], V[:, 1:]).max() <= 1.01e-10  # measured 4.9e-11
    assert np.abs(V.T @ (B @ V) - np.eye(nev)).max() < 1e-12


def test_warm_start_converges_at_once(jittered_box):
    """X0 = converged eigenvectors: the first Rayleigh-Ritz step already meets the tolerance."""
    A, B = jittered_box
    w, V, _ = lobpcg_amg(A, B, 10, dense_max=0)
    w2, _, info = lobpcg_amg(A, B, 10, X0=V, dense_max=0)
    assert info["iterations"] <= 1
    np.testing.assert_allclose(w2[1:], w[1:], rtol=1e-12)


def test_dense_fallback_for_small_pencils(jittered_box):
    A, B = jittered_box
    w, V, info = lobpcg_amg(A, B, 6)  # 1430 ≤ dense_max (1500)
    assert info["iterations"] == 0 and info["amg"] is None
    ref, _ = dense_pairs(A, B, 6)
    np.testing.assert_allclose(w[1:], ref[1:], rtol=1e-12)


# ------------------------------------------------------------------------------- BlockAMG
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_block_amg_is_a_symmetric_positive_definite_contraction(jittered_box, dtype):
    """T = V-cycle ≈ C⁻¹ for C = A − σB: symmetric (to the working precision), positive
    definite, and the two-level error propagation I − TC has spectral radius well below 1
    (measured 0.50-0.52 on this mesh with degree-4 Chebyshev; bound 0.6). The eigenvalues of
    TC lie in (0, 1]: the smoother is scaled so that it never overshoots."""
    A, B = jittered_box
    n = A.shape[0]
    sigma = -1e-3
    amg = BlockAMG(A, B, sigma=sigma, dtype=dtype)
    T = amg.apply(np.eye(n))
    eps = np.finfo(dtype).eps
    assert np.abs(T - T.T).max() <= 1e4 * eps * np.abs(T).max()
    assert np.linalg.eigvalsh(0.5 * (T + T.T))[0] > 0
    L = np.linalg.cholesky((A - sigma * B).toarray())
    mu = np.linalg.eigvalsh(L.T @ (0.5 * (T + T.T)) @ L)  # the eigenvalues of TC
    assert mu.min() > 0.4 and mu.max() < 1.0 + 1e3 * eps, (mu.min(), mu.max())
    # one column at a time, a vector, or the whole block: the same operator
    R = np.random.default_rng(1).standard_normal((n, 3))
    np.testing.assert_allclose(amg.apply(R[:, 1]), amg.apply(R)[:, 1], rtol=1e3 * eps)
    np.testing.assert_allclose(amg(R), T @ R, rtol=1e3 * eps, atol=1e3 * eps * np.abs(T @ R).max())


def test_block_amg_set_shift_matches_a_new_hierarchy(jittered_box):
    """The Galerkin products of A and B make the shift changeable: set_shift(σ') gives the
    same operator as building with σ' when the aggregation does not depend on σ."""
    A, B = jittered_box
    a1 = BlockAMG(A, B, sigma=-1e-3)
    a1.set_shift(-2e-3)
    a2 = BlockAMG(A, B, sigma=-2e-3)
    R = np.random.default_rng(2).standard_normal((A.shape[0], 4))
    x1, x2 = a1.apply(R), a2.apply(R)
    # the prolongator smoothing uses A − σB at build time: a 1e-3 shift changes it slightly
    assert np.abs(x1 - x2).max() < 1e-2 * np.abs(x2).max()
    # and the cycle solves better than plain Jacobi on a smooth right-hand side
    C = (A + 2e-3 * B).tocsr()
    b = B @ np.ones(A.shape[0])
    x = a1.apply(b)
    assert np.linalg.norm(b - C @ x) < 0.5 * np.linalg.norm(b)


def test_block_amg_rejects_an_indefinite_shift(jittered_box):
    A, B = jittered_box
    with pytest.raises(SolverError, match="positive definite"):
        BlockAMG(A, B, sigma=1e-2)  # above the first nonzero eigenvalue (~1.4e-2)


# ----------------------------------------------------------------------------- validation
def test_input_validation(jittered_box):
    A, B = jittered_box
    with pytest.raises(TypeError, match="SciPy sparse"):
        lobpcg_amg(A.toarray(), B, 4)
    with pytest.raises(ValueError, match="same shape"):
        lobpcg_amg(A, B[:-1, :-1], 4)
    with pytest.raises(ValueError, match="nev"):
        lobpcg_amg(A, B, 0)
    with pytest.raises(ValueError, match="tol"):
        lobpcg_amg(A, B, 4, tol=0.0)
    with pytest.raises(ValueError, match="X0"):
        lobpcg_amg(A, B, 4, X0=np.ones((5, 2)), dense_max=0)
    with pytest.raises(TypeError, match="real"):
        lobpcg_amg(A.astype(complex), B, 4)
    with pytest.raises(ValueError, match="amg"):
        lobpcg_amg(A, B, 4, amg="cycle", dense_max=0)
    with pytest.raises(ValueError, match="degree"):
        BlockAMG(A, B, degree=0)
    amg = BlockAMG(A, B, sigma=-1e-3)
    with pytest.raises(ValueError, match="R must have shape"):
        amg.apply(np.ones(7))


def test_unconverged_run_warns(jittered_box):
    A, B = jittered_box
    with pytest.warns(SpinDoctorWarning, match="did not reach"):
        _, _, info = lobpcg_amg(A, B, 10, maxiter=2, dense_max=0)
    assert not info["converged"]
