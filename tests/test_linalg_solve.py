"""Sparse solves: SuperLU handles, the differentiable sparse_solve, COCG and preconditioners.

References: dense ``torch.linalg.solve`` on the same matrices (and its autograd for the
gradients, compared at the nonzeros), float64 ``gradcheck``, and identities (transpose and
conjugate solves, symmetry of the preconditioners).
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES

from spindoctor_torch.errors import SolverError
from spindoctor_torch.fem.assemble import assemble
from spindoctor_torch.linalg.solve import (
    AMGPreconditioner,
    FactorPreconditioner,
    JacobiPreconditioner,
    SuperLUFactor,
    cocg,
    csr_tensor,
    real_matmul,
    sparse_solve,
)
from spindoctor_torch.linalg.sparse import SparseMatrix
from spindoctor_torch.mesh.structured import structured_box
from spindoctor_torch.model import Model

RTOL = 1e-10  # float64 direct solves of matrices with condition numbers ~1e3


@pytest.fixture(scope="module")
def fem():
    """FEM matrices of a small jittered box (n = 48) on one pattern."""
    mesh = structured_box((3.0, 2.0, 2.0), (3, 2, 2), jitter=0.1)
    return assemble(Model(mesh, diffusivity=0.002))


def _bt_matrix(fem, q=3e-4, c=50.0) -> SparseMatrix:
    """Complex-symmetric Bloch-Torrey step matrix M + c(K + i q J_x)."""
    values = fem.M.values + c * fem.K.values + 1j * (c * q) * fem.J[0].values
    return SparseMatrix(fem.M.pattern, values)


def _nonsymmetric(fem) -> SparseMatrix:
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(fem.M.pattern.nnz, generator=gen, dtype=torch.float64)
    return SparseMatrix(fem.M.pattern, fem.M.values + 50.0 * fem.K.values + 1e-3 * noise)


@pytest.mark.parametrize("kind", ["real_spd", "complex_symmetric", "real_nonsymmetric"])
@pytest.mark.parametrize("bshape", ["vector", "block"])
def test_sparse_solve_matches_dense(fem, kind, bshape):
    A = {
        "real_spd": SparseMatrix(fem.M.pattern, fem.M.values + 50.0 * fem.K.values),
        "complex_symmetric": _bt_matrix(fem),
        "real_nonsymmetric": _nonsymmetric(fem),
    }[kind]
    n = A.shape[0]
    gen = torch.Generator().manual_seed(1)
    shape = (n,) if bshape == "vector" else (n, 3)
    b = torch.randn(shape, generator=gen, dtype=torch.complex128)
    x = sparse_solve(A, b)
    ref = torch.linalg.solve(A.to_dense().to(torch.complex128), b)
    assert torch.allclose(x, ref, rtol=RTOL, atol=RTOL * float(ref.abs().max()))


def test_sparse_solve_gradients_match_dense_autograd(fem):
    """Gradients w.r.t. the values (at the nonzeros) and b agree with torch's dense solve."""
    A = _bt_matrix(fem)
    n = A.shape[0]
    gen = torch.Generator().manual_seed(2)
    b = torch.randn(n, 2, generator=gen, dtype=torch.complex128)
    w = torch.randn(n, 2, generator=gen, dtype=torch.complex128)
    for values_real in (False, True):
        vals = (A.values.real if values_real else A.values).detach().clone().requires_grad_(True)
        bb = b.clone().requires_grad_(True)
        loss = (sparse_solve(SparseMatrix(A.pattern, vals), bb) * w).real.sum()
        gv, gb = torch.autograd.grad(loss, (vals, bb))
        vals_d = vals.detach().clone().requires_grad_(True)
        bd = b.clone().requires_grad_(True)
        dense = torch.zeros(n, n, dtype=vals_d.dtype).index_put(
            (A.pattern.rows, A.pattern.cols), vals_d, accumulate=True
        )
        loss_d = (torch.linalg.solve(dense.to(torch.complex128), bd) * w).real.sum()
        gv_d, gb_d = torch.autograd.grad(loss_d, (vals_d, bd))
        assert torch.allclose(gv, gv_d, rtol=1e-9, atol=1e-12 * float(gv_d.abs().max()))
        assert torch.allclose(gb, gb_d, rtol=1e-9, atol=1e-12 * float(gb_d.abs().max()))


