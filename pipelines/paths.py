"""Where each stage writes: deterministic functions of names, never of time, so DVC can cache them.

dvc.yaml spells the same paths; tests/pipelines/test_dvc_yaml.py checks that the two agree.
"""

from pathlib import Path

DATA = Path("data")
DVC_LOCK = Path("dvc.lock")


SOURCES = DATA / "sources"


def dataset_fingerprint(dataset: str) -> Path:
    """fingerprint_sources: a dataset's source spec and, for `file:`, its content hash (prepare_data reads it)."""
    return SOURCES / "datasets" / f"{dataset}.json"


def model_fingerprint(model: str) -> Path:
    return SOURCES / "models" / f"{model}.json"


def sae_fingerprint(model: str) -> Path:
    return SOURCES / "saes" / f"{model}.json"


def corpus_fingerprint() -> Path:
    return SOURCES / "corpus.json"


def task_fingerprint(task: str) -> Path:
    return SOURCES / "behaviour" / f"{task}.json"


def cross_lingual_fingerprint() -> Path:
    return SOURCES / "cross_lingual.json"


def cross_modal_fingerprint(model: str) -> Path:
    """fingerprint_sources: a cross-modal model's VLM, SAE and image sources (a `path:` or `folder:` hashed)."""
    return SOURCES / "cross_modal" / f"{model}.json"


def code_fingerprint(stage: str) -> Path:
    """The import closure of a stage's module, with each file's hash (one file for all of a grid's instances)."""
    return SOURCES / "code" / f"{stage}.json"


def model_dir(model: str) -> Path:
    return DATA / "models" / model


def prepared(dataset: str) -> Path:
    return DATA / "prepared" / f"{dataset}.parquet"


def prepare_summary(dataset: str) -> Path:
    return Path("metrics") / "prepare_data" / f"{dataset}.json"


def validation_dir(dataset: str) -> Path:
    return DATA / "validation" / dataset


def validation_metrics(dataset: str) -> Path:
    return Path("metrics") / "validate_data" / f"{dataset}.json"


def activations_dir(model: str) -> Path:
    """collect_activations: the corpus residual streams of a model's SAE layers (features.stores.activations)."""
    return DATA / "activations" / model


def collect_metrics(model: str) -> Path:
    return Path("metrics") / "collect_activations" / f"{model}.json"


def sae_dir(model: str) -> Path:
    return DATA / "saes" / model


def train_sae_metrics(model: str) -> Path:
    return Path("metrics") / "train_sae" / f"{model}.json"


def cards_dir(model: str) -> Path:
    """latent_cards: a folder per SAE of the model (features.stores.cards), named like its SAE folder."""
    return DATA / "cards" / model


def cards_metrics(model: str) -> Path:
    return Path("metrics") / "latent_cards" / f"{model}.json"


def features_dir(model: str, dataset: str) -> Path:
    return DATA / "features" / model / dataset


def extract_metrics(model: str, dataset: str) -> Path:
    return Path("metrics") / "extract" / model / f"{dataset}.json"


def sae_check_dir(model: str) -> Path:
    return DATA / "sae_checks" / model


FEAST = DATA / "feast"


def feast_sources_dir(model: str) -> Path:
    """build_features@<model>: one parquet per view of the model, and its catalog.json."""
    return FEAST / "sources" / model


def feast_catalog() -> Path:
    """feast_apply: every view of the run, which it turns into Feast objects (feature_repo/)."""
    return FEAST / "catalog.json"


def feast_registry_dir() -> Path:
    """feast_apply: applied.json, what it registered and where, beside the registry itself when it is a file
    (registry.db, as feature_repo/feature_store.yaml says); a SQL registry leaves only the receipt here."""
    return FEAST / "registry"


def feast_registry() -> Path:
    return feast_registry_dir() / "registry.db"


def feast_applied() -> Path:
    return feast_registry_dir() / "applied.json"


def feast_online_dir() -> Path:
    """materialize: materialized.json (its DVC output), the rows it wrote per view and where, beside the online
    store when it is SQLite (online_store.db, as feature_repo/feature_store.yaml says; no DVC output, as the
    scoring service writes into it); Redis leaves only the receipt here."""
    return FEAST / "online"


def feast_online_store() -> Path:
    return feast_online_dir() / "online_store.db"


def feast_materialized() -> Path:
    return feast_online_dir() / "materialized.json"


def probe_metrics(dataset: str, model: str) -> Path:
    return Path("metrics") / "train_probes" / dataset / f"{model}.json"


def probe_plots(dataset: str, model: str) -> Path:
    return Path("plots") / "train_probes" / dataset / f"{model}.csv"


