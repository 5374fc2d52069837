"""Radial eigenmodes of the Laplace operator in multilayered spheres, cylinders and slab stacks.

Private helper of :mod:`spindoctor_torch.solvers.analytical`. Everything here is dimensionless
and in NumPy float64: lengths in units of the outer radius (or the total slab thickness) ``R``,
diffusivities in units of a reference diffusivity ``D_ref``, eigenvalues ``lambda`` in units of
``D_ref / R**2``, permeabilities and relaxivities in units of ``D_ref / R``.

The eigenproblem, for a fixed angular index ``n`` (``nu = n (n + d - 2)``) in layer ``i``::

    D_i (u'' + (d - 1)/r u' - nu/r**2 u) = -lambda u,        r_{i-1} < r < r_i

with a positive weight ``w_i`` per layer (the self-adjoint form is ``-(P u')' ... = lambda w u``
with ``P_i = w_i D_i``): at an interface ``r_i``, continuity of the flux ``p = P u'`` and the
membrane law ``p = kappa_i (u(r_i+) - u(r_i-))``; at the outer wall ``p + w W u = 0``;
regularity at ``r = 0`` (sphere, cylinder) or ``p = w W u`` at the first wall ``x = 0`` (slab).
Eigenfunctions are orthonormal for ``int w u_k u_l``. (w = 1 is the plain Laplacian; w = the
spin density gives the density-weighted membrane coupling, see ``analytical.py``.) With ``alpha =
sqrt(lambda)`` and ``z = alpha r / sqrt(D_i)`` the solutions in a layer are combinations of
``f(z), g(z)`` = (``j_n, y_n``) for a sphere, (``J_n, Y_n``) for a cylinder and (``cos, sin``) for
a slab (``d = 1``, only ``n = 0``).

Root finding. For each angular index the eigenvalues are simple (a second-order Sturm-Liouville
problem with separated boundary conditions). They are the zeros of a normalised secular function
(the outer boundary condition applied to the solution shot from the inner end), bracketed by sign
changes on a grid and refined by ``brentq``. A Pruefer-angle count of the eigenvalues below any
``alpha`` (the winding of ``(u, p)`` through the layers; an interface is an orientation-preserving
shear of the ``(u, p)`` plane, so the oscillation theorem holds) guards against pairs of close
roots that a grid misses: if the grid finds fewer roots than the count, cells are bisected by
count until every root is isolated. Interfaces of zero permeability split the layers into
independent groups, each solved alone.

Eigenfunctions are then evaluated at Gauss-Legendre nodes in every layer, so that every integral
(norms, per-layer masses, first moments) is a quadrature with exponential convergence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from ..errors import SolverError

_RTOL = 4 * np.finfo(float).eps  # root tolerance: machine precision (brentq's smallest)

# Angle budget per sample of the Pruefer walk (radians). Each of the three bounds on the angular
# speed (bulk, curvature, centrifugal) is held below this per step, so a step never turns by more
# than 3 * _ANGLE_STEP < pi and unwrapping is exact.
_ANGLE_STEP = 0.15


@dataclass(frozen=True)
class RadialProblem:
    """Dimensionless multilayer data (see the module docstring for the scaling).

    Attributes
    ----------
    dim : int
        1 (slab), 2 (cylinder) or 3 (sphere).
    edges : (nlayer + 1,) ndarray
        Layer boundaries, ``edges[0] = 0`` and ``edges[-1] = 1``.
    diffusivity : (nlayer,) ndarray
    weight : (nlayer,) ndarray
        Positive weight ``w_i`` of each layer (flux coefficient ``w_i D_i``).
    permeability : (nlayer - 1,) ndarray
        Interface permeabilities (0 = impermeable: the layers decouple there).
    relaxivity : float
        Outer-wall relaxivity ``W`` (and also of the wall at ``x = 0`` for a slab).
    """

    dim: int
    edges: np.ndarray
    diffusivity: np.ndarray
    weight: np.ndarray
    permeability: np.ndarray
    relaxivity: float

    @property
    def nlayer(self) -> int:
        return len(self.diffusivity)


@dataclass(frozen=True)
class Group:
    """Contiguous layers ``first..last`` (inclusive) coupled by nonzero permeabilities.

    ``inner_wall`` is None when the group starts at the centre (regular solution), else the
    Robin coefficient ``w W`` of its inner wall (0 for an impermeable interface).
    ``outer_wall`` is that of its outer wall.
    """

    first: int
    last: int
    inner_wall: float | None
    outer_wall: float


def split_groups(problem: RadialProblem) -> list[Group]:
    """Split the layers at impermeable interfaces into independent groups."""
    groups = []
    start = 0
    for i in range(problem.nlayer):
        is_last = i == problem.nlayer - 1
        if is_last or problem.permeability[i] == 0.0:
            if start == 0:
                inner = problem.relaxivity * problem.weight[0] if problem.dim == 1 else None
            else:
                inner = 0.0
            outer = problem.relaxivity * problem.weight[i] if is_last else 0.0
            groups.append(Group(start, i, inner, outer))
            start = i + 1
    return groups


# --------------------------------------------------------------------------------------------
# Special functions
# --------------------------------------------------------------------------------------------


def _spherical(n: int, z: np.ndarray, irregular: bool) -> tuple[np.ndarray, np.ndarray]:
    """Spherical Bessel ``j_n`` (or ``y_n``) and its derivative, for ``z >= 0``.

    Through the ufuncs ``jv/yv`` of half-integer order (``scipy.special.spherical_jn`` has a
    per-call overhead ~20x larger), with ``f' = (n/z) f - f_{n+1}`` (no cancellation at small z).
    At ``z = 0`` (regular function only) the limits ``j_n(0) = [n = 0]``, ``j_n'(0) = [n = 1]/3``.
    """
    z = np.asarray(z, dtype=np.float64)
    bessel = special.yv if irregular else special.jv
    at_zero = z == 0.0
    zz = np.where(at_zero, 1.0, z)
    fac = np.sqrt(0.5 * np.pi / zz)
    f = fac * bessel(n + 0.5, zz)
    df = n / zz * f - fac * bessel(n + 1.5, zz)
    if not irregular and np.any(at_zero):
        f = np.where(at_zero, float(n == 0), f)
        df = np.where(at_zero, float(n == 1) / 3.0, df)
    return f, df


def _basis(dim: int, n: int, z: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return ``f, f', g, g'`` at ``z > 0`` (regular and irregular radial solutions)."""
    if dim == 3:
        return _spherical(n, z, False) + _spherical(n, z, True)
    if dim == 2:
        return special.jv(n, z), special.jvp(n, z), special.yv(n, z), special.yvp(n, z)
    return np.cos(z), -np.sin(z), np.sin(z), np.cos(z)


