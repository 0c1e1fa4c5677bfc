"""dvc.yaml against the code: each stage depends on the fingerprint of the code it imports, and writes where
pipelines/paths.py says.

DVC reruns a stage only when a declared dependency changes, so code a stage imports but DVC cannot see lets
an edit leave stale outputs behind. Each stage's code is one dependency, data/sources/code/<stage>.json,
which fingerprint_sources writes from the import closure of the stage's module (lazy imports inside
functions included: they run when the function does; `if TYPE_CHECKING:` imports never run). A closure per
stage, rather than whole package folders, keeps an edit from rerunning stages that cannot see it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from features.errors import SaefsError
from features.sources import fortunes
from features.sources.fingerprint import import_closure
from pipelines import exit_quickly, fingerprint_sources, paths
from tests.helpers import REPO, plant_fortunes

FIRST_PARTY = fingerprint_sources.FIRST_PARTY


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in raw.items()}


@pytest.mark.parametrize("name", sorted(set(stages()) - {"preflight"}))  # it runs on every repro: no deps
def test_each_stage_depends_on_its_code_and_lists_no_module_itself(name: str) -> None:
    deps = stages()[name]["deps"]
    assert str(paths.code_fingerprint(name)) in deps, f"dvc.yaml stage {name}: add {paths.code_fingerprint(name)}"
    assert not [dep for dep in deps if dep.endswith(".py")], f"dvc.yaml stage {name}: its code file covers modules"


def test_every_stage_code_is_its_modules_closure_with_the_runner_and_feasts_repo() -> None:
    code = fingerprint_sources.stage_code(REPO / "dvc.yaml", REPO)
    assert set(code) == set(stages())
    assert "features/sources/sae.py" in code["extract"]  # imported inside run()
    assert {"pipelines/__main__.py", "pipelines/warm.py"} <= code["extract"]  # `python -m pipelines extract`
    assert "pipelines/warm.py" not in code["preflight"]  # `python -m pipelines.fingerprint_sources`, ...check_stores
    assert {"pipelines/fingerprint_sources.py", "pipelines/check_stores.py"} <= code["preflight"]
    assert "features/stores/feast/store.py" not in code["prepare_model"]
    assert "feature_repo/views.py" in code["feast_apply"]  # Feast imports every module of the repo it is given
    for name in set(stages()) - {"preflight"}:
        assert code[name] >= import_closure(f"pipelines.{name}", REPO, FIRST_PARTY), name


def test_only_train_sae_holds_the_sae_trainers_code() -> None:
    """Every stage reads params, which hold the SAE training settings: a change to the trainer must rerun
    train_sae and what reads its SAEs, not collect the corpus again nor prepare the data."""
    code = fingerprint_sources.stage_code(REPO / "dvc.yaml", REPO)
    trainer = {"features/core/sae_training.py", "features/core/lean_topk.py"}
    assert trainer <= code["train_sae"]
    assert [name for name in code if code[name] & trainer] == ["train_sae"]


def test_the_stages_run_on_every_repro_import_neither_torch_nor_mlflow() -> None:
    # A repro with nothing to do starts their commands in processes of their own: each library takes seconds to
    # import, which were most of its time. check_stores loads MLflow when it queries the store, not before.
    always = sorted(f"pipelines.{fingerprint_sources.ENTRY.search(cmd)['module']}"
                    for stage in stages().values() if stage.get("always_changed") for cmd in stage["cmd"])
    assert always == ["pipelines.check_stores", "pipelines.fingerprint_sources"]
    code = ("import importlib, sys\n"
            f"for name in {['pipelines.params', *always]!r}:\n"
            "    importlib.import_module(name)\n"
            "    loaded = sorted(m for m in ('torch', 'mlflow') if m in sys.modules)\n"
            "    if loaded:\n"
            "        sys.exit(f'{name} pulls in {loaded}')\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


def test_those_stages_exit_with_their_status_leaving_their_objects_to_the_os() -> None:
    with pytest.raises(SystemExit) as exited:
        exit_quickly(3)
    try:
        assert exited.value.code == 3 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_dvc_parses_yaml_with_the_c_parser() -> None:
    # without it (requirements.lock pins it) DVC reads params.yaml once per stage in pure Python
    from ruamel.yaml import YAML
    from ruamel.yaml.parser import Parser

    assert YAML(typ="safe").Parser is not Parser


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
          both:
            cmd:
              - python -m pipelines.b
              - python -m pipelines a
        """)
    code = fingerprint_sources.stage_code(root / "dvc.yaml", root)
    assert code["a"] == {"pipelines/__init__.py", "pipelines/a.py", "features/__init__.py", "features/core/__init__.py",
                         "features/core/lazy.py", "features/core/deep.py", "pipelines/__main__.py", "pipelines/warm.py"}
    assert code["b"] == {"pipelines/__init__.py", "pipelines/b.py", "features/__init__.py", "features/core/__init__.py",
                         "features/core/other.py"}
    assert code["both"] == code["a"] | code["b"]  # a stage of several commands: each one's closure


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
    for lang in fortunes.LAYOUT:  # the profile's fortune: sources, without `make install`
        plant_fortunes(tmp_path / "fortunes", lang, ["a joke"], ["a crude joke"])
    monkeypatch.setattr(fortunes, "install_root", lambda: tmp_path / "fortunes")
    fingerprint_sources.run()
    written = {name: json.loads(paths.code_fingerprint(name).read_text()) for name in stages()}
    code = fingerprint_sources.stage_code(REPO / "dvc.yaml", REPO)
    assert all(set(written[name]) == code[name] for name in stages())
    module = "features/reporting/figures.py"
    assert written["report"][module] == hashlib.sha256((REPO / module).read_bytes()).hexdigest()


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
    expected |= {f"latent_cards@{m}": [paths.cards_dir(m), paths.cards_metrics(m)] for m in models}
    expected |= {f"extract@{m}-{d}": [paths.features_dir(m, d), paths.extract_metrics(m, d)]
                 for m in models for d in datasets}
    expected |= {f"build_features@{m}": [paths.feast_sources_dir(m)] for m in models}
    expected |= {"preflight": [paths.SOURCES, paths.stores_checked()],
                 "feast_apply": [paths.feast_catalog()], "materialize": [paths.feast_materialized()]}
    expected |= {f"train_probes@{m}-{d}": [paths.probe_metrics(d, m), paths.probe_plots(d, m),
                                          paths.probes_receipt(d, m)] for d in datasets for m in models}
    expected |= {f"promote@{d}": [paths.promotion_report(d), paths.promotion_receipt(d)] for d in datasets}
    for stage, wanted in expected.items():
        assert {str(path) for path in wanted} <= outs[stage], f"{stage} writes {sorted(outs[stage])}"
    # the scoring service writes into the online store: as an output it would make every scored text rerun materialize
    assert not {str(paths.feast_online_dir()), str(paths.feast_online_store())} & outs["materialize"]
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


