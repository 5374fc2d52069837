r"""Diffusion-encoding gradient sequences (time profiles).

The encoding gradient is ``g(t) = g · f(t) · u`` with amplitude g (T/m), unit direction u and a
dimensionless **effective** time profile f: the 180° refocusing pulse is folded into the sign of
the second lobe (+1 / −1), no RF pulse is modelled (SpinDoctor's convention). All times are in µs.

Every scalar sequence provides (vectorized over tensors, float inputs accepted):

=========================  ======================================================  ========
member                     meaning                                                 unit
=========================  ======================================================  ========
``f(t)``                   time profile                                            1
``F(t)``                   :math:`F(t) = \int_0^t f`                               µs
``echotime``               TE, the end of the profile                              µs
``bvalue_no_q``            :math:`\int_0^{TE} F^2\,dt`, so that ``b = q² · it``    µs³
``diffusion_time``         SpinDoctor's diffusion time (Δ − δ/3 for PGSE)          µs
``diffusion_time_sta``     squared STA factor C² (short-time approximation)        µs
``intervals``              characteristic breakpoints ``[0, ..., TE]``             µs
``is_constant``            True when f is piecewise constant (PGSE, DoublePGSE)
``constant_pieces()``      ``[(t0, t1, f_value), ...]`` for piecewise-constant f    µs, 1
``j(lam)``                 matrix-formalism quantity j(λ) (below)                  1/µs
=========================  ======================================================  ========

with (Li et al. 2019; SpinDoctor ``J``)

.. math::

   j(\lambda) = \lambda \frac{\int_0^{TE} F(t) \int_0^t e^{-\lambda(t-s)} f(s)\,ds\,dt}
                             {\int_0^{TE} F^2\,dt}
              = \frac{\int\!\!\int_{s<t} f(s) f(t) e^{-\lambda(t-s)}\,ds\,dt}{\int_0^{TE} F^2\,dt},

the second form holding for refocused profiles (F(TE) = 0, by one integration by parts).
j(0) = 0, j'(0) = 1 (j(λ) ≈ λ for small λ) and j(λ) → 0 as λ → ∞. The STA factor is

.. math::

   C = -\frac{1}{2} \frac{\int\!\!\int f(s) f(t) |t-s|^{3/2}\,ds\,dt}{\int_0^{TE} F^2\,dt},
   \qquad \texttt{diffusion\_time\_sta} = C^2,

which for PGSE equals (4/35)[(Δ+δ)^{7/2} + (Δ−δ)^{7/2} − 2Δ^{7/2} − 2δ^{7/2}] / (δ²(Δ−δ/3))
(Mitra's short-time formula with the finite-pulse correction; SpinDoctor ``solve_sta``).

Closed forms
------------
* PGSE, DoublePGSE (and any piecewise-constant profile): with pieces (a_i, b_i, v_i),
  :math:`\iint f(s) f(t) g(t-s) = \sum_{ij} v_i v_j [\Phi(b_j-a_i) - \Phi(b_j-b_i) - \Phi(a_j-a_i)
  + \Phi(a_j-b_i)]` for any even Φ with Φ'' = g. With Φ = |x|³/6 this gives −2∫F², with
  Φ = (4/35)|x|^{7/2} the STA numerator and with Φ = (e^{−λ|x|} − 1 + λ|x|)/λ² the numerator of
  j. The last is evaluated through the entire functions φ₂(y) = (e^{−y} − 1 + y)/y² (λ·TE > 1)
  and φ₃(y) = (e^{−y} − 1 + y − y²/2)/y³ (λ·TE ≤ 1; the x² term drops because ∫f = 0), each
  with a Taylor branch near 0, so j is accurate and differentiable for every λ ≥ 0, including 0.
* CosOGSE, SinOGSE: ∫F², STA (Fresnel integrals, :func:`scipy.special.fresnel`) and j
  (in-lobe term plus the separable cross-lobe term) in closed form, as in SpinDoctor; j is
  written with ``expm1`` so that it needs no Taylor branch at small λ.
* Anything else (:class:`CustomProfile`, user subclasses): composite 16-point Gauss-Legendre
  quadrature split at the breakpoints. j and the STA factor are computed as one-dimensional
  integrals :math:`\int_0^{TE} k(u) R(u)\,du` of the autocorrelation
  :math:`R(u) = \int f(s) f(s+u)\,ds` (k = e^{−λu} − 1, resp. −u^{3/2}), on panels split at the
  breakpoint differences and geometrically graded towards each panel's left end, so that the
  boundary layer of width 1/λ is resolved for any λ.

:class:`Waveform3D` is a general vector gradient profile g(t) ∈ R³ (Julia ``GeneralGradient``,
MATLAB Camino sequences); see its docstring for how :class:`~spindoctor_torch.experiment.Experiment`
treats it.

References
----------
* J.-R. Li et al., "SpinDoctor: a MATLAB toolbox for diffusion MRI simulation", NeuroImage 202
  (2019) 116120, doi:10.1016/j.neuroimage.2019.116120.
* P. P. Mitra, P. N. Sen, L. M. Schwartz, "Short-time behavior of the diffusion coefficient as a
  geometrical probe of porous media", Phys. Rev. B 47 (1993) 8565.
"""

from __future__ import annotations

import abc
import ast
import functools
import math
import operator
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.special import fresnel

from .units import check_time

__all__ = [
    "CosOGSE",
    "CustomProfile",
    "DoublePGSE",
    "PGSE",
    "Sequence",
    "SinOGSE",
    "Waveform3D",
]

_GL_ORDER = 16  # Gauss-Legendre points per panel
_GRADED_LEVELS = 24  # geometric refinement levels towards the left end of each u-interval
_CHUNK_BUDGET = 2**21  # profile evaluations per chunk in the autocorrelation
_TAYLOR_TERMS = 20  # |y| < 1: the terms left out are below 1/23! ~ 4e-23

