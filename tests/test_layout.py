"""The layout is part of the design: imports run one way, every module is short, and a wheel works.

civitai_mirror -> matcher -> mirror -> crawler: a package imports only the ones to its right, every
project import is at the top of its module (none hides inside a function to dodge a cycle), the
modules of one package import each other without cycles, and no module is over 500 lines. The one
allowed late import is a package's PEP 562 ``__getattr__`` (``matcher``'s Python API, loaded on use).
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

ORDER = ["crawler", "mirror", "matcher", "civitai_mirror"]  # each may import those before it
MAX_LINES = 500


def modules() -> dict[str, Path]:
    found = {}
    for package in ORDER:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def project_imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every project import in one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if path.name == "__init__.py" and node.name == "__getattr__" and node in tree.body:
                continue  # PEP 562: a package's lazy attributes, for start-up time (not a cycle)
            nested.update(id(child) for child in ast.walk(node) if child is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in ORDER:
                found.append((target, node.lineno, id(node) not in nested))
    return found


def resolve(target: str, known: dict[str, Path]) -> str | None:
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def test_imports_run_one_way_and_sit_at_the_top():
    known = modules()
    problems: dict[str, None] = {}  # one line per import statement
    for name, path in known.items():
        rank = ORDER.index(name.split(".")[0])
        for target, line, top in project_imports(name, path):
            where = f"{path.relative_to(REPO)}:{line} imports {target.split('.')[0]}"
            if ORDER.index(target.split(".")[0]) > rank:
                problems[f"{where}: backward ({' -> '.join(reversed(ORDER))} is the only way)"] = None
            if not top:
                problems[f"{where} inside a function"] = None
    assert not problems, "\n".join(problems)


def test_no_import_cycle_between_modules():
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, _line, _top in project_imports(name, path):
            found = resolve(target, known)
            if found and found != name and not name.startswith(found + "."):  # a module's own package
                graph[name].add(found)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_module_over_500_lines():
    too_long = {str(p.relative_to(REPO)): n for p in list(modules().values()) + sorted((REPO / "tests").glob("*.py"))
                + sorted((REPO / "bench").glob("*.py"))
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not too_long, f"over {MAX_LINES} lines: {too_long}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode("utf-8")


@pytest.mark.slow
def test_the_wheel_installs_and_serves_the_demo_with_facets_and_queries(tmp_path):
    """pip install of the wheel (not editable) into a fresh venv ships everything `serve` reads."""
    # Built from a copy of what git would ship, so a stale build/ folder of the checkout can't leak in.
    src = tmp_path / "src"
    src.mkdir()
    for name in ["pyproject.toml", "README.md", "datasette_metadata.yml", *ORDER]:
        item = REPO / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif item.exists():
            shutil.copy2(item, src / name, follow_symlinks=False)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(src)], check=True, cwd=tmp_path)
    wheel = next(dist.glob("civitai_mirror-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    # The venv's own pip, so nothing of this environment (its editable install) is touched.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies come from this test run's environment (no network); the project itself only
    # from the wheel: a path added by a .pth line does not run that folder's own .pth files, so the
    # editable install of this checkout stays invisible.
    (site / "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(python), "-c", "import mirror.serve as s; print(s.__file__)"], cwd=tmp_path,
                           check=True, capture_output=True, text=True, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), f"mirror imported from {where}, not from the installed wheel"
    exe = [str(bindir / "civitai-mirror")]
    subprocess.run([*exe, "demo", "--dir", "demo", "--no-serve"], cwd=tmp_path, check=True,
                   capture_output=True, env=env)
    port = _free_port()
    server = subprocess.Popen([*exe, "serve", "--db", "civitai.sqlite", "--library", "library.sqlite",
                               "--port", str(port)], cwd=tmp_path / "demo", env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(base + "/-/versions.json")
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        facets = json.loads(_get(base + "/civitai/models.json?_size=1"))["facet_results"]
        assert {"type", "mode"} <= set(facets), facets  # the facets datasette_metadata.yml names
        query = _get(base + "/civitai/by_hash")  # a canned query from datasette_metadata.yml
        assert "Lookup by hash" in query
    finally:
        server.terminate()
        server.wait(timeout=10)