PREDICTIONS = DATA / "predictions"


def probe_predictions(dataset: str, model: str) -> Path:
    """train_probes@<model>-<dataset>: every fit's per-text predictions (features.core.predictions)."""
    return PREDICTIONS / "train_probes" / dataset / f"{model}.parquet"


def transfer_predictions() -> Path:
    """transfer: every cell's per-text predictions, fits named `<task>:<cell>:<probe>`."""
    return PREDICTIONS / "transfer.parquet"


def lodo_predictions(model: str) -> Path:
    """lodo@<model>: every fold's per-text predictions on the held-out test texts, fits `<probe>:<trained on>`."""
    return PREDICTIONS / "lodo" / f"{model}.parquet"


def lodo_metrics(model: str) -> Path:
    return Path("metrics") / "lodo" / f"{model}.json"


def lodo_table(model: str) -> Path:
    """lodo@<model>: one row per (held-out dataset, probe): in-split and held-out macro F1, their gap."""
    return Path("plots") / "lodo" / f"{model}.csv"


def image_rows(model: str, dataset: str) -> Path:
    """extract_images@<model>: an image dataset's prepared rows (text_id: the image's id, label, split, event time)
    without the images; its features lie in features_dir(model, dataset), its views in feast_sources_dir(model)."""
    return DATA / "images" / model / f"{dataset}.parquet"


EXTRACT_IMAGES_METRICS = Path("metrics") / "extract_images"


def extract_images_metrics(model: str) -> Path:
    """extract_images@<model>: per image dataset its images, classes, image tokens and the SAEs' figures on them."""
    return EXTRACT_IMAGES_METRICS / f"{model}.json"


def cross_modal_predictions(model: str) -> Path:
    """cross_modal@<model>: every fit's per-image predictions, fits `<dataset>:<cell>`."""
    return PREDICTIONS / "cross_modal" / f"{model}.parquet"


CROSS_MODAL_METRICS = Path("metrics") / "cross_modal"


def cross_modal_metrics(model: str) -> Path:
    return CROSS_MODAL_METRICS / f"{model}.json"


def cross_modal_table(model: str) -> Path:
    """cross_modal@<model>: one row per (dataset, probe) with its scores and paired differences (DVC plots)."""
    return Path("plots") / "cross_modal" / f"{model}.csv"


def promotion_report(dataset: str) -> Path:
    return Path("reports") / "promotion" / f"{dataset}.json"


TRACKING = DATA / "tracking"


def stores_checked() -> Path:
    """check_stores: the tracking store it checked the receipts below against (train_probes and promote read it)."""
    return TRACKING / "stores.json"


def stores_stamp() -> Path:
    """check_stores: what its last full check read, as file metadata (no DVC output: it changes with every run
    that writes to the store, and train_probes and promote must not rerun for that)."""
    return TRACKING / "stores.stamp.json"


def probes_receipt(dataset: str, model: str) -> Path:
    """train_probes@<model>-<dataset>: the tracking store and the logged probes the stage left there."""
    return TRACKING / "train_probes" / dataset / f"{model}.json"


def promotion_receipt(dataset: str) -> Path:
    """promote@<dataset>: the tracking store, and the registered version and champion the stage left there."""
    return TRACKING / "promote" / f"{dataset}.json"


def behaviour_labels(target: str, task: str) -> Path:
    """behaviour_labels@<target>: the target's correctness on a task's items, in the prepared schema."""
    return DATA / "behaviour" / target / f"{task}.parquet"


def behaviour_metrics(target: str, task: str) -> Path:
    return Path("metrics") / "behaviour_labels" / target / f"{task}.json"


def transfer_table(matrix: str) -> Path:
    """transfer: `cross_model` or `cross_lingual`, one row per cell (DVC plots; a PNG heatmap beside it)."""
    return Path("plots") / "transfer" / f"{matrix}.csv"


def transfer_metrics(matrix: str) -> Path:
    return Path("metrics") / "transfer" / f"{matrix}.json"


REPORT_DIR = Path("reports")
REPORT_PLOTS = Path("plots") / "report"
STUDY_METRICS = Path("metrics") / "report" / "study.json"  # the study's answers: best value per model and axis


def report_plot(name: str) -> Path:
    return REPORT_PLOTS / f"{name}.csv"


COST = Path("metrics") / "cost"


def stage_cost(stage: str, item: str | None = None) -> Path:
    """What a stage instance cost (pipelines.cost); `item` is its argument, e.g. <model>/<dataset>."""
    return COST / stage / f"{item}.json" if item else COST / f"{stage}.json"
