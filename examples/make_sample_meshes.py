"""Regenerate the small sample meshes shipped in ``meshes/`` (each under 1 MB).

Every mesh is written by gmsh itself (MSH 4.1, ASCII) with physical volumes as compartments
and physical surfaces as boundaries, in SpinDoctor's order (see
:mod:`spindoctor_torch.mesh.gmsh_recipes` and :mod:`spindoctor_torch.geometry.create`), then
read back with :func:`spindoctor_torch.mesh.io.read_mesh` and summarized.

Run: ``python examples/make_sample_meshes.py [--output meshes]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spindoctor_torch.geometry import CellSetup, create_geometry
from spindoctor_torch.mesh.gmsh_recipes import box, slabs, soma_dendrites, sphere
from spindoctor_torch.mesh.io import read_mesh

MAX_BYTES = 1_000_000


def make_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def path(name: str) -> Path:
        p = out / name
        written.append(p)
        return p

    # A ball of radius 5 µm.
    sphere(5.0, h=1.0, msh_path=path("sphere.msh"))
    # The box of DESIGN.md's quick start, [0,10]x[0,8]x[0,6] µm.
    box((10.0, 8.0, 6.0), h=1.2, msh_path=path("box.msh"))
    # Two slabs of 4 µm along x, 6 x 6 µm across: 2 compartments, 1 interface.
    slabs([4.0, 4.0], (6.0, 6.0), h=1.0, msh_path=path("slab_two_compartments.msh"))
    # One axon (radius 1.8) in its myelin (radius 3), 6 µm long, in a box ECS:
    # compartments [axon, myelin, ecs]; boundaries [axon-myelin][myelin-ecs][axon caps]
    # [myelin caps][ecs wall].
    create_geometry(
        CellSetup(
            cell_shape="cylinder",
            ncell=1,
            rmin=3.0,
            rmax=3.0,
            height=6.0,
            in_ratio=0.6,
            ecs_shape="box",
            ecs_ratio=0.3,
            h=0.9,
        ),
        msh_path=path("cylinder_myelin_ecs.msh"),
        quiet=True,
    )
    # Five packed spheres (seed 0) in a tight-wrap ECS: compartments [cell × 5, ecs].
    create_geometry(
        CellSetup(
            cell_shape="sphere",
            ncell=5,
            rmin=2.0,
            rmax=4.0,
            dmin=0.2,
            dmax=0.3,
            ecs_shape="tight_wrap",
            ecs_ratio=0.3,
            h=1.3,
            seed=0,
        ),
        msh_path=path("spheres5_ecs.msh"),
        quiet=True,
    )
    # A neuron-like cell: soma of radius 5 with two tapered dendrites (closed STL surface
    # and its tetrahedral mesh).
    soma_dendrites(
        soma_radius=5.0,
        dendrite_length=20.0,
        dendrite_radii=(1.5, 0.6),
        h=0.9,
        msh_path=path("neuron.msh"),
        stl_path=path("neuron.stl"),
    )
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "meshes")
    args = ap.parse_args()
    for p in make_all(args.output):
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise SystemExit(f"{p} is {size} bytes, over the {MAX_BYTES}-byte budget")
        if p.suffix == ".msh":
            mesh = read_mesh(p)
            vols = ", ".join(f"{v:.4g}" for v in mesh.compartment_volumes().tolist())
            print(
                f"{p.name:28s} {size / 1e3:7.1f} kB  {mesh.ntet:6d} tets  "
                f"{mesh.ncompartment} compartments ({vols} µm³)  {mesh.nboundary} boundaries"
            )
        else:
            import trimesh

            surf = trimesh.load(p)
            if not surf.is_watertight:
                raise SystemExit(f"{p} is not a closed surface")
            print(
                f"{p.name:28s} {size / 1e3:7.1f} kB  {len(surf.faces):6d} triangles, "
                f"watertight, enclosed volume {surf.volume:.4g} µm³"
            )


if __name__ == "__main__":
    main()
