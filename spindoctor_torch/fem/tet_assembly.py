"""Volume-term assembly (M, K, J_x/y/z and compartment volumes) as one autograd Function
with an analytic backward, in cache-sized tet blocks.

Every tet matrix is symmetric, so values are accumulated on the *upper triangle* of the shared
pattern (10 entries per tet, pairs p = (k, l), k ≤ l, of
:data:`~spindoctor_torch.fem.elements.TET_PAIRS`) and expanded to the full pattern with one
gather. Tets are processed in blocks (see ``_schedule``) so that the per-block temporaries
((B,) to (10, B) arrays) stay in cache and the memory above the outputs is O(block).

Notation (per tet; coordinates first, X[d, m] = x_m^d): edges e_k = x_k − x_0 (k = 1..3),
cofactors c_k = e_{k+1} × e_{k+2} (edge indices mod 3: c_1 = e_2×e_3, c_2 = e_3×e_1,
c_3 = e_1×e_2), c_0 = −Σc_k, det = e_1·c_1 = 6V, ∇λ_k = c_k/det, S^d = Σ_m x_m^d.

* Stiffness: with D_s = (D + Dᵀ)/2 of the tet's compartment, w = 1/(6 det) and the Gram
  matrix G_ij = c_i·D_s c_j (i, j = 1..3), K_e[k, l] = w c_kᵀ D_s c_l gives
  K_ij = w G_ij, K_0j = −w r_j with r_j = Σ_i G_ij, K_00 = w Σ_j r_j.
  (K is defined through the symmetric part of D: identical for the symmetric tensors a Model
  holds, and its gradient with respect to D is then symmetric.) Isotropic compartments
  (D = d·I, the common case) take a fast path G_ij = d c_i·c_j; same function, fewer products.
* Mass and first moments do not need per-entry element values: for the upper entry (i, j)
  (mesh nodes x_i, x_j; P = 1 + δ_kl = 2 on the diagonal, 1 elsewhere) summing
  M_e = V P/20 and J_e^d = V P/120 (S^d + x_k^d + x_l^d) over the tets that hold it gives
  M = A0/20,  J^d = (A_d + (x_i^d + x_j^d) A0)/120,
  with A0 = P Σ_t V_t and A_d = P Σ_t V_t S_t^d: only these per-tet values are scattered
  (P as ``index_add``'s alpha).

Backward, from the upstream gradients g of the full-pattern values (folded onto the upper
entries: an entry and its transpose summed) and g_vol of the compartment volumes:

* ∂A0 = g_M/20 + Σ_d (x_i^d + x_j^d) g_J^d/120,  ∂A_d = g_J^d/120,
  ∂x_i^d = ∂x_j^d += A0 g_J^d/120 (per upper entry);
  per tet, with a0 = Σ_p P_p ∂A0[p], a_d = Σ_p P_p ∂A_d[p] over its 10 entries:
  ∂V = a0 + Σ_d a_d S^d + g_vol[compartment],  ∂x_m^d += V a_d.
* Stiffness: g_K of the 10 entries reduced to the 3×3 symmetric H (c_0 = −Σc_k eliminated):
  t_i = g_00 − g_0i, H_ii = 2(g_ii + t_i), H_ij = g_ij + t_i + t_j; then
  ∂c_i = w (D_s H C)_i,  ∂w = ½ Σ_i c_i·(D_s H C)_i,  ∂D_s = (w/2) Σ_i c_i (H C)_iᵀ,
  with (H C)_i = Σ_j H_ij c_j.
* ∂det = ∂V/6 − ∂w·w/det; through the cross products (a × b with gradient A: ∂a = b × A,
  ∂b = A × a): ∂e_k = ∂c_{k+1} × e_{k+2} + e_{k+1} × ∂c_{k+2} + ∂det·c_k;
  ∂x_0 = −Σ_k ∂e_k, ∂x_k += ∂e_k.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch.autograd.function import once_differentiable

__all__ = ["assemble_volume_terms"]

_A0, _K, _AX = 0, 1, 2  # upper-entry accumulators, in order: A0, K, A_x, A_y, A_z


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a × b over dim 0 of (3, ...) tensors (cheaper than ``linalg.cross`` on a leading dim)."""
    return torch.stack(
        (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])
    )


