"""The report's sections (features/reporting/sections.py renders them): setup, results, comparisons, cost."""

from __future__ import annotations

import pandas as pd

from features.core.predictions import INTERVALS
from features.core.transfer import by_probe
from features.reporting import comparisons, figures, paper, study
from features.reporting import report as tables
from features.reporting.report import RunInputs
from features.reporting.sections import Section


def with_interval(frame: pd.DataFrame, column: str = "macro_f1", label: str = "test macro F1") -> pd.DataFrame:
    """Fold a macro F1 column's mean, low and high into one readable column, in place of the three."""
    three = [column, f"{column}_low", f"{column}_high"]
    text = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in zip(*(frame[c] for c in three), strict=True)]
    position = frame.columns.get_loc(column)
    out = frame.drop(columns=three)
    out.insert(position, f"{label} [95% CI]", text)
    return out


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.apply(lambda col: col.map(lambda v: f"{v:.3f}") if pd.api.types.is_float_dtype(col) else col)


def _setup_section(inputs: RunInputs) -> Section:
    setup = inputs.setup
    n_test = tables.test_rows(inputs.probes)
    smallest = min(n_test.values()) if n_test else None
    paragraphs = [
        f"Profile {setup.get('profile', '?')}. Every number below was produced by these models, SAEs and "
        "data, not by the paper's Gemma 2 and Gemma Scope; the section 'This run beside the paper' sets the two "
        "side by side.",
        f"Probes: logistic regression, C chosen by cross-validation on each training part only; every cell, "
        f"baseline and curve point is fitted on {setup.get('probe_resamples', '?')} stratified train/test splits "
        "of the same texts (the first is the prepared split, the fit that is logged and may be registered). A "
        "'best' cell is chosen on validation macro F1 (out-of-fold on the training part), never on test. Scores "
        f"are means over the splits; intervals: {INTERVALS['resamples']} (with one split: "
        f"{INTERVALS['logged']}). Comparisons are paired on the same splits and texts, Holm-corrected over every "
        "distinct test this report prints.",
        f"What each probe saw: the language model (so every SAE and hidden-state probe) reads the first "
        f"{setup.get('max_tokens', '?')} tokens of a text; `tfidf` reads the whole text and `tfidf_truncated` "
        "the same tokens the model read. Hidden-state probes read the last token (`hidden last`, the paper's "
        "baseline) or the mean over tokens (`hidden mean`), reported separately. AUROC, and recall at 1% and 5% "
        "false positive rate (the threshold set on validation texts of the negative class; binary tasks only), "
        "stand beside macro F1.",
    ]
    if smallest:
        sizes = f"{smallest}" if smallest == max(n_test.values()) else f"{smallest}-{max(n_test.values())}"
        paragraphs.append(f"The test splits hold {sizes} texts; sampling alone moves a "
                          f"score near 0.8 by about ±{tables.binomial_half_width(smallest):.2f} (95%, binomial), "
                          "larger than many differences between the cells below.")
    described = [("models", setup.get("models", {})), ("SAEs", setup.get("saes", {})),
                 ("datasets", setup.get("datasets", {}))]
    return Section("setup", "What produced these numbers", paragraphs,
                   tables=[(caption, pd.DataFrame([{"name": k, **v} for k, v in items.items()]))
                           for caption, items in described if items])


def _note(cells: pd.DataFrame) -> str:
    resamples = sorted(cells["resamples"].unique())
    return (f"Test macro F1, mean over {'/'.join(str(r) for r in resamples)} resampled splits; whiskers and "
            f"brackets: {INTERVALS['resamples']}; each point is the cell chosen on validation.")


