"""Results to and from HDF5, with named axes, units and provenance.

Layout of a results file (every group and dataset is self-describing)::

    /                       attrs: format = "spindoctor_torch-results", format_version,
                                   package_version, torch_version, created (UTC ISO 8601),
                                   setup_hash, setup_json, setup_name (when a setup is given)
    /results/<name>/        one solver's output (a Result, a tensor, a dict or a dataclass)
        signal              complex [ncompartment, namplitude, nsequence, ndirection], µm³
                            (HDF5 dimension labels name the axes; attrs "units", "axes")
        signal_allcmpts     complex [namplitude, nsequence, ndirection], µm³
        ...                 other tensors; scalars and strings in the group's JSON attr
    /experiment/            sequences (JSON), bvalues / qvalues / gvalues
                            [namplitude, nsequence], directions [ndirection, 3]
    /mesh/                  optional: the lossless mesh arrays (as in our npz layout)

Objects are written recursively: tensors and arrays become datasets (complex as HDF5's usual
``(r, i)`` compound, readable by h5py, MATLAB and Julia), dictionaries and lists become groups,
dataclasses (:class:`~spindoctor_torch.result.Result` included) become groups tagged with
their class, plain values go into a JSON attribute. Loading rebuilds the same objects: a
``Result`` comes back as a ``Result`` with bit-identical tensors.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "AXES",
    "UNITS",
    "ResultsFile",
    "save_result",
    "save_results",
    "load_result",
    "load_results",
    "provenance",
]

FORMAT = "spindoctor_torch-results"
FORMAT_VERSION = 1

#: Named axes of the arrays that solvers return (by field name and number of dimensions).
AXES: dict[tuple[str, int], tuple[str, ...]] = {
    ("signal", 4): ("compartment", "amplitude", "sequence", "direction"),
    ("signal_allcmpts", 3): ("amplitude", "sequence", "direction"),
    ("magnetization", 4): ("amplitude", "sequence", "direction", "dof"),
    ("adc", 3): ("compartment", "sequence", "direction"),
    ("adc_allcmpts", 2): ("sequence", "direction"),
    ("bvalues", 2): ("amplitude", "sequence"),
    ("qvalues", 2): ("amplitude", "sequence"),
    ("gvalues", 2): ("amplitude", "sequence"),
    ("directions", 2): ("direction", "xyz"),
    ("points", 2): ("point", "xyz"),
    ("values", 1): ("mode",),
}
#: Units of the arrays that solvers return (by field name).
UNITS: dict[str, str] = {
    "signal": "µm³",
    "signal_allcmpts": "µm³",
    "initial_signal": "µm³",
    "magnetization": "1 (spin density)",
    "adc": "µm²/µs",
    "adc_allcmpts": "µm²/µs",
    "bvalues": "s/mm²",
    "qvalues": "rad/(µs·µm)",
    "gvalues": "T/m",
    "points": "µm",
    "values": "1/µs",
    "timings": "s",
}

_KIND = "sdt_kind"  # attribute naming how a node was encoded
_PLAIN = "sdt_plain"  # JSON attribute with the plain (non-array) members of a group
_ALLOWED_PREFIX = "spindoctor_torch."


# ============================================================================ provenance
def provenance(setup: Any = None) -> dict[str, str]:
    """Package and torch version, creation time and (if given) the setup's hash and JSON."""
    from .. import __version__

    info = {
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if setup is not None:
        info["setup_hash"] = setup.hash
        info["setup_name"] = setup.name
        info["setup_json"] = setup.to_json()
        info["setup_source"] = setup.source
    return info


# ============================================================================ encoding
def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, torch.dtype):
        return str(x)
    raise TypeError(f"cannot store {type(x).__name__} in a results file")


def _is_plain(x: Any) -> bool:
    if x is None or isinstance(x, (bool, int, float, str)):
        return True
    if isinstance(x, (list, tuple)):
        return all(_is_plain(v) for v in x)
    if isinstance(x, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in x.items())
    return False


def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _write_array(group, name: str, value: torch.Tensor | np.ndarray) -> None:
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            raise TypeError(f"{name}: sparse tensors cannot be stored; convert them first")
        arr = value.detach().cpu().resolve_conj().numpy()
        kind, dtype = "tensor", str(value.dtype).removeprefix("torch.")
    else:
        arr, kind, dtype = np.asarray(value), "ndarray", str(np.asarray(value).dtype)
    opts = {"compression": "gzip", "compression_opts": 4} if arr.size >= 4096 else {}
    ds = group.create_dataset(name, data=arr, **opts)
    ds.attrs[_KIND] = kind
    ds.attrs["dtype"] = dtype
    axes = AXES.get((name, arr.ndim))
    if axes is not None:
        ds.attrs["axes"] = list(axes)
        for k, label in enumerate(axes):
            ds.dims[k].label = label
    if name in UNITS:
        ds.attrs["units"] = UNITS[name]


