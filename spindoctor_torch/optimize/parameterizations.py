"""Parameterizations: small parameter vectors → vertex positions, topology fixed.

Every parameterization holds named leaf tensors (``.parameters``) and maps them
differentiably to a new ``(N, 3)`` points tensor of the reference mesh (``.points()``) and to a
:class:`TetMesh` (``.mesh()``). Compose them with :class:`Chain` (applied left to right).

* :class:`Affine`        isotropic / anisotropic scaling or a full affine map
* :class:`RadialMap`     piecewise-linear map of the distance to an axis (cylinders) or a
                         centre (spheres): radius, in_ratio, layer radii
* :class:`BendTwist`     SpinDoctor's bend and twist deformations (``mesh.deform``)
* :class:`FreeForm`      free surface displacement, smoothed by a Large-Steps
                         reparameterization (I + λL)⁻¹ and extended harmonically inside

Physical parameters (D, κ, T2) are plain tensors in :class:`PhysicalParameters`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from ..errors import SetupError
from ..mesh.tetmesh import TetMesh

__all__ = [
    "Parameterization",
    "Affine",
    "RadialMap",
    "BendTwist",
    "FreeForm",
    "Chain",
    "PhysicalParameters",
]


class Parameterization:
    """Base class: named leaf tensors → points of a reference mesh.

    Subclasses implement :meth:`transform` (points in → points out) and register their
    parameters in ``self.parameters`` (an ordered dict of leaf tensors that require grad).
    """

    def __init__(self, mesh: TetMesh):
        self.reference = mesh.detach()
        self.parameters: dict[str, torch.Tensor] = {}

    def _param(self, name: str, value, *, shape=None) -> torch.Tensor:
        like = self.reference.points
        t = torch.as_tensor(value, dtype=like.dtype, device=like.device).clone()
        if shape is not None:
            t = t.expand(shape).clone()
        t.requires_grad_(True)
        self.parameters[name] = t
        return t

    def transform(self, points: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def points(self) -> torch.Tensor:
        """(N, 3) deformed vertex positions, µm (differentiable in the parameters)."""
        return self.transform(self.reference.points)

    def mesh(self) -> TetMesh:
        """The reference mesh with the deformed points (same topology and patterns)."""
        return self.reference.with_points(self.points())

    def values(self) -> dict[str, np.ndarray]:
        """Current parameter values (detached numpy copies)."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.parameters.items()}

    def set_values(self, values: dict[str, np.ndarray]) -> None:
        """Overwrite parameter values in place (for checkpoints and backtracking)."""
        with torch.no_grad():
            for k, v in values.items():
                self.parameters[k].copy_(torch.as_tensor(v))

    def __repr__(self) -> str:
        vals = {k: np.round(v, 6).tolist() for k, v in self.values().items() if v.size <= 9}
        return f"{type(self).__name__}({vals})"


class Affine(Parameterization):
    """``p ↦ c + A (p − c) + t`` about the centre ``c`` of the reference bounding box.

    Parameters
    ----------
    mesh : TetMesh
    kind : {"isotropic", "anisotropic", "affine"}
        A = s·I (parameter ``scale`` ()), A = diag(s) (``scale`` (3,)), or a full matrix
        (``matrix`` (3, 3)).
    translate : bool
        Also optimize a translation ``t`` (3,), µm.
    """

    def __init__(self, mesh: TetMesh, kind: str = "isotropic", *, translate: bool = False):
        super().__init__(mesh)
        kinds = ("isotropic", "anisotropic", "affine")
        if kind not in kinds:
            raise SetupError(f"kind = {kind!r}; allowed: {kinds}")
        self.kind = kind
        bb = self.reference.bounding_box()
        self.center = bb.mean(0)
        if kind == "isotropic":
            self._param("scale", 1.0)
        elif kind == "anisotropic":
            self._param("scale", [1.0, 1.0, 1.0])
        else:
            self._param("matrix", torch.eye(3))
        if translate:
            self._param("translation", [0.0, 0.0, 0.0])

    def transform(self, points: torch.Tensor) -> torch.Tensor:
        q = points - self.center
        if self.kind == "affine":
            q = q @ self.parameters["matrix"].T
        else:
            q = q * self.parameters["scale"]
        out = q + self.center
        if "translation" in self.parameters:
            out = out + self.parameters["translation"]
        return out