def test_cross_modal_has_instances_per_model_of_its_optional_group_writing_where_paths_says(tmp_path: Path) -> None:
    """The embedded profile has no cross_modal group, so no instance (dvc.yaml's vars default it to no model); the
    paper profile's model gets an extract_images and a cross_modal instance."""
    from dvc.repo import Repo

    from pipelines.profile import load_profile
    from tests.helpers import write_params

    for profile, models in (("embedded", []), ("paper", ["paligemma2_3b"])):
        root = tmp_path / profile
        root.mkdir()
        (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
        write_params(root, load_profile(profile, REPO / "profiles"))
        Repo.init(str(root), no_scm=True)
        with Repo(str(root)) as repo:
            outs = {stage.name: {out.def_path for out in stage.outs} for stage in repo.index.stages
                    if stage.name.startswith(("extract_images", "cross_modal"))}
        expected = {f"cross_modal@{m}": {paths.cross_modal_predictions(m), paths.cross_modal_metrics(m),
                                         paths.cross_modal_table(m), paths.stage_cost("cross_modal", m)}
                    for m in models}
        expected |= {f"extract_images@{m}": {paths.image_rows(m, "x").parent, paths.features_dir(m, "x").parent,
                                             paths.feast_sources_dir(m), paths.extract_images_metrics(m),
                                             paths.stage_cost("extract_images", m)} for m in models}
        assert outs == {stage: {str(path) for path in out} for stage, out in expected.items()}, profile
