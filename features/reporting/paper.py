"""The paper's numbers (Gallifant et al., EMNLP 2025, arXiv 2502.11367, and its MOSAIC code) set beside this run's.

Each claim this run can speak to gets this run's figure, the models and data that produced it,
and a plain verdict (whether SAE features beat a baseline is read from the paired comparisons, not
from means); claims on datasets or modalities the run does not have say so instead of borrowing a
number from a different task, and say whether the paper profile has them, read from that profile
itself (the datasets, behaviour tasks and cross-lingual tasks it names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from features.reporting.comparisons import CALLED
from features.reporting.report import best_by, cross_modal_calls


@dataclass(frozen=True)
class PaperNumber:
    number: int
    quantity: str
    value: str
    setup: str  # the paper's models and data behind the value
    about: tuple[str, ...] = ()  # words naming its data, matched against the paper profile's names


GEMMA2 = "Gemma 2 2B/9B, Gemma Scope JumpReLU SAEs (16k-1m)"
PAPER_NUMBERS = (
    PaperNumber(1, "SAE features, best macro F1", "> 0.8", f"{GEMMA2}; safety text tasks [abstract]"),
    PaperNumber(2, "binarized sum pooling, middle layers", "> 0.85", f"{GEMMA2}; several benchmarks [TL;DR]"),
    PaperNumber(3, "SAE beats hidden-state and bag-of-words baselines", "qualitative", f"{GEMMA2} [abstract]"),
    PaperNumber(4, "binarized >= non-binarized", "qualitative", f"{GEMMA2} [abstract]"),
    PaperNumber(5, "best mean configuration over datasets", "bin 1.0 + sum + L12 + 16k: 0.802 ± 0.143",
                "Gemma 2 2B/9B, mean ± sd over the repo's datasets [MOSAIC results]"),
    PaperNumber(6, "reject_prompts / jailbreak / election, best SAE", "1.00 / 1.00 / 1.00", f"{GEMMA2} [MOSAIC]",
                ("reject", "jailbreak", "election")),
    PaperNumber(7, "toxicity, best SAE (hidden)", "0.972 (0.966)",
                "textdetox multilingual toxicity, pooled languages, Gemma 2 [MOSAIC]", ("toxic",)),
    PaperNumber(8, "translated toxicity", "0.970", "AIM-Harvard English MT of textdetox [MOSAIC]",
                ("translated",)),
    PaperNumber(9, "banking77 / massive-scenario / massive-intent", "0.916 / 0.906 / 0.831", f"{GEMMA2} [MOSAIC]",
                ("banking", "massive")),
    PaperNumber(10, "tweet sentiment multilingual / stance abortion", "0.857 / 0.778", f"{GEMMA2} [MOSAIC]",
                ("sentiment", "stance")),
    PaperNumber(11, "9B-IT NQ-Swap correctness", "0.871", "Gemma 2 features, 9B-IT behaviour labels [MOSAIC]",
                ("nq_swap", "nqswap")),
    PaperNumber(12, "PubMedQA correctness 2B / 9B / 9B-IT targets, SAE (hidden)",
                "0.713 / 0.675 / 0.631 (0.85 / 0.85 / 0.77)", "Gemma 2 2B features [MOSAIC]", ("pubmed",)),
    PaperNumber(13, "vision-tower baselines flowers / food / CIFAR-100", "0.98 / 0.98 / 0.79", "PaliGemma 2 [MOSAIC]",
                ("flowers", "food", "cifar")),
    PaperNumber(14, "election_questions 2B L12 16k, SAE vs hidden", "0.990 vs 0.976", "Gemma 2 2B [MOSAIC notebook]",
                ("election",)),
)
TOXICITY_WORDS = ("toxic", "hate", "offensive")


@dataclass(frozen=True)
class Profile:
    """What a profile file holds, for every sentence the report says about it."""

    path: str
    names: Mapping[str, Sequence[str]]  # kind (dataset, behaviour task, cross-lingual task, image set) -> names
    saes: Mapping[str, tuple[Sequence[int], Sequence[str]]]  # model -> its SAEs' (layers, widths)
    languages: Mapping[str, Sequence[str]]  # cross-lingual task -> its languages

    def sentence(self) -> str:
        """Every model with its SAE layers and widths, then every name by kind (a cross-lingual task with its
        languages)."""
        models = ", ".join(f"{model} (SAE layers {', '.join(map(str, layers))}; widths {', '.join(widths)})"
                           for model, (layers, widths) in self.saes.items())
        held = "; ".join(f"{kind}s {_list([self._named(name) for name in names])}"
                         for kind, names in self.names.items())
        return f"{self.path} holds models {models}; {held}."

    def _named(self, name: str) -> str:
        return f"{name} ({_list(list(self.languages[name]))})" if name in self.languages else name


def _f(value: float) -> str:
    return f"{value:.3f}"


def _list(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def held_by(number: PaperNumber, profile: Profile) -> list[str]:
    """The names in `profile` (e.g. the paper profile's datasets) that a paper number is about."""
    return [f"{kind} {name}" for kind, names in profile.names.items() for name in names
            if any(word in name.lower() for word in number.about)]


def widest(paired: pd.DataFrame) -> pd.DataFrame:
    """Each dataset's macro F1 comparisons at its widest scope: over every model where it has several, else
    its one model's; only those with a number."""
    rows = paired[(paired["metric"] == "macro_f1") & paired["difference"].notna()]
    pooled = set(rows.loc[rows["scope"] == "dataset", "dataset"])
    return rows[(rows["scope"] == "dataset") | ~rows["dataset"].isin(pooled)]


def called(rows: pd.DataFrame, comparison: str) -> dict[str, int]:
    """Per dataset, the SAE probe against `comparison`: +1 won, -1 lost (Holm p below CALLED), 0 a tie."""
    part = rows[rows["comparison"] == comparison]
    sign = (part["difference"] > 0).astype(int) * 2 - 1
    return dict(zip(part["dataset"], sign.where(part["p_holm"] < CALLED, 0).astype(int), strict=True))


def _beats_baselines(paired: pd.DataFrame) -> tuple[str, str]:
    """Claim 3 on the paired comparisons: the best SAE probe against the last-token hidden state and TF-IDF."""
    rows = widest(paired)
    against = ("last-token hidden", "TF-IDF")
    outcomes = {name: called(rows, name) for name in against}
    datasets = sorted(set.intersection(*(set(o) for o in outcomes.values())))
    if not datasets:
        return "no paired comparison with a number", "needs two or more resamples (train_probes.resamples)"
    value = "; ".join(f"{r.dataset} vs {r.comparison} {r.difference:+.3f} [{r.low:+.3f}, {r.high:+.3f}]"
                      for r in rows[rows["comparison"].isin(against)].sort_values(["dataset", "comparison"])
                      .itertuples())
    won = [d for d in datasets if all(outcomes[name][d] > 0 for name in against)]
    lost = [d for d in datasets if any(outcomes[name][d] < 0 for name in against)]
    return value, (f"SAE above both (paired, Holm p < {CALLED}) on {len(won)} of {len(datasets)} datasets "
                   f"({_list(won)}); below one or both on {len(lost)} ({_list(lost)}); the rest tie")


def compare(best: pd.DataFrame, cells: pd.DataFrame, paired: pd.DataFrame, cross_model: pd.DataFrame | None,
            run_setup: str, paper_profile: Profile,
            cross_modal: Mapping[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per paper number: this run's value, its models and data, and a verdict.

    `best` is report.best_config_table, `cells` report.cells_frame, `paired` comparisons.paired_table with
    `p_holm`; `run_setup` names this run's models, SAEs and data in a few words; `paper_profile` what
    profiles/paper.yaml holds; `cross_modal` the cross_modal stage's metrics per model, where it ran.
    """
    best = best.dropna(subset=["macro_f1"])  # a dataset with no SAE probe has no number to set beside the paper's
    n = len(best)
    below = sorted(best.loc[best["macro_f1"] <= 0.8, "dataset"])
    ours = {1: (", ".join(f"{r.dataset} {_f(r.macro_f1)}" for r in best.itertuples()),
                f"{n - len(below)} of {n} datasets above 0.8 (below: {_list(below)})")}

    sae = cells[(cells["features"] == "sae") & (cells["variant"] == "logreg")]
    bin_sum = best_by(sae[(sae["pooling"] == "sum") & (sae["binarize"] != "none")], ["dataset"])
    ours[2] = (", ".join(f"{r.dataset} {_f(r.macro_f1)} ({r.model} L{r.layer})" for r in bin_sum.itertuples()),
               f"{int((bin_sum['macro_f1'] > 0.85).sum())} of {len(bin_sum)} datasets above 0.85")

    ours[3] = _beats_baselines(paired)

    by_bin = best_by(sae.assign(binarized=sae["binarize"] != "none"), ["dataset", "model", "binarized"])
    pairs = by_bin.pivot_table(index=["dataset", "model"], columns="binarized", values="macro_f1")
    if {True, False} <= set(pairs.columns):
        diff = (pairs[True] - pairs[False]).dropna()
        ours[4] = (f"binarized minus continuous (each chosen on validation): mean {diff.mean():+.3f}",
                   f"binarized >= continuous in {int((diff >= 0).sum())} of {len(diff)} (dataset, model) pairs")

    config = sae.assign(config=sae["model"] + " L" + sae["layer"].astype(str) + " " + sae["width"] + " "
                        + sae["pooling"] + " bin " + sae["binarize"])
    means = config.groupby("config").agg(val=("val_macro_f1", "mean"), test=("macro_f1", "mean"),
                                         sd=("macro_f1", "std"), datasets=("dataset", "count"))
    means = means[means["datasets"] == means["datasets"].max()].sort_values("val", ascending=False)
    top = means.iloc[0]
    ours[5] = (f"{means.index[0]}: {_f(top['test'])} ± {_f(top['sd'])}",
               f"chosen on mean validation F1 over {int(top['datasets'])} datasets")

    toxic = best[best["dataset"].str.contains("|".join(TOXICITY_WORDS))]
    if len(toxic):
        versus = called(widest(paired), "last-token hidden")
        outcome = [versus[d] for d in toxic["dataset"] if d in versus]
        ours[7] = ("; ".join(f"{r.dataset} {_f(r.macro_f1)} (hidden {_f(r.hidden_f1)})" for r in toxic.itertuples()),
                   f"SAE above the last-token hidden state (paired, Holm p < {CALLED}) on {outcome.count(1)} of "
                   f"{len(outcome)}, below on {outcome.count(-1)}; English tweets and prompts, not the multilingual "
                   "textdetox set")

    if cross_model is not None and len(ok := cross_model[cross_model["status"] == "ok"]):
        paired = ok.dropna(subset=["sae_minus_target_hidden_p_holm"])
        lose = paired[(paired["sae_minus_target_hidden"] < 0) & (paired["sae_minus_target_hidden_p_holm"] < CALLED)]
        ours[12] = ("; ".join(f"{r.task} {r.source}→{r.target} {_f(r.macro_f1)} (target's own hidden "
                              f"{_f(r.target_hidden_f1)})" for r in ok.itertuples()),
                    f"the target's own hidden states above the source's SAE (paired, Holm p < {CALLED}) in "
                    f"{len(lose)} of {len(paired)} behaviour-prediction cells")
    image_sets, below, above = cross_modal_calls(cross_modal or {}, CALLED)
    if image_sets:
        ours[13] = ("; ".join(f"{name} {_f(d['vision']['macro_f1'])} (best SAE {_f(sae['macro_f1'])})"
                              for name, d, sae in image_sets),
                    f"the best SAE probe below the vision tower (paired, Holm p < {CALLED}) on {below} of "
                    f"{len(image_sets)} image sets, above on {above}")
    missing = {12: ("not produced yet", "the transfer stage writes plots/transfer/cross_model.csv")}

    def absent(p: PaperNumber) -> tuple[str, str]:
        held = held_by(p, paper_profile)
        return ("no counterpart in this run", f"not in this profile; the paper profile has {', '.join(held)}"
                if held else "neither this profile nor the paper profile has its data")

    rows = []
    for p in PAPER_NUMBERS:
        value, verdict = ours.get(p.number) or missing.get(p.number) or absent(p)
        rows.append({"#": p.number, "quantity": p.quantity, "paper": p.value, "paper setup": p.setup,
                     "this run": value, "this run setup": run_setup if p.number in ours else "", "verdict": verdict})
    return pd.DataFrame(rows)
