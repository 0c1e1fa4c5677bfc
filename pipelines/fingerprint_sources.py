"""Stage fingerprint_sources: the content of every local file or folder params point at, as files DVC can see.

A `file:` dataset or corpus, a `path:` model or SAE folder is named inside a params value, so dvc.yaml
cannot list it as a dependency and editing it would rerun nothing (`dvc add` does not help: the stage
reading it does not depend on the .dvc file). This stage, which DVC runs on every `dvc repro`
(`always_changed`), writes one small JSON per consumer under data/sources/ with each source's spec
and the SHA-256 of its bytes; each stage depends on its JSON, so it reruns exactly when its inputs do.

    python -m pipelines.fingerprint_sources
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from features.sources.fingerprint import source_fingerprint
from features.stores.files import atomic_path
from pipelines import paths, stage_main
from pipelines.params import Params, load_params

log = logging.getLogger("saefs.fingerprint_sources")


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
    for name, task in params.behaviour_labels.tasks.items():
        out[paths.task_fingerprint(name)] = source_fingerprint(task.source)
    out[paths.cross_lingual_fingerprint()] = {
        name: {lang: source_fingerprint(language.source) for lang, language in task.languages.items()}
        for name, task in params.transfer.cross_lingual.items()}
    return out


def run() -> None:
    files = fingerprints(load_params())
    with atomic_path(paths.SOURCES) as tmp:  # one swap: a stage never reads a half-written set
        for relative, content in files.items():
            target = tmp / relative.relative_to(paths.SOURCES)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    log.info("%d fingerprints under %s", len(files), paths.SOURCES)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, cost="off")


if __name__ == "__main__":
    sys.exit(main())
