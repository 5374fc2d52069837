"""Time to mesh a SpinDoctor cylinder setup with ECS (~1e5 tets), HXT against Delaunay.

The setup follows SpinDoctor's ``setup_5axons_myelin_relax``: 5 cylinders packed with
rmin = 3, rmax = 4, dmin = 0.1, dmax = 0.2 (µm, ×rmean), height 10 µm, an axon of
in_ratio 0.5 inside each myelin sheath, and a box ECS with ecs_ratio 0.3. ``h`` is chosen
for ~1e5 tetrahedra (``--h``). For each 3-D algorithm we report the median over
``--repeat`` runs of

* build: OCC solids, boolean fragment and surface classification,
* mesh: gmsh ``generate(3)`` (1-D, 2-D and 3-D meshing),
* read: gmsh arrays -> :class:`TetMesh` (topology, boundaries, dof split),

the tet count, the minimum dihedral angle and the mean radius ratio. gmsh runs on one
thread (``General.NumThreads`` default) unless ``--threads`` says otherwise.

Run: ``python benchmarks/bench_meshing.py [--h 0.85] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import gmsh

from spindoctor_torch.geometry import CellSetup, create_cells
from spindoctor_torch.geometry.create import build_cells_model
from spindoctor_torch.mesh.gmsh_recipes import gmsh_session, tetmesh_from_gmsh

ALGORITHMS = {"hxt": 10, "delaunay": 1}


def run_once(setup: CellSetup, algorithm: int, threads: int | None) -> dict:
    cells = create_cells(setup)
    with gmsh_session("bench", nthreads=threads) as ses:
        t0 = time.perf_counter()
        vol_label, surf_label = build_cells_model(ses, setup, cells)
        t1 = time.perf_counter()
        for lab in sorted(set(vol_label.values())):
            ses.model.addPhysicalGroup(3, [t for t, v in vol_label.items() if v == lab], tag=lab)
        for lab in sorted(set(surf_label.values())):
            ses.model.addPhysicalGroup(2, [t for t, v in surf_label.items() if v == lab], tag=lab)
        h = setup.mesh_size
        ses.option("Mesh.MeshSizeMax", h)
        ses.option("Mesh.MeshSizeFromCurvature", int(-(-6.283185307179586 * setup.rmean // h)))
        ses.option("Mesh.Algorithm3D", algorithm)
        ses.model.mesh.generate(3)
        t2 = time.perf_counter()
        mesh = tetmesh_from_gmsh(ses)
        t3 = time.perf_counter()
    q = mesh.quality()
    return {
        "ntet": mesh.ntet,
        "npoint": mesh.npoint,
        "ncompartment": mesh.ncompartment,
        "nboundary": mesh.nboundary,
        "build_s": t1 - t0,
        "mesh_s": t2 - t1,
        "read_s": t3 - t2,
        "total_s": t3 - t0,
        "min_dihedral_deg": q.min_dihedral,
        "mean_radius_ratio": q.mean_radius_ratio,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--h", type=float, default=0.85, help="target edge length, µm")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="gmsh General.NumThreads")
    ap.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    setup = CellSetup(
        cell_shape="cylinder",
        ncell=5,
        rmin=3.0,
        rmax=4.0,
        dmin=0.1,
        dmax=0.2,
        height=10.0,
        in_ratio=0.5,
        ecs_shape="box",
        ecs_ratio=0.3,
        h=args.h,
        seed=0,
    )
    print(f"gmsh {gmsh.__version__}, h = {args.h} µm, median of {args.repeat} runs")
    rows = []
    for name in args.algorithms:
        runs = [run_once(setup, ALGORITHMS[name], args.threads) for _ in range(args.repeat)]
        row = dict(runs[-1])
        for key in ("build_s", "mesh_s", "read_s", "total_s"):
            row[key] = statistics.median(r[key] for r in runs)
        row["algorithm"] = name
        rows.append(row)
        print(
            f"{name:>8}: ntet {row['ntet']:>7d}  build {row['build_s']:.2f} s  "
            f"mesh {row['mesh_s']:.2f} s  read {row['read_s']:.2f} s  "
            f"total {row['total_s']:.2f} s  min dihedral {row['min_dihedral_deg']:.1f}°  "
            f"mean radius ratio {row['mean_radius_ratio']:.3f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
