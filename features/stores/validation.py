"""Gate a prepared dataset (features.core.schema) with a Great Expectations 1.x suite.

Pure: it knows nothing of repo paths; the caller passes the frame and the rules, and gets every
check's outcome back (features/reporting/validation_page.py renders them as a page that works offline;
GX's own Data Docs load their scripts from CDNs).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from features.core.schema import PREPARED_COLUMNS, SPLITS

GX_LOGGER = "great_expectations"


def _quiet_gx() -> None:
    """Keep GX's warnings, not its ~200 INFO lines per run (one per documented API at import). Its
    data_context.types.base sets its own logger to INFO on import, so this runs again after importing GX."""
    for name in (GX_LOGGER, f"{GX_LOGGER}.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)


_quiet_gx()  # before any GX import: every one in saefs is a lazy import below

# Derived columns added to the validated copy: GX has no "strip then measure", no group-by count
# and no "fraction of rows equal to x" expectation, so these turn them into plain column checks.
TEXT_CHARS = "text_chars"  # len(text.strip()); NaN when null/blank so only the emptiness checks see those
CLASS_ROWS = "class_rows"  # rows of this row's class; NaN for labels outside the set (caught elsewhere)
IS_TEST = "is_test"  # 1.0 test / 0.0 train / NaN otherwise, so its mean is the test fraction


@dataclass(frozen=True)
class ValidationRules:
    labels: tuple[int, ...]  # the allowed int labels (0..K-1)
    min_class_count: int  # every class at least this many rows (whole dataset)
    test_size: float  # expected fraction of rows with split == "test"
    split_tolerance: float  # allowed absolute deviation of that fraction
    min_chars: int  # text length bounds (after stripping)
    max_chars: int


@dataclass
class Failure:
    expectation: str  # human-readable name, e.g. "text is not empty after stripping"
    gx_type: str  # GX expectation type, e.g. "expect_column_values_to_match_regex"
    column: str | None
    unexpected_count: int
    detail: str  # short, e.g. "3 of 1000 rows" or "class 1 has 4 rows, needs >= 20"


@dataclass
class Check:
    """One expectation's outcome, as the validation page shows it."""

    expectation: str
    gx_type: str
    column: str | None
    success: bool
    detail: str  # what broke (a Failure's detail), or what GX observed where it passed
    failing_rows: list[int]  # index labels of the rows GX sampled as unexpected (at most 20)


@dataclass
class ValidationReport:
    dataset: str
    success: bool
    n_rows: int
    failures: list[Failure]
    results: dict = field(repr=False)  # GX's describe_dict() of the run, JSON-serialisable
    checks: list[Check] = field(default_factory=list)
    subject: str = "dataset"  # what was validated, for the message
    hint: str = "Fix the source or its params (prepare_data) and rerun."

    @property
    def n_expectations(self) -> int:
        return int(self.results.get("statistics", {}).get("evaluated_expectations", 0))

    def message(self) -> str:
        if self.success:
            passed = f"passed all {self.n_expectations} expectations ({self.n_rows} rows)"
            return f"{self.subject} '{self.dataset}' {passed}."
        broken = "; ".join(f"{f.expectation} ({f.detail})" for f in self.failures)
        return (
            f"{self.subject} '{self.dataset}' failed {len(self.failures)} of {self.n_expectations} expectations: "
            f"{broken}. {self.hint}"
        )

    def to_dict(self) -> dict:
        return asdict(self) | {"n_expectations": self.n_expectations, "message": self.message()}


def _derived(df: pd.DataFrame, rules: ValidationRules) -> pd.DataFrame:
    """A copy of `df` with the derived columns that exist for the columns it has."""
    out = df.copy()
    if "text" in df:
        # -1 for a non-string value (GX's regex would stringify it and pass), so the length check fails it
        chars = df["text"].astype(object).map(lambda s: len(s.strip()) if isinstance(s, str) else -1)
        out[TEXT_CHARS] = chars.astype(float).where(df["text"].notna() & (chars != 0))
    if "label" in df:
        counts = df["label"].value_counts()
        allowed = df["label"].isin(rules.labels)
        out[CLASS_ROWS] = df["label"].map(counts).where(allowed).astype(float)
    if "split" in df:
        out[IS_TEST] = df["split"].astype(object).map({"test": 1.0, "train": 0.0}).astype(float)
    return out