class RadialMap(Parameterization):
    """Piecewise-linear, monotone map of the radial distance, angles kept.

    The distance r of every vertex to an ``axis`` through ``center`` (cylinders) or to
    ``center`` itself (spheres, ``axis=None``) is mapped through the piecewise-linear
    function that sends the reference knots ``knots[k]`` to the parameters
    ``radii[k]`` (and 0 to 0). Beyond the last knot the map is the identity shifted so that
    it is continuous, unless ``fixed_outer`` (µm) is given: then the shell between the last
    knot and ``fixed_outer`` is stretched so that radii ≥ ``fixed_outer`` stay in place (an
    ECS boundary kept fixed while the cell grows).

    Example: a myelinated axon with axon radius 2 and outer radius 3 in an ECS of radius 4,
    ``RadialMap(mesh, knots=[2, 3], axis=(0, 0, 1), fixed_outer=4)`` exposes the parameter
    ``radii`` = [r_axon, r_outer] (the in_ratio is r_axon / r_outer).
    """

    def __init__(
        self,
        mesh: TetMesh,
        knots: Sequence[float],
        *,
        center: Sequence[float] = (0.0, 0.0, 0.0),
        axis: Sequence[float] | None = (0.0, 0.0, 1.0),
        fixed_outer: float | None = None,
    ):
        super().__init__(mesh)
        like = self.reference.points
        k = torch.as_tensor(knots, dtype=like.dtype, device=like.device).reshape(-1)
        if k.numel() == 0 or bool((k <= 0).any()) or bool((k[1:] <= k[:-1]).any()):
            raise SetupError(f"knots = {list(knots)} must be positive and increasing (µm)")
        if fixed_outer is not None and fixed_outer <= float(k[-1]):
            raise SetupError(f"fixed_outer = {fixed_outer} must exceed the last knot {k[-1]}")
        self.knots = k
        self.fixed_outer = fixed_outer
        self.center = torch.as_tensor(center, dtype=like.dtype, device=like.device)
        self.axis = None
        if axis is not None:
            a = torch.as_tensor(axis, dtype=like.dtype, device=like.device)
            self.axis = a / torch.linalg.vector_norm(a)
        self._param("radii", k)
        # Reference radial decomposition (fixed).
        q = like - self.center
        if self.axis is not None:
            q = q - (q @ self.axis)[:, None] * self.axis
        self._radial = q
        self._r0 = torch.linalg.vector_norm(q, dim=1)

    def radial_scale(self, r0: torch.Tensor) -> torch.Tensor:
        """Factor r/r0 of the piecewise-linear map at reference radii r0."""
        radii = self.parameters["radii"]
        zero = radii.new_zeros(1)
        x = torch.cat([zero, self.knots])
        y = torch.cat([zero, radii])
        if self.fixed_outer is not None:
            x = torch.cat([x, x.new_tensor([self.fixed_outer])])
            y = torch.cat([y, y.new_tensor([self.fixed_outer])])
        idx = torch.searchsorted(x, r0.clamp_max(float(x[-1])), right=True).clamp(1, len(x) - 1)
        x0, x1, y0, y1 = x[idx - 1], x[idx], y[idx - 1], y[idx]
        r = y0 + (r0 - x0) * (y1 - y0) / (x1 - x0)
        beyond = r0 > x[-1]
        r = torch.where(beyond, r0 + (y[-1] - x[-1]), r)
        safe = torch.where(r0 > 0, r0, torch.ones_like(r0))
        first_slope = y[1] / x[1]
        return torch.where(r0 > 0, r / safe, first_slope.expand_as(r0))

    def transform(self, points: torch.Tensor) -> torch.Tensor:
        if points is self.reference.points:
            radial, r0 = self._radial, self._r0
        else:
            radial = points - self.center
            if self.axis is not None:
                radial = radial - (radial @ self.axis)[:, None] * self.axis
            r0 = torch.linalg.vector_norm(radial, dim=1)
        return points + (self.radial_scale(r0) - 1.0)[:, None] * radial


