"""Stage preflight, first command: every local file or folder params point at, and each stage's code, as files DVC
can see.

A `file:` dataset or corpus, a `path:` model or SAE folder is named inside a params value, so dvc.yaml
cannot list it as a dependency and editing it would rerun nothing (`dvc add` does not help: the stage
reading it does not depend on the .dvc file). `preflight`, which DVC runs on every `dvc repro`
(`always_changed`), writes one small JSON per consumer under data/sources/ with each source's spec
and the SHA-256 of its bytes; each stage depends on its JSON, so it reruns exactly when its inputs do.

Code too: data/sources/code/<stage>.json lists every module of features/, feature_repo/ and pipelines/
that the modules of the stage's commands import (lazy imports included; `features.sources.fingerprint.import_closure`)
with its SHA-256, and for stages run through `python -m pipelines <stage>` the warm runner's modules; an
edit reruns exactly the stages that import the edited module. `dvc status` names the stage's code file;
`git diff` names the module.

    python -m pipelines.fingerprint_sources
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml

from features.errors import SaefsError
from features.sources.fingerprint import code_fingerprint, import_closure, source_fingerprint
from features.stores.files import atomic_path
from pipelines import exit_quickly, paths, stage_main
from pipelines.params import ItemTask, Params, load_params

log = logging.getLogger("saefs.fingerprint_sources")

FIRST_PARTY = ("features", "feature_repo", "pipelines")
ENTRY = re.compile(r"python -m pipelines(?P<runner> |\.)(?P<module>\w+)")  # `pipelines <stage>` runs in the warm runner


def fingerprints(params: Params) -> dict[Path, Any]:
    """Each consumer's fingerprint file (relative to data/sources/) and its content."""
    out: dict[Path, Any] = {}
    for name, dataset in params.datasets.items():
        out[paths.dataset_fingerprint(name)] = source_fingerprint(dataset.source)
    for name, model in params.models.items():
        out[paths.model_fingerprint(name)] = source_fingerprint(model.source)
    for name, sae in params.sae.items():
        specs = {f"l{layer}__{width}": sae.source.format(layer=layer, width=width)
                 for layer in sae.layers for width in sae.widths}
        out[paths.sae_fingerprint(name)] = {cell: source_fingerprint(spec) for cell, spec in specs.items()}
    out[paths.corpus_fingerprint()] = [source_fingerprint(spec) for spec in params.collect_activations.corpus]
    for name, task in params.behaviour_labels.tasks.items():  # a judgement's texts are prepared data, a DVC dep
        out[paths.task_fingerprint(name)] = (source_fingerprint(task.source) if isinstance(task, ItemTask)
                                             else {"datasets": task.datasets})
    out[paths.cross_lingual_fingerprint()] = {
        name: {lang: source_fingerprint(language.source) for lang, language in task.languages.items()}
        for name, task in params.transfer.cross_lingual.items()}
    if params.cross_modal:
        images = {name: source_fingerprint(spec.source) for name, spec in params.cross_modal.datasets.items()}
        for name, vlm in params.cross_modal.models.items():  # each model's stage reads every image dataset
            out[paths.cross_modal_fingerprint(name)] = {
                "model": source_fingerprint(vlm.source), "datasets": images,
                "saes": {f"l{layer}__{width}": source_fingerprint(vlm.spec(layer, width))
                         for layer in vlm.layers for width in vlm.widths}}
    return out


def stage_code(dvc_yaml: Path, root: Path) -> dict[str, set[str]]:
    """Each dvc.yaml stage's code: the import closure of the pipelines module each of its commands runs (and the
    warm runner's, for `python -m pipelines <stage>`)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    runner = import_closure("pipelines.__main__", root, FIRST_PARTY)
    code: dict[str, set[str]] = {}
    for name, stage in stages.items():
        cmds = stage.get("do", stage)["cmd"]
        code[name] = set()
        for cmd in [cmds] if isinstance(cmds, str) else cmds:
            entry = ENTRY.search(cmd)
            if entry is None:
                raise SaefsError(f"dvc.yaml stage {name}: cmd {cmd!r} runs no pipelines module; every stage runs "
                                 "`python -m pipelines <stage>` (or `python -m pipelines.<module>`)")
            code[name] |= import_closure(f"pipelines.{entry['module']}", root, FIRST_PARTY)
            if entry["runner"] == " ":
                code[name] |= runner
            for folder in set(cmd[entry.end():].split()) & set(FIRST_PARTY):  # Feast imports its whole repo
                for module in (root / folder).glob("*.py"):
                    code[name] |= import_closure(f"{folder}.{module.stem}", root, FIRST_PARTY)
    return code


# Folders the report depends on that only an optional stage fills: where the profile has no such group, no stage
# makes them, and DVC refuses a missing dependency (an empty folder is a dependency like any other).
OPTIONAL_OUTPUTS = (paths.CROSS_MODAL_METRICS, paths.COST / "cross_modal", paths.COST / "extract_images")


def run() -> None:
    root = Path(__file__).resolve().parents[1]  # the checkout whose code DVC runs (its cwd, under `dvc repro`)
    for folder in OPTIONAL_OUTPUTS:
        folder.mkdir(parents=True, exist_ok=True)
    files = fingerprints(load_params())
    files |= {paths.code_fingerprint(stage): code_fingerprint(modules, root)
              for stage, modules in stage_code(root / "dvc.yaml", root).items()}
    with atomic_path(paths.SOURCES) as tmp:  # one swap: a stage never reads a half-written set
        for relative, content in files.items():
            target = tmp / relative.relative_to(paths.SOURCES)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    log.info("%d fingerprints under %s", len(files), paths.SOURCES)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, cost="off")


if __name__ == "__main__":
    exit_quickly(main())
