"""Stage validate_data: the Great Expectations gate on one prepared dataset.

Writes the full results (JSON), a page of them (every expectation, its result, the rows that broke it;
it opens offline) and a small DVC metric, then fails the stage, naming the dataset, each failed
expectation and how many rows broke it.
"""

from __future__ import annotations

import logging
import sys

import pandas as pd

from features.errors import SaefsError
from features.reporting.validation_page import validation_page
from features.stores.files import atomic_path, write_json
from features.stores.validation import ValidationRules, validate_prepared
from pipelines import cost, paths, stage_main
from pipelines.params import load_params

log = logging.getLogger("saefs.validate_data")


class ValidationFailed(SaefsError):
    """The dataset broke at least one expectation."""


def run(name: str) -> None:
    params = load_params()
    ds, gate = params.dataset(name), params.validate_data
    rules = ValidationRules(
        labels=tuple(range(len(ds.labels))), min_class_count=gate.min_class_count,
        test_size=params.prepare_data.test_size, split_tolerance=gate.split_tolerance,
        min_chars=gate.min_chars, max_chars=gate.max_chars,
    )
    prepared = paths.prepared(name)
    if not prepared.is_file():  # prepare_data failed or never ran: say so, not FileNotFoundError
        raise SaefsError(f"{prepared}: no prepared data for dataset {name!r}; run `dvc repro prepare_data@{name}` "
                         "and fix what it reports, then validate again")
    df = pd.read_parquet(prepared)
    with atomic_path(paths.validation_dir(name)) as out:
        report = validate_prepared(df, rules, dataset=name)
        write_json(out / "results.json", report.to_dict())
        (out / "index.html").write_text(validation_page(report, df), encoding="utf-8")
    write_json(paths.validation_metrics(name), {
        "success": report.success, "rows": report.n_rows, "failed_expectations": len(report.failures),
    })
    log.info("%s: results at %s", name, paths.validation_dir(name) / "index.html")
    cost.work(texts=report.n_rows)
    if not report.success:
        raise ValidationFailed(report.message())
    log.info("%s: all expectations passed on %d rows", name, report.n_rows)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="dataset", help="a key of `datasets` in params.yaml")


if __name__ == "__main__":
    sys.exit(main())
