"""Results and interoperability: HDF5/JSON results, SpinDoctor files, VTK/ParaView export.

* :func:`save_results` / :func:`load_results` (and the one-result :func:`save_result` /
  :func:`load_result`): HDF5 files with named axes, units and provenance that load back into
  the same :class:`~spindoctor_torch.result.Result` objects.
* :func:`read_spindoctor_mat` (MATLAB v7 and v7.3) and :func:`read_spindoctor_json` (the
  reference files in ``shared/reference/spindoctor``); :func:`read_results_any` picks by
  extension. Meshes (TetGen, gmsh, VTU) are read by :func:`spindoctor_torch.mesh.io.read_mesh`.
* :func:`compare_results` / :func:`format_comparison`: relative-error tables.
* :func:`write_vtu`, :func:`write_magnetization_vtu`, :func:`write_pvd`: split-node grids with
  compartment and boundary labels and magnetization fields for ParaView.
* :func:`write_run`: everything a :func:`~spindoctor_torch.config.run_setup` produced.
"""

from .compare import ComparisonRow, compare_results, format_comparison
from .hdf5 import ResultsFile, load_result, load_results, provenance, save_result, save_results
from .outputs import run_summary, write_run
from .spindoctor import read_results_any, read_spindoctor_json, read_spindoctor_mat
from .vtk import (
    split_node_arrays,
    write_magnetization_vtu,
    write_pvd,
    write_snapshots_pvd,
    write_vtu,
)

__all__ = [
    "save_result",
    "save_results",
    "load_result",
    "load_results",
    "ResultsFile",
    "provenance",
    "read_spindoctor_mat",
    "read_spindoctor_json",
    "read_results_any",
    "compare_results",
    "format_comparison",
    "ComparisonRow",
    "write_vtu",
    "write_magnetization_vtu",
    "write_pvd",
    "write_snapshots_pvd",
    "split_node_arrays",
    "write_run",
    "run_summary",
]