def _write_node(group, name: str, value: Any) -> bool:
    """Write ``value`` under ``group[name]``; return False if it is plain (caller keeps it)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        _write_array(group, name, value)
        return True
    if _is_plain(value):
        return False
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        sub = group.create_group(name)
        sub.attrs[_KIND] = "dataclass"
        sub.attrs["class"] = _class_path(value)
        _write_members(
            sub, {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
        )
        return True
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{name}: only dictionaries with string keys can be stored")
        sub = group.create_group(name)
        sub.attrs[_KIND] = "dict"
        sub.attrs["order"] = json.dumps(list(value))
        _write_members(sub, dict(value))
        return True
    if isinstance(value, (list, tuple)):
        sub = group.create_group(name)
        sub.attrs[_KIND] = "tuple" if isinstance(value, tuple) else "list"
        _write_members(sub, {str(i): v for i, v in enumerate(value)})
        sub.attrs["length"] = len(value)
        return True
    encode = getattr(value, "to_dict", None)
    if callable(encode) and hasattr(type(value), "from_dict"):
        sub = group.create_group(name)
        sub.attrs[_KIND] = "object"
        sub.attrs["class"] = _class_path(value)
        _write_members(sub, dict(encode()))
        return True
    raise TypeError(
        f"{name}: cannot store a {type(value).__name__} (tensors, arrays, numbers, strings, "
        "lists, dicts and dataclasses can be stored)"
    )


def _write_members(group, members: Mapping[str, Any]) -> None:
    plain: dict[str, Any] = {}
    for key, value in members.items():
        if not _write_node(group, key, value):
            plain[key] = value
    group.attrs[_PLAIN] = json.dumps(plain, default=_json_default, allow_nan=True)


# ============================================================================ decoding
def _resolve_class(path: str):
    module, _, qualname = path.partition(":")
    if not (module + ".").startswith(_ALLOWED_PREFIX):
        raise ValueError(f"refusing to rebuild class {path!r} from a file (not ours)")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _read_node(node, *, device=None) -> Any:
    import h5py

    if isinstance(node, h5py.Dataset):
        arr = node[()]
        if node.attrs.get(_KIND) == "tensor":
            dtype = getattr(torch, str(node.attrs["dtype"]))
            t = (
                torch.from_numpy(np.ascontiguousarray(arr))
                if isinstance(arr, np.ndarray)
                else torch.tensor(arr)
            )
            return t.to(dtype=dtype, device=device)
        return arr
    members = _read_members(node, device=device)
    kind = node.attrs.get(_KIND, "dict")
    if kind == "dict":
        order = json.loads(node.attrs.get("order", "[]"))
        return {k: members[k] for k in order if k in members} | {
            k: v for k, v in members.items() if k not in order
        }
    if kind in ("list", "tuple"):
        items = [members[str(i)] for i in range(int(node.attrs["length"]))]
        return tuple(items) if kind == "tuple" else items
    cls = _resolve_class(str(node.attrs["class"]))
    if kind == "object":
        return cls.from_dict(members)
    return cls(**members)


def _read_members(group, *, device=None) -> dict[str, Any]:
    out = json.loads(group.attrs.get(_PLAIN, "{}"))
    for key in group:
        out[key] = _read_node(group[key], device=device)
    return out


# ============================================================================ experiment and mesh
def _write_experiment(group, experiment: Any) -> None:
    """The experiment's own JSON description (sequences, values, directions) plus its b/q/g
    tables [namplitude, nsequence] and directions [ndirection, 3] as datasets for readers."""
    group.attrs[_KIND] = "experiment"
    group.attrs["experiment_json"] = json.dumps(experiment.to_dict(), default=_json_default)
    for name in ("bvalues", "qvalues", "gvalues", "directions"):
        value = getattr(experiment, name, None)
        if value is not None:
            _write_array(group, name, torch.as_tensor(value).detach())


def _read_experiment(group, *, device=None):
    from ..experiment import Experiment

    exp = Experiment.from_dict(json.loads(group.attrs["experiment_json"]))
    return exp if device is None else _experiment_to(exp, device)


def _experiment_to(exp, device):
    from ..experiment import Experiment

    d = exp.to_dict()
    return Experiment(
        exp.sequences,
        directions=torch.tensor(d["directions"], dtype=torch.float64, device=device),
        **{
            f"{d['values_type']}values": torch.tensor(
                d["values"], dtype=torch.float64, device=device
            )
        },
    )


def _write_mesh(group, mesh) -> None:
    topo = mesh.topology
    group.attrs[_KIND] = "mesh"
    _write_array(group, "points", mesh.points.detach())
    _write_array(group, "tets", topo.tets_array)
    _write_array(group, "tet_labels", topo.compartment_labels[topo.tet_compartment])
    _write_array(group, "facets", topo.facets)
    _write_array(group, "facet_boundary", topo.facet_boundary)
    _write_array(group, "boundary_labels", np.asarray(topo.boundary_labels, dtype=np.int64))


def _read_mesh(group, *, device=None):
    from ..mesh.tetmesh import TetMesh

    a = {k: group[k][()] for k in group}
    mesh = TetMesh(
        torch.from_numpy(np.ascontiguousarray(a["points"])),
        a["tets"],
        a["tet_labels"],
        a["facets"],
        a["facet_boundary"],
    )
    topo = dataclasses.replace(mesh.topology, boundary_labels=np.asarray(a["boundary_labels"]))
    mesh = TetMesh(mesh.points, None, topology=topo)
    return mesh if device is None else mesh.to(device=device)


# ============================================================================ public API
@dataclasses.dataclass
class ResultsFile:
    """Contents of a results file.

    Attributes
    ----------
    results : name -> stored object (``Result``, tensor, dict, dataclass), in file order.
    experiment : the Experiment, if stored (also attached to each loaded ``Result``).
    mesh : the TetMesh, if stored.
    attrs : provenance and metadata (package_version, created, setup_hash, setup_json, ...).
    """

    results: dict[str, Any]
    experiment: Any = None
    mesh: Any = None
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def setup(self) -> dict | None:
        """The setup the results were computed from (as a plain dictionary), if stored."""
        text = self.attrs.get("setup_json")
        return json.loads(text) if text else None


def save_results(
    path: str | Path,
    results: Mapping[str, Any],
    *,
    experiment: Any = None,
    mesh: Any = None,
    setup: Any = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write several named results (and optionally the experiment, mesh, setup) to HDF5.

    Parameters
    ----------
    path : the ``.h5`` file (overwritten).
    results : name -> a :class:`~spindoctor_torch.result.Result`, a tensor, a dict of tensors
        or a dataclass (e.g. an ADC result).
    experiment : stored once under ``/experiment``; defaults to the first ``Result``'s.
    mesh : a TetMesh, stored losslessly under ``/mesh``.
    setup : a :class:`~spindoctor_torch.config.Setup`: its hash and JSON go into the attrs.
    attrs : extra root attributes (strings or numbers).

    Returns
    -------
    Path of the file written.
    """
    import h5py

    from ..result import Result

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if experiment is None:
        experiment = next(
            (
                r.experiment
                for r in results.values()
                if isinstance(r, Result) and r.experiment is not None
            ),
            None,
        )
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        for k, v in {**provenance(setup), **dict(attrs or {})}.items():
            f.attrs[k] = str(v) if isinstance(v, str) else v
        grp = f.create_group("results")
        grp.attrs["order"] = json.dumps(list(results))
        for name, value in results.items():
            if "/" in name:
                raise ValueError(f"result name {name!r} must not contain '/'")
            if isinstance(value, Result):
                value = (
                    dataclasses.replace(value, experiment=None)
                    if value.experiment is not None
                    else value
                )
                value = value.detach()
            if not _write_node(grp, name, value):
                sub = grp.create_group(name)
                sub.attrs[_KIND] = "plain"
                sub.attrs[_PLAIN] = json.dumps({"value": value}, default=_json_default)
        if experiment is not None:
            _write_experiment(f.create_group("experiment"), experiment)
        if mesh is not None:
            _write_mesh(f.create_group("mesh"), mesh)
    return path