def _transfer_section(anchor: str, title: str, frame: pd.DataFrame | None, kind: str, intro: str, panel: list[str],
                      rows: str | list[str], columns: str) -> Section:
    """A transfer matrix per `panel` group (rows x columns heatmaps) and the whole CSV as a table. A
    cross-lingual frame shows its SAE, hidden-state and TF-IDF probes, each with its interval."""
    section = Section(anchor, title)
    if frame is None:
        section.paragraphs.append(f"Not produced yet: plots/transfer/{kind}.csv (the transfer stage writes it; "
                                  "`dvc repro transfer`). This section fills in when it exists.")
        return section
    section.paragraphs.append(intro + f" Intervals: {INTERVALS['resamples']} where a cell has several splits, "
                              f"else {INTERVALS['logged']}; skipped cells say why in the table.")
    named_rows = [rows] if isinstance(rows, str) else rows
    table = with_interval(frame.sort_values([*panel, *[r for r in named_rows if r in frame], columns]))
    shown = frame
    if kind == "cross_model":
        section.paragraphs.append(tables.cross_model_reading(frame))
        for probe in ("hidden", "tfidf", "target_hidden"):
            table = with_interval(table, f"{probe}_f1", f"{probe} macro F1")
    if kind == "cross_lingual":
        section.paragraphs.append(tables.cross_lingual_reading(frame))
        shown = by_probe(frame)
        for probe in ("hidden", "tfidf"):
            table = with_interval(table, f"{probe}_f1", f"{probe} macro F1")
    for keys, part in shown.groupby(panel, sort=True):
        name = " ".join(map(str, keys))
        part = part.assign(macro_f1=part["macro_f1"].where(part["status"] == "ok"))
        section.figures.append((f"{name}: test macro F1 [95% interval], {' / '.join(named_rows)} x {columns}",
                                figures.heatmap(part, rows, columns, name)))
    section.tables.append(("Every cell, with the baselines on the same split", table))
    return section


def _transfer_sections(inputs: RunInputs) -> list[Section]:
    tasks = inputs.setup.get("cross_lingual", {})
    named = "; ".join(f"{task}: {what}" for task, what in tasks.items())
    return [
        _transfer_section("cross-model", "Cross-model transfer: one model's features predict another's behaviour",
                          inputs.cross_model, "cross_model", "Rows: the model whose features the probe reads "
                          "(source); columns: the model whose behaviour is the label (target): its right or wrong "
                          "answers (a multiple-choice task) or its judgement of each text (a judgement task). "
                          "Each cell also fits a probe on the target's own hidden states, on the same splits, "
                          "and tests the SAE probe against it and TF-IDF (paired; Holm over the matrix).",
                          ["task"], "source", "target"),
        _transfer_section("cross-lingual", "Cross-lingual transfer: train on one language, test on another",
                          inputs.cross_lingual, "cross_lingual", "Rows: the probe (SAE, hidden state, TF-IDF) and "
                          "its training language; columns: test language (zero-shot off the diagonal). Every cell "
                          "trains on the same splits of its language and is scored on the test parts of the "
                          f"other's. The tasks: {named or 'none in this profile'}.",
                          ["task", "model", "layer"], ["probe", "train_lang"], "test_lang"),
        Section("transfer-claims", "Transfer: which of the paper's claims hold here", [
            "Each of the paper's transfer claims against the cells above, with their 95% intervals. A claim holds "
            "where every cell it covers agrees, partly where some do; a difference counts only where its "
            f"Holm-corrected p is below {comparisons.CALLED}."],
            tables=[("Claims", tables.transfer_claims(inputs.cross_model, inputs.cross_lingual, comparisons.CALLED))]),
    ]


def _cross_modal_section(inputs: RunInputs) -> Section:
    """Text-trained SAEs on a vision-language model's image tokens, against its vision tower (PAPER.md §6.3)."""
    section = Section("cross-modal", "Cross-modal: text SAEs on a vision-language model's image tokens", [
        "The model sees each image with its image token and no text; the residual stream of its language model "
        "after each layer is kept at the image-token positions only, encoded by text-trained SAEs (zero-shot) and "
        "pooled as texts are. Every probe fits on the same resampled splits of each image set: the SAE codes, "
        "the vision tower's output (mean over its patches) and the residual itself (mean over the image tokens). "
        f"Intervals: {INTERVALS['resamples']}; differences are paired on the same splits, Holm over the model's "
        f"comparisons. The paper's vision-tower probes reached macro F1 0.98 (oxford-flowers), 0.98 (indian food) "
        "and 0.79 (CIFAR-100)."])
    if not inputs.cross_modal:
        section.paragraphs.append("Not run in this profile: no vision-language model installs offline, so only the "
                                  "paper profile (a GPU and the hub) has a cross_modal group.")
        return section
    section.paragraphs.append(tables.cross_modal_reading(inputs.cross_modal, comparisons.CALLED))
    section.tables += [("Best probes per image set, beside the paper's vision tower",
                        tables.cross_modal_table(inputs.cross_modal)),
                       ("Every probe", tables.cross_modal_cells(inputs.cross_modal))]
    return section


