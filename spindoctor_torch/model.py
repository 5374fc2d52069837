"""The physical model: a mesh plus per-compartment and per-boundary PDE coefficients."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch

from .errors import SetupError, SpinDoctorWarning
from .mesh.tetmesh import TetMesh

__all__ = ["Model"]

_COUPLINGS = ("weighted", "symmetric")


def _to_tensor(value, name: str, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.to(dtype=like.dtype, device=like.device)
    else:
        try:
            t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        except (TypeError, ValueError) as err:
            raise SetupError(f"{name} = {value!r} is not a number or an array of numbers") from err
    if torch.isnan(t).any():
        raise SetupError(f"{name} = {value!r} contains NaN")
    return t


def _per_compartment(value, name: str, ncmpt: int, like: torch.Tensor) -> torch.Tensor:
    t = _to_tensor(value, name, like)
    if t.ndim == 0:
        return t.expand(ncmpt)
    if t.shape != (ncmpt,):
        raise SetupError(
            f"{name} must be a scalar or have one value per compartment ({ncmpt}), "
            f"got shape {tuple(t.shape)}"
        )
    return t


class Model:
    """Bloch-Torrey PDE coefficients on a :class:`TetMesh`.

    Parameters
    ----------
    mesh : TetMesh
    diffusivity : float, (ncompartment,), (3, 3) or (ncompartment, 3, 3); µm²/µs
        Scalar (isotropic) or full symmetric positive semi-definite diffusion tensors.
        Typical 0.002 (= 2e-9 m²/s).
    relaxation : float or (ncompartment,); µs
        Transverse relaxation time T2 (``inf`` for none).
    permeability : float, (ninterface,) or {(i, j): κ}; µm/µs
        Membrane permeability κ of the interfaces between compartments. A scalar applies
        to every interface; a mapping names compartment pairs (order-insensitive); a tensor
        follows the order of :attr:`TetMesh.interfaces`.
    relaxivity : float, (ncompartment,) or {boundary: κ}; µm/µs
        Outer-wall surface relaxivity (Robin coefficient, SpinDoctor's
        ``permeability_{in,out,ecs}``): per compartment, or per boundary index.
    density : float or (ncompartment,)
        Initial spin density ρ.
    coupling : {"weighted", "symmetric"}
        Interface condition D∇u_i·n_i = κ(c_ij u_j − c_ji u_i) with c_ij = 2ρ_i/(ρ_i+ρ_j)
        ("weighted", SpinDoctor.jl and SpinDoctor MF) or c = 1 ("symmetric", SpinDoctor
        MATLAB ``solve_btpde``). Identical for equal densities.

    Every tensor argument may require grad; gradients flow through :func:`assemble` and the
    solvers back to it.
    """

    def __init__(
        self,
        mesh: TetMesh,
        diffusivity=0.002,
        relaxation=math.inf,
        permeability=0.0,
        relaxivity=0.0,
        density=1.0,
        *,
        coupling: str = "weighted",
    ):
        if not isinstance(mesh, TetMesh):
            raise SetupError(f"mesh must be a TetMesh, got {type(mesh).__name__}")
        if coupling not in _COUPLINGS:
            raise SetupError(f"coupling = {coupling!r}; allowed: {', '.join(_COUPLINGS)}")
        self.mesh = mesh
        self.coupling = coupling
        like = mesh.points.detach()
        n = mesh.ncompartment
        self.diffusivity = self._diffusivity(diffusivity, n, like)
        self.relaxation = _per_compartment(relaxation, "relaxation", n, like)
        if bool((self.relaxation.detach() <= 0).any()):
            raise SetupError(
                f"relaxation (T2, µs) must be positive, got {self.relaxation.tolist()}"
            )
        t2 = self.relaxation.detach()
        finite_t2 = t2[torch.isfinite(t2)]
        if finite_t2.numel() and float(finite_t2.min()) < 1.0:
            raise SetupError(
                f"relaxation = {self.relaxation.tolist()} µs looks like seconds or ms; "
                "T2 is in µs (e.g. 80e3 for 80 ms)"
            )
        self.density = _per_compartment(density, "density", n, like)
        if bool((self.density < 0).any()):
            raise SetupError(f"density must be non-negative, got {self.density.tolist()}")
        self.boundary_kappa = self._boundary_kappa(permeability, relaxivity, like)
        self._inputs = dict(
            diffusivity=diffusivity,
            relaxation=relaxation,
            permeability=permeability,
            relaxivity=relaxivity,
            density=density,
            coupling=coupling,
        )

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _diffusivity(value, n: int, like: torch.Tensor) -> torch.Tensor:
        d = _to_tensor(value, "diffusivity", like)
        eye = torch.eye(3, dtype=like.dtype, device=like.device)
        if d.ndim == 0:
            d = d * eye.expand(n, 3, 3)
        elif d.shape == (n,):
            d = d[:, None, None] * eye
        elif d.shape == (3, 3):
            d = d.expand(n, 3, 3)
        elif d.shape != (n, 3, 3):
            raise SetupError(
                f"diffusivity must be a scalar, ({n},), (3, 3) or ({n}, 3, 3), "
                f"got shape {tuple(d.shape)}"
            )
        if not bool(torch.allclose(d, d.transpose(1, 2), rtol=1e-10, atol=1e-14)):
            raise SetupError("diffusivity tensors must be symmetric")
        ev = torch.linalg.eigvalsh(d.detach())
        scale = float(ev.abs().max()) if ev.numel() else 0.0
        if bool((ev < -1e-12 * max(scale, 1e-300)).any()):
            c = int((ev < 0).any(dim=1).nonzero()[0, 0])
            raise SetupError(
                f"diffusivity of compartment {c} must be positive semi-definite (µm²/µs), "
                f"eigenvalues {ev[c].tolist()}"
            )
        if 0 < scale < 1e-6:
            raise SetupError(
                f"diffusivity = {scale:g} looks like m²/s; spindoctor_torch uses µm²/µs "
                "(2e-9 m²/s = 0.002 µm²/µs)"
            )
        if scale >= 1.0:
            raise SetupError(
                f"diffusivity = {scale:g} µm²/µs is unphysically large (free water is "
                "~0.003 µm²/µs); was it given in µm²/ms?"
            )
        return d

    def _boundary_kappa(self, permeability, relaxivity, like) -> torch.Tensor:
        mesh = self.mesh
        bc = mesh.topology.boundary_compartments
        nb = mesh.nboundary
        zero = torch.zeros((), dtype=like.dtype, device=like.device)
        kappa = [zero] * nb
        interfaces = mesh.interfaces
        pairs = sorted({(i, j) for _, i, j in interfaces})
        if isinstance(permeability, Mapping):
            for key, val in permeability.items():
                try:
                    i, j = sorted(int(k) for k in key)
                except (TypeError, ValueError) as err:
                    raise SetupError(
                        f"permeability key {key!r} must be a compartment pair (i, j)"
                    ) from err
                if (i, j) not in pairs:
                    raise SetupError(
                        f"permeability given for interface {key!r}, which does not exist in "
                        f"this mesh; interfaces: {pairs}"
                    )
                v = _to_tensor(val, f"permeability[{key!r}]", like)
                for b, bi, bj in interfaces:
                    if (bi, bj) == (i, j):
                        kappa[b] = v
        else:
            v = _to_tensor(permeability, "permeability", like)
            if v.ndim == 0:
                for b, _, _ in interfaces:
                    kappa[b] = v
            elif v.shape == (len(interfaces),):
                for k, (b, _, _) in enumerate(interfaces):
                    kappa[b] = v[k]
            else:
                raise SetupError(
                    f"permeability must be a scalar, a mapping {{(i, j): κ}} or have one value "
                    f"per interface ({len(interfaces)}), got shape {tuple(v.shape)}"
                )
        walls = [int(b) for b in mesh.topology.outer_walls]
        if isinstance(relaxivity, Mapping):
            for key, val in relaxivity.items():
                if int(key) not in walls:
                    raise SetupError(
                        f"relaxivity given for boundary {key!r}, which is not an outer wall; "
                        f"outer walls: {walls}"
                    )
                kappa[int(key)] = _to_tensor(val, f"relaxivity[{key!r}]", like)
        else:
            r = _per_compartment(relaxivity, "relaxivity", mesh.ncompartment, like)
            for b in walls:
                kappa[b] = r[int(bc[b, 0])]
        out = torch.stack(kappa) if nb else like.new_zeros(0)
        if bool((out < 0).any()):
            raise SetupError(f"permeability/relaxivity must be non-negative, got {out.tolist()}")
        if out.numel() and float(out.detach().max()) > 1.0:
            raise SetupError(
                f"permeability/relaxivity up to {float(out.max()):g} µm/µs is unphysically large "
                "(typical 1e-5 … 1e-3 µm/µs = m/s)"
            )
        return out

    # ------------------------------------------------------------------ derived quantities
    @property
    def ncompartment(self) -> int:
        return self.mesh.ncompartment

    def with_mesh(self, mesh: TetMesh) -> Model:
        """Same coefficients on another mesh of the same topology (e.g. moved vertices)."""
        if mesh.topology is not self.mesh.topology:
            raise SetupError("with_mesh needs a mesh with the same topology (use with_points)")
        new = object.__new__(Model)
        new.__dict__.update(self.__dict__)
        new.mesh = mesh
        return new

    def with_parameters(self, **changes) -> Model:
        """A new Model with some of the constructor arguments replaced."""
        args = dict(self._inputs)
        unknown = set(changes) - set(args)
        if unknown:
            raise SetupError(
                f"unknown Model parameter(s) {sorted(unknown)}; allowed {sorted(args)}"
            )
        args.update(changes)
        coupling = args.pop("coupling")
        return Model(self.mesh, coupling=coupling, **args)

    def mean_diffusivity(self) -> torch.Tensor:
        """Volume-weighted mean of tr(D_i)/3 (SpinDoctor's σ̄), µm²/µs."""
        vol = self.mesh.compartment_volumes()
        tr = torch.diagonal(self.diffusivity, dim1=1, dim2=2).sum(-1) / 3.0
        return (vol * tr).sum() / vol.sum()

    def initial_signal(self) -> torch.Tensor:
        """Σ_i ρ_i |Ω_i| (the b = 0 signal without relaxation), µm³."""
        return (self.density * self.mesh.compartment_volumes()).sum()

    def initial_magnetization(self) -> torch.Tensor:
        """(ndof,) initial magnetization ρ at every dof."""
        from .fem.pattern import fem_pattern

        return self.density[fem_pattern(self.mesh).dof_compartment]

    def __repr__(self) -> str:
        return (
            f"Model({self.mesh!r}, coupling={self.coupling!r}, "
            f"D={torch.diagonal(self.diffusivity, dim1=1, dim2=2).mean(-1).tolist()})"
        )


def warn_unequal_density(model: Model) -> None:
    """Warn (like SpinDoctor) that MF is inaccurate for non-equilibrium spin density."""
    if model.ncompartment > 1 and not bool((model.density == model.density[0]).all()):
        warnings.warn(
            "matrix formalism is inaccurate for non-uniform initial density",
            SpinDoctorWarning,
            stacklevel=3,
        )