def _regular(dim: int, n: int, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``f, f'`` (regular solution only; finite at ``z = 0``)."""
    if dim == 3:
        return _spherical(n, z, False)
    return special.jv(n, z), special.jvp(n, z)


def _wronskian(dim: int, z: np.ndarray) -> np.ndarray:
    """``f g' - f' g`` in closed form."""
    if dim == 3:
        return 1.0 / z**2
    if dim == 2:
        return 2.0 / (np.pi * z)
    return np.ones_like(z)


def _propagator(
    dim: int,
    n: int,
    alpha: np.ndarray,
    diffusivity: float,
    weight: float,
    r_a: float,
    r: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Transfer matrix of ``(u, p = w D u')`` from ``r_a`` to ``r`` inside one layer.

    ``alpha`` and ``r`` broadcast against each other; ``alpha > 0``. Built from cross products
    of Bessel functions with the exact Wronskian, so no 2x2 inversion is done numerically.
    """
    s = weight * np.sqrt(diffusivity) * alpha
    scale = alpha / np.sqrt(diffusivity)
    z_a = scale * r_a
    z_b = scale * r
    if dim == 1:
        c = np.cos(z_b - z_a)
        sn = np.sin(z_b - z_a)
        return c, sn / s, -s * sn, c
    fa, dfa, ga, dga = _basis(dim, n, z_a)
    fb, dfb, gb, dgb = _basis(dim, n, z_b)
    w = _wronskian(dim, z_a)
    p11 = (fb * dga - gb * dfa) / w
    p12 = (gb * fa - fb * ga) / (s * w)
    p21 = s * (dfb * dga - dgb * dfa) / w
    p22 = (dgb * fa - dfb * ga) / w
    return p11, p12, p21, p22


# --------------------------------------------------------------------------------------------
# Shooting: secular function and Pruefer count
# --------------------------------------------------------------------------------------------


def _group_scale(problem: RadialProblem, group: Group) -> float:
    """Scale ``S`` of a group's flux: ``p_hat = p / (alpha S)``, S the geometric mean of the
    extreme ``w_i sqrt(D_i)`` (keeps ``(u, p_hat)`` orbits as round as possible)."""
    layers = slice(group.first, group.last + 1)
    c = problem.weight[layers] * np.sqrt(problem.diffusivity[layers])
    return float(np.sqrt(c.min() * c.max()))


def _start_state(
    problem: RadialProblem, group: Group, n: int, alpha: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """State ``(u, p_hat)`` (unit norm) at the end of the first layer handled analytically.

    Returns the state and the index of the next layer to propagate through. For a group at the
    centre, the regular solution across the whole first layer; for a group starting at a wall,
    the wall condition ``p = W u`` at the inner edge of the first layer.
    """
    i = group.first
    if group.inner_wall is None:
        d_i = problem.diffusivity[i]
        z1 = alpha * problem.edges[i + 1] / np.sqrt(d_i)
        f, df = _regular(problem.dim, n, z1)
        u = f
        p_hat = problem.weight[i] * np.sqrt(d_i) * alpha * df / s
        nxt = i + 1
    else:
        u = np.ones_like(alpha)
        p_hat = group.inner_wall / s
        nxt = i
    norm = np.hypot(u, p_hat)
    return u / norm, p_hat / norm, nxt


def secular(problem: RadialProblem, group: Group, n: int, alpha: np.ndarray) -> np.ndarray:
    """Outer boundary condition ``(p + W u) / (s |(u, p/s)|)`` of the shot solution.

    Continuous in ``alpha > 0``, zero exactly at the eigenvalues, with a sign change at each
    (the eigenvalues are simple). Vectorised over ``alpha``.
    """
    alpha = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    s = alpha * _group_scale(problem, group)
    u, p_hat, i = _start_state(problem, group, n, alpha, s)
    while i <= group.last:
        if i > group.first:
            u = u + s * p_hat / problem.permeability[i - 1]
        r_a, r_b = problem.edges[i], problem.edges[i + 1]
        p11, p12, p21, p22 = _propagator(
            problem.dim, n, alpha, problem.diffusivity[i], problem.weight[i], r_a, r_b
        )
        u, p = p11 * u + p12 * s * p_hat, p21 * u + p22 * s * p_hat
        p_hat = p / s
        norm = np.hypot(u, p_hat)
        u, p_hat = u / norm, p_hat / norm
        i += 1
    out = p_hat + group.outer_wall / s * u
    if not np.all(np.isfinite(out)):
        raise SolverError(
            f"non-finite radial solution for angular index n={n} (Bessel functions out of "
            "floating-point range: a very thin inner layer with many angular modes?)"
        )
    return out


def _layer_samples(
    problem: RadialProblem, i: int, n: int, alpha: float, s: float, centre: bool
) -> np.ndarray:
    """Sample radii in layer ``i`` fine enough that the Pruefer angle turns < pi per step."""
    d_i = problem.diffusivity[i]
    w_i = problem.weight[i]
    r_a, r_b = problem.edges[i], problem.edges[i + 1]
    dim = problem.dim
    nu = n * (n + dim - 2)
    pieces = []
    if centre:
        # Below r_c the regular solution stays within one quadrant (classically forbidden zone
        # for n >= 1, z < 1/2 for n = 0): any sampling is safe there.
        r_turn = np.sqrt(nu * d_i) / alpha if nu > 0 else 0.0
        r_c = min(r_b, 0.5 * max(r_turn, np.sqrt(d_i) / alpha))
        pieces.append(np.array([0.0]))
        r_a = r_c
    if r_b > r_a:
        bulk = s / (w_i * d_i) + w_i * alpha**2 / s
        n1 = int(np.ceil(bulk * (r_b - r_a) / _ANGLE_STEP)) + 1
        pieces.append(np.linspace(r_a, r_b, n1 + 1))
        if dim > 1 and r_a > 0:
            n2 = int(np.ceil(0.5 * (dim - 1) * np.log(r_b / r_a) / _ANGLE_STEP))
            if n2 > 0:
                pieces.append(np.geomspace(r_a, r_b, n2 + 1))
            if nu > 0:
                n3 = int(np.ceil(w_i * d_i * nu / s * (1.0 / r_a - 1.0 / r_b) / _ANGLE_STEP))
                if n3 > 0:
                    pieces.append(1.0 / np.linspace(1.0 / r_a, 1.0 / r_b, n3 + 1))
    else:
        pieces.append(np.array([r_b]))
    return np.unique(np.concatenate(pieces))


def count_below(problem: RadialProblem, group: Group, n: int, alpha: float) -> int:
    """Number of eigenvalues ``<= alpha**2`` of angular index ``n`` in a group (Pruefer count).

    The angle ``theta = atan2(u, p_hat)`` is followed continuously from the inner end (0 or
    pi/2 at the centre, ``atan2(1, W/s)`` at a wall) to the outer wall; eigenvalue ``k`` is where
    ``theta`` reaches ``beta + k pi``, ``beta = atan2(1, -W/s)`` in ``[pi/2, pi)``.
    """
    alpha = float(alpha)
    s = alpha * _group_scale(problem, group)
    dim = problem.dim
    angles = []
    u = p_hat = None
    for i in range(group.first, group.last + 1):
        d_i, w_i = problem.diffusivity[i], problem.weight[i]
        if i == group.first and group.inner_wall is None:
            r = _layer_samples(problem, i, n, alpha, s, centre=True)
            f, df = _regular(dim, n, alpha * r / np.sqrt(d_i))
            uu, pp = f, w_i * np.sqrt(d_i) * alpha * df / s
        else:
            if i == group.first:
                u, p_hat = 1.0, group.inner_wall / s
            else:
                u = u + s * p_hat / problem.permeability[i - 1]
            r = _layer_samples(problem, i, n, alpha, s, centre=False)
            p11, p12, p21, p22 = _propagator(dim, n, alpha, d_i, w_i, problem.edges[i], r)
            uu = p11 * u + p12 * s * p_hat
            pp = (p21 * u + p22 * s * p_hat) / s
        scale = np.max(np.hypot(uu, pp))
        if not np.isfinite(scale) or scale == 0.0:
            raise SolverError(
                f"radial solution out of floating-point range for n={n}, alpha={alpha:.6g} "
                f"(layer {i})"
            )
        uu, pp = uu / scale, pp / scale
        angles.append(np.arctan2(uu, pp))
        u, p_hat = uu[-1], pp[-1]
    theta = np.unwrap(np.concatenate(angles))[-1]
    beta = np.arctan2(1.0, -group.outer_wall / s)
    if theta < beta:
        return 0
    return int(np.floor((theta - beta) / np.pi)) + 1


def _lower_bound(problem: RadialProblem, group: Group, n: int) -> float:
    """``alpha`` below which angular index ``n >= 1`` has no eigenvalue in the group."""
    nu = n * (n + problem.dim - 2)
    dmin = problem.diffusivity[group.first : group.last + 1].min()
    return float(np.sqrt(nu * dmin) / problem.edges[group.last + 1])


def is_closed(group: Group, n: int) -> bool:
    """Whether ``lambda = 0`` (a constant eigenfunction) is an eigenvalue."""
    return n == 0 and group.outer_wall == 0.0 and group.inner_wall in (None, 0.0)


def find_roots(
    problem: RadialProblem, group: Group, n: int, alpha_max: float, rtol: float = _RTOL
) -> np.ndarray:
    """All ``alpha`` in ``(0, alpha_max]`` with ``alpha**2`` an eigenvalue (angular index n).

    The zero eigenvalue of a closed group is *not* included (see :func:`is_closed`).
    """
    closed = is_closed(group, n)
    lo = _lower_bound(problem, group, n)
    d = problem.diffusivity[group.first : group.last + 1]
    w = np.diff(problem.edges[group.first : group.last + 2])
    phase = float(np.sum(w / np.sqrt(d)))  # WKB: roots are ~pi / phase apart in alpha
    step = 0.2 * np.pi / phase
    if lo >= alpha_max:
        return np.empty(0)
    n_expected = count_below(problem, group, n, alpha_max)
    if n == 0:
        lo = min(1e-3 * step, 0.5 * alpha_max)
    n_start = count_below(problem, group, n, lo)
    n_tiny = n_start - (1 if closed else 0)
    roots = []
    if n_tiny < 0:
        raise SolverError(f"zero mode of a closed group lost for n={n} (alpha={lo:.3g})")
    if n_tiny > 1:
        raise SolverError(f"{n_tiny} eigenvalues below alpha={lo:.3g} for n={n}")
    if n_tiny == 1:
        # An eigenvalue below the grid start (tiny outer relaxivity): bracket it in (0, lo].
        a = lo * 1e-12
        if np.sign(secular(problem, group, n, a)[0]) == np.sign(secular(problem, group, n, lo)[0]):
            raise SolverError(f"cannot bracket the lowest eigenvalue for n={n} below {lo:.3g}")
        roots.append(_refine(problem, group, n, a, lo, rtol))
    n_expected -= n_start
    if n_expected < 0:
        raise SolverError(f"eigenvalue count decreased with alpha for n={n}: bug")
    if n_expected == 0:
        return np.asarray(roots)
    ngrid = int(np.ceil((alpha_max - lo) / step)) + 1
    grid = np.linspace(lo, alpha_max, ngrid + 1)
    fval = secular(problem, group, n, grid)
    change = np.sign(fval[:-1]) * np.sign(fval[1:]) <= 0
    counts = {0: n_start, ngrid: n_start + n_expected}
    found = _search_segment(problem, group, n, grid, change, 0, ngrid, counts, rtol)
    if len(found) != n_expected:
        raise SolverError(
            f"found {len(found)} eigenvalues for n={n} where the Pruefer count gives "
            f"{n_expected} below alpha={alpha_max:.6g}"
        )
    return np.sort(np.asarray(roots + found))


def _refine(problem, group, n, a: float, b: float, rtol: float) -> float:
    """``brentq`` on the secular function in a bracketing cell, to relative tolerance rtol."""

    def fun(x: float) -> float:
        return float(secular(problem, group, n, x)[0])

    return optimize.brentq(fun, a, b, xtol=1e-300, rtol=rtol)


def _search_segment(problem, group, n, grid, change, j0, j1, counts, rtol) -> list[float]:
    """Roots in grid cells ``j0..j1-1`` given the exact counts at ``grid[j0]``, ``grid[j1]``.

    A segment whose count equals its number of sign-change cells holds one root per such cell;
    otherwise it is halved (one count evaluation) until it is, or until it is one cell, which is
    then bisected by count.
    """
    inside = counts[j1] - counts[j0]
    if inside == 0:
        return []
    cells = np.nonzero(change[j0:j1])[0] + j0
    if len(cells) == inside:
        return [_refine(problem, group, n, grid[c], grid[c + 1], rtol) for c in cells]
    if j1 - j0 == 1:
        return _isolate(problem, group, n, grid[j0], grid[j1], counts[j0], counts[j1], rtol)
    jm = (j0 + j1) // 2
    counts[jm] = count_below(problem, group, n, grid[jm])
    return _search_segment(problem, group, n, grid, change, j0, jm, counts, rtol) + (
        _search_segment(problem, group, n, grid, change, jm, j1, counts, rtol)
    )


def _isolate(problem, group, n, a, b, ca, cb, rtol, depth=0) -> list[float]:
    """Bisect ``[a, b]`` (``cb - ca`` roots inside) by count until each root is alone."""
    if cb - ca == 1:
        fa = secular(problem, group, n, a)[0]
        fb = secular(problem, group, n, b)[0]
        if fa * fb <= 0:
            return [_refine(problem, group, n, a, b, rtol)]
    if depth > 60 or (b - a) <= 1e-14 * b:
        raise SolverError(
            f"{cb - ca} eigenvalues of angular index n={n} closer than {b - a:.3g} near "
            f"alpha={a:.12g}: use a permeability of exactly 0 to decouple the layers"
        )
    m = 0.5 * (a + b)
    cm = count_below(problem, group, n, m)
    out = []
    if cm > ca:
        out += _isolate(problem, group, n, a, m, ca, cm, rtol, depth + 1)
    if cb > cm:
        out += _isolate(problem, group, n, m, b, cm, cb, rtol, depth + 1)
    return out


# --------------------------------------------------------------------------------------------
# Eigenfunctions on quadrature nodes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quadrature:
    """Gauss-Legendre nodes of every layer, concatenated; ``layer`` gives each node's layer."""

    nodes: np.ndarray
    weights: np.ndarray
    layer: np.ndarray


def make_quadrature(problem: RadialProblem, alpha_max: float, n_max: int) -> Quadrature:
    """Nodes resolving products of two eigenfunctions with ``alpha <= alpha_max``, ``n <= n_max``.

    A layer gets ``max(Z, n_max) + 40`` nodes, ``Z = alpha_max * width / sqrt(D)`` its phase:
    enough for the oscillating part (Gauss-Legendre with m nodes resolves phases up to ~2m) and
    for the ``r**n`` growth near the centre (polynomial of degree ~2 n_max + d).
    """
    nodes, weights, layer = [], [], []
    for i in range(problem.nlayer):
        r_a, r_b = problem.edges[i], problem.edges[i + 1]
        phase = alpha_max * (r_b - r_a) / np.sqrt(problem.diffusivity[i])
        m = int(np.ceil(max(phase, n_max))) + 40
        x, w = np.polynomial.legendre.leggauss(m)
        nodes.append(0.5 * (r_b - r_a) * x + 0.5 * (r_b + r_a))
        weights.append(0.5 * (r_b - r_a) * w)
        layer.append(np.full(m, i))
    return Quadrature(np.concatenate(nodes), np.concatenate(weights), np.concatenate(layer))


def eigenfunctions(
    problem: RadialProblem, group: Group, n: int, alpha: np.ndarray, quad: Quadrature
) -> np.ndarray:
    """Radial eigenfunctions at the quadrature nodes, normalised: ``int w u^2 r^(d-1) dr = 1``.

    Parameters
    ----------
    alpha : (nroot,) ndarray
        Roots (``alpha = 0`` gives the constant mode of a closed group).

    Returns
    -------
    (nroot, nnode) ndarray, zero outside the group's layers. The sign is that of the shot
    solution: positive next to the inner end of the group (centre or wall).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    dim = problem.dim
    values = np.zeros((len(alpha), len(quad.nodes)))
    zero = alpha == 0.0
    a = np.where(zero, 1.0, alpha)[:, None]  # placeholder for the zero mode, overwritten below
    s = a * _group_scale(problem, group)
    log_scale = np.zeros((len(alpha), 1))  # true state = exp(log_scale) * (u, p_hat)
    layers = range(group.first, group.last + 1)
    for i in layers:
        d_i, w_i = problem.diffusivity[i], problem.weight[i]
        in_layer = quad.layer == i
        r = quad.nodes[in_layer][None, :]
        if i == group.first and group.inner_wall is None:
            f, _ = _regular(dim, n, a * r / np.sqrt(d_i))
            fe, dfe = _regular(dim, n, a * problem.edges[i + 1] / np.sqrt(d_i))
            u, p_hat = fe, w_i * np.sqrt(d_i) * a * dfe / s
            norm = np.hypot(u, p_hat)
            vals = f / norm
            u, p_hat = u / norm, p_hat / norm
        else:
            if i == group.first:
                u, p_hat = np.ones_like(a), group.inner_wall / s
            p11, p12, _, _ = _propagator(dim, n, a, d_i, w_i, problem.edges[i], r)
            vals = p11 * u + p12 * s * p_hat
            edge = problem.edges[i + 1]
            e11, e12, e21, e22 = _propagator(dim, n, a, d_i, w_i, problem.edges[i], edge)
            u, p_hat = e11 * u + e12 * s * p_hat, (e21 * u + e22 * s * p_hat) / s
        values[:, in_layer] = vals
        if i < group.last:
            u = u + s * p_hat / problem.permeability[i]
            norm = np.hypot(u, p_hat)
            u, p_hat = u / norm, p_hat / norm
            with np.errstate(divide="ignore"):
                log_scale = np.append(log_scale, log_scale[:, -1:] + np.log(norm), axis=1)
    log_scale -= log_scale.max(axis=1, keepdims=True)
    for k, i in enumerate(layers):
        values[:, quad.layer == i] *= np.exp(log_scale[:, k : k + 1])
    in_group = (quad.layer >= group.first) & (quad.layer <= group.last)
    values[zero] = np.where(in_group, 1.0, 0.0)
    if not np.all(np.isfinite(values)):
        raise SolverError(f"non-finite eigenfunction values for angular index n={n}")
    measure = quad.weights * quad.nodes ** (dim - 1) * problem.weight[quad.layer]
    norms = np.sqrt(values**2 @ measure)
    return values / norms[:, None]