def save_result(path: str | Path, result: Any, *, name: str | None = None, **kwargs) -> Path:
    """Write one result; ``name`` defaults to ``result.method`` (see :func:`save_results`)."""
    key = name or getattr(result, "method", None) or "result"
    return save_results(path, {key: result}, **kwargs)


def load_results(path: str | Path, *, device: str | torch.device | None = None) -> ResultsFile:
    """Read a file written by :func:`save_results` back into the same objects.

    Raises
    ------
    ValueError
        The file is not a spindoctor_torch results file, or is from a newer format version.
    """
    import h5py

    from ..result import Result

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist")
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a spindoctor_torch results file (format attr missing)")
        version = int(f.attrs["format_version"])
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{path}: results format version {version} is newer than ours ({FORMAT_VERSION})"
            )
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        experiment = _read_experiment(f["experiment"], device=device) if "experiment" in f else None
        mesh = _read_mesh(f["mesh"], device=device) if "mesh" in f else None
        grp = f["results"]
        order = json.loads(grp.attrs.get("order", "[]")) or list(grp)
        results: dict[str, Any] = {}
        for name in order:
            node = grp[name]
            if node.attrs.get(_KIND) == "plain":
                results[name] = json.loads(node.attrs[_PLAIN])["value"]
                continue
            value = _read_node(node, device=device)
            if isinstance(value, Result) and experiment is not None:
                value.experiment = experiment
            results[name] = value
    return ResultsFile(results=results, experiment=experiment, mesh=mesh, attrs=attrs)


def load_result(path: str | Path, name: str | None = None, *, device=None) -> Any:
    """Read one stored result (the only one, or ``name``)."""
    content = load_results(path, device=device)
    if name is None:
        if len(content.results) != 1:
            raise ValueError(
                f"{path} holds {len(content.results)} results {list(content.results)}; pass name="
            )
        return next(iter(content.results.values()))
    if name not in content.results:
        raise KeyError(f"{path} has no result {name!r}; it holds {list(content.results)}")
    return content.results[name]
