"""The ``spindoctor-torch`` command.

Subcommands (``spindoctor-torch SUBCOMMAND --help`` for each)::

    mesh SETUP          generate the setup's mesh, save it, print its summary
    info PATH           describe a mesh file, a results file (.h5) or a setup (.toml)
    simulate SETUP      run a setup's solvers; write results.h5, summary.json, plots
    optimize CONFIG     fit mesh parameters to a target signal (examples/optimize/)
    view PATH           render a mesh or a result's magnetization (--screenshot PNG headless)
    compare A B         relative errors of results A against reference B (.h5/.mat/.json)
    validate            run the accuracy suite and print its table

Failures print one line ``spindoctor-torch: error: <reason>`` and exit with status 1 (2 for
bad command-line usage); ``--debug`` shows the traceback instead. The CLI only parses
arguments and calls the public API: no numerics here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

PROG = "spindoctor-torch"


class CLIError(Exception):
    """A failure to report as one line (exit status 1)."""


def _say(args, *msg) -> None:
    if not args.quiet:
        print(*msg, flush=True)


# ============================================================================ subcommands
def _load_setup(args):
    from .config import load_setup

    return load_setup(args.setup, tiny=args.tiny, overrides=args.set or ())


def cmd_mesh(args) -> int:
    from .config import build_mesh
    from .mesh.io import write_mesh

    setup = _load_setup(args)
    mesh = build_mesh(setup, quiet=args.quiet)
    out = Path(args.output) if args.output else Path(f"{setup.name}.msh")
    write_mesh(mesh, out)
    _say(args, mesh.summary())
    _say(args, f"wrote {out}")
    return 0


def _describe_mesh(mesh) -> str:
    q = mesh.quality()
    return f"{mesh.summary()}\n  quality: {q}"


def cmd_info(args) -> int:
    path = Path(args.path)
    suffix = path.suffix.lower()
    if suffix == ".toml":
        from .config import compartment_roles, load_setup

        setup = load_setup(path, tiny=args.tiny)
        g = setup.geometry
        where = str(g.mesh_file) if g.mesh_file else json.dumps(g.options)
        gr = setup.gradient
        d = gr.directions
        dirs = f"{d.set} x {d.n}" if d.set else f"{len(d.vectors or ())} given"
        seqs = ", ".join(f"{s.type}({json.dumps(s.params)})" for s in gr.sequences)
        solvers = ", ".join(
            f"{n} {json.dumps(s.options)}" if s.options else n for n, s in setup.solvers.items()
        )
        lines = [
            f"setup {setup.name!r} ({setup.source}), hash {setup.hash}",
            f"  geometry: recipe {g.recipe} {where}",
        ]
        if g.roles is not None:
            lines.append(f"  compartments: {list(compartment_roles(g))}")
        lines += [
            f"  gradient: {seqs}; {gr.kind} {list(gr.values)}; directions {dirs}",
            f"  solvers: {solvers}",
            f"  output: {setup.output.directory}",
        ]
        print("\n".join(lines))
        return 0
    if suffix in (".mat", ".json"):
        from .io.spindoctor import read_results_any

        results = read_results_any(path)
        print(f"{path}: SpinDoctor results {list(results)}")
        for name, res in results.items():
            if hasattr(res, "signal_allcmpts"):
                att = res.normalized().abs()
                lo, hi = float(att.min()), float(att.max())
                print(
                    f"  {name}: signal {tuple(res.signal.shape)} [compartment, amplitude, "
                    f"sequence, direction], |S|/S0 in [{lo:.4g}, {hi:.4g}]"
                )
            else:
                print(f"  {name}: {type(res).__name__} {tuple(getattr(res, 'shape', ()))}")
        return 0
    if suffix in (".h5", ".hdf5"):
        from .io.hdf5 import load_results

        content = load_results(path)
        print(f"{path}: results {list(content.results)}")
        for k in ("package_version", "created", "setup_name", "setup_hash"):
            if k in content.attrs:
                print(f"  {k}: {content.attrs[k]}")
        if content.experiment is not None:
            print(f"  experiment: {content.experiment!r}")
        for name, res in content.results.items():
            if hasattr(res, "signal_allcmpts"):
                att = res.normalized().abs()
                lo, hi = float(att.min()), float(att.max())
                print(
                    f"  {name}: signal {tuple(res.signal.shape)} [compartment, amplitude, "
                    f"sequence, direction], |S|/S0 in [{lo:.4g}, {hi:.4g}]"
                )
            else:
                print(f"  {name}: {type(res).__name__}")
        if content.mesh is not None:
            print("  " + content.mesh.summary().replace("\n", "\n  "))
        return 0
    from .mesh.io import read_mesh

    print(_describe_mesh(read_mesh(path)))
    return 0


def cmd_simulate(args) -> int:
    from .config import run_setup

    setup = _load_setup(args)
    if args.no_plots:
        import dataclasses

        setup = dataclasses.replace(setup, output=dataclasses.replace(setup.output, plots=False))
    output = args.output if args.output else None
    run = run_setup(
        setup,
        output_dir=output,
        quiet=args.quiet,
        solvers=args.solvers.split(",") if args.solvers else None,
    )
    for name, res in run.results.items():
        if hasattr(res, "normalized"):
            att = res.normalized().abs()[:, 0, 0].detach().cpu().tolist()
            _say(args, f"{name}: |S|/S0 (sequence 0, direction 0) = {[round(a, 6) for a in att]}")
    for name, path in run.files.items():
        if name in ("results", "summary"):
            _say(args, f"{name}: {path}")
    return 0


def cmd_optimize(args) -> int:
    from .config import load_optimization, run_optimization

    opt = load_optimization(args.config, tiny=args.tiny)
    out = run_optimization(opt, output_dir=args.output, quiet=args.quiet)
    for name, value in out.parameterization.values().items():
        _say(args, f"{name} = {value.tolist()}")
    if out.history.loss:
        _say(
            args,
            f"loss {out.history.loss[0]:.4g} -> {out.history.loss[-1]:.4g} in "
            f"{out.history.niter} iterations",
        )
    for name, path in out.files.items():
        _say(args, f"{name}: {path}")
    return 0


def cmd_view(args) -> int:
    from . import viz

    path = Path(args.path)
    show = args.screenshot is None
    if show and not viz.has_display():
        raise CLIError("no display available: pass --screenshot PNG to render off screen")
    if path.suffix.lower() in (".h5", ".hdf5"):
        from .io.hdf5 import load_results

        content = load_results(path)
        if content.mesh is None:
            raise CLIError(f"{path} holds no mesh (simulate with [output] save_mesh = true)")
        mesh = content.mesh
        field = None
        names = [
            n for n, r in content.results.items() if getattr(r, "magnetization", None) is not None
        ]
        if args.solver or names:
            name = args.solver or names[0]
            if name not in content.results:
                raise CLIError(f"{path} has no result {name!r}; it has {list(content.results)}")
            mag = getattr(content.results[name], "magnetization", None)
            if mag is None:
                raise CLIError(
                    f"result {name!r} holds no magnetization ([output] magnetization = true)"
                )
            a, s, d = (int(x) for x in args.index.split(","))
            field = mag[a, s, d]
        if field is not None:
            viz.render_field(
                mesh,
                field,
                args.screenshot,
                part=args.part,
                clip=args.clip or False,
                show=show,
                title=f"{name} [{args.index}] ({args.part})",
            )
        else:
            viz.render_mesh(mesh, args.screenshot, clip=args.clip or "y", show=show)
    else:
        from .mesh.io import read_mesh

        mesh = read_mesh(path)
        viz.render_mesh(
            mesh,
            args.screenshot,
            clip=False if args.no_clip else (args.clip or "y"),
            show=show,
            title=path.name,
        )
    if args.screenshot:
        _say(args, f"wrote {args.screenshot}")
    return 0


def cmd_compare(args) -> int:
    from .io.compare import compare_results, format_comparison
    from .io.spindoctor import read_results_any

    ours = read_results_any(args.result)
    ref = read_results_any(args.reference)
    if args.only:
        keep = set(args.only.split(","))
        ours = {k: v for k, v in ours.items() if k in keep}
        if not ours:
            raise CLIError(f"--only {args.only}: none of these are in {args.result}")
    rows = compare_results(ours, ref)
    print(format_comparison(rows, tolerance=args.tolerance))
    if args.json:
        Path(args.json).write_text(
            json.dumps([r.__dict__ for r in rows], indent=1, default=str), encoding="utf-8"
        )
    if args.tolerance is not None:
        failed = [r for r in rows if not r.passed(args.tolerance)]
        if failed:
            raise CLIError(
                f"{len(failed)} of {len(rows)} comparisons exceed tolerance {args.tolerance:g}"
            )
    return 0


def cmd_validate(args) -> int:
    try:
        val = importlib.import_module("spindoctor_torch.validation")
    except ModuleNotFoundError:
        raise CLIError(
            "validate: the validation suite (spindoctor_torch.validation) is not installed"
        ) from None
    run = getattr(val, "run_validation", None)
    if run is None:
        raise CLIError("validate: spindoctor_torch.validation has no run_validation()")
    level = "full" if args.full else "quick"
    kwargs = {"cases": args.cases.split(",")} if args.cases else {}
    result = run(level=level, output_dir=args.output, quiet=args.quiet, **kwargs)
    ok = getattr(result, "passed", None)
    if callable(ok):
        ok = ok()
    if ok is False:
        raise CLIError("validation failed (see the table above)")
    return 0


# ============================================================================ parser
def _add_setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("setup", help="TOML setup file (see examples/setups/)")
    p.add_argument(
        "--tiny", action="store_true", help="apply the setup's [tiny] overrides (quick run)"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a setup value, e.g. --set gradient.bvalues=[0,1000] (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    top = argparse.ArgumentParser(add_help=False)
    top.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    top.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    # The same flags after the subcommand; SUPPRESS keeps a flag given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bars or messages",
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback on errors",
    )

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Diffusion MRI simulation (SpinDoctor in PyTorch): meshes, Bloch-Torrey "
        "and matrix-formalism solvers, results, plots.",
        parents=[top],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "mesh",
        parents=[common],
        help="generate and save the mesh of a setup",
        description="Generate the mesh of a setup, save it and print its summary.",
    )
    _add_setup_args(p)
    p.add_argument(
        "-o", "--output", help="mesh file to write (.msh, .vtu, .npz, .node); default NAME.msh"
    )
    p.set_defaults(func=cmd_mesh)

    p = sub.add_parser(
        "info",
        parents=[common],
        help="describe a mesh, results file or setup",
        description="Describe a mesh file (.msh/.vtu/.node/.npz: sizes, volumes, "
        "quality), a results file (ours .h5, SpinDoctor .mat or reference .json) or a setup "
        "(.toml).",
    )
    p.add_argument("path")
    p.add_argument("--tiny", action="store_true", help="for a setup: show its tiny variant")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "simulate",
        parents=[common],
        help="run the solvers of a setup",
        description="Build mesh, model and experiment of a setup, run its "
        "solvers and write results.h5, summary.json, setup.json, mesh and plots.",
    )
    _add_setup_args(p)
    p.add_argument("-o", "--output", help="output folder (default: the setup's [output] directory)")
    p.add_argument("--solvers", help="comma-separated subset of the setup's solvers to run")
    p.add_argument("--no-plots", action="store_true", help="skip plots and renders")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "optimize",
        parents=[common],
        help="fit geometry to a target signal",
        description="Fit mesh parameters (scale, radial radii, bend/twist) of a setup to a "
        "target signal (a results file or a simulated setup), as described by CONFIG (see "
        "examples/optimize/).",
    )
    p.add_argument("config", help="optimization TOML file")
    p.add_argument("--tiny", action="store_true", help="use the setups' [tiny] variants")
    p.add_argument("-o", "--output", help="output folder (default: the file's [output])")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser(
        "view",
        parents=[common],
        help="render a mesh or a result",
        description="Render a mesh (coloured by compartment, clipped to show the "
        "inside) or the magnetization of a results file. Interactive where a "
        "display exists; --screenshot renders off screen (EGL, no X needed).",
    )
    p.add_argument("path", help="mesh file or results .h5")
    p.add_argument("--screenshot", metavar="PNG", help="write a PNG instead of opening a window")
    p.add_argument(
        "--clip", choices=("x", "y", "z"), help="clip plane normal (default y for meshes)"
    )
    p.add_argument("--no-clip", action="store_true", help="do not clip the mesh")
    p.add_argument("--solver", help="result to show (default: the first with a magnetization)")
    p.add_argument("--index", default="0,0,0", help="amplitude,sequence,direction (default 0,0,0)")
    p.add_argument("--part", choices=("abs", "real", "imag"), default="abs")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser(
        "compare",
        parents=[common],
        help="relative errors against a reference",
        description="Compare results (ours .h5, SpinDoctor .mat, reference "
        ".json) against a reference: max |S - S_ref| / max_dir |S_ref| per "
        "matched solver.",
    )
    p.add_argument("result")
    p.add_argument("reference")
    p.add_argument("--only", help="comma-separated result names to compare")
    p.add_argument("--tolerance", type=float, help="exit with status 1 if an error exceeds it")
    p.add_argument("--json", help="also write the table as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "validate",
        parents=[common],
        help="run the accuracy suite",
        description="Run the built-in validation suite (closed forms, analytical "
        "solutions, SpinDoctor parity) and print its table.",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the fast subset (default)")
    g.add_argument("--full", action="store_true", help="every case")
    p.add_argument("-o", "--output", help="folder for the CSV/Markdown table")
    p.add_argument("--cases", help="comma-separated shell patterns of case names, e.g. parity_*")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``spindoctor-torch``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI turns every failure into one line
        if args.debug:
            raise
        msg = " ".join(str(err).split()) or type(err).__name__
        if not isinstance(err, (CLIError, ValueError, FileNotFoundError, OSError)):
            msg = f"{type(err).__name__}: {msg}"
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
