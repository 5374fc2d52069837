"""Read SpinDoctor's own results: MATLAB ``.mat`` files and the JSON reference files.

SpinDoctor (MATLAB) keeps results in structs such as ``btpde``, ``mf`` or ``btpde_midpoint``
with fields ``signal`` [ncompartment × namplitude × nsequence × ndirection] (complex, µm³),
``signal_allcmpts`` [namplitude × nsequence × ndirection], ``itertimes`` and ``totaltime``; a
``setup`` struct may hold ``gradient.bvalues`` / ``qvalues`` [namplitude × nsequence],
``gradient.directions`` [3 × ndirection] and ``pde.initial_signal``. :func:`read_spindoctor_mat`
finds every such struct in a file saved with ``save(..., '-v7')`` (read by
:func:`scipy.io.loadmat`) or ``'-v7.3'`` (HDF5, read by h5py), at any nesting depth, and returns
:class:`~spindoctor_torch.result.Result` objects with the same axes as ours.

MATLAB drops trailing singleton dimensions (a [1 × 4 × 1 × 1] signal is saved as 1 × 4); they
are restored. HDF5 (v7.3) files store arrays transposed (column-major); they are transposed
back.

:func:`read_spindoctor_json` reads the reference files in ``shared/reference/spindoctor``
(``fem_sphere_r5.json``: BTPDE, MF at several length scales, MF-GA, STA; ``analytical.json``:
the analytical solver's cases).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..result import Result

__all__ = ["read_spindoctor_mat", "read_spindoctor_json", "read_results_any"]


# ============================================================================ MATLAB v7 (scipy)
def _from_scipy(obj: Any) -> Any:
    """scipy.io.loadmat output (struct_as_record, no squeezing) -> dicts, lists, arrays."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.names:  # struct array
            if obj.size == 1:
                rec = obj.reshape(-1)[0]
                return {n: _from_scipy(rec[n]) for n in obj.dtype.names}
            return [_from_scipy(o.reshape(1)) for o in obj.reshape(-1, order="F")]
        if obj.dtype == object:  # cell array
            return [_from_scipy(o) for o in obj.reshape(-1, order="F")]
        if obj.dtype.kind in "US":
            return "".join(obj.reshape(-1).tolist()) if obj.size else ""
        return obj
    return obj


