"""Dependencies point one way. Every import in the package (module-level and inside functions) is read from the
source; a module may import only its own layer or those below it, and no chain of imports comes back to where it
started. The layers, lowest first:

  0  sde, configuration, tracking, distributed,     the SDEs; config nodes -> objects; W&B mode; process groups;
     files                                          files written whole or not at all
  1  models, probability_flow                       Denoiser, DataMoments, networks; the ODE drift + torchdiffeq set-up
  2  exact, losses                                  the oracle (a Denoiser too); denoising score matching
  3  samplers                                       every sampler, its schedule and grid tuning
  4  flow, generation, metrics, plotting, module,   likelihood/encode/decode; the sample-and-score path; metrics;
     logger, data, loading, targets                 views; the LightningModule and W&B logger; data; checkpoints;
                                                    app targets
  5  callbacks, bench                               training-time evaluation; sweeps
  6  cli, and the package root's facade             the lsde-* apps
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lightning_sde"
LAYERS = [
    {"sde", "configuration", "tracking", "distributed", "errors", "downloads", "files"},
    {"models", "probability_flow"},
    {"exact", "losses"},
    {"samplers"},
    {"flow", "generation", "metrics", "plotting", "module", "logger", "data", "loading", "targets"},
    {"callbacks", "bench"},
    {"cli", ""},  # "": lightning_sde/__init__.py
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = ["lightning_sde", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The top-level unit of a module: lightning_sde.samplers.base -> samplers; the root package -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports, anywhere in the file (a `from X import Y` that names a submodule counts
    as importing the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lightning_sde")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_sde"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
    return found & modules


def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports(f, modules) - {module_name(f)} for f in files}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_unit_has_a_layer():
    units = {unit(m) for m in graph()}
    assert units == set(LAYER), (f"place these in LAYERS: {sorted(units - set(LAYER))}; "
                                 f"gone: {sorted(set(LAYER) - units)}")


def test_no_import_points_up_a_layer():
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in targets if LAYER[unit(b)] > LAYER[unit(a)]]
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules_or_units():
    edges = graph()
    assert find_cycle(edges) is None, f"module import cycle: {' -> '.join(find_cycle(edges))}"
    units: dict[str, set[str]] = {}
    for a, targets in edges.items():
        units.setdefault(unit(a), set()).update(unit(b) for b in targets if unit(b) != unit(a))
    assert find_cycle(units) is None, f"cycle between units: {' -> '.join(find_cycle(units))}"


@pytest.mark.parametrize("edges, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
])
def test_the_cycle_finder_finds_cycles(edges, cycle):
    assert find_cycle(edges) == cycle


def test_function_level_imports_are_seen(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from lightning_sde.samplers import base\n    import lightning_sde.sde\n")
    assert imports(source, {"lightning_sde.samplers", "lightning_sde.samplers.base", "lightning_sde.sde"}) == {
        "lightning_sde.samplers", "lightning_sde.samplers.base", "lightning_sde.sde"}