def _comparisons_section(paired: pd.DataFrame, gaps: pd.DataFrame) -> Section:
    """The paired tests: best SAE against the best dense, last-token hidden and TF-IDF probes, and per layer."""
    section = Section("comparisons", "Paired comparisons: where SAE features win, lose or tie", [
        "Per (dataset, model), and per dataset over every model (scope 'dataset'; fits named model/cell), the "
        "best SAE probe minus the best dense probe, the last-token hidden-state probe (the paper's baseline) "
        "and TF-IDF, on macro F1 and AUROC, on the same splits and texts. difference: mean over splits; "
        f"low/high: {INTERVALS['resamples']}; p: paired test; p_holm: Holm-corrected over every distinct "
        f"comparison and detection gap in this report. A difference is called only where p_holm < "
        f"{comparisons.CALLED}.",
        "Detection gap per layer: the best dense probe minus the best SAE probe at that layer (positive: the "
        "SAE loses information the hidden state holds)."])
    if paired["difference"].notna().any():
        section.figures.append(("Paired differences (SAE minus the other): dot at the mean over splits, whiskers "
                                f"at the 95% interval; filled where p_holm < {comparisons.CALLED}.",
                                figures.differences(paired, ["model", "comparison", "metric"],
                                                    "Best SAE probe against the baselines",
                                                    "SAE minus the other (paired, same texts)",
                                                    comparisons.CALLED)))
    if gaps["gap"].notna().any():
        section.figures.append(("Detection gap per layer (dense minus SAE, macro F1): whiskers at the 95% "
                                f"interval; filled where p_holm < {comparisons.CALLED}.",
                                figures.differences(gaps.rename(columns={"gap": "difference"}).assign(
                                    at="L" + gaps["layer"].astype(str)), ["model", "at"], "Detection gap by layer",
                                    "dense minus SAE (paired, same texts)", comparisons.CALLED)))
    section.tables += [("Paired comparisons", paired.dropna(axis=1, how="all")),
                       ("Detection gap per layer", gaps.dropna(axis=1, how="all"))]
    return section


