"""The import rules: the contracts in pyproject.toml, no module cycles, a light `--help`.

The contracts (`[tool.importlinter]`) are checked by import-linter over the import graph
grimp builds from the source of the whole `jpki_va` namespace, imports inside functions
included; TYPE_CHECKING imports are left out.

grimp finds `jpki_va` through importlib and walks the directories of its `__path__`. An
editable install made with import hooks (setuptools' default mode) gives the namespace
placeholder entries instead of directories, so the graph would be empty. The linters
here therefore run with `python -S` (no .pth files: no hooks and no editable paths) and
a PYTHONPATH naming the five source folders and the installed libraries: `jpki_va` is
then exactly the folders given, whatever the venv's install mode.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support import REPO

#: The folders of the five distributions, each a portion of the namespace `jpki_va`.
SOURCE_FOLDERS = ("server", "client", "hsm", "bench", "protos")

#: The `lint-imports` console script's body. Not `python -m importlinter.cli`: that
#: module has no __main__ guard, so it would check nothing and exit 0.
_LINT_IMPORTS = (
    "import sys; from importlinter.cli import lint_imports_command; "
    "sys.exit(lint_imports_command())"
)

_DUMP_GRAPH = """
import json, grimp
graph = grimp.build_graph("jpki_va", exclude_type_checking_imports=True, cache_dir=None)
print(json.dumps({m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}))
"""

#: What `jpki-va --help` must not load: servers, the bench and their native libraries.
HEAVY_FOR_HELP = (
    "jpki_va.server.rpc",
    "jpki_va.server.app.responder_app",
    "jpki_va.server.app.signer_app",
    "jpki_va.server.http.server",
    "jpki_va.bench",
    "lmdb",
    "pkcs11",
    "httptools",
    "numpy",
)


def _run_isolated(
    code: str, root: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -S -c code args` in root, seeing `jpki_va` only in root's source folders."""
    libraries = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    path = [str(root / folder) for folder in SOURCE_FOLDERS] + list(libraries)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    # Wide lines: rich would otherwise wrap long contract names in the report.
    env |= {"PYTHONPATH": os.pathsep.join(path), "PYTHONIOENCODING": "utf-8", "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-S", "-c", code, *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # --no-cache: nothing written next to the sources.
    return _run_isolated(_LINT_IMPORTS, root, "--no-cache", "--no-logo")


def _contract_names() -> dict[str, str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return {c["id"]: c["name"] for c in config["tool"]["importlinter"]["contracts"]}


def test_the_import_contracts_are_kept() -> None:
    result = _lint_imports(REPO)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    for name in _contract_names().values():
        assert f"{name} KEPT" in report, report


def _copy_sources(target: Path) -> None:
    """The five source folders (their .py files and pyproject.toml) and the contracts."""
    shutil.copy2(REPO / "pyproject.toml", target / "pyproject.toml")
    for folder in SOURCE_FOLDERS:
        source = REPO / folder
        files = list((source / "jpki_va").rglob("*.py"))
        if (source / "pyproject.toml").is_file():
            files.append(source / "pyproject.toml")
        for file in files:
            copy = target / folder / file.relative_to(source)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, copy)


def _append(file: Path, line: str) -> None:
    with file.open("a", encoding="utf-8") as out:
        out.write(f"\n{line}\n")


def test_the_contracts_catch_a_forbidden_import(tmp_path: Path) -> None:
    _copy_sources(tmp_path)
    # One forbidden import for a forbidden contract, one for the vocabulary, one upward
    # through the layers (the rules must not know the registry).
    injected = {
        "server/jpki_va/server/responder/status.py": "jpki_va.server.registry.transactions",
        "client/jpki_va/core/domain.py": "jpki_va.server",
        "server/jpki_va/server/law/renewal.py": "jpki_va.server.registry.codec",
    }
    for file, module in injected.items():
        assert (tmp_path / file).is_file(), file
        _append(tmp_path / file, f"import {module}")

    result = _lint_imports(tmp_path)
    report = result.stdout + result.stderr
    assert result.returncode == 1, report
    names = _contract_names()
    broken = ("responder-without-registry", "no-server-below", "core-stands-alone", "server-layers")
    for contract in broken:
        assert f"{names[contract]} BROKEN" in report, report
    for file, module in injected.items():
        importer = file.split("/", 1)[1].removesuffix(".py").replace("/", ".")
        assert f"{importer} -> {module} " in report, report


def _import_graph() -> dict[str, list[str]]:
    result = _run_isolated(_DUMP_GRAPH, REPO)
    assert result.returncode == 0, result.stderr
    graph: dict[str, list[str]] = json.loads(result.stdout)
    return graph


def _strongly_connected(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components that hold a cycle, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _a_cycle(graph: Mapping[str, Sequence[str]], component: Sequence[str]) -> list[str]:
    """One cycle through the component's first module (breadth first, so a short one)."""
    members = set(component)
    start = component[0]
    came_from: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in graph.get(node, ()):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if target in members and target not in came_from:
                came_from[target] = node
                queue.append(target)
    raise AssertionError(f"no cycle through {start}")


def test_modules_import_each_other_without_cycles() -> None:
    graph = _import_graph()
    # Guard against an empty graph passing: every distribution's code must be in it.
    for folder in SOURCE_FOLDERS:
        assert any(m.startswith(f"jpki_va.{folder}.") for m in graph), folder
    assert "jpki_va.core.domain" in graph
    cycles = [" -> ".join(_a_cycle(graph, c)) for c in _strongly_connected(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_strongly_connected_finds_a_cycle() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": []}
    assert _strongly_connected(graph) == [["a", "b", "c"]]
    assert _a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_help_loads_no_server_and_no_native_library() -> None:
    code = f"""
import json, sys
from jpki_va.server.cmd.main import build_parser, main
build_parser()
try:
    main(["--help"])
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print("LOADED=" + json.dumps([m for m in {HEAVY_FOR_HELP!r} if m in sys.modules]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    loaded = json.loads(result.stdout.rpartition("LOADED=")[2])
    assert loaded == [], f"`jpki-va --help` loaded {loaded}"