_P = (2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # 1 + δ_kl of the 10 pairs
_PAIR_WEIGHTS: dict = {}


def _pair_weights(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(10,) tensor of _P (cached per dtype and device)."""
    key = (dtype, device)
    w = _PAIR_WEIGHTS.get(key)
    if w is None:
        w = _PAIR_WEIGHTS[key] = torch.tensor(_P, dtype=dtype, device=device)
    return w


# Blocks and threads on CPU. With one intra-op thread, 2^15 tets per block keep a block's
# temporaries in cache (1e6 tets, CPU time of forward/backward: 2^14–2^15 0.45/0.9 s, 2^13
# 0.61/1.0 s, 2^17 0.49/1.1 s, all tets at once 1.27/3.05 s and twice the memory). With more
# threads, torch would open an OpenMP region for nearly every op of a block; when other
# processes hold the cores, each region waits milliseconds for a descheduled thread (1e6 tets
# on a loaded 2-core machine: 9 s forward, 19 s backward). Instead, blocks of _SERIAL_BLOCK
# tets keep every per-block tensor (at most 12·B elements) below torch's parallel grain
# (32768 elements), so each op runs serially, and the blocks are shared among worker threads
# (torch releases the GIL inside ops), each with its own accumulators.
_CACHE_BLOCK = 1 << 15
_SERIAL_BLOCK = 2730
_MAX_WORKERS = 4
# Blocks of at least this many tets scatter the per-tet values pair by pair (40 index_add
# calls, no copies); smaller blocks, where the per-call cost dominates, expand each channel
# to its 10 entries first (4 calls).
_PER_PAIR_MIN = 8192


def _num_workers() -> int:
    return max(1, min(torch.get_num_threads(), _MAX_WORKERS))


def _schedule(ntet: int, device: torch.device) -> list[list[tuple[int, int]]]:
    """Tet ranges [s, e) of the blocks, split into contiguous chunks, one per worker."""
    nworkers = _num_workers() if device.type == "cpu" else 1
    if device.type != "cpu":
        block = ntet
    else:
        block = _CACHE_BLOCK if nworkers == 1 else _SERIAL_BLOCK
    ranges = [(s, min(s + block, ntet)) for s in range(0, ntet, block)]
    nworkers = min(nworkers, len(ranges))
    bounds = [round(i * len(ranges) / nworkers) for i in range(nworkers + 1)]
    return [ranges[bounds[i] : bounds[i + 1]] for i in range(nworkers)]


def _run_chunks(work, chunks: list) -> None:
    """``work(i, chunks[i])`` for every chunk: in the calling thread for one chunk, else in
    one thread each. Grad mode is thread-local, so each worker runs under ``no_grad``."""

    def run(i):
        with torch.no_grad():
            work(i, chunks[i])

    if len(chunks) == 1:
        run(0)
        return
    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        for f in [pool.submit(run, i) for i in range(len(chunks))]:
            f.result()


_NINE: dict = {}


def _nine(device: torch.device) -> torch.Tensor:
    """(9, 1) arange: the flat entries of a 3×3 tensor."""
    n = _NINE.get(device)
    if n is None:
        n = _NINE[device] = torch.arange(9, device=device)[:, None]
    return n


def _node_sums(coord: torch.Tensor, fp) -> torch.Tensor:
    """(nupper,) x_i + x_j of one coordinate ``coord`` (npoint,) over the upper entries."""
    return coord.index_select(0, fp.upper_nodes[0]).add_(coord.index_select(0, fp.upper_nodes[1]))


def _isotropic(d: torch.Tensor) -> torch.Tensor | None:
    """(ncompartment,) scalars d_c if every D_c equals d_c·I exactly, else None."""
    scal = d[:, 0, 0]
    iso = scal[:, None, None] * torch.eye(3, dtype=d.dtype, device=d.device)
    return scal if bool(torch.equal(d, iso)) else None


class _Block:
    """Geometry of the tets [s, e): nodes (4B,), upper positions idx (10B,) (pair-major),
    coordinates x (3, 4, B), edges e (3, 3, B) with their cyclic shifts e1 = e_{k+1},
    e2 = e_{k+2}, cofactors c (3, 3, B) of c_1..c_3, det (B,), vol (B,)."""

    def __init__(self, points_t: torch.Tensor, fp, s: int, e: int):
        b = e - s
        self.nodes = fp.tet_nodes[:, s:e].reshape(-1)
        self.idx = fp.upper_map[:, s:e].reshape(-1)
        self.x = points_t.new_empty(3, 4, b)
        for d in range(3):  # three 1-D gathers: much faster than one along dim 1
            torch.index_select(points_t[d], 0, self.nodes, out=self.x[d].view(-1))
        self.e = self.x[:, 1:] - self.x[:, :1]
        self.e1 = self.e.roll(-1, 1)
        self.e2 = self.e.roll(-2, 1)
        self.c = _cross(self.e1, self.e2)
        self.det = (self.e[:, 0] * self.c[:, 0]).sum(0)
        self.vol = self.det / 6.0


def _apply_d(v: torch.Tensor, d_tet: torch.Tensor) -> torch.Tensor:
    """D v for per-tet tensors d_tet (B, 3, 3) and vectors v (3, n, B) → (3, n, B)."""
    dt = d_tet.permute(1, 2, 0)[:, :, None]  # (3, 3, 1, B)
    out = dt[:, 0] * v[0]
    out.addcmul_(dt[:, 1], v[1])
    return out.addcmul_(dt[:, 2], v[2])


def _d_times(v: torch.Tensor, d_iso, dsym, comp) -> torch.Tensor:
    """D_s v for the compartments ``comp`` of the block's tets. (Per-tet gathers use
    ``index_select``: advanced indexing opens an OpenMP region even for a few elements.)"""
    if d_iso is None:
        return _apply_d(v, dsym.index_select(0, comp))
    return v * d_iso.index_select(0, comp)


def _forward_block(g: _Block, comp, d_iso, dsym, upper: list, vol: torch.Tensor) -> None:
    """Scatter one block's A0, A_x, A_y, A_z (times P) and K into ``upper``, V into ``vol``."""
    b = g.det.shape[0]
    # Per-tet V and V·S^d, one value for all 10 entries of the tet, times P.
    tab = g.x.new_empty(4, b)
    tab[0] = g.vol
    torch.mul(g.x.sum(1), g.vol, out=tab[1:])
    if b >= _PER_PAIR_MIN:  # large blocks: ten scatters per channel, no copies
        idx = g.idx.view(10, b)
        for row, ch in zip((_A0, _AX, _AX + 1, _AX + 2), tab):
            for p in range(10):
                upper[row].index_add_(0, idx[p], ch, alpha=_P[p])
    else:  # small blocks: fewer ops, one (10, B) copy per channel
        pw = _pair_weights(g.x.dtype, g.x.device)[:, None]
        for row, ch in zip((_A0, _AX, _AX + 1, _AX + 2), tab):
            upper[row].index_add_(0, g.idx, (pw * ch).view(-1))
    # Stiffness from the Gram matrix of the cofactors (isotropic: d applied last).
    dc = g.c if d_iso is not None else _d_times(g.c, d_iso, dsym, comp)
    gd = (g.c * dc).sum(0)  # G_11, G_22, G_33
    go = (g.c * dc.roll(-1, 1)).sum(0)  # G_12, G_23, G_31
    r = gd + go + go.roll(1, 0)  # row sums r_j
    k = g.x.new_empty(10, b)
    torch.sum(r, 0, out=k[0])
    k[1:4] = gd
    torch.neg(r, out=k[4:7])
    k[7], k[8], k[9] = go[0], go[2], go[1]
    if d_iso is None:
        k /= 6.0 * g.det
    else:
        k *= d_iso.index_select(0, comp) / (6.0 * g.det)
    upper[_K].index_add_(0, g.idx, k.view(-1))
    vol.index_add_(0, comp, g.vol)


def _backward_block(g: _Block, comp, d_iso, dsym, grads, g_vol, grad_pt, grad_d) -> None:
    """Add one block's contributions to ``grad_pt`` (3, N) and ``grad_d`` (9·ncompartment,)
    (each None when not needed); ``grads`` = (∂A0, ∂A_x, ∂A_y, ∂A_z, ∂K) on the upper
    entries, None where absent."""
    b = g.det.shape[0]
    g_a, gu_k = grads[:4], grads[4]
    g_det = g.x.new_zeros(b)  # ∂det = ∂V/6 + (stiffness part)
    g_x_direct = None  # (3, B), the same for the 4 vertices
    if grad_pt is not None and any(ga is not None for ga in g_a):
        # Σ_p P_p ∂A[p] over the tet's entries (P already applied to the diagonal entries).
        sums = [None if ga is None else ga.index_select(0, g.idx).view(10, b).sum(0) for ga in g_a]
        if sums[0] is not None:
            g_det.add_(sums[0], alpha=1.0 / 6.0)
        svec = g.x.sum(1)
        g_x_direct = g.x.new_zeros(3, b)
        for d in range(3):
            if sums[1 + d] is not None:
                g_det.addcmul_(sums[1 + d], svec[d], value=1.0 / 6.0)
                torch.mul(sums[1 + d], g.vol, out=g_x_direct[d])
    if grad_pt is not None and g_vol is not None:
        g_det.add_(g_vol.index_select(0, comp), alpha=1.0 / 6.0)
    g_c = None
    if gu_k is not None:
        # Everything below carries the factor w = 1/(6 det) of K through g_K.
        gk = gu_k.index_select(0, g.idx).view(10, b) / (6.0 * g.det)
        t = gk[0] - gk[4:7]  # t_i = g_00 − g_0i
        hd = 2.0 * (gk[1:4] + t)  # H_ii
        ho = torch.stack((gk[7], gk[9], gk[8])) + t + t.roll(-1, 0)  # H_12, H_23, H_31
        hc = hd * g.c + ho * g.c.roll(-1, 1) + ho.roll(1, 0) * g.c.roll(1, 1)  # w H C
        if grad_d is not None:  # (w/2) Σ_i c_i (H C)_iᵀ, (3, 3, B)
            ctc = g.c[:, None, 0] * hc[None, :, 0]
            for i in (1, 2):
                ctc.addcmul_(g.c[:, None, i], hc[None, :, i])
            ctc *= 0.5
            nine = _nine(comp.device)
            grad_d.index_add_(0, (comp * 9 + nine).view(-1), ctc.view(-1))
        if grad_pt is not None:
            g_c = _d_times(hc, d_iso, dsym, comp)  # ∂c = w D H C
            g_det -= 0.5 * (g.c * g_c).sum((0, 1)) / g.det  # ∂w·w/det
    if grad_pt is None:
        return
    g_x = g.x.new_empty(3, 4, b)
    g_e = g_x[:, 1:]
    torch.mul(g_det, g.c, out=g_e)
    if g_c is not None:
        g_e += _cross(g_c.roll(-1, 1), g.e2)
        g_e += _cross(g.e1, g_c.roll(-2, 1))
    torch.sum(g_e, 1, out=g_x[:, 0])
    g_x[:, 0].neg_()
    if g_x_direct is not None:
        g_x += g_x_direct[:, None]
    for d in range(3):
        grad_pt[d].index_add_(0, g.nodes, g_x[d].view(-1))


def _sum_into(first: list, others: list) -> None:
    """first[k] += Σ_j others[j][k] (in order: deterministic)."""
    for acc in others:
        for a, o in zip(first, acc):
            a += o


class _VolumeTerms(torch.autograd.Function):
    """Inputs: points (N, 3), diffusivity (ncompartment, 3, 3), tet_compartment (M,), the
    :class:`~spindoctor_torch.fem.pattern.FEMPattern` ``fp``. Outputs: full-pattern values
    (nnz,) of M, K, J_x, J_y, J_z and the compartment volumes (ncompartment,)."""

    @staticmethod
    def forward(ctx, points, diffusivity, tet_compartment, fp):
        dtype, dev = points.dtype, points.device
        dsym = 0.5 * (diffusivity + diffusivity.transpose(1, 2))
        d_iso = _isotropic(dsym)
        points_t = points.T.contiguous()
        chunks = _schedule(tet_compartment.shape[0], dev)
        accs = [
            [torch.zeros(fp.nupper, dtype=dtype, device=dev) for _ in range(5)]
            + [torch.zeros(diffusivity.shape[0], dtype=dtype, device=dev)]
            for _ in chunks
        ]

        def work(i, chunk):
            upper, vol = accs[i][:5], accs[i][5]
            for s, e in chunk:
                g = _Block(points_t, fp, s, e)
                _forward_block(g, tet_compartment[s:e], d_iso, dsym, upper, vol)

        _run_chunks(work, chunks)
        _sum_into(accs[0], accs[1:])
        upper, vol = accs[0][:5], accs[0][5]
        # M = A0/20 and J^d = (A_d + (x_i^d + x_j^d) A0)/120, A0 and A_d already carrying P.
        a0 = upper[_A0]
        for d in range(3):
            upper[_AX + d].addcmul_(_node_sums(points_t[d], fp), a0).mul_(1.0 / 120.0)
        full = [u.index_select(0, fp.upper_to_full) for u in upper]
        full[_A0].mul_(1.0 / 20.0)
        ctx.fp, ctx.d_iso, ctx.a0 = fp, d_iso, a0
        ctx.save_for_backward(points, dsym, tet_compartment)
        ctx.set_materialize_grads(False)
        return (*full, vol)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_m, g_k, g_jx, g_jy, g_jz, g_vol):
        points, dsym, tet_compartment = ctx.saved_tensors
        fp, d_iso, a0 = ctx.fp, ctx.d_iso, ctx.a0
        need_p, need_d = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype, dev = points.dtype, points.device

        def fold(g):  # full-pattern gradient → upper entries (an entry and its transpose)
            if g is None:
                return None
            return torch.zeros(fp.nupper, dtype=dtype, device=dev).index_add_(
                0, fp.upper_to_full, g
            )

        points_t = points.T.contiguous()
        grad_pt = torch.zeros_like(points_t) if need_p else None
        gu_k = fold(g_k) if (need_p or need_d) else None
        # Gradients of A0 and A_d (upper entries, with P) and the direct dependence of J on
        # the nodes x_i, x_j of each entry.
        g_a = [None] * 4
        if need_p and not all(g is None for g in (g_m, g_jx, g_jy, g_jz)):
            g_a0 = fold(g_m).mul_(1.0 / 20.0) if g_m is not None else None
            for d, g in enumerate((g_jx, g_jy, g_jz)):
                if g is None:
                    continue
                gj = fold(g).mul_(1.0 / 120.0)
                g_a[1 + d] = gj
                pn = _node_sums(points_t[d], fp)
                g_a0 = gj * pn if g_a0 is None else g_a0.addcmul_(gj, pn)
                direct = gj * a0
                grad_pt[d].index_add_(0, fp.upper_nodes[0], direct)
                grad_pt[d].index_add_(0, fp.upper_nodes[1], direct)
            g_a[0] = g_a0
            for ga in g_a:  # times P = 2 on the diagonal, for the per-tet sums over pairs
                if ga is not None:
                    ga.index_add_(0, fp.upper_diagonal, ga.index_select(0, fp.upper_diagonal))
        has_a = any(g is not None for g in g_a)
        has_vol = need_p and g_vol is not None
        if not (has_a or gu_k is not None or has_vol):
            return None, None, None, None
        grads = (*g_a, gu_k)
        chunks = _schedule(tet_compartment.shape[0], dev)
        want_d = need_d and gu_k is not None
        accs = [
            [
                grad_pt if (i == 0 or not need_p) else torch.zeros_like(points_t),
                torch.zeros(dsym.numel(), dtype=dtype, device=dev) if want_d else None,
            ]
            for i in range(len(chunks))
        ]

        def work(i, chunk):
            gp, gd = accs[i]
            for s, e in chunk:
                g = _Block(points_t, fp, s, e)
                comp = tet_compartment[s:e]
                _backward_block(g, comp, d_iso, dsym, grads, g_vol, gp, gd)

        _run_chunks(work, chunks)
        for gp, gd in accs[1:]:
            if need_p:
                accs[0][0] += gp
            if want_d:
                accs[0][1] += gd
        grad_points = accs[0][0].T if need_p else None
        grad_d = None
        if want_d:
            grad_d = accs[0][1].view_as(dsym)
            grad_d = 0.5 * (grad_d + grad_d.transpose(1, 2))
        return grad_points, grad_d, None, None


def assemble_volume_terms(mesh, diffusivity: torch.Tensor, fp):
    """Full-pattern values of M (µm³), K (µm³/µs), J_x, J_y, J_z (µm⁴), each (nnz,), and the
    compartment volumes (ncompartment,) µm³, for ``mesh`` with per-compartment diffusion
    tensors ``diffusivity`` (ncompartment, 3, 3) µm²/µs; differentiable in ``mesh.points``
    and ``diffusivity``."""
    if diffusivity.ndim != 3 or diffusivity.shape[1:] != (3, 3):
        raise ValueError(
            f"diffusivity must have shape (ncompartment, 3, 3), got {tuple(diffusivity.shape)}"
        )
    return _VolumeTerms.apply(mesh.points, diffusivity, mesh.tet_compartment, fp)