def study_sections(inputs: RunInputs, cells: pd.DataFrame, sweeps: pd.DataFrame, gaps: pd.DataFrame) -> list[Section]:
    """The paper's three questions, each opened by its answer per model, when train_probes swept the axes around a
    center (design: marginal); a full grid's answers are the layer, pooling and width sections below."""
    if sweeps.empty:
        return []
    depth = inputs.setup.get("depth", {})
    models = sorted(sweeps["model"].unique())
    center = "; ".join(f"{model}: {c}" for model, c in study.centers(inputs.probes).items())
    how = (f"Each axis is swept with the others at the center ({center}); "
           "the best value is the one with the highest validation macro F1 over the datasets, and the "
           "differences are best minus each other value, paired over the same splits (per dataset) and over "
           f"datasets (each split's differences averaged over them), {INTERVALS['resamples']}; Holm over every test "
           f"of these three sections, called where p_holm < {study.CALLED}.")

    def rows(axes: list[str]) -> pd.DataFrame:
        return sweeps[sweeps["axis"].isin(axes)].dropna(axis=1, how="all")

    def differences(axes: list[str], title: str) -> tuple[str, str]:
        part = sweeps[sweeps["axis"].isin(axes) & (sweeps["scope"] == "dataset")]
        return (f"Best value minus each other one per dataset (paired, same texts): whiskers at the 95% interval; "
                f"filled where p_holm < {study.CALLED}.",
                figures.differences(part, ["model", "axis", "value"], title, "best minus this value (macro F1)",
                                    study.CALLED))

    by_depth = study.depth_table(cells, inputs.probes, depth)
    layer_gaps = gaps.dropna(axis=1, how="all")
    sections = [
        Section("study-layers", "Which layer?",
                [study.answer(sweeps, m, "layer", depth) for m in models] + [
                    how, "The SAE probes of the layer sweep (solid) beside the best hidden-state probe of each layer "
                    "(dashed), against relative depth; the detection gap per layer is the best dense probe minus "
                    "the best SAE probe there (positive: the SAE loses what the hidden state holds)."],
                tables=[("Layer sweep", rows(["layer"])), ("Detection gap per layer", layer_gaps)]),
        Section("study-width-pooling", "Which SAE width and pooling?",
                [study.answer(sweeps, m, axis) for m in models for axis in ("width", "pooling")] + [how],
                tables=[("Width and pooling sweeps", rows(["width", "pooling"]))]),
        Section("study-binarize", "Binarize, and at which threshold?",
                [study.answer(sweeps, m, "binarize") for m in models]
                + [study.binarization_answer(sweeps, m) for m in models] + [
                    how, "Thresholds: 0 switches on every latent active anywhere in the text; 1.0 is the paper's "
                    "(set for Gemma Scope's activation scale); q<NN> is that quantile of the nonzero pooled codes "
                    "of each probe's training texts, so it means the same on every SAE."],
                tables=[("Threshold sweep", rows(["binarize"]))]),
    ]
    if not by_depth.empty:
        sections[0].figures.append((
            f"Test macro F1 against relative depth (block / the model's blocks): mean over splits, whiskers at the "
            f"{INTERVALS['resamples']}.", figures.lines(by_depth, "depth", ["model", "features"],
                                                         "relative depth", "Macro F1 by relative depth")))
    sections[1].figures.append(differences(["width", "pooling"], "Width and pooling"))
    sections[2].figures.append(differences(["binarize"], "Binarization threshold"))
    return sections


def _cost_section(inputs: RunInputs) -> Section:
    """Where the run's time went: per stage and per stage instance (metrics/cost)."""
    section = Section("cost", "Cost of this run", [
        "Each stage instance's wall time (start-up, i.e. the interpreter and imports, included), CPU seconds "
        "(its own and its children's, on every core), peak memory, the work it did and, for a model-bound step, "
        "its tokens per second and the fraction of this machine's fp32 matmul rate it reached (measured once per "
        "machine). Load: the 1-minute load average at the start and the end. Stages that DVC skipped keep the "
        "cost of the run that made their outputs."])
    if not inputs.cost:
        section.paragraphs.append("No stage recorded its cost yet (metrics/cost is empty).")
        return section
    table = tables.cost_table(inputs.cost)
    by_stage = tables.cost_by_stage(table)
    section.paragraphs.append(f"Total: {table['wall_s'].sum():,.0f} s wall, of which {table['startup_s'].sum():,.0f} s "
                              f"start-up, over {len(table)} stage instances.")
    section.paragraphs.append(tables.cost_machines(inputs.cost))
    section.figures.append(("Wall seconds per stage.", figures.time_bars(by_stage, "Where the time goes")))
    section.tables += [("Per stage", by_stage), ("Per stage instance", table)]
    return section


