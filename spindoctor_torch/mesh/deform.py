"""Bend and twist: SpinDoctor's smooth deformations of a mesh, as differentiable torch maps.

SpinDoctor deforms the tetrahedral mesh after meshing (MATLAB ``deform_domain.m``, Julia
``deform_domain!``), with the geometry's extents measured on the undeformed points:

* width ``W = max x − min x``, height ``H = max z − min z``, ``z_c = (max z + min z)/2``;
* **bend** (a parabola in the x-z plane): ``x ← x + a_bend · 30 · W · ((z − z_c)/H)²``;
* **twist** (about the z axis through the centre of the xy bounding box of the bent
  points): ``(x, y) ← c + R(θ) ((x, y) − c)`` with ``θ = a_twist · z / H`` (radians; z is
  *not* shifted by z_c, so a geometry centred at z = 0 twists by ±a_twist/2 at its ends).

Every function here is a pure torch expression of the points and of the deformation
amounts, so gradients flow to both (the shape optimizer uses this). Extents that are not
given are computed from the points with ``amax``/``amin``, exactly as SpinDoctor does; pass
them explicitly to keep them fixed (then they carry no gradient with respect to points).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import MeshError

__all__ = ["bend", "twist", "bend_twist", "Extents", "extents"]


class Extents(NamedTuple):
    """SpinDoctor's extents of a point cloud (0-d tensors, µm)."""

    width: torch.Tensor  #: x extent
    height: torch.Tensor  #: z extent
    zcenter: torch.Tensor  #: mid z


def _check_points(points: torch.Tensor) -> None:
    if not isinstance(points, torch.Tensor) or not points.is_floating_point():
        raise TypeError(f"points must be a floating torch tensor, got {type(points).__name__}")
    if points.ndim != 2 or points.shape[1] != 3:
        raise MeshError(f"points must have shape (N, 3), got {tuple(points.shape)}")


def _as_scalar(value, like: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim != 0:
        raise MeshError(f"{name} must be a scalar, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t)):
        raise MeshError(f"{name} = {float(t)} must be finite")
    return t


def extents(points: torch.Tensor) -> Extents:
    """SpinDoctor's ``(width, height, zcenter)`` of ``points`` (N, 3), µm: x extent, z extent
    and mid z, differentiable (subgradients at the extreme points)."""
    _check_points(points)
    lo = points.amin(dim=0)
    hi = points.amax(dim=0)
    return Extents(hi[0] - lo[0], hi[2] - lo[2], 0.5 * (hi[2] + lo[2]))


def bend(
    points: torch.Tensor,
    amount,
    *,
    width=None,
    height=None,
    zcenter=None,
) -> torch.Tensor:
    """Bend along x: ``x ← x + amount · 30 · width · ((z − zcenter)/height)²``.

    Parameters
    ----------
    points : (N, 3) tensor, µm.
    amount : scalar (float or 0-d tensor, may require grad), SpinDoctor's ``a_bend``
        (dimensionless; the end of a geometry of height H moves by 7.5·amount·width).
    width, height, zcenter : µm; computed from ``points`` (:func:`extents`) when None.

    Returns
    -------
    (N, 3) tensor, µm: the bent points (a new tensor; ``points`` is not modified).
    """
    _check_points(points)
    a = _as_scalar(amount, points, "bend")
    if width is None or height is None or zcenter is None:
        w, hgt, zc = extents(points)
        width = w if width is None else width
        height = hgt if height is None else height
        zcenter = zc if zcenter is None else zcenter
    width = _as_scalar(width, points, "width")
    height = _as_scalar(height, points, "height")
    zcenter = _as_scalar(zcenter, points, "zcenter")
    if bool(height <= 0):
        raise MeshError(f"height = {float(height)} must be positive to bend (points are flat in z)")
    x, y, z = points.unbind(dim=1)
    x = x + a * 30.0 * width * ((z - zcenter) / height) ** 2
    return torch.stack([x, y, z], dim=1)


def twist(points: torch.Tensor, angle, *, height=None, center=None) -> torch.Tensor:
    """Twist about the z axis through ``center``: rotate (x, y) by ``θ = angle · z / height``.

    Parameters
    ----------
    points : (N, 3) tensor, µm.
    angle : scalar, radians (SpinDoctor's ``a_twist``; may require grad).
    height : µm; the z extent of ``points`` when None.
    center : (2,) xy rotation centre, µm; the centre of the xy bounding box of ``points``
        when None.

    Returns
    -------
    (N, 3) tensor, µm.
    """
    _check_points(points)
    a = _as_scalar(angle, points, "twist")
    if height is None:
        height = points[:, 2].amax() - points[:, 2].amin()
    height = _as_scalar(height, points, "height")
    if bool(height <= 0):
        raise MeshError(
            f"height = {float(height)} must be positive to twist (points are flat in z)"
        )
    if center is None:
        center = 0.5 * (points[:, :2].amax(dim=0) + points[:, :2].amin(dim=0))
    center = torch.as_tensor(center, dtype=points.dtype, device=points.device)
    if center.shape != (2,):
        raise MeshError(f"center must be an (x, y) pair, got shape {tuple(center.shape)}")
    theta = a * points[:, 2] / height
    c, s = torch.cos(theta), torch.sin(theta)
    dx = points[:, 0] - center[0]
    dy = points[:, 1] - center[1]
    x = center[0] + c * dx - s * dy
    y = center[1] + s * dx + c * dy
    return torch.stack([x, y, points[:, 2]], dim=1)


def bend_twist(points: torch.Tensor, bend_amount=0.0, twist_angle=0.0) -> torch.Tensor:
    """SpinDoctor's deformation ``[a_bend, a_twist]``: bend, then twist, as in
    ``deform_domain``.

    Width and height are those of the undeformed ``points`` (bending does not change z, so
    the height is the same afterwards); the twist centre is the xy bounding-box centre of the
    *bent* points, as in SpinDoctor. Zero amounts give the identity map (the points are
    still passed through differentiable operations).

    Parameters
    ----------
    points : (N, 3) tensor, µm.
    bend_amount : scalar, dimensionless ``a_bend``.
    twist_angle : scalar, radians ``a_twist``.

    Returns
    -------
    (N, 3) tensor, µm.
    """
    w, hgt, zc = extents(points)
    bent = bend(points, bend_amount, width=w, height=hgt, zcenter=zc)
    return twist(bent, twist_angle, height=hgt)