def test_sparse_solve_gradcheck(fem):
    """torch.autograd.gradcheck (float64 central differences) on a real system."""
    A = SparseMatrix(fem.M.pattern, fem.M.values + 50.0 * fem.K.values)
    vals = A.values.detach().clone().requires_grad_(True)
    b = torch.randn(A.shape[0], dtype=torch.float64, requires_grad=True)

    def f(v, rhs):
        return sparse_solve(SparseMatrix(A.pattern, v), rhs)

    assert torch.autograd.gradcheck(f, (vals, b), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_superlu_factor_transpose_conjugate_and_real_factor(fem):
    A = _nonsymmetric(fem)
    Ac = SparseMatrix(A.pattern, A.values + 0.3j * fem.J[1].values)
    dense = Ac.to_dense()
    n = dense.shape[0]
    b = torch.randn(n, 2, generator=torch.Generator().manual_seed(4), dtype=torch.complex128)
    f = SuperLUFactor(Ac)
    assert f.is_complex and f.nnz_factor >= A.pattern.nnz and f.nbytes > 0
    for trans, op in (("N", dense), ("T", dense.T), ("H", dense.conj().T)):
        x = f.solve(b, trans=trans)
        assert torch.allclose(op @ x, b, rtol=RTOL, atol=RTOL), trans
    x = f.solve(b, conjugate=True)
    assert torch.allclose(dense.conj() @ x, b, rtol=RTOL, atol=RTOL)
    fr = SuperLUFactor(A)  # real factor, complex right-hand side
    xr = fr.solve(b, trans="T")
    assert torch.allclose(A.to_dense().T.to(b.dtype) @ xr, b, rtol=RTOL, atol=RTOL)
    with pytest.raises(ValueError, match="trans"):
        f.solve(b, trans="X")
    with pytest.raises(ValueError, match="rows"):
        f.solve(b[:-1])


def test_superlu_singular_matrix_raises(fem):
    with pytest.raises(SolverError, match="singular"):
        SuperLUFactor(SparseMatrix(fem.M.pattern, torch.zeros_like(fem.M.values)))


def test_sparse_solve_rejects_bad_input(fem):
    with pytest.raises(TypeError, match="SparseMatrix"):
        sparse_solve(torch.eye(3), torch.ones(3))
    with pytest.raises(ValueError, match="shape"):
        sparse_solve(fem.M, torch.ones(5, dtype=torch.float64))


def test_real_matmul_complex_block_matches_dense(fem):
    A = csr_tensor(fem.M.pattern, fem.K.values)
    x = torch.randn(fem.ndof, 3, generator=torch.Generator().manual_seed(5), dtype=torch.complex128)
    ref = fem.K.to_dense().to(x.dtype) @ x
    assert torch.allclose(real_matmul(A, x), ref, rtol=1e-13, atol=1e-16)
    assert torch.allclose(real_matmul(A, x[:, 0]), ref[:, 0], rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precond", ["none", "jacobi", "amg", "factor"])
def test_cocg_column_dependent_complex_symmetric(fem, precond, device):
    """Three columns, each with its own complex-symmetric matrix M + c(K + i q_j J_x), solved
    at once; compared with dense solves (relative error ≤ 1e-8 at rtol 1e-11)."""
    if precond == "factor" and device != "cpu":
        pytest.skip("the SuperLU preconditioner is CPU-only by design")
    c = 50.0
    qs = torch.tensor([0.0, 2e-4, 6e-4], dtype=torch.float64, device=device)
    pat = fem.M.pattern.to(device)
    B = csr_tensor(pat, (fem.M.values + c * fem.K.values).to(device))
    J = csr_tensor(pat, fem.J[0].values.to(device))

    def matvec(x):
        return real_matmul(B, x) + (1j * c) * qs * real_matmul(J, x)

    n = fem.ndof
    b = torch.randn(n, 3, generator=torch.Generator().manual_seed(6), dtype=torch.complex128)
    b = b.to(device)
    real = SparseMatrix(fem.M.pattern, fem.M.values + c * fem.K.values)
    prec = {
        "none": None,
        "jacobi": JacobiPreconditioner(real.diagonal().to(device)),
        "amg": AMGPreconditioner(real, device=device, max_coarse=10),
        "factor": FactorPreconditioner(SuperLUFactor(real)),
    }[precond]
    x, info = cocg(matvec, b, precond=prec, rtol=1e-11)
    assert info.converged and float(info.residual.max()) <= 1e-11
    for j in range(3):
        dense = (real.to_dense() + (1j * c * float(qs[j])) * fem.J[0].to_dense()).to(device)
        ref = torch.linalg.solve(dense, b[:, j])
        assert float((x[:, j] - ref).abs().max() / ref.abs().max()) < 1e-8, j
    # a warm start at the solution returns at once
    x2, info2 = cocg(matvec, b, precond=prec, x0=x, rtol=1e-9)
    assert info2.iterations == 0 and torch.equal(x2, x)


def test_cocg_failure_and_bad_preconditioner(fem):
    A = _bt_matrix(fem)
    B = csr_tensor(A.pattern, A.values)
    b = torch.ones(fem.ndof, dtype=torch.complex128)
    with pytest.raises(SolverError, match="did not converge"):
        cocg(lambda x: B @ x, b, rtol=1e-14, maxiter=2)
    x, info = cocg(lambda x: B @ x, b, rtol=1e-14, maxiter=2, raise_on_failure=False)
    assert not info.converged and info.iterations == 2
    with pytest.raises(SolverError, match="zero diagonal"):
        JacobiPreconditioner(torch.tensor([1.0, 0.0]))


def test_amg_preconditioner_is_symmetric_and_effective():
    """The V-cycle is a symmetric operator (uᵀP⁻¹v = vᵀP⁻¹u to 1e-12), and on a 4913-dof
    stiffness-dominated matrix it needs at least 2x fewer CG iterations than Jacobi."""
    mesh = structured_box((1.0, 1.0, 1.0), (16, 16, 16))
    fem = assemble(Model(mesh, diffusivity=0.002))
    A = SparseMatrix(fem.M.pattern, fem.M.values + 200.0 * fem.K.values)
    amg = AMGPreconditioner(A)
    gen = torch.Generator().manual_seed(7)
    u, v = (torch.randn(fem.ndof, dtype=torch.float64, generator=gen) for _ in range(2))
    lhs, rhs = float(u @ amg(v)), float(v @ amg(u))
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    B = csr_tensor(A.pattern, A.values)
    b = torch.randn(fem.ndof, 2, dtype=torch.float64, generator=gen)
    _, i_amg = cocg(lambda x: B @ x, b, precond=amg, rtol=1e-10)
    _, i_jac = cocg(lambda x: B @ x, b, precond=JacobiPreconditioner(A.diagonal()), rtol=1e-10)
    assert 2 * i_amg.iterations <= i_jac.iterations, (i_amg.iterations, i_jac.iterations)
    amg32 = AMGPreconditioner(A, dtype=torch.float32)
    x32, i32 = cocg(lambda x: B @ x, b, precond=amg32, rtol=1e-10)
    assert i32.converged and i32.iterations <= i_amg.iterations + 3