def build_sections(inputs: RunInputs, sweeps: pd.DataFrame) -> list[Section]:
    """Every section of the report; `sweeps` is `study.study_table` of the run (empty for a full grid)."""
    cells = tables.cells_frame(inputs.probes)
    note = _note(cells)
    best = tables.best_config_table(inputs.promotion)
    baselines = tables.baselines_table(cells, inputs.probes)
    paired, gaps = comparisons.with_holm(comparisons.paired_table(cells, inputs.predictions, inputs.labels),
                                         comparisons.detection_gaps(cells, inputs.predictions, inputs.labels))
    paper_profile = inputs.setup["paper_profile"]
    comparison = paper.compare(best, cells, paired, inputs.cross_model, inputs.setup.get("summary", ""),
                               paper_profile, inputs.cross_modal)
    layers, pooling, widths = tables.layer_table(cells), tables.pooling_table(cells), tables.width_table(cells)
    curve = tables.curve_table(inputs.probes)
    quality = tables.sae_quality_table(inputs.sae_quality, inputs.sae_training)
    summary = tables.sae_quality_summary(quality)
    heldout = tables.sae_heldout_table(inputs.sae_training)
    dead_history = tables.dead_history_table(inputs.sae_training)

    def columns(keys: list[str]) -> list[str]:
        return ["dataset", "model", *keys, "cell", *tables.F1, *tables.SAFETY, "val_macro_f1", "resamples"]

    sections = [
        _setup_section(inputs),
        *study_sections(inputs, cells, sweeps, gaps),
        Section("best", "Best configuration per dataset",
                ["The probe `promote` registered as challenger (best validation macro F1 over every model and SAE "
                 "cell), its test scores, and what it was compared with; champion is the registered version that "
                 "passed the gates."],
                tables=[("Best SAE probe per dataset", with_interval(best))]),
        Section("paper", "This run beside the paper",
                ["Paper values are those Gallifant et al. (EMNLP 2025, arXiv 2502.11367) report. 'This run' "
                 "names the models and data that produced each of our numbers; they are not the paper's, so a "
                 "verdict says whether the claim's shape holds here, not whether a number matches. Whether SAE "
                 "features beat a baseline is decided by the paired comparisons below, not by means.",
                 "Where this profile lacks a claim's data, the verdict says whether the paper profile has it, "
                 f"read from the file: {paper_profile.sentence()}"],
                tables=[("Paper numbers and this run's counterparts", comparison)]),
        _comparisons_section(paired, gaps),
        Section("layers", "Macro F1 by layer",
                ["Per layer, the best SAE cell (over width, pooling and binarization) and the best hidden-state "
                 "probe (last or mean token), each chosen on validation."],
                tables=[("By layer", with_interval(layers[columns(["features", "layer"])]))],
                figures=[(note, figures.lines(layers, "layer", ["model", "features"],
                                              "layer (blocks.L.hook_resid_post)", "Macro F1 by layer"))]),
        Section("pooling", "Pooling x binarization",
                ["Per pooling and binarization threshold, the best SAE cell over layers and widths (validation)."],
                tables=[("Pooling x binarization", with_interval(pooling[columns(["pooling", "binarize"])]))],
                figures=[(note, figures.forest(pooling.assign(bin="bin " + pooling["binarize"]),
                                               ["model", "pooling", "bin"], "Pooling x binarization"))]),
        Section("width", "SAE width",
                ["Per SAE width, the best cell over layers, poolings and binarization (validation)."
                 + (" This run has one width only, so the figure shows no width effect." if
                    widths["width"].nunique() == 1 else "")],
                tables=[("By SAE width", with_interval(widths[columns(["width", "layer"])]))],
                figures=[(note, figures.forest(widths, ["model", "width"], "SAE width"))]),
        Section("baselines", "SAE against hidden-state and TF-IDF baselines",
                ["The best SAE probe and the best last-token and mean-pooled hidden-state probes (validation), the "
                 "decision tree and top-k latent selection on the best SAE cell, and TF-IDF (whole text and the "
                 "model's truncated text) and majority baselines, all on the same splits."],
                tables=[("Baselines", with_interval(baselines))],
                figures=[(note, figures.forest(baselines, ["model", "method"], "SAE against baselines"))]),
        Section("curve", "Training-size curve",
                ["The best SAE cell of each (dataset, model) refitted on growing stratified subsets of each split's "
                 "training part (nested within a split) and scored on that split's whole test part."],
                tables=[("Training-size curve", with_interval(curve))],
                figures=[(f"Test macro F1 against training rows: mean over the splits, whiskers at the "
                          f"{INTERVALS['resamples']}.",
                          figures.lines(curve, "train_rows", ["model"], "training rows", "Training-size curve"))]),
        Section("relied-on", "What each registered probe relies on",
                ["The ten latents each dataset's registered probe weighs most (its coefficient on the scaled input: "
                 "the change of the logit toward the positive class when the latent goes from off to its largest "
                 "training value), with their cards (latent_cards): a label made of the tokens the latent fires on "
                 "most characteristically, its density on the card texts, and its strongest context, peak token in "
                 "guillemets. `saefs serve` returns a whole card at /latents/{model}/{sae}/{id}.",
                 "The shortcut audit (features/core/shortcuts.py) flags latents that fire on a text's surface rather "
                 "than its content: most of their context peaks are punctuation, numbers, URL parts, mentions, "
                 "words in capitals, whitespace or markup; they are dense and the probe sums them (length); their "
                 "top contexts repeat one template (boilerplate); or, in the probe's training texts, they are on in "
                 "most of one class's texts and almost never in another's (a class marker, such as a token planted "
                 "in one class). It weighs them by the probe's absolute weights over every latent it weighs."],
                tables=[("Most weighted latents per registered probe", tables.relied_on_table(inputs.promotion)),
                        ("Shortcut audit: share of each registered probe's weight on flagged latents",
                         tables.shortcut_table(inputs.promotion)),
                        ("Flagged latents, most weighted first, and why",
                         tables.shortcut_latents_table(inputs.promotion))]),
        *_transfer_sections(inputs),
        Section("lodo", "Leave one dataset out",
                ["Each dataset of lodo.datasets (label 1 means the same harm in all of them) is held out in turn: "
                 "the same probe is trained on the other datasets' training texts and on the held-out dataset's "
                 "own, and both are scored on its test texts. The gap is in-split minus held-out macro F1 (paired "
                 "bootstrap over those texts, Holm over the table): how much an in-split score overstates a monitor "
                 "meeting data collected another way. No text of the held-out dataset is trained on, compared by "
                 "text, not by id.",
                 "A large positive gap says: do not trust this probe's in-split score on a new source; retrain or "
                 "calibrate on it. A gap near zero with a held-out score near the in-split one says the feature set "
                 "carries the harm, not the dataset. Low overlap of the top latents across folds says the SAE probe "
                 "leans on what each training mix happens to share."],
                tables=[("In-split against held-out", tables.lodo_table(inputs.lodo)),
                        ("Overlap of the SAE probes' most weighted latents", tables.lodo_overlap_table(inputs.lodo))]),
        _cross_modal_section(inputs),
        Section("sae-quality", "SAE quality per layer and width",
                ["Each SAE on held-out corpus tokens (train_sae), as the field measures SAEs: fraction of variance "
                 "explained, L0, dead latents (silent on every held-out token) and dense ones (firing on over 10% "
                 "of them), and loss recovered: the model's next-token loss with the SAE's reconstruction spliced in "
                 "at its layer, placed between the clean loss (1) and the loss with the layer zero-ablated (0). "
                 "check_sae gates on them. window_dead_at_end is the share of latents the trainer's own window "
                 "(the last dead_window_tokens of training) counted dead at its last step: the latents AuxK still "
                 "saw; a held-out dead share well above it means latents fell silent late, or are too rare for "
                 "the held-out tokens.",
                 f"Then the same activation figures on every dataset's tokens (extract). SAE training seed "
                 f"{inputs.setup.get('sae_seed', '?')}, one SAE per (layer, width): the whiskers span the datasets."],
                tables=[("Per SAE on held-out corpus tokens", heldout), ("Per SAE, over datasets", summary),
                        ("Per SAE and dataset", quality)],
                figures=[("Variance explained and loss recovered per SAE on held-out corpus tokens.",
                          figures.heldout_bars(heldout, "SAE quality on held-out corpus tokens")),
                         *([("Dead latents in each trainer's window over training: the latents that AuxK sees and "
                             "revives. A held-out dead share above the line's end means latents stopped firing in "
                             "the final decay, within the last window, unseen by it.",
                             figures.dead_history_lines(dead_history, heldout, "Dead latents during training"))]
                           if len(dead_history) else []),
                         ("Variance explained per SAE: mean over datasets, whiskers at min and max.",
                          figures.quality_bars(summary, "SAE variance explained"))]),
        _cost_section(inputs),
    ]
    for section in sections:
        section.tables = [(caption, _rounded(table)) for caption, table in section.tables]
    return sections