def _suite_spec(rules: ValidationRules, columns: set[str]) -> list[Any]:
    """The GX expectations, named by `description`; checks on a missing column are left to the column-set one."""
    import great_expectations.expectations as gxe

    lo = round(max(0.0, rules.test_size - rules.split_tolerance), 10)  # round: 0.2-0.05 != 0.15 in floats
    hi = round(min(1.0, rules.test_size + rules.split_tolerance), 10)
    labels = [int(x) for x in rules.labels]
    spec: list[tuple[str, str, Any]] = [
        (
            "the schema columns exist",
            "",
            gxe.ExpectTableColumnsToMatchSet(column_set=list(PREPARED_COLUMNS), exact_match=False),
        ),
        ("text_id is not null", "text_id", gxe.ExpectColumnValuesToNotBeNull(column="text_id")),
        ("text_id is unique", "text_id", gxe.ExpectColumnValuesToBeUnique(column="text_id")),
        ("text is not null", "text", gxe.ExpectColumnValuesToNotBeNull(column="text")),
        ("text is not empty after stripping", "text", gxe.ExpectColumnValuesToMatchRegex(column="text", regex=r"\S")),
        (
            f"stripped text has {rules.min_chars}..{rules.max_chars} chars",
            "text",
            gxe.ExpectColumnValuesToBeBetween(column=TEXT_CHARS, min_value=rules.min_chars, max_value=rules.max_chars),
        ),
        ("label is not null", "label", gxe.ExpectColumnValuesToNotBeNull(column="label")),
        (f"label is in {labels}", "label", gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels)),
        ("every class occurs", "label", gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=labels)),
        (
            f"every class has >= {rules.min_class_count} rows",
            "label",
            gxe.ExpectColumnValuesToBeBetween(column=CLASS_ROWS, min_value=rules.min_class_count),
        ),
        ("split is not null", "split", gxe.ExpectColumnValuesToNotBeNull(column="split")),
        (
            f"split is in {list(SPLITS)}",
            "split",
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        ),
        (
            f"test fraction is {rules.test_size} ± {rules.split_tolerance}",
            "split",
            gxe.ExpectColumnMeanToBeBetween(column=IS_TEST, min_value=lo, max_value=hi),
        ),
        ("lang is not null", "lang", gxe.ExpectColumnValuesToNotBeNull(column="lang")),
    ]
    out = []
    for name, needs, exp in spec:
        if needs and needs not in columns:
            continue
        exp.description = name  # how results are mapped back to names
        out.append(exp)
    return out


def _exception_message(res: Any) -> str | None:
    """First error GX caught while computing the metrics (1.x keys them by metric id), if any."""
    info: dict = res.exception_info or {}
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for i in infos:
        if i.get("raised_exception"):
            return (str(i.get("exception_message") or "error").splitlines() or ["error"])[0][:200]
    return None


def _failure(res: Any, df: pd.DataFrame, rules: ValidationRules) -> Failure:
    """Turn a failed GX result into a Failure whose count and detail say what broke."""
    cfg = res.expectation_config
    name: str = cfg.description or cfg.type
    r: dict = res.result or {}
    column = cfg.kwargs.get("column")
    if exc := _exception_message(res):
        return Failure(name, cfg.type, column, 0, f"GX could not evaluate it: {exc}")
    if cfg.type == "expect_table_columns_to_match_set":
        missing = sorted((r.get("details", {}).get("mismatched") or {}).get("missing", []))
        return Failure(name, cfg.type, None, len(missing), f"missing columns {missing}")
    if column == CLASS_ROWS:
        counts = df["label"].value_counts()
        small = [
            f"class {k} has {counts[k]} rows" for k in rules.labels if 0 < counts.get(k, 0) < rules.min_class_count
        ]
        count = int(r.get("unexpected_count", 0))
        return Failure(name, cfg.type, "label", count, f"{', '.join(small)}, needs >= {rules.min_class_count}")
    if cfg.type == "expect_column_distinct_values_to_contain_set":
        # 1.24 reports observed_value=None with missing_count / partial_missing_list (capped at 20)
        absent = sorted(set(rules.labels) - set(df["label"].dropna().tolist()))
        count = int(r.get("missing_count", len(absent)))
        return Failure(name, cfg.type, column, count, ", ".join(f"class {k} has 0 rows" for k in absent))
    if column == IS_TEST:
        n_split = int(df["split"].isin(SPLITS).sum())  # the mean skips the NaN of other values
        if n_split == 0:
            return Failure(name, cfg.type, "split", 0, "no train/test rows, so no test fraction")
        n_test = int((df["split"] == "test").sum())
        lo, hi = cfg.kwargs["min_value"] * n_split, cfg.kwargs["max_value"] * n_split
        off = max(1, math.ceil(lo - n_test - 1e-9), math.ceil(n_test - hi - 1e-9))  # test rows beyond the band
        return Failure(
            name,
            cfg.type,
            "split",
            off,
            f"observed {n_test / n_split:.3f}: {n_test} of {n_split} rows are test, {off} outside the band",
        )
    count = int(r.get("unexpected_count", 0))
    if column == TEXT_CHARS:
        column = "text"
    return Failure(name, cfg.type, column, count, f"{count} of {len(df)} rows")


