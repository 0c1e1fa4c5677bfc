"""The report's figures as inline SVG text: F1 with 95% whiskers per dataset panel, paired differences, curves,
heatmaps.

SVGs are written without a date and with a fixed id salt, so an unchanged table gives a
byte-identical figure and DVC sees no change.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # no display: the figures are strings in a file
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

STYLE = {"svg.hashsalt": "saefs", "svg.fonttype": "none", "font.size": 8, "axes.titlesize": 9}


def to_svg(fig: plt.Figure) -> str:
    buffer = io.StringIO()
    with plt.rc_context(STYLE):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG sits inside HTML


def _panels(n: int, width: float, height: float, sharex: bool = True) -> tuple[plt.Figure, list[plt.Axes]]:
    """A grid of n panels, two per row, laid out so labels never overlap the next panel."""
    ncols = min(n, 2)
    nrows = -(-n // ncols)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), sharex=sharex,
                                 squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _legend(fig: plt.Figure, axes: list[plt.Axes]) -> None:
    """One legend under the panels, with every series any panel drew."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=4, fontsize=7)


def _whiskers(frame: pd.DataFrame) -> np.ndarray:
    return np.vstack([frame["macro_f1"] - frame["macro_f1_low"], frame["macro_f1_high"] - frame["macro_f1"]])


def _rows_per_dataset(table: pd.DataFrame, label: list[str], title: str, xlabel: str,
                      draw: Callable[[plt.Axes, pd.DataFrame, np.ndarray], None]) -> str:
    """One panel per dataset, a row per line of `table` labelled by its `label` columns; `draw` plots a panel."""
    datasets = sorted(table["dataset"].unique())
    rows = max(table.groupby("dataset").size())
    fig, axes = _panels(len(datasets), 4.8, 0.7 + 0.2 * rows)
    for ax, dataset in zip(axes, datasets, strict=True):
        part = table[table["dataset"] == dataset].reset_index(drop=True)
        y = np.arange(len(part))
        draw(ax, part, y)
        ax.set_yticks(y, [" ".join(str(part.loc[i, c]) for c in label) for i in y])
        ax.invert_yaxis()
        ax.set_title(dataset)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return to_svg(fig)


def forest(table: pd.DataFrame, label: list[str], title: str) -> str:
    """One panel per dataset: a dot per row of `table` at its test macro F1, whiskers at its 95% interval."""
    def draw(ax: plt.Axes, part: pd.DataFrame, y: np.ndarray) -> None:
        ax.errorbar(part["macro_f1"], y, xerr=_whiskers(part).clip(min=0), fmt="o", ms=3, capsize=2)

    return _rows_per_dataset(table, label, title, "test macro F1", draw)


def differences(table: pd.DataFrame, label: list[str], title: str, xlabel: str, called: float) -> str:
    """One panel per dataset: a paired difference per row (`difference`, 95% `low`/`high`), a line at zero;
    a filled dot where the Holm-corrected p-value is below `called`."""
    def draw(ax: plt.Axes, part: pd.DataFrame, y: np.ndarray) -> None:
        whiskers = np.vstack([part["difference"] - part["low"], part["high"] - part["difference"]]).clip(min=0)
        ax.errorbar(part["difference"], y, xerr=whiskers, fmt="none", capsize=2, ecolor="0.4")
        significant = (part["p_holm"] < called).to_numpy()
        ax.scatter(part["difference"], y, s=12, c=np.where(significant, "C3", "white"), edgecolors="C3", zorder=3)
        ax.axvline(0, color="0.5", linewidth=0.8)

    return _rows_per_dataset(table.dropna(subset=["difference"]), label, title, xlabel, draw)


def lines(table: pd.DataFrame, x: str, series: list[str], xlabel: str, title: str) -> str:
    """One panel per dataset: macro F1 against `x`, a line per `series` value; 95% whiskers where the table
    has intervals; hidden-state series dashed."""
    datasets = sorted(table["dataset"].unique())
    fig, axes = _panels(len(datasets), 3.6, 2.4, sharex=False)
    for ax, dataset in zip(axes, datasets, strict=True):
        for keys, line in table[table["dataset"] == dataset].groupby(series, sort=True):
            line = line.sort_values(x)
            whiskers = _whiskers(line).clip(min=0) if "macro_f1_low" in line else None
            ax.errorbar(line[x], line["macro_f1"], yerr=whiskers, marker="o", ms=3, capsize=2,
                        linestyle="--" if "hidden" in keys else "-", label=" ".join(map(str, keys)))
        ax.set_title(dataset)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test macro F1")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    fig.suptitle(title, fontsize=10)
    return to_svg(fig)


