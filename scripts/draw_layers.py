"""Draw the package's layers and its real imports between them (docs/architecture.png).

The layers are read from the ``[tool.importlinter]`` contract in pyproject.toml (top = highest),
the imports from the code with grimp (import-linter's graph builder), so the picture is the
contract ``lint-imports`` enforces. Every import between two subpackages is one arrow; an
arrow that ran upwards would be drawn red (``lint-imports`` fails on it).

Usage: ``python scripts/draw_layers.py [--out docs/architecture.png]``
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path

import grimp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pyro_clip"
BOX_W, BOX_H = 1.55, 0.5
#: imported by nearly every layer; its arrows are left out of the picture (said in the title)
EVERYONE = {"errors"}


def read_layers() -> list[list[str]]:
    """The contract's layers, top first; each a list of sibling subpackages."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"]
                    if c["type"] == "layers")
    return [[name.strip() for name in layer.replace(":", "|").split("|")]
            for layer in contract["layers"]]


def package_imports() -> set[tuple[str, str]]:
    """``(importer, imported)`` pairs of subpackages (or root modules) of the package."""
    graph = grimp.build_graph(PACKAGE, include_external_packages=False,
                               exclude_type_checking_imports=True)  # as lint-imports

    def top(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else None

    edges = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = top(module), top(imported)
            if a and b and a != b:
                edges.add((a, b))
    return edges


def draw(out: Path) -> None:
    layers = read_layers()
    edges = package_imports()
    width = max(len(layer) for layer in layers) * (BOX_W + 0.35)
    pos: dict[str, tuple[float, float]] = {}
    level: dict[str, int] = {}
    for row, layer in enumerate(layers):
        span = len(layer) * (BOX_W + 0.35) - 0.35
        for col, name in enumerate(layer):
            x = (width - span) / 2 + col * (BOX_W + 0.35) + BOX_W / 2
            pos[name], level[name] = (x, -row * 1.1), row
    fig, ax = plt.subplots(figsize=(11, 0.95 * len(layers) + 1))
    for row in range(len(layers)):
        ax.text(-0.3, -row * 1.1, f"{row + 1}", ha="right", va="center", fontsize=9,
                color="0.5")
    drawn = sorted((a, b) for a, b in edges if a in pos and b in pos and b not in EVERYONE)
    # spread each box's arrows along its edge: leaving at the bottom, arriving at the top
    out_ports = {n: sorted((pos[b][0], b) for a, b in drawn if a == n) for n in pos}
    in_ports = {n: sorted((pos[a][0], a) for a, b in drawn if b == n) for n in pos}

    def port(name: str, other: str, ports: dict, dy: float) -> tuple[float, float]:
        names = [o for _, o in ports[name]]
        frac = (names.index(other) + 1) / (len(names) + 1)
        x, y = pos[name]
        return x - BOX_W / 2 + frac * BOX_W, y + dy

    for a, b in drawn:
        upward = level[b] <= level[a]
        start, end = port(a, b, out_ports, -BOX_H / 2), port(b, a, in_ports, BOX_H / 2)
        skip = level[b] - level[a] > 1
        ax.add_patch(FancyArrowPatch(
            start, end, arrowstyle="-|>", mutation_scale=8,
            connectionstyle=f"arc3,rad={0.12 if skip else 0.0}",
            color="red" if upward else ("0.55" if skip else "0.25"),
            lw=1.6 if upward else 0.8, zorder=1))
    for name, (x, y) in pos.items():
        ax.add_patch(FancyBboxPatch((x - BOX_W / 2, y - BOX_H / 2), BOX_W, BOX_H,
                                    boxstyle="round,pad=0.02", fc="#e8f0fe", ec="#3367d6",
                                    zorder=2))
        ax.text(x, y, name, ha="center", va="center", fontsize=10, zorder=3)
    ax.set_xlim(-0.6, width + 0.2)
    ax.set_ylim(-(len(layers) - 1) * 1.1 - 0.6, 0.6)
    ax.set_axis_off()
    ax.set_title(f"{PACKAGE}: a layer may import the layers below it, never above (lint-imports)"
                 f"\n{len(drawn)} imports between subpackages drawn (grey: skips a layer); "
                 f"arrows into {', '.join(sorted(EVERYONE))} left out", fontsize=11)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "architecture.png")
    draw(parser.parse_args().out)


if __name__ == "__main__":
    main()
