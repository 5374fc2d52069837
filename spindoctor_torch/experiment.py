"""Diffusion-encoding experiments: sequences × gradient amplitudes × directions.

An :class:`Experiment` is SpinDoctor's ``setup.gradient``: a list of sequences, one list of
amplitude values shared by all of them (given as b-values, q-values or g-values, like
``values`` with ``values_type``) and a set of unit gradient directions. It precomputes the three
amplitude tables ``bvalues``, ``qvalues`` and ``gvalues`` of shape (namplitude, nsequence), with

* b [s/mm²] = q² · bvalue_no_q,   q [rad/(µs·µm)] = GAMMA · g [T/m].

Solvers return signals of shape [..., namplitude, nsequence, ndirection].

The direction sets :func:`unit_sphere`, :func:`half_sphere` and :func:`unit_circle` correspond
to SpinDoctor's ``unitsphere``, ``unitsemisphere`` and ``unitcircle`` / ``unitsemicircle``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from .sequences import Sequence, Waveform3D
from .units import GAMMA, check_bvalue, check_gradient_amplitude

__all__ = ["Experiment", "half_sphere", "unit_circle", "unit_sphere"]

_VALUE_NAMES = {"b": "bvalues", "q": "qvalues", "g": "gvalues"}


def _float_tensor(value: Any, name: str) -> torch.Tensor:
    """float64 tensor from a tensor (graph kept), array, list or number."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must be real, got a complex tensor")
        return value.to(torch.float64)
    if isinstance(value, bool | str | bytes):
        raise TypeError(f"{name} must be numeric, got {value!r}")
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be numeric, got {value!r}") from err