def _run_suite(frame: pd.DataFrame, expectations: list[Any], name: str) -> Any:
    """Run `expectations` on `frame` in an ephemeral GX context (in-memory stores: nothing left behind)."""
    import great_expectations as gx  # lazy: the import costs seconds; the dataclasses above don't need it
    from great_expectations.data_context.types.base import ProgressBarsConfig

    _quiet_gx()
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # no "Calculating Metrics" bars
    suite = ctx.suites.add(gx.ExpectationSuite(name=name))
    for exp in expectations:
        suite.add_expectation(exp)
    batch = ctx.data_sources.add_pandas("pandas").add_dataframe_asset(name=name)
    whole = batch.add_batch_definition_whole_dataframe("all")
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{name}_vd", data=whole, suite=suite))
    cp = ctx.checkpoints.add(gx.Checkpoint(name=f"{name}_gate", validation_definitions=[vd]))
    return next(iter(cp.run(batch_parameters={"dataframe": frame}).run_results.values()))


def _check(res: Any, failure: Failure | None) -> Check:
    cfg, r = res.expectation_config, res.result or {}
    if failure is not None:
        detail = failure.detail
    elif "unexpected_count" in r:
        detail = f"{r['unexpected_count']} of {r.get('element_count', '?')} rows unexpected"
    else:
        observed = r.get("observed_value")
        detail = "passed" if observed is None else f"observed {observed}"
    column = cfg.kwargs.get("column")
    return Check(cfg.description or cfg.type, cfg.type, "text" if column == TEXT_CHARS else column,
                 bool(res.success), detail, [int(i) for i in r.get("partial_unexpected_index_list") or []])


def validate_prepared(df: pd.DataFrame, rules: ValidationRules, dataset: str) -> ValidationReport:
    """Run the prepared-data suite on `df`: each check's outcome, and what broke."""
    result = _run_suite(_derived(df, rules), _suite_spec(rules, set(df.columns)), dataset)
    failures = {id(res): _failure(res, df, rules) for res in result.results if not res.success}
    return ValidationReport(
        dataset=dataset,
        success=bool(result.success),
        n_rows=len(df),
        failures=list(failures.values()),
        results=result.describe_dict(),
        checks=[_check(res, failures.get(id(res))) for res in result.results],
    )


@dataclass(frozen=True)
class SaeQualityRules:
    min_fve: float
    max_dead_fraction: float | None = None
    max_dense_fraction: float | None = None
    min_loss_recovered: float | None = None
    max_l0: float | None = None


def validate_sae_quality(quality: pd.DataFrame, rules: SaeQualityRules, name: str) -> ValidationReport:
    """Gate SAE quality rows (`sae`, `fve`, `l0`, and where measured `dead_fraction`, `dense_fraction`,
    `loss_recovered`; a missing figure is not checked): an SAE that does not fit its activations (a wrong
    layer or model) explains little variance and loses the model's loss, a poorly trained one has dead or
    dense latents."""
    import great_expectations.expectations as gxe

    checks = [
        (f"variance explained >= {rules.min_fve}", "fve", {"min_value": rules.min_fve}),
        (f"dead latents <= {rules.max_dead_fraction}", "dead_fraction", {"max_value": rules.max_dead_fraction}),
        (f"dense latents <= {rules.max_dense_fraction}", "dense_fraction", {"max_value": rules.max_dense_fraction}),
        (f"loss recovered >= {rules.min_loss_recovered}", "loss_recovered", {"min_value": rules.min_loss_recovered}),
        (f"L0 <= {rules.max_l0}", "l0", {"max_value": rules.max_l0}),
    ]
    expectations = []
    for description, column, bounds in checks:
        if None in bounds.values() or column not in quality:
            continue
        exp = gxe.ExpectColumnValuesToBeBetween(column=column, **bounds)
        exp.description = description
        expectations.append(exp)
    result = _run_suite(quality, expectations, name)
    failures = []
    for res in result.results:
        if res.success:
            continue
        cfg = res.expectation_config
        lo, hi = cfg.kwargs.get("min_value"), cfg.kwargs.get("max_value")
        values = quality[cfg.kwargs["column"]]
        bad = quality[((values < lo) if lo is not None else False) | ((values > hi) if hi is not None else False)]
        detail = ", ".join(f"{row.sae} has {row[cfg.kwargs['column']]:.3f}" for _, row in bad.iterrows())
        failures.append(Failure(cfg.description, cfg.type, cfg.kwargs["column"], len(bad), detail))
    return ValidationReport(
        name, bool(result.success), len(quality), failures, result.describe_dict(), subject="SAEs of",
        hint="Check that each SAE belongs to this model and layer, or train it longer (train_sae).",
    )
