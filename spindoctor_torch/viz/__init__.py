"""Plots (matplotlib) and 3-D scenes (PyVista) of meshes, fields and results.

matplotlib and PyVista are imported only when a function is called; PyVista renders off
screen through EGL on machines without a display (see :mod:`spindoctor_torch.viz.scenes`).

* :func:`plot_signal`, :func:`plot_adc`, :func:`plot_hardi`, :func:`plot_mf_error`,
  :func:`plot_timings`, :func:`plot_history` return matplotlib Figures.
* :func:`render_mesh`, :func:`render_field`, :func:`render_overlay` return images (and
  write PNG screenshots); :func:`to_pyvista` gives the PyVista grid itself.
"""

from .plots import (
    plot_adc,
    plot_hardi,
    plot_history,
    plot_mf_error,
    plot_signal,
    plot_timings,
)
from .scenes import (
    has_display,
    pyvista_module,
    render_field,
    render_mesh,
    render_overlay,
    to_pyvista,
)

__all__ = [
    "plot_signal",
    "plot_adc",
    "plot_hardi",
    "plot_mf_error",
    "plot_timings",
    "plot_history",
    "render_mesh",
    "render_field",
    "render_overlay",
    "to_pyvista",
    "pyvista_module",
    "has_display",
]
