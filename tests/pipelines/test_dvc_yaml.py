"""dvc.yaml against the code: each stage depends on every module it imports, and writes where pipelines/paths.py says.

DVC reruns a stage only when a declared dependency changes, so a module missing from a stage's `deps`
lets an edit leave stale outputs behind. The closure below follows every `import` of features/ and
pipelines/ modules from the stage's entry module, lazy imports inside functions included (they run when
the function does); imports under `if TYPE_CHECKING:` never run and are left out. Listing modules
rather than whole package folders keeps an edit from rerunning stages that cannot see it (extraction
costs most of an hour).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from pipelines import paths
from tests.helpers import REPO

FIRST_PARTY = ("features", "feature_repo", "pipelines")


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    type_only = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
                 and "TYPE_CHECKING" in ast.unparse(branch.test) for stmt in branch.body for node in ast.walk(stmt)}
    names = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]  # a submodule, maybe
    return names


def import_closure(module: str) -> set[str]:
    """Files (relative to the repo) of the first-party modules `module` imports, transitively, packages included."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        if parts[0] not in FIRST_PARTY:
            continue
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            found = _module_file(".".join(parts[:depth]))
            if found and found not in seen:
                seen.add(found)
                todo += _imported_names(found)
    return {found.relative_to(REPO).as_posix() for found in seen}


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in raw.items()}


@pytest.mark.parametrize("name", sorted(stages()))
def test_each_stage_depends_on_every_module_it_imports(name: str) -> None:
    stage = stages()[name]
    entry = re.search(r"python -m pipelines[ .](\w+)", stage["cmd"])
    assert entry, f"{name}: cmd {stage['cmd']!r} does not run a pipelines module"
    runner = {"pipelines/__main__.py", *import_closure("pipelines.warm")} if "pipelines " in stage["cmd"] else set()
    missing = (import_closure(f"pipelines.{entry.group(1)}") | runner) - set(stage["deps"])
    assert not missing, f"dvc.yaml stage {name} misses the modules it imports: add {sorted(missing)} to its deps"


def test_every_listed_module_exists() -> None:
    listed = {dep for stage in stages().values() for dep in stage.get("deps", [])
              if isinstance(dep, str) and dep.endswith(".py")}
    assert not [dep for dep in listed if not (REPO / dep).is_file()]


def test_the_closure_follows_lazy_imports_and_skips_type_only_ones() -> None:
    closure = import_closure("pipelines.extract")
    assert "features/sources/sae.py" in closure  # imported inside run()
    assert "pipelines/paths.py" in closure and "pipelines/__init__.py" in closure
    assert "features/stores/feast/store.py" not in import_closure("pipelines.prepare_model")


def test_outputs_are_where_pipelines_paths_puts_them() -> None:
    from dvc.repo import Repo

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    with Repo(str(REPO)) as repo:
        outs = {stage.addressing: {out.def_path for out in stage.outs} for stage in repo.index.stages}
        commands = {stage.addressing: (stage.cmd, stage.always_changed) for stage in repo.index.stages}
    models, datasets = list(params["sae"]), list(params["datasets"])
    expected = {f"prepare_model@{m}": [paths.model_dir(m)] for m in params["models"]}
    expected |= {f"prepare_data@{d}": [paths.prepared(d), paths.prepare_summary(d)] for d in datasets}
    expected |= {f"validate_data@{d}": [paths.validation_dir(d), paths.validation_metrics(d)] for d in datasets}
    expected |= {f"collect_activations@{m}": [paths.activations_dir(m), paths.collect_metrics(m)] for m in models}
    expected |= {f"train_sae@{m}": [paths.sae_dir(m), paths.train_sae_metrics(m)] for m in models}
    expected |= {f"extract@{m}-{d}": [paths.features_dir(m, d), paths.extract_metrics(m, d)]
                 for m in models for d in datasets}
    expected |= {f"build_features@{m}": [paths.feast_sources_dir(m)] for m in models}
    expected |= {"fingerprint_sources": [paths.SOURCES], "check_stores": [paths.stores_checked()],
                 "feast_apply": [paths.feast_catalog()], "materialize": [paths.feast_online_dir()]}
    expected |= {f"train_probes@{m}-{d}": [paths.probe_metrics(d, m), paths.probe_plots(d, m),
                                          paths.probes_receipt(d, m)] for d in datasets for m in models}
    expected |= {f"promote@{d}": [paths.promotion_report(d), paths.promotion_receipt(d)] for d in datasets}
    for stage, wanted in expected.items():
        assert {str(path) for path in wanted} <= outs[stage], f"{stage} writes {sorted(outs[stage])}"
    # every stage but those DVC runs on every repro records its cost where stage_main writes it (pipelines.cost)
    for stage, (cmd, always_changed) in commands.items():
        name, _, key = stage.partition("@")
        item = cmd.split()[-1] if key else None  # python -m pipelines[.]<stage> <item>
        if always_changed:
            assert not any(out.startswith(str(paths.COST)) for out in outs[stage]), stage
        else:
            assert str(paths.stage_cost(name, item)) in outs[stage], f"{stage} writes {sorted(outs[stage])}"


def test_the_report_runs_after_every_stage_whose_cost_it_shows() -> None:
    """Its deps cover every recorded stage's cost folder or file, so DVC orders it last and reruns it after them."""
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    report_deps = set(raw["report"]["deps"])
    for name, stage in raw.items():
        if name == "report" or stage.get("always_changed"):
            continue
        grid = "foreach" in stage or "matrix" in stage
        assert str(paths.COST / name if grid else paths.stage_cost(name)) in report_deps, name