TimeLike = float | torch.Tensor | np.ndarray | Iterable[float]


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _gauss_legendre(order: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(order)
    return nodes, weights


def _as_tensor(x: TimeLike) -> torch.Tensor:
    """Float tensor view of times or rates: float64 unless ``x`` is a floating tensor."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError("times and rates must be real, got a complex tensor")
        return x if x.is_floating_point() else x.to(torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _scalar(value: Any, name: str) -> float:
    """A finite real scalar parameter as a Python float, else a clear error."""
    if isinstance(value, bool) or value is None:
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise TypeError(f"{name} must be a real scalar, got a tensor of shape {value.shape}")
        value = value.item()
    try:
        out = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a real number, got {value!r}") from err
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out!r}")
    return out


def _positive_time(value: Any, name: str) -> float:
    v = _scalar(value, name)
    if v <= 0:
        raise ValueError(f"{name} must be > 0 µs, got {v!r}")
    check_time(v, name)
    return v


def _nonnegative_time(value: Any, name: str) -> float:
    v = _scalar(value, name)
    if v < 0:
        raise ValueError(f"{name} must be >= 0 µs, got {v!r}")
    check_time(v, name)
    return v


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    v = _scalar(value, name)
    if v <= 0 or v != round(v):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(round(v))


def _unique_times(times: Iterable[float], scale: float) -> list[float]:
    """Sorted times with near-duplicates (closer than 1e-12·scale) merged."""
    out: list[float] = []
    for x in sorted(float(t) for t in times):
        if not out or x - out[-1] > 1e-12 * scale:
            out.append(x)
    return out


def _horner(y: torch.Tensor, coefficients: list[float]) -> torch.Tensor:
    out = torch.full_like(y, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * y + c
    return out


_PHI2_TAYLOR = [(-1.0) ** k / math.factorial(k + 2) for k in range(_TAYLOR_TERMS)]
_PHI3_TAYLOR = [-((-1.0) ** k) / math.factorial(k + 3) for k in range(_TAYLOR_TERMS)]


def _phi2(y: torch.Tensor) -> torch.Tensor:
    """φ₂(y) = (e^{−y} − 1 + y)/y², entire; Taylor series for |y| < 1 (safe gradients)."""
    small = y.abs() < 1.0
    ys = torch.where(small, y, torch.zeros_like(y))
    yl = torch.where(small, torch.ones_like(y), y)
    return torch.where(small, _horner(ys, _PHI2_TAYLOR), (torch.expm1(-yl) + yl) / yl**2)


def _phi3(y: torch.Tensor) -> torch.Tensor:
    """φ₃(y) = (e^{−y} − 1 + y − y²/2)/y³, entire; Taylor series for |y| < 1."""
    small = y.abs() < 1.0
    ys = torch.where(small, y, torch.zeros_like(y))
    yl = torch.where(small, torch.ones_like(y), y)
    direct = (torch.expm1(-yl) + yl - 0.5 * yl**2) / yl**3
    return torch.where(small, _horner(ys, _PHI3_TAYLOR), direct)


# --------------------------------------------------------------------------------------------
# safe elementwise expressions (serializable custom profiles)
# --------------------------------------------------------------------------------------------

_EXPR_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "sign": torch.sign,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "tanh": torch.tanh,
    "atan": torch.atan,
    "floor": torch.floor,
    "where": torch.where,
    "clamp": torch.clamp,
}
_EXPR_CONSTANTS = {"pi": math.pi, "e": math.e}


def _truth(x: Any) -> torch.Tensor:
    return torch.as_tensor(x) != 0


def _as_float(mask: torch.Tensor) -> torch.Tensor:
    return mask.to(torch.float64)


_EXPR_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
    ast.BitAnd: lambda a, b: _as_float(_truth(a) & _truth(b)),
    ast.BitOr: lambda a, b: _as_float(_truth(a) | _truth(b)),
}
_EXPR_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Invert: lambda a: _as_float(~_truth(a)),
}
_EXPR_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


class _Expression:
    """An elementwise formula in ``t`` (µs), e.g. ``"cos(2*pi*t/5000) * (t < 5000)"``.

    Only numbers, ``t``, ``pi``, ``e``, arithmetic, comparisons (chains allowed, evaluated
    elementwise; they give 1.0 or 0.0), the logical ``&``, ``|``, ``~`` (nonzero is true) and
    the functions in ``_EXPR_FUNCTIONS`` are accepted; the formula is evaluated by walking its
    syntax tree, never by ``eval``.
    """

    def __init__(self, text: str, name: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise TypeError(f"{name} must be a non-empty expression string, got {text!r}")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as err:
            raise ValueError(f"{name}: cannot parse expression {text!r}: {err.msg}") from err
        self._check(tree.body, text, name)
        self.text = text.strip()
        self._tree = tree.body

    @staticmethod
    def _check(node: ast.AST, text: str, name: str) -> None:
        for sub in ast.walk(node):
            ok = isinstance(
                sub,
                ast.BinOp | ast.UnaryOp | ast.Compare | ast.Call | ast.Name | ast.Constant,
            ) or isinstance(
                sub,
                ast.Load | ast.operator | ast.unaryop | ast.cmpop,
            )
            if isinstance(sub, ast.BinOp) and type(sub.op) not in _EXPR_BINOPS:
                ok = False
            if isinstance(sub, ast.UnaryOp) and type(sub.op) not in _EXPR_UNARY:
                ok = False
            if isinstance(sub, ast.Compare) and any(type(o) not in _EXPR_COMPARE for o in sub.ops):
                ok = False
            if isinstance(sub, ast.Constant) and (
                isinstance(sub.value, bool) or not isinstance(sub.value, int | float)
            ):
                ok = False
            if isinstance(sub, ast.Name) and sub.id not in (
                {"t"} | set(_EXPR_FUNCTIONS) | set(_EXPR_CONSTANTS)
            ):
                raise ValueError(f"{name}: unknown name {sub.id!r} in expression {text!r}")
            if isinstance(sub, ast.Call) and (
                not isinstance(sub.func, ast.Name)
                or sub.func.id not in _EXPR_FUNCTIONS
                or sub.keywords
            ):
                ok = False
            if not ok:
                raise ValueError(
                    f"{name}: unsupported syntax {ast.dump(sub)[:60]!r} in expression {text!r}; "
                    f"allowed: numbers, t, pi, e, + - * / ** %, comparisons, & | ~, and "
                    f"{', '.join(sorted(_EXPR_FUNCTIONS))}"
                )

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        out = self._eval(self._tree, t)
        if not isinstance(out, torch.Tensor):
            out = torch.full_like(t, float(out))
        out = out.to(dtype=t.dtype, device=t.device)
        return out if out.shape == t.shape else out.expand(t.shape).clone()

    def _eval(self, node: ast.AST, t: torch.Tensor) -> Any:
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id in _EXPR_FUNCTIONS:
                raise ValueError(f"{node.id!r} is a function: call it, e.g. {node.id}(t)")
            return t if node.id == "t" else _EXPR_CONSTANTS[node.id]
        if isinstance(node, ast.BinOp):
            return _EXPR_BINOPS[type(node.op)](self._eval(node.left, t), self._eval(node.right, t))
        if isinstance(node, ast.UnaryOp):
            return _EXPR_UNARY[type(node.op)](self._eval(node.operand, t))
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, t)
            result: Any = None
            for op, right_node in zip(node.ops, node.comparators):
                right = self._eval(right_node, t)
                part = torch.as_tensor(_EXPR_COMPARE[type(op)](left, right))
                result = part if result is None else result & part
                left = right
            return _as_float(result)
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        args = [self._eval(a, t) for a in node.args]
        args = [
            a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=t.dtype) for a in args
        ]
        args = [a.to(t.dtype) for a in args]
        if node.func.id == "where":
            if len(args) != 3:
                raise ValueError(f"where(condition, a, b) takes 3 arguments, got {len(args)}")
            return torch.where(args[0] != 0, args[1], args[2])
        return _EXPR_FUNCTIONS[node.func.id](*args)


def _callable_profile(
    f: Callable[[torch.Tensor], Any] | str, name: str
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
    if isinstance(f, str):
        expr = _Expression(f, name)
        return expr, expr.text
    if not callable(f):
        raise TypeError(f"{name} must be a callable f(t) or an expression string, got {f!r}")
    return f, None


# --------------------------------------------------------------------------------------------
# composite Gauss-Legendre quadrature of a profile
# --------------------------------------------------------------------------------------------


class _PanelQuadrature:
    """Composite Gauss-Legendre rule for a profile that is smooth between breakpoints.

    Parameters
    ----------
    fn : callable
        Profile, float64 tensor of times (µs) -> tensor of shape ``t.shape + value_shape``.
    breakpoints : (nb,) array, µs
        Sorted, starting at 0 and ending at TE.
    npanel : int
        Equal panels per sub-interval between breakpoints.
    value_shape : tuple
        ``()`` for scalar profiles, ``(3,)`` for :class:`Waveform3D`.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        breakpoints: np.ndarray,
        npanel: int,
        value_shape: tuple[int, ...] = (),
    ) -> None:
        self.fn = fn
        self.breakpoints = np.asarray(breakpoints, dtype=np.float64)
        self.echotime = float(self.breakpoints[-1])
        self.npanel = npanel
        self.value_shape = value_shape
        xi, wi = _gauss_legendre(_GL_ORDER)
        self.xi = torch.as_tensor(xi)
        self.wi = torch.as_tensor(wi)
        b = self.breakpoints
        starts = b[:-1, None] + np.diff(b)[:, None] * (np.arange(npanel) / npanel)
        edges = np.concatenate([starts.ravel(), b[-1:]])
        self.edges = torch.as_tensor(edges)
        a = self.edges[:-1]
        h = torch.diff(self.edges)
        self.nodes = a[:, None] + h[:, None] * (self.xi + 1) / 2  # (E, p)
        self.weights = h[:, None] / 2 * self.wi  # (E, p)
        fv = self.evaluate(self.nodes)
        panel = self._wsum(self.weights, fv, dim=1)
        zero = torch.zeros((1, *value_shape), dtype=torch.float64)
        self.F_edges = torch.cat([zero, torch.cumsum(panel, dim=0)])  # (E+1, *vs)
        self.abs_integral = self._wsum(self.weights, fv.abs(), dim=1).sum(0)

    def evaluate(self, t: torch.Tensor) -> torch.Tensor:
        """User profile at ``t`` with its output checked (shape, dtype, finiteness)."""
        out = self.fn(t)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(np.asarray(out, dtype=np.float64))
        out = out.to(device=t.device, dtype=t.dtype)
        expected = tuple(t.shape) + self.value_shape
        if tuple(out.shape) != expected:
            if out.numel() == 1 and not self.value_shape:
                out = out.reshape(()).expand(t.shape)
            else:
                raise ValueError(
                    f"the profile returned shape {tuple(out.shape)} for times of shape "
                    f"{tuple(t.shape)}; expected {expected}"
                )
        if not bool(torch.isfinite(out).all()):
            bad = t.reshape(-1)[~torch.isfinite(out).reshape(t.numel(), -1).all(-1)][0]
            raise ValueError(f"the profile is not finite at t = {float(bad)!r} µs")
        return out

    def _wsum(self, w: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
        w = w.reshape(*w.shape, *([1] * len(self.value_shape)))
        return (w * v).sum(dim)

    def F(self, t: torch.Tensor) -> torch.Tensor:
        """∫₀ᵗ f for any tensor of times (constant outside [0, TE])."""
        dev, dt = t.device, t.dtype
        edges = self.edges.to(dev, dt)
        tc = t.clamp(0.0, self.echotime)
        k = (torch.searchsorted(edges, tc.contiguous(), right=True) - 1).clamp(0, len(edges) - 2)
        a = edges[k]
        half = (tc - a) / 2
        loc = a[..., None] + half[..., None] * (self.xi.to(dev, dt) + 1)
        fl = self.evaluate(loc)
        w = (half[..., None] * self.wi.to(dev, dt)).reshape(
            *half.shape, _GL_ORDER, *([1] * len(self.value_shape))
        )
        return self.F_edges.to(dev, dt)[k] + (w * fl).sum(half.ndim)

    @functools.cached_property
    def F_nodes(self) -> torch.Tensor:
        return self.F(self.nodes)

    @functools.cached_property
    def integral_F2(self) -> float:
        return float(self._wsum(self.weights, self.F_nodes**2, dim=1).sum())

    @functools.cached_property
    def integral_FFt(self) -> torch.Tensor:
        """∫ F Fᵀ dt for vector profiles, (3, 3)."""
        outer = self.F_nodes[..., :, None] * self.F_nodes[..., None, :]
        return (self.weights[..., None, None] * outer).sum((0, 1))

    @functools.cached_property
    def max_abs_F(self) -> float:
        return float(
            torch.cat([self.F_edges.abs().reshape(-1), self.F_nodes.abs().reshape(-1)]).max()
        )

    @property
    def refocused(self) -> bool:
        """|F(TE)| <= 1e-9 ∫|f| (the profile's moments vanish at the echo)."""
        return float(self.F_edges[-1].abs().max()) <= 1e-9 * float(self.abs_integral.max())

    @functools.cached_property
    def autocorrelation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Nodes u (nu,) and weighted values w·R(u) (nu,) of R(u) = ∫ f(s) f(s+u) ds on [0, TE].

        The u-axis is split at every breakpoint difference |b_i − b_j| (R is smooth in between);
        each u-interval gets ``npanel`` equal panels, the first of which is replaced by
        ``_GRADED_LEVELS`` geometrically shrinking panels towards the interval's left end.
        """
        b = self.breakpoints
        te = self.echotime
        diffs = np.abs(b[:, None] - b[None, :]).ravel()
        u_breaks = np.asarray(_unique_times(np.concatenate([[0.0], diffs]), te))
        lengths = np.diff(u_breaks)
        h = lengths / self.npanel
        uni_a = u_breaks[:-1, None] + h[:, None] * np.arange(1, self.npanel)
        uni_len = np.broadcast_to(h[:, None], uni_a.shape)
        scale = 2.0 ** -np.arange(1, _GRADED_LEVELS + 1)
        gr_a = u_breaks[:-1, None] + h[:, None] * scale
        gr_len = h[:, None] * scale
        tip_a = u_breaks[:-1, None]
        tip_len = h[:, None] * scale[-1]
        pa = torch.as_tensor(np.concatenate([uni_a.ravel(), gr_a.ravel(), tip_a.ravel()]))
        pl = torch.as_tensor(np.concatenate([uni_len.ravel(), gr_len.ravel(), tip_len.ravel()]))
        u = (pa[:, None] + pl[:, None] * (self.xi + 1) / 2).reshape(-1)
        wu = (pl[:, None] / 2 * self.wi).reshape(-1)

        bt = torch.as_tensor(b)
        nb = len(b)
        m = max(2, self.npanel // 2)  # panels per piece of the s-integral
        per_u = (2 * nb - 1) * m * _GL_ORDER
        chunk = max(1, _CHUNK_BUDGET // per_u)
        sub = (torch.arange(m, dtype=torch.float64)[:, None] + (self.xi + 1) / 2) / m  # (m, p)
        values = []
        for start in range(0, len(u), chunk):
            uc = u[start : start + chunk]
            split = torch.cat([bt.expand(len(uc), nb), bt[None, :] - uc[:, None]], dim=1)
            split = torch.minimum(split.clamp(min=0.0), (te - uc)[:, None])
            split, _ = torch.sort(split, dim=1)
            lo, hi = split[:, :-1], split[:, 1:]
            s = lo[..., None, None] + (hi - lo)[..., None, None] * sub  # (c, pieces, m, p)
            prod = self.evaluate(s) * self.evaluate(s + uc[:, None, None, None])
            w = (hi - lo)[..., None, None] / (2 * m) * self.wi
            values.append((w * prod).sum((1, 2, 3)))
        return u, wu * torch.cat(values)


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------


class Sequence(abc.ABC):
    """Abstract gradient time profile.

    Subclasses **must** implement

    * ``f(t)``: the profile on a tensor of times (µs), returning a tensor of the same shape
      (zero outside [0, TE]);
    * ``echotime`` (property, µs);
    * ``_parameters()``: a dict of the constructor arguments (JSON-friendly values), used by
      ``repr``, equality, hashing and :meth:`to_dict` / :meth:`from_dict`;

    and **should** override ``intervals`` (the breakpoints where f is not smooth; the default is
    ``[0, TE]``). Everything else has a generic implementation: ``F``, ``bvalue_no_q``,
    ``diffusion_time_sta`` and ``j`` by Gauss-Legendre quadrature (exact closed forms when
    ``is_constant`` and ``constant_pieces()`` are provided), ``diffusion_time`` as the
    PGSE-equivalent ∫F²/max|F|². Built-in sequences override them with closed forms.

    Sequences are immutable values: equal parameters compare and hash equal, so they can be
    dict keys.
    """

    is_vector: ClassVar[bool] = False
    """True for vector profiles (:class:`Waveform3D`), whose f and F have a trailing axis of 3."""

    _registry: ClassVar[dict[str, type[Sequence]]] = {}
    _npanel: int = 16

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            Sequence._registry[cls.__name__] = cls

    # ---- abstract interface ---------------------------------------------------------------

    @abc.abstractmethod
    def f(self, t: TimeLike) -> torch.Tensor:
        """Time profile f(t) (dimensionless); t in µs, any shape."""

    @property
    @abc.abstractmethod
    def echotime(self) -> float:
        """Echo time TE in µs (the end of the profile)."""

    @abc.abstractmethod
    def _parameters(self) -> dict[str, Any]:
        """Constructor arguments, in order."""

    # ---- defaults --------------------------------------------------------------------------

    @property
    def intervals(self) -> list[float]:
        """Characteristic breakpoints ``[0, ..., TE]`` in µs (f is smooth between them)."""
        return [0.0, self.echotime]

    @property
    def is_constant(self) -> bool:
        """True when f is piecewise constant on :attr:`intervals` (see :meth:`constant_pieces`)."""
        return False

    def constant_pieces(self) -> list[tuple[float, float, float]]:
        """``[(t0, t1, f_value), ...]`` (µs, µs, 1) covering [0, TE], zero-length pieces dropped.

        Raises
        ------
        ValueError
            If the profile is not piecewise constant.
        """
        raise ValueError(f"{self!r} is not piecewise constant (is_constant is False)")

    @functools.cached_property
    def _numeric(self) -> _PanelQuadrature:
        return _PanelQuadrature(self.f, np.asarray(self.intervals), self._npanel)

    def F(self, t: TimeLike) -> torch.Tensor:
        """F(t) = ∫₀ᵗ f(s) ds in µs; t in µs, any shape (constant outside [0, TE])."""
        t = _as_tensor(t)
        return self._numeric.F(t)

    @functools.cached_property
    def bvalue_no_q(self) -> float:
        """∫₀^TE F(t)² dt in µs³, so that b [s/mm²] = q² · bvalue_no_q."""
        if self.is_constant:
            return -0.5 * self._pc_sum(lambda x: x**3 / 6)
        return self._numeric.integral_F2

    @property
    def diffusion_time(self) -> float:
        """Diffusion time in µs. Generic: the PGSE-equivalent ∫F² / max|F|² (= Δ − δ/3 for a
        PGSE), with max|F| taken over breakpoints and quadrature nodes."""
        return self.bvalue_no_q / self._numeric.max_abs_F**2

    @functools.cached_property
    def diffusion_time_sta(self) -> float:
        """Squared STA factor C² in µs, C = −½ ∬ f(s) f(t) |t−s|^{3/2} / ∫F² (see module doc)."""
        if self.is_constant:
            c = -0.5 * self._pc_sum(lambda x: 4.0 / 35.0 * x**3.5) / self.bvalue_no_q
        else:
            self._require_refocused("diffusion_time_sta")
            u, wr = self._numeric.autocorrelation
            c = -float((u**1.5 * wr).sum()) / self.bvalue_no_q
        return c**2

    def j(self, lam: TimeLike) -> torch.Tensor:
        """Matrix-formalism quantity j(λ) in 1/µs (see module doc), elementwise.

        Parameters
        ----------
        lam : float or tensor, 1/µs
            Laplace eigenvalues λ (≥ 0; tiny negative round-off is fine). Any shape; the
            result has the same shape, dtype and device, and is differentiable in λ
            (dj/dλ = 1 at λ = 0).
        """
        lam = _as_tensor(lam)
        if self.is_constant:
            return self._pc_j(lam)
        self._require_refocused("j")
        u, wr = self._numeric.autocorrelation
        u = u.to(lam.device, lam.dtype)
        wr = wr.to(lam.device, lam.dtype)
        return (torch.expm1(-lam[..., None] * u) * wr).sum(-1) / self.bvalue_no_q

    # ---- piecewise-constant closed forms ---------------------------------------------------

    @functools.cached_property
    def _pc_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients c_k and distances |x_k| with ∬ f f g(t−s) = Σ_k c_k Φ(|x_k|)."""
        pieces = [(a, b, v) for a, b, v in self.constant_pieces() if v != 0.0]
        a = np.array([p[0] for p in pieces])
        b = np.array([p[1] for p in pieces])
        v = np.array([p[2] for p in pieces])
        vv = v[:, None] * v[None, :]
        # i: source piece (s), j: target piece (t); x = t − s at the four corners
        x = np.stack(
            [
                b[None, :] - a[:, None],
                b[None, :] - b[:, None],
                a[None, :] - a[:, None],
                a[None, :] - b[:, None],
            ]
        )
        sign = np.array([1.0, -1.0, -1.0, 1.0])[:, None, None]
        return (sign * vv).ravel(), np.abs(x).ravel()

    def _pc_sum(self, phi: Callable[[np.ndarray], np.ndarray]) -> float:
        c, x = self._pc_terms
        return float(np.sum(c * phi(x)))

    def _pc_j(self, lam: torch.Tensor) -> torch.Tensor:
        c_np, x_np = self._pc_terms
        c = torch.as_tensor(c_np, dtype=lam.dtype, device=lam.device)
        x = torch.as_tensor(x_np, dtype=lam.dtype, device=lam.device)
        y = lam[..., None] * x
        # λ·TE <= 1: λ·Σ c |x|³ φ₃(λ|x|) (exact since Σ c x² = 2(∫f)² = 0);
        # λ·TE  > 1: Σ c x² φ₂(λ|x|) (no x² cancellation at large λ)
        small = (lam.abs() * self.echotime <= 1.0)[..., None]
        terms = torch.where(small, lam[..., None] * x**3 * _phi3(y), x**2 * _phi2(y))
        return 0.5 * (c * terms).sum(-1) / self.bvalue_no_q

    # ---- helpers -------------------------------------------------------------------------

    def _require_refocused(self, what: str) -> None:
        if not self._numeric.refocused:
            f_te = float(self._numeric.F_edges[-1].reshape(-1)[0])
            raise ValueError(
                f"{what} of {self!r} needs a refocused profile (F(TE) = 0), but F(TE) = "
                f"{f_te:.6g} µs"
            )

    # ---- value semantics -----------------------------------------------------------------

    def _key(self) -> tuple[Any, ...]:
        return (type(self).__name__, *(_freeze(v) for v in self._parameters().values()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in self._parameters().items())
        return f"{type(self).__name__}({args})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description ``{"type": class name, **parameters}``."""
        return {"type": type(self).__name__, **self._parameters()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sequence:
        """Inverse of :meth:`to_dict`; dispatches on ``data["type"]``.

        Raises
        ------
        ValueError
            Missing or unknown ``type``.
        """
        if not isinstance(data, dict) or "type" not in data:
            raise ValueError(f"a sequence dict needs a 'type' field, got {data!r}")
        name = data["type"]
        if name not in Sequence._registry:
            raise ValueError(
                f"unknown sequence type {name!r}; known: {', '.join(sorted(Sequence._registry))}"
            )
        target = Sequence._registry[name]
        if cls is not Sequence and not issubclass(target, cls):
            raise ValueError(f"type {name!r} is not a {cls.__name__}")
        params = {k: v for k, v in data.items() if k != "type"}
        return target._from_parameters(params)

    @classmethod
    def _from_parameters(cls, params: dict[str, Any]) -> Sequence:
        return cls(**params)


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.ndarray):
        return (value.shape, value.tobytes())
    return value


def _short(value: Any) -> str:
    if isinstance(value, list | tuple) and len(value) > 6:
        return f"[{len(value)} values]"
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    return repr(value)


# --------------------------------------------------------------------------------------------
# built-in scalar sequences
# --------------------------------------------------------------------------------------------


class _TwoLobe(Sequence):
    """Shared parameter handling of the (δ, Δ) two-lobe sequences."""

    def __init__(self, delta: float, Delta: float) -> None:
        self._delta = _positive_time(delta, "delta")
        self._Delta = _positive_time(Delta, "Delta")
        if self._delta > self._Delta:
            raise ValueError(
                f"delta must be <= Delta, got delta = {self._delta!r} > Delta = {self._Delta!r}"
            )

    @property
    def delta(self) -> float:
        """Pulse duration δ in µs."""
        return self._delta

    @property
    def Delta(self) -> float:
        """Time between the starts of the two lobes Δ in µs."""
        return self._Delta

    @property
    def echotime(self) -> float:
        """TE = Δ + δ in µs."""
        return self._Delta + self._delta

    @property
    def intervals(self) -> list[float]:
        """``[0, δ, Δ, Δ+δ]`` (``[0, δ, 2δ]`` when δ = Δ)."""
        d, dd = self._delta, self._Delta
        return _unique_times([0.0, d, dd, dd + d], self.echotime)

    def _lobe(self, tau: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _lobe_integral(self, tau: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def f(self, t: TimeLike) -> torch.Tensor:
        """+lobe on [0, δ), −lobe on [Δ, Δ+δ], 0 elsewhere."""
        t = _as_tensor(t)
        d, dd = self._delta, self._Delta
        first = (t >= 0) & (t < d)
        second = (t >= dd) & (t <= dd + d)
        zero = torch.zeros_like(t)
        return torch.where(first, self._lobe(t), zero) - torch.where(
            second, self._lobe(t - dd), zero
        )

    def F(self, t: TimeLike) -> torch.Tensor:
        """Closed-form ∫₀ᵗ f in µs."""
        t = _as_tensor(t)
        d, dd = self._delta, self._Delta
        return self._lobe_integral(t.clamp(0.0, d)) - self._lobe_integral((t - dd).clamp(0.0, d))

    def _parameters(self) -> dict[str, Any]:
        return {"delta": self._delta, "Delta": self._Delta}


class PGSE(_TwoLobe):
    """Pulsed-gradient spin echo (Stejskal-Tanner).

    f = +1 on [0, δ), −1 on [Δ, Δ+δ], 0 elsewhere; TE = Δ + δ; ∫F² = δ²(Δ − δ/3);
    diffusion time Δ − δ/3.

    Parameters
    ----------
    delta : float, µs
        Pulse duration δ > 0.
    Delta : float, µs
        Time between the pulse starts, Δ ≥ δ.

    Raises
    ------
    ValueError
        δ ≤ 0, δ > Δ, non-finite values, or times that look like seconds (δ = 0.01).

    Examples
    --------
    >>> seq = PGSE(delta=2000.0, Delta=6000.0)
    >>> round(seq.bvalue_no_q)  # δ²(Δ − δ/3), µs³
    21333333333
    >>> round(float(seq.j(1e-3)), 12)  # 1/µs
    0.000105795795
    """

    def _lobe(self, tau: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(tau)

    def _lobe_integral(self, tau: torch.Tensor) -> torch.Tensor:
        return tau

    @property
    def is_constant(self) -> bool:
        return True

    def constant_pieces(self) -> list[tuple[float, float, float]]:
        d, dd = self._delta, self._Delta
        pieces = [(0.0, d, 1.0), (d, dd, 0.0), (dd, dd + d, -1.0)]
        return [p for p in pieces if p[1] > p[0]]

    @functools.cached_property
    def bvalue_no_q(self) -> float:
        return self._delta**2 * (self._Delta - self._delta / 3)

    @property
    def diffusion_time(self) -> float:
        """Δ − δ/3 in µs."""
        return self._Delta - self._delta / 3


class DoublePGSE(Sequence):
    """Two PGSE blocks separated by a pause (double diffusion encoding, same direction).

    f = +1 on [0, δ), −1 on [Δ, Δ+δ), +1 on [t₂, t₂+δ), −1 on [t₂+Δ, TE] with
    t₂ = tpause + Δ + δ and TE = 2(Δ + δ) + tpause; ∫F² = 2δ²(Δ − δ/3); diffusion time
    2(Δ − δ/3).

    Parameters
    ----------
    delta : float, µs
        Pulse duration δ > 0.
    Delta : float, µs
        Time between the pulse starts within each block, Δ ≥ δ.
    tpause : float, µs, default 0
        Pause between the two blocks, ≥ 0.

    Raises
    ------
    ValueError
        δ ≤ 0, δ > Δ, tpause < 0, non-finite values, or times that look like seconds.
    """

    def __init__(self, delta: float, Delta: float, tpause: float = 0.0) -> None:
        self._delta = _positive_time(delta, "delta")
        self._Delta = _positive_time(Delta, "Delta")
        if self._delta > self._Delta:
            raise ValueError(
                f"delta must be <= Delta, got delta = {self._delta!r} > Delta = {self._Delta!r}"
            )
        self._tpause = _nonnegative_time(tpause, "tpause")

    delta = _TwoLobe.delta
    Delta = _TwoLobe.Delta

    @property
    def tpause(self) -> float:
        """Pause between the two PGSE blocks in µs."""
        return self._tpause

    @property
    def echotime(self) -> float:
        """TE = 2(Δ + δ) + tpause in µs."""
        return 2 * (self._Delta + self._delta) + self._tpause

    def constant_pieces(self) -> list[tuple[float, float, float]]:
        d, dd, p = self._delta, self._Delta, self._tpause
        t2 = p + dd + d
        pieces = [
            (0.0, d, 1.0),
            (d, dd, 0.0),
            (dd, dd + d, -1.0),
            (dd + d, t2, 0.0),
            (t2, t2 + d, 1.0),
            (t2 + d, t2 + dd, 0.0),
            (t2 + dd, t2 + dd + d, -1.0),
        ]
        return [q for q in pieces if q[1] > q[0]]

    @property
    def intervals(self) -> list[float]:
        """``[0, δ, Δ, Δ+δ, t₂, t₂+δ, t₂+Δ, TE]``, zero-length pieces dropped."""
        pieces = self.constant_pieces()
        return _unique_times([0.0] + [q[1] for q in pieces], self.echotime)

    @property
    def is_constant(self) -> bool:
        return True

    def f(self, t: TimeLike) -> torch.Tensor:
        t = _as_tensor(t)
        d, dd, p = self._delta, self._Delta, self._tpause
        t2 = p + dd + d
        one = torch.ones_like(t)
        zero = torch.zeros_like(t)

        def box(lo: float, hi: float, closed: bool = False) -> torch.Tensor:
            inside = (t >= lo) & ((t <= hi) if closed else (t < hi))
            return torch.where(inside, one, zero)

        return box(0.0, d) - box(dd, dd + d) + box(t2, t2 + d) - box(t2 + dd, t2 + dd + d, True)

    def F(self, t: TimeLike) -> torch.Tensor:
        t = _as_tensor(t)
        d, dd, p = self._delta, self._Delta, self._tpause
        t2 = p + dd + d

        def ramp(start: float) -> torch.Tensor:
            return (t - start).clamp(0.0, d)

        return ramp(0.0) - ramp(dd) + ramp(t2) - ramp(t2 + dd)

    @functools.cached_property
    def bvalue_no_q(self) -> float:
        return 2 * self._delta**2 * (self._Delta - self._delta / 3)

    @property
    def diffusion_time(self) -> float:
        """2(Δ − δ/3) in µs."""
        return 2 * (self._Delta - self._delta / 3)

    def _parameters(self) -> dict[str, Any]:
        return {"delta": self._delta, "Delta": self._Delta, "tpause": self._tpause}


class _OGSE(_TwoLobe):
    def __init__(self, delta: float, Delta: float, nperiod: int) -> None:
        super().__init__(delta, Delta)
        self._nperiod = _positive_int(nperiod, "nperiod")

    @property
    def nperiod(self) -> int:
        """Number of periods per lobe."""
        return self._nperiod

    @property
    def _omega(self) -> float:
        return 2 * math.pi * self._nperiod / self._delta

    def _parameters(self) -> dict[str, Any]:
        return {"delta": self._delta, "Delta": self._Delta, "nperiod": self._nperiod}

    def _fresnel_terms(self) -> dict[str, float]:
        d, dd, n = self._delta, self._Delta, self._nperiod
        s1, c1 = fresnel(2 * math.sqrt(n))
        s2, c2 = fresnel(2 * math.sqrt(dd * n / d))
        s3, c3 = fresnel(2 * math.sqrt((dd + d) * n / d))
        s4, c4 = fresnel(2 * math.sqrt((dd - d) * n / d))
        phase = 2 * math.pi * n * dd / d
        return {
            "S1": float(s1),
            "C1": float(c1),
            "S2": float(s2),
            "C2": float(c2),
            "S3": float(s3),
            "C3": float(c3),
            "S4": float(s4),
            "C4": float(c4),
            "sin": math.sin(phase),
            "cos": math.cos(phase),
        }


class CosOGSE(_OGSE):
    """Cosine oscillating-gradient spin echo.

    f = cos(2πn t/δ) on [0, δ), −cos(2πn (t−Δ)/δ) on [Δ, Δ+δ]; TE = Δ + δ;
    ∫F² = δ³/(4π²n²); diffusion time δ/(8n) (SpinDoctor's convention).

    Parameters
    ----------
    delta : float, µs
        Lobe duration δ > 0.
    Delta : float, µs
        Time between the lobe starts, Δ ≥ δ.
    nperiod : int
        Number of periods per lobe n ≥ 1.

    Raises
    ------
    ValueError
        δ ≤ 0, δ > Δ, n not a positive integer, non-finite values, times that look like seconds.
    """

    def _lobe(self, tau: torch.Tensor) -> torch.Tensor:
        return torch.cos(self._omega * tau)

    def _lobe_integral(self, tau: torch.Tensor) -> torch.Tensor:
        return torch.sin(self._omega * tau) / self._omega

    @functools.cached_property
    def bvalue_no_q(self) -> float:
        return self._delta**3 / (4 * math.pi**2 * self._nperiod**2)

    @property
    def diffusion_time(self) -> float:
        """δ/(8n) in µs."""
        return self._delta / (8 * self._nperiod)

    @functools.cached_property
    def diffusion_time_sta(self) -> float:
        """Closed form with Fresnel integrals (SpinDoctor ``CosOGSE.diffusion_time_sta``)."""
        d, dd, n = self._delta, self._Delta, self._nperiod
        z = self._fresnel_terms()
        c, s = z["cos"], z["sin"]
        out = 3 / 8 / math.sqrt(n * d) * (
            2 * dd * z["C2"] * c
            + d * z["C4"] * c
            - d * z["C3"] * c
            - dd * z["C3"] * c
            - dd * z["C4"] * c
            + 2 * dd * z["S2"] * s
            + d * z["S4"] * s
            - d * z["S3"] * s
            - dd * z["S3"] * s
            - dd * z["S4"] * s
            + 2 * d * z["C1"]
        ) + 9 * math.sqrt(d) / (32 * math.pi) / n**1.5 * (
            2 * z["S2"] * c
            - z["S3"] * c
            - z["S4"] * c
            - 2 * z["C2"] * s
            + z["C3"] * s
            + z["C4"] * s
            + 2 * z["S1"]
        )
        return out**2

    def j(self, lam: TimeLike) -> torch.Tensor:
        """Closed form: with a² = (2πn)², y = λδ,
        j = a² λ (a² + y² + y E) / (a² + y²)², E = −ε(Δ+δ) − ε(Δ−δ) + 2ε(Δ) + 2ε(δ),
        ε(τ) = expm1(−λτ)."""
        lam = _as_tensor(lam)
        d, dd = self._delta, self._Delta
        a2 = (2 * math.pi * self._nperiod) ** 2
        y = lam * d

        def eps(tau: float) -> torch.Tensor:
            return torch.expm1(-lam * tau)

        e = -eps(dd + d) - eps(dd - d) + 2 * eps(dd) + 2 * eps(d)
        return a2 * lam * (a2 + y**2 + y * e) / (a2 + y**2) ** 2


class SinOGSE(_OGSE):
    """Sine oscillating-gradient spin echo.

    f = sin(2πn t/δ) on [0, δ), −sin(2πn (t−Δ)/δ) on [Δ, Δ+δ]; TE = Δ + δ;
    ∫F² = 3δ³/(4π²n²); diffusion time 3δ/(8n) (SpinDoctor's convention).

    Parameters and errors as for :class:`CosOGSE`.
    """

    def _lobe(self, tau: torch.Tensor) -> torch.Tensor:
        return torch.sin(self._omega * tau)

    def _lobe_integral(self, tau: torch.Tensor) -> torch.Tensor:
        return (1 - torch.cos(self._omega * tau)) / self._omega

    @functools.cached_property
    def bvalue_no_q(self) -> float:
        return 3 * self._delta**3 / (4 * math.pi**2 * self._nperiod**2)

    @property
    def diffusion_time(self) -> float:
        """3δ/(8n) in µs."""
        return 3 * self._delta / (8 * self._nperiod)

    @functools.cached_property
    def diffusion_time_sta(self) -> float:
        """Closed form with Fresnel integrals (SpinDoctor ``SinOGSE.diffusion_time_sta``)."""
        d, dd, n = self._delta, self._Delta, self._nperiod
        z = self._fresnel_terms()
        c, s = z["cos"], z["sin"]
        pi = math.pi
        n15, d15, sd = n**1.5, d**1.5, math.sqrt(d)
        out = (
            64 * pi * n15 * dd**1.5
            + 64 * pi * n15 * d15
            + 42 * d15 * (z["S2"] * c + z["S1"] - z["C2"] * s)
            + 32 * pi * n15 * (math.sqrt(dd - d) * (d - dd) - math.sqrt(dd + d) * (dd + d))
            + 24 * pi * n * dd * sd * (z["C2"] * c + z["S2"] * s)
            + 24 * pi * n * d15 * z["C1"]
            + 21 * d15 * ((z["C3"] + z["C4"]) * s - (z["S3"] + z["S4"]) * c)
            + 12 * pi * n * d15 * (z["S4"] * s + z["C4"] * c - z["C3"] * c - z["S3"] * s)
            - 12 * pi * n * dd * sd * ((z["C3"] + z["C4"]) * c + (z["S3"] + z["S4"]) * s)
        ) / (96 * pi * n15 * d)
        return out**2

    def j(self, lam: TimeLike) -> torch.Tensor:
        """Closed form: with a² = (2πn)², y = λδ,
        j = a² (y³ + a² (E + y)) / (3δ (a² + y²)²), E = ε(Δ+δ) + ε(Δ−δ) − 2ε(δ) − 2ε(Δ),
        ε(τ) = expm1(−λτ)."""
        lam = _as_tensor(lam)
        d, dd = self._delta, self._Delta
        a2 = (2 * math.pi * self._nperiod) ** 2
        y = lam * d

        def eps(tau: float) -> torch.Tensor:
            return torch.expm1(-lam * tau)

        e = eps(dd + d) + eps(dd - d) - 2 * eps(d) - 2 * eps(dd)
        return a2 * (y**3 + a2 * (e + y)) / (3 * d * (a2 + y**2) ** 2)


# --------------------------------------------------------------------------------------------
# user profiles
# --------------------------------------------------------------------------------------------


def _breakpoints(breakpoints: Iterable[float], echotime: float, name: str) -> list[float]:
    try:
        values = [_scalar(b, f"{name}[{i}]") for i, b in enumerate(breakpoints)]
    except TypeError as err:
        raise TypeError(f"{name} must be a sequence of times in µs, got {breakpoints!r}") from err
    for i, b in enumerate(values):
        if not 0.0 <= b <= echotime:
            raise ValueError(f"{name}[{i}] = {b!r} lies outside [0, echotime = {echotime!r}]")
    return _unique_times([0.0, *values, echotime], echotime)


class CustomProfile(Sequence):
    """A user-defined scalar time profile f(t).

    Parameters
    ----------
    f : callable or str
        ``f(t)`` taking a float64 tensor of times (µs, any shape) and returning a tensor of the
        same shape (dimensionless; the amplitude comes from the experiment), or an expression
        string in ``t`` such as ``"cos(2*pi*t/5000) * (t < 5000)"`` (numbers, ``t``, ``pi``,
        ``e``, arithmetic, comparisons, ``& | ~`` and sin, cos, tan, exp, log, sqrt, abs, sign,
        sinh, cosh, tanh, atan, floor, where, clamp). Only expression profiles can be
        serialized with :meth:`to_dict`. f is treated as 0 outside [0, TE].
    echotime : float, µs
        TE > 0, the end of the profile.
    breakpoints : sequence of float, µs
        Times in (0, TE) where f or its derivatives jump (e.g. δ and Δ); f must be smooth
        between them for the quadrature to be accurate.
    name : str, default "custom"
        Label used in ``repr`` and results.
    diffusion_time : float, µs, optional
        Overrides the generic PGSE-equivalent diffusion time ∫F² / max|F|².
    npanel : int, default 16
        Gauss-Legendre panels (16 points each) per sub-interval; raise it for profiles that
        oscillate many times between breakpoints.

    Notes
    -----
    ∫F² and F(t) are computed with composite 16-point Gauss-Legendre quadrature, j(λ) and the
    STA factor through the autocorrelation of f (see module doc); both need a refocused profile
    (F(TE) = 0) and raise ValueError otherwise. Costs grow with the square of the number of
    breakpoints.

    Raises
    ------
    TypeError
        f is neither callable nor a string; f returns a tensor of the wrong shape.
    ValueError
        Non-positive or non-finite echotime, breakpoints outside [0, TE], an unparsable
        expression, or a profile that is not finite.
    """

    def __init__(
        self,
        f: Callable[[torch.Tensor], torch.Tensor] | str,
        echotime: float,
        breakpoints: Iterable[float] = (),
        name: str = "custom",
        diffusion_time: float | None = None,
        npanel: int = 16,
    ) -> None:
        self._f, self._expression = _callable_profile(f, "f")
        self._echotime = _positive_time(echotime, "echotime")
        self._breakpoints = _breakpoints(breakpoints, self._echotime, "breakpoints")
        if not isinstance(name, str):
            raise TypeError(f"name must be a string, got {name!r}")
        self._name = name
        self._diffusion_time = (
            None if diffusion_time is None else _positive_time(diffusion_time, "diffusion_time")
        )
        self._npanel = _positive_int(npanel, "npanel")
        probe = torch.linspace(0.0, self._echotime, 7, dtype=torch.float64)[1:-1]
        try:
            self._numeric.evaluate(probe)
        except ValueError as err:
            raise ValueError(f"f of CustomProfile {name!r}: {err}") from err

    @property
    def name(self) -> str:
        return self._name

    @property
    def echotime(self) -> float:
        return self._echotime

    @property
    def intervals(self) -> list[float]:
        return list(self._breakpoints)

    def f(self, t: TimeLike) -> torch.Tensor:
        t = _as_tensor(t)
        inside = (t >= 0) & (t <= self._echotime)
        tc = t.clamp(0.0, self._echotime)
        return torch.where(inside, self._numeric.evaluate(tc), torch.zeros_like(t))

    @functools.cached_property
    def _numeric(self) -> _PanelQuadrature:
        return _PanelQuadrature(self._f, np.asarray(self._breakpoints), self._npanel)

    @property
    def diffusion_time(self) -> float:
        if self._diffusion_time is not None:
            return self._diffusion_time
        return super().diffusion_time

    def _parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "f": self._expression if self._expression is not None else self._f,
            "echotime": self._echotime,
            "breakpoints": self._breakpoints[1:-1],
            "name": self._name,
        }
        if self._diffusion_time is not None:
            params["diffusion_time"] = self._diffusion_time
        if self._npanel != Sequence._npanel:
            params["npanel"] = self._npanel
        return params

    def to_dict(self) -> dict[str, Any]:
        """Serializable description; only for profiles given as expression strings.

        Raises
        ------
        TypeError
            The profile is a Python callable.
        """
        if self._expression is None:
            raise TypeError(
                f"CustomProfile {self._name!r} wraps a Python callable, which cannot be "
                "serialized; give f as an expression string of t to make it serializable"
            )
        return super().to_dict()


class Waveform3D(Sequence):
    """General vector gradient profile g(t) ∈ R³ (Julia ``GeneralGradient``, MATLAB Camino).

    The gradient is ``amplitude · g(t)``: g is a dimensionless vector profile and the amplitude
    (g in T/m, or q = γ·g, or the b-value) comes from the experiment. With
    :math:`\\mathbf{F}(t) = \\int_0^t \\mathbf{g}`, the b-tensor is ``q² · bmatrix_no_q`` with
    ``bmatrix_no_q = ∫₀^TE F Fᵀ dt`` and the b-value is ``q² · bvalue_no_q``,
    ``bvalue_no_q = trace(bmatrix_no_q)``.

    How :class:`~spindoctor_torch.experiment.Experiment` treats it: the direction is built into
    g, so the experiment's directions are ignored for this sequence (an experiment holding a
    Waveform3D must have exactly one direction, or ``directions=None`` when every sequence is
    a Waveform3D); the amplitude values scale g as for scalar sequences.

    Parameters
    ----------
    g : callable, (times, values) or three expression strings
        * callable ``g(t)``: float64 tensor of times (µs, any shape) -> tensor ``t.shape + (3,)``;
        * ``(times, values)``: samples, times (nt,) strictly increasing in µs, values (nt, 3);
          g is piecewise linear between samples and 0 outside [times[0], times[-1]];
        * three strings: one expression of ``t`` per axis (see :class:`CustomProfile`).
    echotime : float, µs, optional
        TE; defaults to ``times[-1]`` for samples, required otherwise.
    breakpoints : sequence of float, µs
        Times in (0, TE) where g is not smooth (callables and expressions; for samples every
        sample time is a breakpoint).
    npanel : int, default 16
        Gauss-Legendre panels per sub-interval (callables and expressions).

    Notes
    -----
    For samples, F and ``bmatrix_no_q`` are exact (F is piecewise quadratic). ``f`` / ``F``
    return vectors (trailing axis 3); ``j``, ``diffusion_time`` and ``diffusion_time_sta`` are
    not defined for vector profiles and raise NotImplementedError.
    """

    is_vector: ClassVar[bool] = True

    def __init__(
        self,
        g: Any,
        echotime: float | None = None,
        breakpoints: Iterable[float] = (),
        npanel: int = 16,
    ) -> None:
        self._npanel = _positive_int(npanel, "npanel")
        self._times: np.ndarray | None = None
        self._values: np.ndarray | None = None
        self._expressions: list[str] | None = None
        self._callable: Callable[[torch.Tensor], torch.Tensor] | None = None
        if isinstance(g, list | tuple) and len(g) == 2 and not isinstance(g[0], str):
            self._init_samples(g[0], g[1], echotime, breakpoints)
            return
        if isinstance(g, list | tuple) and len(g) == 3 and all(isinstance(x, str) for x in g):
            exprs = [_Expression(x, f"g[{i}]") for i, x in enumerate(g)]
            self._expressions = [e.text for e in exprs]

            def fn(t: torch.Tensor) -> torch.Tensor:
                return torch.stack([e(t) for e in exprs], dim=-1)

            self._callable = fn
        elif callable(g):
            self._callable = g
        else:
            raise TypeError(
                "g must be a callable g(t) -> (..., 3), a (times, values) pair of samples or "
                f"three expression strings, got {type(g).__name__}"
            )
        if echotime is None:
            raise ValueError("echotime is required for a Waveform3D given as a function")
        self._echotime = _positive_time(echotime, "echotime")
        self._breakpoints = _breakpoints(breakpoints, self._echotime, "breakpoints")
        probe = torch.linspace(0.0, self._echotime, 7, dtype=torch.float64)[1:-1]
        try:
            self._numeric.evaluate(probe)
        except ValueError as err:
            raise ValueError(f"g of Waveform3D: {err}") from err

    def _init_samples(
        self, times: Any, values: Any, echotime: float | None, breakpoints: Iterable[float]
    ) -> None:
        tt = np.asarray(
            times.detach().cpu() if isinstance(times, torch.Tensor) else times, dtype=np.float64
        )
        vv = np.asarray(
            values.detach().cpu() if isinstance(values, torch.Tensor) else values,
            dtype=np.float64,
        )
        if tt.ndim != 1 or tt.size < 2:
            raise ValueError(f"times must be a 1-D array of >= 2 samples, got shape {tt.shape}")
        if vv.shape != (tt.size, 3):
            raise ValueError(f"values must have shape ({tt.size}, 3), got {vv.shape}")
        if not (np.isfinite(tt).all() and np.isfinite(vv).all()):
            raise ValueError("times and values must be finite")
        steps = np.diff(tt)
        if (steps <= 0).any():
            i = int(np.argmax(steps <= 0))
            raise ValueError(
                f"times must be strictly increasing, got times[{i}] = {tt[i]!r} >= "
                f"times[{i + 1}] = {tt[i + 1]!r}"
            )
        if tt[0] < 0:
            raise ValueError(f"times[0] must be >= 0 µs, got {tt[0]!r}")
        te = float(tt[-1]) if echotime is None else _positive_time(echotime, "echotime")
        check_time(te, "echotime")
        if tt[-1] > te:
            raise ValueError(f"times[-1] = {tt[-1]!r} exceeds echotime = {te!r}")
        if tuple(breakpoints):
            raise ValueError("breakpoints are implied by the sample times; do not pass them")
        self._times, self._values, self._echotime = tt, vv, te
        self._breakpoints = _unique_times([0.0, *tt.tolist(), te], te)
        # exact cumulative integral at the sample times (trapezoid rule is exact for linear g)
        self._G_samples = np.concatenate(
            [np.zeros((1, 3)), np.cumsum(steps[:, None] * (vv[1:] + vv[:-1]) / 2, axis=0)]
        )

    # ---- profile ------------------------------------------------------------------------

    @property
    def echotime(self) -> float:
        return self._echotime

    @property
    def intervals(self) -> list[float]:
        return list(self._breakpoints)

    def g(self, t: TimeLike) -> torch.Tensor:
        """Vector profile g(t), shape ``t.shape + (3,)``, 0 outside [0, TE]."""
        t = _as_tensor(t)
        if self._times is not None:
            return self._sample_eval(t)[0]
        inside = ((t >= 0) & (t <= self._echotime))[..., None]
        tc = t.clamp(0.0, self._echotime)
        zero = torch.zeros((), dtype=t.dtype, device=t.device)
        return torch.where(inside, self._numeric.evaluate(tc), zero)

    def f(self, t: TimeLike) -> torch.Tensor:
        """Same as :meth:`g` (vector valued, trailing axis 3)."""
        return self.g(t)

    def F(self, t: TimeLike) -> torch.Tensor:
        """F(t) = ∫₀ᵗ g in µs, shape ``t.shape + (3,)``."""
        t = _as_tensor(t)
        if self._times is not None:
            return self._sample_eval(t)[1]
        return self._numeric.F(t)

    G = F

    def _sample_eval(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._times is not None and self._values is not None
        dev, dt = t.device, t.dtype
        tt = torch.as_tensor(self._times, device=dev, dtype=dt)
        vv = torch.as_tensor(self._values, device=dev, dtype=dt)
        gs = torch.as_tensor(self._G_samples, device=dev, dtype=dt)
        n = len(tt)
        tc = t.clamp(float(tt[0]), float(tt[-1]))
        k = (torch.searchsorted(tt, tc.contiguous(), right=True) - 1).clamp(0, n - 2)
        h = tt[k + 1] - tt[k]
        tau = (tc - tt[k])[..., None]
        slope = (vv[k + 1] - vv[k]) / h[..., None]
        inside = ((t >= tt[0]) & (t <= tt[-1]))[..., None]
        g = torch.where(inside, vv[k] + slope * tau, torch.zeros((), dtype=dt, device=dev))
        big = gs[k] + vv[k] * tau + slope * tau**2 / 2
        before = (t < tt[0])[..., None]
        big = torch.where(before, torch.zeros((), dtype=dt, device=dev), big)
        return g, big

    @functools.cached_property
    def _numeric(self) -> _PanelQuadrature:
        assert self._callable is not None
        return _PanelQuadrature(self._callable, np.asarray(self._breakpoints), self._npanel, (3,))

    # ---- integrals ----------------------------------------------------------------------

    @functools.cached_property
    def bmatrix_no_q(self) -> torch.Tensor:
        """∫₀^TE F(t) F(t)ᵀ dt, (3, 3) float64 in µs³; the b-tensor is q² times this."""
        if self._times is None:
            return self._numeric.integral_FFt
        tt = torch.as_tensor(self._times)
        xi = torch.tensor([-math.sqrt(0.6), 0.0, math.sqrt(0.6)], dtype=torch.float64)
        wi = torch.tensor([5 / 9, 8 / 9, 5 / 9], dtype=torch.float64)
        h = torch.diff(tt)
        nodes = tt[:-1, None] + h[:, None] * (xi + 1) / 2  # 3-point Gauss: exact for quartics
        big = self.F(nodes)  # (nseg, 3, 3)
        w = h[:, None] / 2 * wi
        out = (w[..., None, None] * big[..., :, None] * big[..., None, :]).sum((0, 1))
        tail = self._echotime - float(tt[-1])
        if tail > 0:  # g = 0 after the last sample: F stays constant
            last = torch.as_tensor(self._G_samples[-1])
            out = out + tail * last[:, None] * last[None, :]
        return out

    @functools.cached_property
    def bvalue_no_q(self) -> float:
        """trace(bmatrix_no_q) in µs³, so that b = q² · bvalue_no_q."""
        return float(torch.trace(self.bmatrix_no_q))

    def _undefined(self, what: str) -> NotImplementedError:
        return NotImplementedError(f"{what} is not defined for a vector profile (Waveform3D)")

    @property
    def diffusion_time(self) -> float:
        raise self._undefined("diffusion_time")

    @property
    def diffusion_time_sta(self) -> float:  # type: ignore[override]
        raise self._undefined("diffusion_time_sta")

    def j(self, lam: TimeLike) -> torch.Tensor:
        raise self._undefined("j(lambda)")

    # ---- value semantics ----------------------------------------------------------------

    def _parameters(self) -> dict[str, Any]:
        if self._times is not None:
            assert self._values is not None
            return {
                "g": (self._times.tolist(), self._values.tolist()),
                "echotime": self._echotime,
            }
        params: dict[str, Any] = {
            "g": list(self._expressions) if self._expressions is not None else self._callable,
            "echotime": self._echotime,
            "breakpoints": self._breakpoints[1:-1],
        }
        if self._npanel != Sequence._npanel:
            params["npanel"] = self._npanel
        return params

    def to_dict(self) -> dict[str, Any]:
        """Serializable description (samples or expressions).

        Raises
        ------
        TypeError
            The profile is a Python callable.
        """
        if self._times is None and self._expressions is None:
            raise TypeError(
                "a Waveform3D wrapping a Python callable cannot be serialized; give it as "
                "samples (times, values) or as three expression strings"
            )
        data = {"type": "Waveform3D", **self._parameters()}
        if self._times is not None:
            data["g"] = {"times": data["g"][0], "values": data["g"][1]}
        return data

    @classmethod
    def _from_parameters(cls, params: dict[str, Any]) -> Sequence:
        params = dict(params)
        g = params.pop("g")
        if isinstance(g, dict):
            g = (g["times"], g["values"])
        elif isinstance(g, list) and len(g) == 2 and not isinstance(g[0], str):
            g = (g[0], g[1])
        return cls(g, **params)
