"""The shape of the code: longest functions and modules, import circles, upward imports.

    python scripts/code_stats.py            # report
    python scripts/code_stats.py --check    # exit 1 if a limit is broken (tests/test_code_shape.py)

Limits (the project's style): no function longer than 80 lines, no module longer than 500 lines, no
import circle between mtlrec modules (lazy and TYPE_CHECKING imports count), and no import from a lower layer
(mtlrec.data, mtlrec.models, mtlrec.training) into a higher one (mtlrec.runs, mtlrec.loggers,
mtlrec.report, mtlrec.sweeps, mtlrec.commands, mtlrec.cli, mtlrec.experiment, mtlrec.settings,
mtlrec.tuning). Inside mtlrec.data the datasets
(mtlrec.data.sources, one module per dataset, and a dataset's own modules such as the synthetic_ccp
generator) sit above the shared machinery (spec, encoders, loader, streaming, prepare/, ...), which
imports none of them.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mtlrec"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500
LOWER = ("mtlrec.data", "mtlrec.models", "mtlrec.training")
HIGHER = (
    "mtlrec.runs",
    "mtlrec.loggers",
    "mtlrec.report",
    "mtlrec.sweeps",
    "mtlrec.commands",
    "mtlrec.cli",
    "mtlrec.experiment",
    "mtlrec.run_process",
    "mtlrec.settings",
    "mtlrec.tuning",
)
# Inside mtlrec.data: the dataset sources on top; a dataset's own modules that its source imports
# (below the source, above the shared machinery); everything else in data/ is shared machinery.
DATA_SOURCES = "mtlrec.data.sources"
DATASET_MODULES = ("mtlrec.data.ccp_generator",)
# Modules of data/ allowed to import a source (none: `mtlrec prepare` calls the registry from
# commands/prepare.py); tests/test_code_shape.py fails when an entry here is no longer needed.
DATA_EXEMPT: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sized:
    where: str
    lines: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py")) if "conf" not in p.parts}


def functions(path: Path) -> list[Sized]:
    tree = ast.parse(path.read_text())
    return [
        Sized(
            f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}",
            node.end_lineno - node.lineno + 1,
        )  # type: ignore[operator]
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """mtlrec modules `name` imports anywhere: lazy imports inside functions and imports under
    `if TYPE_CHECKING:` count too (a lazy import is still an arrow between layers, and a type
    named from a module that imports this one is a circle a Protocol or a move would break)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles (one representative path per strongly connected component)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package importing its own submodules is not a circle worth reporting (a prefix of
            # the name is not a package: a module mtlrec.x.sweep_stop is not inside mtlrec.x.sweep)
            root = min(comp, key=len)
            if len(comp) > 1 and not all(c == root or c.startswith(root + ".") for c in comp):
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def layer(m: str, names: tuple[str, ...]) -> bool:
    return any(m == n or m.startswith(n + ".") for n in names)


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} -> {b}"
        for a, deps in graph.items()
        for b in deps
        if (layer(a, LOWER) and layer(b, HIGHER)) or data_upward(a, b)
    )


def data_upward(a: str, b: str) -> bool:
    """An arrow inside mtlrec.data from the shared machinery to a dataset (a source or a
    dataset's own module), or from a dataset's own module to a source."""
    if not layer(a, ("mtlrec.data",)) or layer(a, (DATA_SOURCES, *DATA_EXEMPT)):
        return False
    if layer(b, (DATA_SOURCES,)):
        return True
    return layer(b, DATASET_MODULES) and not layer(a, DATASET_MODULES)


def stale_exemptions(graph: dict[str, set[str]]) -> list[str]:
    """DATA_EXEMPT entries that import no dataset any more (remove them from the list)."""
    return [
        m
        for m in DATA_EXEMPT
        if not any(layer(b, (DATA_SOURCES, *DATASET_MODULES)) for b in graph.get(m, ()))
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a limit is broken")
    args = parser.parse_args(argv)
    mods = modules()
    funcs = sorted((f for p in mods.values() for f in functions(p)), key=lambda f: -f.lines)
    sizes = sorted(
        (
            Sized(str(p.relative_to(ROOT.parent)), len(p.read_text().splitlines()))
            for p in mods.values()
        ),
        key=lambda s: -s.lines,
    )
    graph = {n: imports_of(p, n, set(mods)) for n, p in mods.items()}
    circles, ups = cycles(graph), upward(graph)
    print(
        f"longest function: {funcs[0].where} ({funcs[0].lines} lines; limit {MAX_FUNCTION_LINES})"
    )
    print(f"longest module:   {sizes[0].where} ({sizes[0].lines} lines; limit {MAX_MODULE_LINES})")
    long_funcs = [f for f in funcs if f.lines > MAX_FUNCTION_LINES]
    long_mods = [s for s in sizes if s.lines > MAX_MODULE_LINES]
    for f in long_funcs:
        print(f"  function over the limit: {f.where} ({f.lines})")
    for s in long_mods:
        print(f"  module over the limit: {s.where} ({s.lines})")
    for c in circles:
        print(f"  import circle: {' <-> '.join(c)}")
    for u in ups:
        print(f"  upward import: {u}")
    stale = stale_exemptions(graph)
    for s in stale:
        print(
            f"  exempt from the data layers but no longer needs it (drop it from DATA_EXEMPT): {s}"
        )
    print(
        f"{len(mods)} modules, {len(funcs)} functions; {len(circles)} circle(s), {len(ups)} upward import(s)"
    )
    broken = long_funcs or long_mods or circles or ups or stale
    return 1 if args.check and broken else 0


if __name__ == "__main__":
    sys.exit(main())
