"""dvc.yaml against the code: each stage depends on the fingerprint of the code it imports, and writes where
pipelines/paths.py says.

DVC reruns a stage only when a declared dependency changes, so code a stage imports but DVC cannot see lets
an edit leave stale outputs behind. Each stage's code is one dependency, data/sources/code/<stage>.json,
which fingerprint_sources writes from the import closure of the stage's module (lazy imports inside
functions included: they run when the function does; `if TYPE_CHECKING:` imports never run). A closure per
stage, rather than whole package folders, keeps an edit from rerunning stages that cannot see it.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest
import yaml

from features.errors import SaefsError
from features.sources.fingerprint import import_closure
from pipelines import fingerprint_sources, paths
from tests.helpers import REPO

FIRST_PARTY = fingerprint_sources.FIRST_PARTY


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in raw.items()}


@pytest.mark.parametrize("name", sorted(set(stages()) - {"fingerprint_sources"}))
def test_each_stage_depends_on_its_code_and_lists_no_module_itself(name: str) -> None:
    deps = stages()[name]["deps"]
    assert str(paths.code_fingerprint(name)) in deps, f"dvc.yaml stage {name}: add {paths.code_fingerprint(name)}"
    assert not [dep for dep in deps if dep.endswith(".py")], f"dvc.yaml stage {name}: its code file covers modules"


def test_every_stage_code_is_its_modules_closure_with_the_runner_and_feasts_repo() -> None:
    code = fingerprint_sources.stage_code(REPO / "dvc.yaml", REPO)
    assert set(code) == set(stages())
    assert "features/sources/sae.py" in code["extract"]  # imported inside run()
    assert {"pipelines/__main__.py", "pipelines/warm.py"} <= code["extract"]  # `python -m pipelines extract`
    assert "pipelines/warm.py" not in code["fingerprint_sources"]  # `python -m pipelines.fingerprint_sources`
    assert "features/stores/feast/store.py" not in code["prepare_model"]
    assert "feature_repo/views.py" in code["feast_apply"]  # Feast imports every module of the repo it is given
    for name in stages():
        assert code[name] >= import_closure(f"pipelines.{name}", REPO, FIRST_PARTY), name


def _project(root: Path, modules: dict[str, str], dvc_yaml: str) -> Path:
    for name, source in modules.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(source))
    (root / "dvc.yaml").write_text(textwrap.dedent(dvc_yaml))
    return root


def test_the_closure_follows_lazy_imports_skips_type_only_ones_and_stops_at_other_packages(tmp_path: Path) -> None:
    root = _project(tmp_path, {
        "pipelines/__init__.py": "",
        "pipelines/__main__.py": "from pipelines.warm import run\n",
        "pipelines/warm.py": "import json\n",
        "pipelines/a.py": """\
            from typing import TYPE_CHECKING
            import numpy
            if TYPE_CHECKING:
                from features.typing_only import T
            def run():
                from features.core import lazy
            """,
        "pipelines/b.py": "from features.core.other import thing\n",
        "features/__init__.py": "", "features/core/__init__.py": "", "features/typing_only.py": "",
        "features/core/lazy.py": "import features.core.deep\n", "features/core/deep.py": "",
        "features/core/other.py": "thing = 1\n",
    }, """\
        stages:
          a:
            cmd: python -m pipelines a
          b:
            foreach: [x, y]
            do:
              cmd: python -m pipelines.b ${item}
        """)
    code = fingerprint_sources.stage_code(root / "dvc.yaml", root)
    assert code["a"] == {"pipelines/__init__.py", "pipelines/a.py", "features/__init__.py", "features/core/__init__.py",
                         "features/core/lazy.py", "features/core/deep.py", "pipelines/__main__.py", "pipelines/warm.py"}
    assert code["b"] == {"pipelines/__init__.py", "pipelines/b.py", "features/__init__.py", "features/core/__init__.py",
                         "features/core/other.py"}


def test_a_stage_whose_cmd_runs_no_pipelines_module_is_named(tmp_path: Path) -> None:
    root = _project(tmp_path, {"pipelines/__init__.py": "", "pipelines/__main__.py": ""},
                    "stages:\n  odd:\n    cmd: python train.py\n")
    with pytest.raises(SaefsError, match="dvc.yaml stage odd: cmd 'python train.py' runs no pipelines module"):
        fingerprint_sources.stage_code(root / "dvc.yaml", root)


def test_the_stage_writes_each_stage_closure_with_each_modules_sha256(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """data/sources/code/<stage>.json, from this checkout (the scratch pipeline test edits a module and sees
    exactly its importers rerun)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    fingerprint_sources.run()
    written = {name: json.loads(paths.code_fingerprint(name).read_text()) for name in stages()}
    code = fingerprint_sources.stage_code(REPO / "dvc.yaml", REPO)
    assert all(set(written[name]) == code[name] for name in stages())
    module = "features/reporting/figures.py"
    assert written["report"][module] == hashlib.sha256((REPO / module).read_bytes()).hexdigest()