class BendTwist(Parameterization):
    """SpinDoctor's bend and twist of a z-aligned cell (:mod:`spindoctor_torch.mesh.deform`),
    with parameters ``bend`` (dimensionless a_bend) and ``twist`` (radians over the height).

    The extents (width, height, z-centre) are those of the reference mesh and stay fixed, so
    the map is smooth in the parameters. The twist centre is the reference xy-centre shifted
    by half the bend of the cell ends (3.75·a_bend·width along x): SpinDoctor's
    bounding-box centre of the bent points whenever the x-extremes lie at the end caps.
    """

    def __init__(self, mesh: TetMesh, bend: float = 0.0, twist: float = 0.0):
        super().__init__(mesh)
        from ..mesh.deform import extents

        self._param("bend", bend)
        self._param("twist", twist)
        ref = self.reference.points
        self.extents = extents(ref)
        self.center_xy = 0.5 * (ref[:, :2].amax(0) + ref[:, :2].amin(0))

    def transform(self, points: torch.Tensor) -> torch.Tensor:
        from ..mesh.deform import bend, twist

        a_bend = self.parameters["bend"]
        w, h, zc = self.extents
        bent = bend(points, a_bend, width=w, height=h, zcenter=zc)
        shift = torch.stack([3.75 * a_bend * w, torch.zeros_like(a_bend)])
        return twist(bent, self.parameters["twist"], height=h, center=self.center_xy + shift)


def _spd_splu(a: sp.csc_matrix):
    """SuperLU factorization of a symmetric positive definite matrix: symmetric ordering and
    no pivoting (3x faster and half the fill of the defaults on a 3-D P1 Laplacian)."""
    return spla.splu(
        a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
    )


class _LinearSolveMap(torch.autograd.Function):
    """y = S x with S = A⁻¹B a fixed sparse linear map (factorized once); backward Sᵀ g."""

    @staticmethod
    def forward(ctx, x, apply, apply_t):
        ctx.apply_t = apply_t
        return apply(x)

    @staticmethod
    def backward(ctx, g):
        return ctx.apply_t(g), None, None


