"""Stage check_sae: the Great Expectations gate on a model's SAEs' quality, on held-out corpus tokens (train_sae)
and on each dataset's tokens (extract). One stage instance per model: build_features reads all of its datasets,
and DVC rewrites dvc.lock after every instance (about a second each on the embedded grid's lock).

Fails the pipeline, naming each SAE and figure, when an SAE does not fit its activations (variance explained,
loss recovered: a wrong layer or model) or is poorly trained (dead or dense latents on the held-out corpus).
"""

from __future__ import annotations

import json
import logging
import sys

import pandas as pd

from features.errors import SaefsError
from features.stores.files import atomic_path, write_json
from features.stores.validation import SaeQualityRules, validate_sae_quality
from pipelines import paths, stage_main
from pipelines.params import load_params

log = logging.getLogger("saefs.check_sae")


class SaeQualityFailed(SaefsError):
    """An SAE explains too little of its activations, or has too many dead latents."""


def run(model_name: str) -> None:
    params = load_params()
    gate = params.check_sae
    heldout = json.loads(paths.train_sae_metrics(model_name).read_text())["saes"]
    # dead and dense fractions are judged on the corpus: a dataset's few tokens leave many latents silent
    rows = [{"sae": f"{name} on held-out corpus", **info["heldout"]} for name, info in heldout.items()]
    for dataset in params.datasets:  # one check over every dataset's tokens: a stage per model, not per pair
        on_dataset = json.loads(paths.extract_metrics(model_name, dataset).read_text())["sae_quality"]
        rows += [{"sae": f"{name} on {dataset}", "fve": figures["fve"], "l0": figures["l0"]}
                 for name, figures in on_dataset.items()]
    rules = SaeQualityRules(gate.min_fve, gate.max_dead_fraction, gate.max_dense_fraction, gate.min_loss_recovered,
                            gate.max_l0)
    report = validate_sae_quality(pd.DataFrame(rows), rules, model_name)
    with atomic_path(paths.sae_check_dir(model_name)) as out:
        out.mkdir()
        write_json(out / "results.json", report.to_dict())
    if not report.success:
        raise SaeQualityFailed(report.message())
    log.info("%s", report.message())


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="model", help="a key of `sae`")


if __name__ == "__main__":
    sys.exit(main())
