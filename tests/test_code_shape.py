"""The code's shape, checked: modules share public names only, and features.core stays free of services."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.helpers import REPO

FIRST_PARTY = ("features", "pipelines", "feature_repo", "tests")
SOURCE_DIRS = ("features", "pipelines", "feature_repo", "benchmarks", "tests")
# what features.core must not pull in: it computes, while stores, sources and serving talk to services
SERVICES = ("feast", "mlflow", "great_expectations", "dvc", "fastapi", "uvicorn", "httpx")


def underscore_imports(path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in FIRST_PARTY:
            found += [f"{node.module}.{alias.name}" for alias in node.names if alias.name.startswith("_")
                      and not alias.name.startswith("__")]
    return found


def test_no_module_imports_a_private_name_of_another() -> None:
    crossing = {str(path.relative_to(REPO)): names for folder in SOURCE_DIRS for path in (REPO / folder).rglob("*.py")
                if (names := underscore_imports(path))}
    assert not crossing, f"give these a public name in their home module: {crossing}"


def test_a_private_import_is_caught(tmp_path) -> None:
    path = tmp_path / "m.py"
    path.write_text("from features.core.pooling import _helper, public\n")
    assert underscore_imports(path) == ["features.core.pooling._helper"]


def test_core_imports_no_service_client() -> None:
    # one interpreter imports the modules in turn: the first after which a client is loaded pulls it in
    modules = sorted(f"features.core.{path.stem}" for path in (REPO / "features" / "core").glob("*.py"))
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"    loaded = sorted(m for m in {SERVICES!r} if m in sys.modules)\n"
            "    if loaded:\n"
            "        sys.exit(f'{name} pulls in {loaded}')\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_every_benchmark_starts() -> None:
    # benchmarks run by hand, so nothing else notices an import they lost in a reshaping: each prints its --help
    code = ("import runpy, sys\n"
            f"for path in {sorted(str(p) for p in (REPO / 'benchmarks').glob('*.py'))!r}:\n"
            "    sys.argv = [path, '--help']\n"
            "    try:\n"
            "        runpy.run_path(path, run_name='__main__')\n"
            "    except SystemExit as exit:\n"
            "        if exit.code:\n"
            "            sys.exit(f'{path} --help exited with {exit.code}')\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
