"""SpinDoctor's random cell packing (``create_cells``): centres and radii of the cells.

Algorithm (SpinDoctor ``create_cells.m`` / SpinDoctor.jl ``create_cells``):

1. Cell 0 sits at the origin with radius ``rmean = (rmin + rmax)/2``.
2. Candidate centres are drawn uniformly in a cube of side ``rmean·max(10, ncell^(1/3))``
   (spheres, 3-D) or a square of side ``40·rmean·max(10, √ncell)`` (cylinders, 2-D in xy),
   centred at the origin.
3. For a candidate at distance ``dist`` from the nearest existing cell *surface*
   (``min_k |c − c_k| − r_k``), the admissible radii are
   ``[max(rmin, dist − dmax·rmean), min(rmax, dist − dmin·rmean)]``; if that interval is not
   empty the candidate becomes a cell whose radius is the interval's midpoint.
4. At most ``100000·ncell`` candidates are tried.
5. The cell collection is shifted so that its bounding box is centred at the origin.

Hence every gap between two cell surfaces is at least ``dmin·rmean`` and every new cell is at
most ``dmax·rmean`` from its nearest neighbour when it is placed. The radii follow from the
packing (there is no radius distribution). Candidates are drawn in fixed-size batches from
``numpy.random.default_rng(seed)``, so a seed gives the same cells on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SetupError
from .setup import CellSetup

__all__ = ["Cells", "create_cells", "surface_gaps"]

_BATCH = 4096  # candidates drawn at a time; part of the reproducibility contract


@dataclass(frozen=True)
class Cells:
    """Packed cells.

    Attributes
    ----------
    centers : (ncell, 3) float64 array, µm, for spheres; (ncell, 2) xy centres for cylinders.
    radii : (ncell,) float64 array, µm.
    """

    centers: np.ndarray
    radii: np.ndarray

    @property
    def ncell(self) -> int:
        return int(self.radii.shape[0])

    @property
    def ndim(self) -> int:
        return int(self.centers.shape[1])


def surface_gaps(centers: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(ncell, ncell) gaps between cell surfaces ``|c_i − c_j| − r_i − r_j``, µm
    (``+inf`` on the diagonal)."""
    c = np.asarray(centers, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64)
    d = np.linalg.norm(c[:, None, :] - c[None, :, :], axis=-1) - r[:, None] - r[None, :]
    np.fill_diagonal(d, np.inf)
    return d


def create_cells(setup: CellSetup) -> Cells:
    """Pack ``setup.ncell`` spheres or cylinders with SpinDoctor's algorithm.

    Parameters
    ----------
    setup : CellSetup (uses ``cell_shape``, ``ncell``, ``rmin``, ``rmax``, ``dmin``,
        ``dmax``, ``seed``).

    Returns
    -------
    Cells with centres (µm; 3-D for spheres, xy for cylinders) and radii (µm).

    Raises
    ------
    SetupError
        If fewer than ``ncell`` cells could be placed in ``100000·ncell`` trials.
    """
    if not isinstance(setup, CellSetup):
        raise TypeError(f"setup must be a CellSetup, got {type(setup).__name__}")
    ncell = setup.ncell
    ndim = 3 if setup.cell_shape == "sphere" else 2
    rmean = setup.rmean
    if ndim == 3:
        side = rmean * max(10.0, ncell ** (1.0 / 3.0))
    else:
        side = rmean * max(10.0, np.sqrt(ncell)) * 40.0
    centers = np.zeros((ncell, ndim))
    radii = np.zeros(ncell)
    radii[0] = rmean
    rng = np.random.default_rng(setup.seed)
    ntrial_max = 100_000 * ncell
    ntrial = 1  # SpinDoctor counts the first (fixed) cell as a trial
    icell = 1
    while icell < ncell and ntrial < ntrial_max:
        cand = (rng.random((_BATCH, ndim)) - 0.5) * side
        start = 0
        while start < _BATCH and icell < ncell and ntrial < ntrial_max:
            stop = min(_BATCH, start + (ntrial_max - ntrial))
            pts = cand[start:stop]
            dist = (
                np.linalg.norm(pts[:, None, :] - centers[None, :icell], axis=-1) - radii[:icell]
            ).min(axis=1)
            lower = np.maximum(setup.rmin, dist - setup.dmax * rmean)
            upper = np.minimum(setup.rmax, dist - setup.dmin * rmean)
            ok = np.flatnonzero(lower <= upper)
            if ok.size == 0:
                ntrial += stop - start
                start = stop
                continue
            k = int(ok[0])
            centers[icell] = pts[k]
            radii[icell] = 0.5 * (lower[k] + upper[k])
            icell += 1
            ntrial += k + 1
            start += k + 1
    if icell < ncell:
        raise SetupError(
            f"placed only {icell} of ncell = {ncell} cells in {ntrial_max} trials; widen "
            f"[rmin, rmax] = [{setup.rmin}, {setup.rmax}] or [dmin, dmax] = "
            f"[{setup.dmin}, {setup.dmax}]"
        )
    lo = (centers - radii[:, None]).min(axis=0)
    hi = (centers + radii[:, None]).max(axis=0)
    centers = centers - 0.5 * (lo + hi)
    return Cells(centers=centers, radii=radii)