def _load_mat_v7(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    raw = loadmat(str(path), squeeze_me=False, struct_as_record=True, mat_dtype=False)
    return {k: _from_scipy(v) for k, v in raw.items() if not k.startswith("__")}


# ============================================================================ MATLAB v7.3 (HDF5)
def _from_h5(node, f) -> Any:
    import h5py

    if isinstance(node, h5py.Group):
        return {k: _from_h5(node[k], f) for k in node if not k.startswith("#")}
    cls = node.attrs.get("MATLAB_class", b"double")
    cls = cls.decode() if isinstance(cls, bytes) else str(cls)
    if node.attrs.get("MATLAB_empty", 0):
        return np.zeros((0,))
    data = node[()]
    if cls == "cell":
        return [_from_h5(f[ref], f) for ref in np.asarray(data).T.reshape(-1, order="F")]
    if cls == "char":
        return "".join(chr(c) for c in np.asarray(data).T.reshape(-1, order="F"))
    arr = np.asarray(data)
    if arr.dtype.names and {"real", "imag"} <= set(arr.dtype.names):
        arr = arr["real"] + 1j * arr["imag"]
    if cls == "logical":
        arr = arr.astype(bool)
    return arr.T  # HDF5 stores MATLAB's column-major arrays with the axes reversed


def _load_mat_v73(path: Path) -> dict[str, Any]:
    import h5py

    with h5py.File(path, "r") as f:
        return {k: _from_h5(f[k], f) for k in f if not k.startswith("#")}


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if head == b"\x89HDF\r\n\x1a\n":
            return True
        fh.seek(512)  # MATLAB v7.3 files start with a 512-byte text header
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


# ============================================================================ shape helpers
def _pad(arr: np.ndarray, ndim: int, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim > ndim:
        raise ValueError(f"{name} has {arr.ndim} dimensions {arr.shape}, expected at most {ndim}")
    return arr.reshape(arr.shape + (1,) * (ndim - arr.ndim))


def _get(d: Mapping, *path: str) -> Any:
    for p in path:
        if not isinstance(d, Mapping) or p not in d:
            return None
        d = d[p]
    return d


def _scalar(x: Any) -> float | None:
    if x is None:
        return None
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    return float(arr.sum()) if arr.size else None


def _find_results(tree: Any, prefix: str = "") -> dict[str, dict]:
    out: dict[str, dict] = {}
    if isinstance(tree, Mapping):
        if "signal" in tree or "signal_allcmpts" in tree:
            out[prefix or "result"] = dict(tree)
            return out
        for k, v in tree.items():
            out.update(_find_results(v, f"{prefix}.{k}" if prefix else k))
    return out


# ============================================================================ public readers
def read_spindoctor_mat(
    path: str | Path,
    *,
    initial_signal: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Result]:
    """Read every SpinDoctor result struct in a MATLAB file.

    Parameters
    ----------
    path : a ``.mat`` file (v7 or v7.3).
    initial_signal : Σρ|Ω| in µm³, used by :meth:`Result.normalized`. Default: the file's
        ``setup.pde.initial_signal``, else the sum of ``femesh.volumes`` (ρ = 1), else the
        b = 0 signal if ``setup.gradient.bvalues`` has a zero.
    dtype : real dtype of the returned tensors (complex of the same precision for signals).

    Returns
    -------
    dict
        Struct path (``"btpde"``, ``"results.mf"``, ...) -> Result with ``method`` set to the
        struct name, ``timings`` from ``totaltime`` / ``itertimes`` and ``info["source"]``.

    Raises
    ------
    ValueError
        No result struct in the file, inconsistent shapes, or no way to find the initial
        signal (pass ``initial_signal=``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MATLAB file {str(path)!r} does not exist")
    tree = _load_mat_v73(path) if _is_hdf5(path) else _load_mat_v7(path)
    found = _find_results(tree)
    if not found:
        raise ValueError(
            f"{path} holds no SpinDoctor result (no struct with a 'signal' or 'signal_allcmpts' "
            f"field); variables: {sorted(tree)}"
        )
    setup = tree.get("setup") if isinstance(tree.get("setup"), Mapping) else {}
    s0 = initial_signal
    if s0 is None:
        s0 = _scalar(_get(setup, "pde", "initial_signal"))
    if s0 is None:
        vols = _get(tree, "femesh", "volumes")
        s0 = _scalar(vols) if vols is not None else None
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    out: dict[str, Result] = {}
    for name, st in found.items():
        allc = st.get("signal_allcmpts")
        sig = st.get("signal")
        if sig is None and allc is None:
            continue
        if sig is not None:
            sig = _pad(sig, 4, f"{name}.signal")
        if allc is not None:
            allc = _pad(allc, 3, f"{name}.signal_allcmpts")
        if sig is None:
            sig = allc[None]
        if allc is None:
            allc = sig.sum(axis=0)
        if sig.shape[1:] != allc.shape:
            raise ValueError(
                f"{path}: {name}.signal {sig.shape} and {name}.signal_allcmpts {allc.shape} "
                "disagree"
            )
        s0_here = s0
        if s0_here is None:
            b = _get(setup, "gradient", "bvalues")
            if b is not None:
                b = _pad(b, 2, "setup.gradient.bvalues")
                zero = np.argwhere(b == 0)
                if zero.size:
                    a, q = zero[0]
                    s0_here = float(np.abs(allc[a, q]).max())
        if s0_here is None:
            raise ValueError(
                f"{path}: cannot tell the initial signal Σρ|Ω| of {name} (no setup.pde."
                "initial_signal, femesh.volumes or b = 0 value); pass initial_signal="
            )
        timings = {}
        if st.get("totaltime") is not None:
            timings["total"] = _scalar(st["totaltime"])
        info: dict[str, Any] = {"source": str(path), "format": "SpinDoctor MATLAB"}
        info.update(_gradient_info(setup))
        if st.get("itertimes") is not None:
            info["itertimes"] = np.asarray(st["itertimes"], dtype=np.float64).tolist()
        out[name] = Result(
            signal=torch.as_tensor(np.asarray(sig), dtype=cdtype),
            signal_allcmpts=torch.as_tensor(np.asarray(allc), dtype=cdtype),
            initial_signal=torch.tensor(s0_here, dtype=dtype),
            method=name.rsplit(".", 1)[-1],
            timings=timings,
            info=info,
        )
    return out


def _gradient_info(setup: Mapping) -> dict[str, Any]:
    """b/q-values [namplitude][nsequence] and directions [ndirection][3] of a MATLAB setup, as
    lists (its sequences are MATLAB objects, which MAT readers cannot load)."""
    out: dict[str, Any] = {}
    for key in ("bvalues", "qvalues"):
        v = _get(setup, "gradient", key)
        if v is not None:
            out[key] = _pad(np.asarray(v, dtype=np.float64), 2, key).tolist()
    d = _get(setup, "gradient", "directions")
    if d is not None:
        out["directions"] = np.asarray(d, dtype=np.float64).reshape(3, -1, order="F").T.tolist()
    return out


def _complex(real, imag) -> torch.Tensor:
    return torch.complex(
        torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(imag, dtype=torch.float64)
    )


def _experiment_pgse(delta: float, Delta: float, qvalues, directions) -> Any:
    """Our Experiment for one PGSE, if the sequence/experiment modules are present."""
    try:
        from ..experiment import Experiment
        from ..sequences import PGSE
    except ImportError:  # pragma: no cover - partial installations
        return None
    return Experiment(
        sequences=[PGSE(delta, Delta)],
        qvalues=torch.as_tensor(qvalues, dtype=torch.float64),
        directions=torch.as_tensor(directions, dtype=torch.float64),
    )


def read_spindoctor_json(path: str | Path) -> dict[str, Any]:
    """Read a SpinDoctor reference JSON file (``fem_sphere_r5.json`` or ``analytical.json``).

    Returns
    -------
    dict
        ``fem_sphere_r5.json``: ``"btpde"``, ``"mf_ls2"``, ``"mf_ls1"``, ``"mf_ls0.5"``,
        ``"mfga_ls2"``, ... as :class:`Result` (signal [1, namplitude, 1, ndirection] from the
        file's [direction][bvalue] arrays, experiment = PGSE with the file's q-values), plus
        ``"sta"`` and ``"mfga_adc_ls*"``: ADC tensors [ncompartment, 1, ndirection] (µm²/µs),
        and ``"eigenvalues_ls*"``: (neig,) tensors (1/µs).
        ``analytical.json``: ``"analytical_<case>"`` -> Result per case (one direction).
    """
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if "cases" in data:
        return _read_analytical_json(data, path)
    if "btpde" not in data and "mf" not in data:
        raise ValueError(f"{path} is not a SpinDoctor reference file (no btpde/mf/cases)")
    seq = data["sequence"]
    dirs = np.asarray(data["directions"], dtype=np.float64)
    q = np.asarray(data["qvalues"], dtype=np.float64)
    exp = _experiment_pgse(seq["delta_us"], seq["Delta_us"], q, dirs)
    s0 = torch.tensor(float(data["pde"]["initial_signal_S0"]), dtype=torch.float64)

    def result(block: Mapping, method: str, info: dict) -> Result:
        # per compartment: [direction][bvalue][compartment] -> [cmpt, amp, 1, dir]
        if "signal_per_compartment_real" in block:
            sig = _complex(
                block["signal_per_compartment_real"], block["signal_per_compartment_imag"]
            )
            sig = sig.permute(2, 1, 0)[:, :, None, :]
        else:
            sig = None
        allc = _complex(block["signal_allcmpts_real"], block["signal_allcmpts_imag"]).T[:, None, :]
        if sig is None:
            sig = allc[None]
        timings = {
            k.removesuffix("_s"): float(v)
            for k, v in block.items()
            if k.endswith("time_s") and np.isscalar(v)
        }
        return Result(sig, allc, s0, method, timings=timings, info=info, experiment=exp)

    out: dict[str, Any] = {}
    if "btpde" in data:
        b = data["btpde"]
        out["btpde"] = result(
            b, "btpde", {"source": str(path), "reltol": b.get("reltol"), "abstol": b.get("abstol")}
        )
    for m in data.get("mf", []):
        ls = _fmt_ls(m["length_scale_um"])
        info = {"source": str(path), "length_scale": m["length_scale_um"], "neig": m["neig_found"]}
        out[f"mf_ls{ls}"] = result(m, "mf", info)
        if "mfga_signal" in m:
            mfga = torch.as_tensor(m["mfga_signal"], dtype=torch.float64).T[:, None, :]
            mfga = mfga.to(torch.complex128)
            out[f"mfga_ls{ls}"] = Result(
                mfga[None], mfga, s0, "mfga", info=dict(info), experiment=exp
            )
        if "mfga_adc_per_direction" in m:
            out[f"mfga_adc_ls{ls}"] = torch.as_tensor(
                m["mfga_adc_per_direction"], dtype=torch.float64
            )[None, None, :]
        if "eigenvalues_per_us" in m:
            out[f"eigenvalues_ls{ls}"] = torch.as_tensor(
                m["eigenvalues_per_us"], dtype=torch.float64
            )
    if "sta" in data:
        adc = torch.as_tensor(data["sta"]["adc_per_compartment_per_direction"], dtype=torch.float64)
        out["sta"] = adc.T[:, None, :]  # [cmpt, seq, dir]
    return out


def _fmt_ls(x: float) -> str:
    return f"{x:g}"


def _read_analytical_json(data: Mapping, path: Path) -> dict[str, Result]:
    out: dict[str, Result] = {}
    for case in data["cases"]:
        seq = case["sequence"]
        q = np.asarray(case["qvalues_rad_per_us_per_um"], dtype=np.float64)
        u = np.asarray(case["gradient_direction"], dtype=np.float64)[None, :]
        exp = _experiment_pgse(seq["delta"], seq["Delta"], q, u)
        allc = _complex(case["signal_raw_real"], case["signal_raw_imag"])[:, None, None]
        s0 = torch.tensor(float(case["S0_total_volume"]), dtype=torch.float64)
        info = {
            "source": str(path),
            "case": case["name"],
            "geometry": case.get("geometry"),
            "length_scale": case.get("analytical_params", {}).get("length_scale_um"),
            "n_eigenmodes": case.get("n_eigenmodes"),
        }
        timings = {"total": float(case["wall_time_s"])} if "wall_time_s" in case else {}
        out[f"analytical_{case['name']}"] = Result(
            allc[None], allc, s0, "analytical", info=info, experiment=exp, timings=timings
        )
    return out


def read_results_any(path: str | Path) -> dict[str, Any]:
    """Results of ours (``.h5``), SpinDoctor MATLAB (``.mat``) or a reference ``.json`` file,
    as ``{name: Result or tensor}``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return dict(read_spindoctor_mat(path))
    if suffix == ".json":
        return read_spindoctor_json(path)
    if suffix in (".h5", ".hdf5"):
        from .hdf5 import load_results

        return load_results(path).results
    raise ValueError(f"{path}: unknown results format {suffix!r}; use .h5 (ours), .mat or .json")
