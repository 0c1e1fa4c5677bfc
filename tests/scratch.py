"""The scratch DVC project of the pipeline tests: this checkout's pipeline and code, a tiny local model and small
file datasets (tests/pipelines/conftest.py builds one per session; test_dvc_pipeline, test_pages and others use it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from pipelines import paths
from tests.features.tiny import make_model, make_texts, make_tokenizer
from tests.helpers import REPO, embedded_params, plant_fortunes, write_params

STAGES = {"preflight", "prepare_model@tiny", "prepare_data@alpha", "prepare_data@beta", "validate_data@alpha",
          "validate_data@beta", "collect_activations@tiny", "train_sae@tiny", "latent_cards@tiny", "extract@tiny-alpha",
          "extract@tiny-beta", "check_sae@tiny", "build_features@tiny", "feast_apply",
          "materialize", "train_probes@tiny-alpha", "train_probes@tiny-beta", "promote@alpha",
          "promote@beta", "behaviour_labels@tiny-items", "behaviour_labels@tiny-judge", "transfer", "lodo@tiny",
          "report"}
# always_changed: it hashes the user's files and checks the MLflow store behind the receipts on every repro
ALWAYS = {"preflight"}
TRACKING_STAGES = {"train_probes@tiny-alpha", "train_probes@tiny-beta", "promote@alpha", "promote@beta", "report"}
EMPTY_THRESHOLD = 100000.0
FEAST_STAGES = {"build_features@tiny", "feast_apply", "materialize"}


def dvc(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    env = {**os.environ, **(env or {}), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def tiny_params() -> dict:
    datasets = {name: {"source": f"file:{name}.csv", "labels": [0, 1], "max_rows": 100} for name in ("alpha", "beta")}
    params = embedded_params(
        models={"tiny": {"source": "path:tiny"}},
        datasets=datasets,
        sae={"tiny": {"layers": [1, 2], "widths": ["64"], "source": "train"}},
        collect_activations={"corpus": ["file:corpus.csv"], "train_tokens": 1200, "heldout_tokens": 300,
                             "max_tokens": 12, "batch_size": 8, "seed": 0},
        train_sae={"architecture": "topk", "k": 4, "training_samples": 4096, "batch_size": 256, "lr": 0.001,
                   "seed": 0, "min_tokens_per_latent": 10, "loss_texts": 8},
        extract={"max_tokens": 12, "batch_size": 8, "poolings": ["sum", "top2"], "include_bos": False,
                 "paper_compat": False, "shard_rows": 40, "device": "cpu"},
        check_sae={"min_fve": -10.0, "max_dead_fraction": 1.0, "max_dense_fraction": 1.0, "min_loss_recovered": -100.0},
    )
    # a threshold above every pooled code: its views hold no latent, so train_probes must skip them
    params["build_features"]["binarize"] = [None, 1.0, EMPTY_THRESHOLD]
    params["train_probes"] |= {"poolings": ["sum"], "resamples": 2, "cv_folds": 3, "C_grid": [0.1, 1.0],
                               "select_k": 16, "train_fractions": [0.5, 1.0],
                               "binarize": [None, 1.0, EMPTY_THRESHOLD]}
    params["behaviour_labels"] = {"targets": ["tiny"], "max_tokens": 40,
                                  "tasks": {"items": {"source": "file:items.csv", "format": "letter_lines",
                                                      "max_items": 60},
                                            # the tiny tokenizer knows only w<i>: its answers are two words
                                            "judge": {"kind": "judgement", "datasets": ["alpha", "beta"],
                                                      "question": "w5 w6", "answers": ["w1", "w2"],
                                                      "max_items": 150, "decision": "median"}}}
    params["transfer"] |= {"sources": {"tiny": {"layer": 2, "width": "64"}}, "pair": ["tiny", "tiny"],
                           "max_tokens": 24, "C_grid": [0.1, 1.0], "cv_folds": 3, "resamples": 2,
                           "cross_lingual": {"xl": {"languages": {"en": {"source": "file:en.csv"},
                                                                  "es": {"source": "fortune:es:fortunes"}},
                                                    "labels": [0, 1], "max_rows": 60, "balance": True}}}
    params["serve"] |= {"datasets": ["alpha", "beta"]}  # `saefs serve` in the scratch project (test_pages)
    return params


def build_scratch_repo(repo: Path, params: dict) -> Path:
    """A DVC project in `repo` (no git): this checkout's pipeline and code, a tiny model, small file datasets."""
    for item in ("dvc.yaml", "features", "pipelines", "feature_repo", "profiles"):
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, repo / item)
    make_model("gemma3").save_pretrained(repo / "tiny")
    make_tokenizer().save_pretrained(repo / "tiny")
    for seed, name in enumerate(("alpha", "beta")):
        texts = make_texts([3 + i % 14 for i in range(120)], seed=seed)
        pd.DataFrame({"text": texts, "label": [i % 2 for i in range(120)]}).to_csv(repo / f"{name}.csv", index=False)
    items = [f"{q}\n\nA.{a}\nB.{b}" for q, a, b in zip(make_texts([3 + i % 5 for i in range(70)], seed=3),
                                                          make_texts([1 + i % 3 for i in range(70)], seed=4),
                                                          make_texts([1 + i % 2 for i in range(70)], seed=5),
                                                          strict=True)]
    pd.DataFrame({"text": items, "label": [i % 2 for i in range(70)]}).to_csv(repo / "items.csv", index=False)
    texts = make_texts([3 + i % 6 for i in range(80)], seed=8)
    pd.DataFrame({"text": texts, "label": [i % 2 for i in range(80)]}).to_csv(repo / "en.csv", index=False)
    jokes = make_texts([3 + i % 6 for i in range(80)], seed=9)
    plant_fortunes(repo / "fortunes", "es", jokes[::2], jokes[1::2])  # the Debian layout, offline
    corpus = make_texts([4 + i % 9 for i in range(300)], seed=7)
    pd.DataFrame({"text": corpus, "label": 0}).to_csv(repo / "corpus.csv", index=False)
    write_params(repo, params)
    dvc(repo, "init", "--no-scm", "-q")
    return repo


def champions(repo: Path) -> dict[str, int | None]:
    """`saefs-<dataset>@champion` of each scratch dataset, read from the repo's MLflow store in a fresh process."""
    code = ("import json, mlflow; from features.stores import tracking; "
            "mlflow.set_tracking_uri('sqlite:///mlflow.db'); "
            "print(json.dumps({d: tracking.get_alias_version(f'saefs-{d}', 'champion') for d in ('alpha', 'beta')}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def promised_champions(repo: Path) -> dict[str, int | None]:
    return {d: json.loads((repo / paths.promotion_report(d)).read_text())["champion"] for d in ("alpha", "beta")}


def open_gates(repo: Path) -> None:
    """Gates every probe passes, so each dataset gets a champion (the scratch labels are random)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["promote"] |= {"min_macro_f1": 0.0, "max_drop_vs_hidden": None}
    write_params(repo, params)
