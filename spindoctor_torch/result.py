"""Named results shared by every signal solver (btpde, mf, analytical, karger, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Result"]


@dataclass
class Result:
    """Signals of one solver on one experiment.

    Attributes
    ----------
    signal : complex tensor [ncompartment, namplitude, nsequence, ndirection], µm³
        ∫_Ω_i ξ(TE) per compartment (the magnetization integral; b = 0 gives ρ_i|Ω_i|).
    signal_allcmpts : complex tensor [namplitude, nsequence, ndirection], µm³
    initial_signal : tensor (), µm³
        Σ_i ρ_i|Ω_i| (the normalization used by :meth:`normalized`).
    method : str
        Solver name ("btpde", "mf", ...).
    magnetization : complex tensor [namplitude, nsequence, ndirection, ndof] or None
        ξ(TE) at every dof, when requested.
    snapshots : dict, optional
        Extra outputs, e.g. {"times": (nt,), "magnetization": [..., nt, ndof]}.
    timings : dict[str, float]
        Wall times in seconds (assembly, factorization, solve, ...).
    info : dict
        Solver settings and diagnostics (steps, modes, tolerances).
    """

    signal: torch.Tensor
    signal_allcmpts: torch.Tensor
    initial_signal: torch.Tensor
    method: str
    magnetization: torch.Tensor | None = None
    snapshots: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    experiment: Any = None

    def __post_init__(self) -> None:
        if self.signal.ndim != 4:
            raise ValueError(
                "signal must be [ncompartment, namplitude, nsequence, ndirection], "
                f"got shape {tuple(self.signal.shape)}"
            )
        if not bool(
            torch.isfinite(
                torch.view_as_real(self.signal.detach())
                if self.signal.is_complex()
                else self.signal.detach()
            ).all()
        ):
            raise FloatingPointError(f"{self.method}: the computed signal is not finite")

    @property
    def ncompartment(self) -> int:
        return int(self.signal.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(namplitude, nsequence, ndirection)."""
        return tuple(self.signal_allcmpts.shape)  # type: ignore[return-value]

    def normalized(self) -> torch.Tensor:
        """signal_allcmpts / Σρ_i|Ω_i| (dimensionless, complex)."""
        return self.signal_allcmpts / self.initial_signal

    def attenuation(self) -> torch.Tensor:
        """|normalized()|, real [namplitude, nsequence, ndirection]."""
        return self.normalized().abs()

    def detach(self) -> Result:
        def d(x):
            return x.detach() if isinstance(x, torch.Tensor) else x

        return Result(
            signal=d(self.signal),
            signal_allcmpts=d(self.signal_allcmpts),
            initial_signal=d(self.initial_signal),
            method=self.method,
            magnetization=d(self.magnetization),
            snapshots={k: d(v) for k, v in self.snapshots.items()},
            timings=dict(self.timings),
            info=dict(self.info),
            experiment=self.experiment,
        )