class FreeForm(Parameterization):
    """Free-form boundary displacement with a smooth volumetric extension.

    The parameter ``z`` (nsurface, 3) lives on the boundary vertices. The surface
    displacement is ``u_s = (I + λ L)⁻¹ z`` with L the graph Laplacian of the surface
    triangulation: the "Large Steps" reparameterization (Nicolet, Jacobson & Jakob 2021,
    ACM TOG 40(6)), which makes gradient steps smooth and keeps vertex-level optimization
    well conditioned. Interior vertices follow by harmonic extension: the P1 Laplace
    problem K_II u_I = −K_IB u_B on the reference mesh. Both maps are fixed sparse linear
    maps, factorized once; their backward is the transposed solve.

    Parameters
    ----------
    mesh : TetMesh
    smoothing : float
        λ (dimensionless multiple of the mean surface edge length squared is *not*
        applied: L is the combinatorial Laplacian, so λ ~ 10–100 is typical).
    boundaries : sequence of int, optional
        Boundary indices whose vertices are free (default: every outer wall and interface).
    """

    def __init__(
        self,
        mesh: TetMesh,
        smoothing: float = 20.0,
        boundaries: Sequence[int] | None = None,
    ):
        super().__init__(mesh)
        if smoothing < 0:
            raise SetupError(f"smoothing = {smoothing} must be non-negative")
        topo = self.reference.topology
        fb = topo.facet_boundary
        sel = np.ones(fb.shape[0], bool) if boundaries is None else np.isin(fb, boundaries)
        tri = topo.facets[sel]
        self.surface_nodes = np.unique(tri)
        ns = self.surface_nodes.size
        local = np.full(topo.npoint, -1, dtype=np.int64)
        local[self.surface_nodes] = np.arange(ns)
        lt = local[tri]
        i = np.concatenate([lt[:, 0], lt[:, 1], lt[:, 2]])
        j = np.concatenate([lt[:, 1], lt[:, 2], lt[:, 0]])
        adj = sp.coo_matrix((np.ones(i.size), (i, j)), shape=(ns, ns)).tocsr()
        adj = ((adj + adj.T) > 0).astype(np.float64)
        lap = sp.diags(np.asarray(adj.sum(1)).ravel()) - adj
        self.smoothing = float(smoothing)
        self._smooth = _spd_splu((sp.eye(ns) + smoothing * lap).tocsc())
        # Harmonic extension with the reference-mesh P1 Laplacian (unsplit nodes).
        from ..fem.elements import tet_geometry, tet_stiffness

        p = self.reference.points[self.reference.tets]
        vol, grads = tet_geometry(p)
        ke = tet_stiffness(vol, grads, torch.ones_like(vol)).detach().cpu().numpy()
        tets = topo.tets_array
        rows = np.repeat(tets, 4, axis=1).ravel()
        cols = np.tile(tets, (1, 4)).ravel()
        kmat = sp.coo_matrix((ke.ravel(), (rows, cols)), shape=(topo.npoint,) * 2).tocsr()
        interior = np.setdiff1d(np.arange(topo.npoint), self.surface_nodes)
        self.interior_nodes = interior
        self._k_ib = kmat[interior][:, self.surface_nodes].tocsr()
        self._k_ii = _spd_splu(kmat[interior][:, interior].tocsc()) if interior.size else None
        self._param("z", torch.zeros(ns, 3))

    def _np(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    def _tensor(self, a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(a, dtype=like.dtype, device=like.device)

    def surface_displacement(self) -> torch.Tensor:
        """(nsurface, 3) smoothed surface displacement u_s = (I + λL)⁻¹ z, µm."""
        z = self.parameters["z"]
        solve = self._smooth.solve  # the matrix is symmetric: the map is self-adjoint
        return _LinearSolveMap.apply(
            z,
            lambda x: self._tensor(solve(self._np(x)), x),
            lambda g: self._tensor(solve(self._np(g)), g),
        )

    def displacement(self) -> torch.Tensor:
        """(N, 3) displacement of every vertex (surface + harmonic extension), µm."""
        us = self.surface_displacement()
        ref = self.reference.points
        out = torch.zeros_like(ref)
        out = out.index_copy(0, torch.as_tensor(self.surface_nodes, device=ref.device), us)
        if self._k_ii is not None:
            k_ib, k_ii = self._k_ib, self._k_ii

            def fwd(x):
                return self._tensor(-k_ii.solve(k_ib @ self._np(x)), x)

            def bwd(g):
                return self._tensor(-(k_ib.T @ k_ii.solve(self._np(g), trans="T")), g)

            ui = _LinearSolveMap.apply(us, fwd, bwd)
            out = out.index_copy(0, torch.as_tensor(self.interior_nodes, device=ref.device), ui)
        return out

    def transform(self, points: torch.Tensor) -> torch.Tensor:
        return points + self.displacement()


class Chain(Parameterization):
    """Apply several parameterizations of the same reference mesh one after the other.

    Parameter names are prefixed with the position in the chain (``"0.scale"``)."""

    def __init__(self, *maps: Parameterization):
        if not maps:
            raise SetupError("Chain needs at least one parameterization")
        super().__init__(maps[0].reference)
        self.maps = maps
        for k, m in enumerate(maps):
            if m.reference.topology is not self.reference.topology:
                raise SetupError("all parameterizations in a Chain must share one mesh")
            for name, t in m.parameters.items():
                self.parameters[f"{k}.{name}"] = t

    def transform(self, points: torch.Tensor) -> torch.Tensor:
        for m in self.maps:
            points = m.transform(points)
        return points


class PhysicalParameters:
    """Positive physical parameters optimized in log space.

    ``PhysicalParameters(diffusivity=0.002, permeability=1e-4)`` exposes leaf tensors
    ``log_diffusivity`` … in ``.parameters``; :meth:`value` returns exp(log value) in the
    original unit (µm²/µs, µm/µs, µs), ready to pass to :class:`~spindoctor_torch.Model`.
    """

    def __init__(self, dtype=torch.float64, device=None, **initial):
        self.parameters: dict[str, torch.Tensor] = {}
        for name, v in initial.items():
            t = torch.as_tensor(v, dtype=dtype, device=device)
            if bool((t <= 0).any()):
                raise SetupError(f"{name} = {v} must be positive to be optimized in log space")
            self.parameters[f"log_{name}"] = torch.log(t).clone().requires_grad_(True)

    def value(self, name: str) -> torch.Tensor:
        try:
            return torch.exp(self.parameters[f"log_{name}"])
        except KeyError as err:
            known = [k[4:] for k in self.parameters]
            raise SetupError(f"unknown physical parameter {name!r}; known: {known}") from err

    def values(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.parameters.items()}

    def set_values(self, values: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for k, v in values.items():
                self.parameters[k].copy_(torch.as_tensor(v))

    def __repr__(self) -> str:
        return (
            "PhysicalParameters("
            + ", ".join(f"{k[4:]}={np.exp(v).round(8).tolist()}" for k, v in self.values().items())
            + ")"
        )