def heatmap_figure(table: pd.DataFrame, rows: str | list[str], columns: str, title: str) -> plt.Figure:
    """A matrix of macro F1 (rows x columns), each cell annotated with its value and 95% interval."""
    values = table.pivot(index=rows, columns=columns, values="macro_f1")
    low = table.pivot(index=rows, columns=columns, values="macro_f1_low").reindex_like(values)
    high = table.pivot(index=rows, columns=columns, values="macro_f1_high").reindex_like(values)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(1.4 + 1.3 * values.shape[1], 0.8 + 0.5 * values.shape[0]), layout="constrained")
    image = ax.imshow(values.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
    for i, j in np.ndindex(values.shape):
        value = values.iat[i, j]
        text = "skipped" if np.isnan(value) else f"{value:.2f}\n[{low.iat[i, j]:.2f}, {high.iat[i, j]:.2f}]"
        ax.text(j, i, text, ha="center", va="center", fontsize=6, color="white" if value < 0.6 else "black")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in values.columns], rotation=30, ha="right")
    ax.set_yticks(range(values.shape[0]), [" / ".join(map(str, r)) if isinstance(r, tuple) else str(r)
                                           for r in values.index])
    ax.set_xlabel(columns)
    ax.set_ylabel(rows if isinstance(rows, str) else " / ".join(rows))
    fig.colorbar(image, ax=ax, label="macro F1")
    ax.set_title(title)
    return fig


def heatmap(table: pd.DataFrame, rows: str | list[str], columns: str, title: str) -> str:
    """`heatmap_figure` as inline SVG text."""
    return to_svg(heatmap_figure(table, rows, columns, title))


def quality_bars(summary: pd.DataFrame, title: str) -> str:
    """Fraction of variance explained per SAE: mean over datasets, whiskers at the min and max."""
    labels = summary["model"] + " L" + summary["layer"].astype(str) + " " + summary["width"]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.5, 0.6 + 0.3 * len(summary)), layout="constrained")
    y = np.arange(len(summary))
    err = np.vstack([summary["fve"] - summary["fve_min"], summary["fve_max"] - summary["fve"]])
    ax.barh(y, summary["fve"], xerr=err, capsize=2)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of variance explained (range over datasets)")
    ax.set_title(title)
    return to_svg(fig)


def heldout_bars(heldout: pd.DataFrame, title: str) -> str:
    """Variance explained and loss recovered per SAE side by side, with its dead-latent share in the label."""
    labels = (heldout["model"] + " L" + heldout["layer"].astype(str) + " " + heldout["width"] + " ("
              + (100 * heldout["dead_fraction"]).round().astype(int).astype(str) + "% dead)")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5, 0.8 + 0.45 * len(heldout)), layout="constrained")
    y = np.arange(len(heldout))
    ax.barh(y - 0.2, heldout["fve"], height=0.4, label="variance explained")
    ax.barh(y + 0.2, heldout["loss_recovered"], height=0.4, label="loss recovered")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction (held-out corpus tokens)")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title)
    return to_svg(fig)


def dead_history_lines(history: pd.DataFrame, heldout: pd.DataFrame, title: str) -> str:
    """Each trained SAE's dead-latent window over training (fraction of its width), the decay's start dotted, its
    held-out dead fraction in the legend: latents that die in the decay show as a held-out share above the line's
    end."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 3.2), layout="constrained")
    dead = heldout.set_index(["model", "layer", "width"])["dead_fraction"]
    for (model, layer, width), part in history.groupby(["model", "layer", "width"], sort=True):
        ax.plot(part["progress"], 100 * part["dead_fraction"], linewidth=1,
                label=f"{model} L{layer} {width} (held-out dead {100 * dead[model, layer, width]:.1f}%)")
    for start in history["decay_from"].unique():
        ax.axvline(start, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of training steps (dotted: learning-rate decay starts)")
    ax.set_ylabel("% latents dead in the window")
    ax.legend(fontsize="x-small")
    ax.set_title(title)
    return to_svg(fig)


def time_bars(by_stage: pd.DataFrame, title: str) -> str:
    """Wall seconds per stage, its start-up (interpreter and imports) part darker."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.5, 0.6 + 0.3 * len(by_stage)), layout="constrained")
    y = np.arange(len(by_stage))
    ax.barh(y, by_stage["wall_s"], label="wall")
    ax.barh(y, by_stage["startup_s"], label="of which start-up")
    ax.set_yticks(y, by_stage["stage"])
    ax.invert_yaxis()
    ax.set_xlabel("seconds (summed over the stage's instances)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return to_svg(fig)