class Experiment:
    """Sequences, gradient amplitudes and directions of a diffusion MRI experiment.

    Parameters
    ----------
    sequences : Sequence or iterable of Sequence
        Time profiles (:class:`~spindoctor_torch.sequences.PGSE`, ...), at least one.
    bvalues : (namplitude,) tensor or list, s/mm², optional
        b-values (≥ 0).
    qvalues : (namplitude,) tensor or list, rad/(µs·µm), optional
        q = γ·g.
    gvalues : (namplitude,) tensor or list, T/m, optional
        Gradient amplitudes.
    directions : (ndirection, 3) or (3,) tensor or list, optional
        Gradient directions; normalized here. Required unless every sequence is a
        :class:`~spindoctor_torch.sequences.Waveform3D`.

    Exactly one of ``bvalues``, ``qvalues``, ``gvalues`` must be given; the values are shared by
    all sequences (SpinDoctor's ``setup.gradient.values``), so b-values give a different q per
    sequence and q- or g-values a different b per sequence. Tensors that require grad keep their
    graph: gradients flow from every table (and from the normalized directions) back to them.

    Attributes
    ----------
    sequences : list of Sequence
    values : (namplitude,) float64 tensor
        The values as given (in the unit of ``values_type``).
    values_type : {'b', 'q', 'g'}
    bvalue_no_q : (nsequence,) float64 tensor, µs³
        ∫F² of each sequence.
    bvalues, qvalues, gvalues : (namplitude, nsequence) float64 tensors
        In s/mm², rad/(µs·µm), T/m.
    directions : (ndirection, 3) float64 tensor, unit vectors
    namplitude, nsequence, ndirection : int

    Notes
    -----
    A :class:`~spindoctor_torch.sequences.Waveform3D` carries its own direction: the
    experiment's direction is ignored for it, and an experiment holding one must have exactly one
    direction (``directions=None`` gives the placeholder (1, 0, 0) when every sequence is a
    Waveform3D). Its amplitude scales the vector profile; its ``bvalue_no_q`` is the trace of its
    b-matrix.

    ``dq/db`` is infinite at b = 0: differentiate with respect to q- or g-values when zero
    amplitudes matter (a warning is given for b-values that require grad and contain 0).

    Raises
    ------
    ValueError
        No sequence, not exactly one of b/q/g, empty or non-1-D values, negative or non-finite
        values, values that look like other units (b in s/m², g in mT/m), directions of the
        wrong shape, zero-length or non-finite directions, or several directions with a
        Waveform3D.
    TypeError
        A sequence that is not a :class:`~spindoctor_torch.sequences.Sequence`.

    Examples
    --------
    >>> from spindoctor_torch.sequences import PGSE
    >>> exp = Experiment([PGSE(2000.0, 6000.0)], bvalues=[0.0, 1000.0],
    ...                  directions=[[1.0, 0.0, 0.0]])
    >>> round(float(exp.qvalues[1, 0]), 10), round(float(exp.gvalues[1, 0]), 4)
    (0.0002165064, 0.8093)
    """

    def __init__(
        self,
        sequences: Sequence | Iterable[Sequence],
        bvalues: Any = None,
        qvalues: Any = None,
        gvalues: Any = None,
        directions: Any = None,
    ) -> None:
        self.sequences = self._check_sequences(sequences)
        given = {k: v for k, v in (("b", bvalues), ("q", qvalues), ("g", gvalues)) if v is not None}
        if len(given) != 1:
            names = ", ".join(_VALUE_NAMES[k] for k in given) or "none"
            raise ValueError(f"give exactly one of bvalues, qvalues, gvalues; got {names}")
        ((self.values_type, raw),) = given.items()
        name = _VALUE_NAMES[self.values_type]
        values = _float_tensor(raw, name)
        if values.ndim == 0:
            values = values.reshape(1)
        if values.ndim != 1:
            raise ValueError(f"{name} must be 1-D (namplitude,), got shape {tuple(values.shape)}")
        if values.numel() == 0:
            raise ValueError(f"{name} must hold at least one value, got none")
        if self.values_type == "b":
            check_bvalue(values, name)
            if values.requires_grad and bool((values.detach() == 0).any()):
                warnings.warn(
                    "bvalues require grad and contain 0: dq/db is infinite at b = 0, so the "
                    "gradient there is not finite; differentiate with respect to q or g instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
        elif self.values_type == "g":
            check_gradient_amplitude(values, name)
        elif not bool(torch.isfinite(values.detach()).all()):
            bad = values.detach()[~torch.isfinite(values.detach())][0]
            raise ValueError(f"{name} must be finite, got {float(bad)!r}")
        self.values = values

        bnq = torch.tensor(
            [s.bvalue_no_q for s in self.sequences], dtype=torch.float64, device=values.device
        )
        self.bvalue_no_q = bnq
        v = values[:, None]
        if self.values_type == "b":
            self.bvalues = v.expand(-1, len(bnq))
            self.qvalues = torch.sqrt(v / bnq)
            self.gvalues = self.qvalues / GAMMA
        elif self.values_type == "q":
            self.qvalues = v.expand(-1, len(bnq))
            self.bvalues = bnq * v**2
            self.gvalues = self.qvalues / GAMMA
        else:
            self.gvalues = v.expand(-1, len(bnq))
            self.qvalues = GAMMA * self.gvalues
            self.bvalues = bnq * self.qvalues**2

        self.directions = self._check_directions(directions, values.device)
        if self.has_waveform3d and self.directions.shape[0] != 1:
            raise ValueError(
                "a Waveform3D carries its own direction: an experiment holding one must have "
                f"exactly one direction, got {self.directions.shape[0]}"
            )

    # ---- validation -----------------------------------------------------------------------

    @staticmethod
    def _check_sequences(sequences: Any) -> list[Sequence]:
        if isinstance(sequences, Sequence):
            return [sequences]
        if isinstance(sequences, str | bytes) or not isinstance(sequences, Iterable):
            raise TypeError(f"sequences must be a Sequence or a list of them, got {sequences!r}")
        out = list(sequences)
        if not out:
            raise ValueError("an experiment needs at least one sequence, got none")
        for i, s in enumerate(out):
            if not isinstance(s, Sequence):
                raise TypeError(f"sequences[{i}] must be a Sequence, got {type(s).__name__}")
        return out

    def _check_directions(self, directions: Any, device: torch.device) -> torch.Tensor:
        if directions is None:
            if all(isinstance(s, Waveform3D) for s in self.sequences):
                return torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64, device=device)
            raise ValueError("directions is required (an (ndirection, 3) array of vectors)")
        d = _float_tensor(directions, "directions")
        if not isinstance(directions, torch.Tensor):
            d = d.to(device)
        if d.ndim == 1:
            d = d.reshape(1, -1)
        if d.ndim != 2 or d.shape[1] != 3 or d.shape[0] == 0:
            raise ValueError(f"directions must have shape (ndirection, 3), got {tuple(d.shape)}")
        dd = d.detach()
        finite = torch.isfinite(dd).all(1)
        if not bool(finite.all()):
            i = int(torch.nonzero(~finite)[0])
            raise ValueError(f"directions[{i}] must be finite, got {dd[i].tolist()}")
        norm = torch.linalg.vector_norm(d, dim=1)
        small = norm.detach() <= 1e-12
        if bool(small.any()):
            i = int(torch.nonzero(small)[0])
            raise ValueError(
                f"directions[{i}] = {dd[i].tolist()} has zero length and cannot be normalized"
            )
        return d / norm[:, None]

    # ---- sizes and helpers -------------------------------------------------------------------

    @property
    def namplitude(self) -> int:
        return int(self.values.shape[0])

    @property
    def nsequence(self) -> int:
        return len(self.sequences)

    @property
    def ndirection(self) -> int:
        return int(self.directions.shape[0])

    @property
    def has_waveform3d(self) -> bool:
        """True when some sequence is a vector profile (:class:`Waveform3D`)."""
        return any(s.is_vector for s in self.sequences)

    def q_vector(self, t: Any, isequence: int) -> torch.Tensor:
        """Gradient vector q(t) = q · f(t) · u of one sequence, in rad/(µs·µm).

        Parameters
        ----------
        t : float or tensor, µs
            Times, any shape.
        isequence : int
            Index into :attr:`sequences`.

        Returns
        -------
        (namplitude, ndirection, *t.shape, 3) tensor
            For a :class:`Waveform3D`, q · g(t) (the direction is built in).
        """
        if not 0 <= isequence < self.nsequence:
            raise IndexError(f"isequence must be in [0, {self.nsequence}), got {isequence}")
        seq = self.sequences[isequence]
        q = self.qvalues[:, isequence]
        prof = seq.f(t)
        tdim = prof.ndim - (1 if seq.is_vector else 0)
        qs = q.reshape(-1, 1, *([1] * tdim), 1).to(prof.dtype)
        if seq.is_vector:
            return qs * prof.to(q.device)[None, None]
        u = self.directions.reshape(1, -1, *([1] * tdim), 3).to(prof.dtype)
        return qs * prof.to(q.device)[None, None, ..., None] * u

    # ---- value semantics -------------------------------------------------------------------

    def __repr__(self) -> str:
        vals = ", ".join(f"{float(v):g}" for v in self.values.detach().cpu()[:6])
        more = ", ..." if self.namplitude > 6 else ""
        return (
            f"Experiment(sequences={self.sequences!r}, {_VALUE_NAMES[self.values_type]}="
            f"[{vals}{more}], ndirection={self.ndirection})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (graph-free copies of the values)."""
        return {
            "sequences": [s.to_dict() for s in self.sequences],
            "values_type": self.values_type,
            "values": self.values.detach().cpu().tolist(),
            "directions": self.directions.detach().cpu().tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Experiment:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            Missing fields or an unknown ``values_type``.
        """
        for key in ("sequences", "values_type", "values"):
            if key not in data:
                raise ValueError(f"experiment dict is missing the field {key!r}")
        vt = data["values_type"]
        if vt not in _VALUE_NAMES:
            raise ValueError(f"values_type must be one of 'b', 'q', 'g', got {vt!r}")
        return cls(
            [Sequence.from_dict(s) for s in data["sequences"]],
            directions=data.get("directions"),
            **{_VALUE_NAMES[vt]: data["values"]},
        )


# --------------------------------------------------------------------------------------------
# direction sets
# --------------------------------------------------------------------------------------------

_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def _count(n: Any, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def _fibonacci(z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    r = torch.sqrt((1 - z**2).clamp(min=0.0))
    phi = k * _GOLDEN_ANGLE
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=1)


def unit_sphere(n: int, seed: int | None = None) -> torch.Tensor:
    """n near-uniform unit vectors on the sphere (Fibonacci lattice).

    Points are at heights z_k = 1 − (2k+1)/n, azimuths k·π(3 − √5), k = 0..n−1 (equal-area
    bands). With ``seed``, the whole set is rotated by a reproducible random rotation.

    Parameters
    ----------
    n : int
        Number of directions, ≥ 1.
    seed : int, optional

    Returns
    -------
    (n, 3) float64 tensor of unit vectors
    """
    n = _count(n)
    k = torch.arange(n, dtype=torch.float64)
    points = _fibonacci(1 - (2 * k + 1) / n, k)
    if seed is not None:
        gen = torch.Generator().manual_seed(int(seed))
        qmat, rmat = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
        qmat = qmat * torch.sign(torch.diagonal(rmat))
        if torch.linalg.det(qmat) < 0:
            qmat[:, 0] = -qmat[:, 0]
        points = points @ qmat.T
    return points


def half_sphere(n: int) -> torch.Tensor:
    """n near-uniform unit vectors on the upper hemisphere (z > 0), unique up to sign.

    Fibonacci lattice on the hemisphere: z_k = 1 − (k + ½)/n, azimuths k·π(3 − √5). Suited to
    diffusion directions, where u and −u are equivalent.

    Returns
    -------
    (n, 3) float64 tensor of unit vectors
    """
    n = _count(n)
    k = torch.arange(n, dtype=torch.float64)
    return _fibonacci(1 - (k + 0.5) / n, k)


def unit_circle(
    n: int, half: bool = False, normal: Iterable[float] | torch.Tensor = (0.0, 0.0, 1.0)
) -> torch.Tensor:
    """n equally spaced unit vectors on the circle orthogonal to ``normal``.

    Angles θ_k = 2πk/n (or πk/n with ``half=True``, unique up to sign), measured from the
    in-plane axis e₁ towards e₂ = normal × e₁, where e₁ is the projection of the coordinate
    axis least aligned with ``normal``. For the default normal (0, 0, 1) the points are
    (cos θ_k, sin θ_k, 0), as SpinDoctor's ``unitcircle`` / ``unitsemicircle``.

    Parameters
    ----------
    n : int, ≥ 1
    half : bool, default False
    normal : (3,) vector, nonzero

    Returns
    -------
    (n, 3) float64 tensor of unit vectors
    """
    n = _count(n)
    nv = _float_tensor(normal, "normal").reshape(-1)
    if nv.shape != (3,) or not bool(torch.isfinite(nv).all()):
        raise ValueError(f"normal must be a finite 3-vector, got {nv.tolist()}")
    norm = torch.linalg.vector_norm(nv)
    if float(norm) <= 1e-12:
        raise ValueError(f"normal = {nv.tolist()} has zero length")
    nv = nv / norm
    axis = torch.zeros(3, dtype=torch.float64)
    axis[int(torch.argmin(nv.abs()))] = 1.0
    e1 = axis - (axis @ nv) * nv
    e1 = e1 / torch.linalg.vector_norm(e1)
    e2 = torch.linalg.cross(nv, e1)
    theta = torch.arange(n, dtype=torch.float64) * ((math.pi if half else 2 * math.pi) / n)
    return torch.cos(theta)[:, None] * e1 + torch.sin(theta)[:, None] * e2
