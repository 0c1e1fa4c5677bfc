"""Stage prepare_data: load one configured dataset from its source into the prepared schema."""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict

from features.core.prepare import DatasetConfig, PrepareConfig, prepare
from features.sources.datasets import load_source
from features.stores.files import write_json, write_parquet
from pipelines import cost, paths, stage_main
from pipelines.params import load_params

log = logging.getLogger("saefs.prepare_data")


def run(name: str) -> None:
    params = load_params()
    ds, common = params.dataset(name), params.prepare_data
    raw = load_source(ds.source, text_field=ds.text_field, label_field=ds.label_field,
                      lang_field=ds.lang_field, split=ds.split, encoding=ds.encoding)
    log.info("%s: read %d rows from %s", name, len(raw), ds.source)
    cfg = PrepareConfig(name=name, max_chars=params.validate_data.max_chars, **common.model_dump(),
                        **ds.model_dump(include=set(DatasetConfig.model_fields)))
    df, summary = prepare(raw, cfg)
    write_parquet(paths.prepared(name), df)
    write_json(paths.prepare_summary(name), {"rows": len(df), **asdict(summary)})
    cost.work(rows_read=len(raw), texts=len(df))
    log.info("%s: wrote %d rows to %s (%s)", name, len(df), paths.prepared(name), summary.counts)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="dataset", help="a key of `datasets` in params.yaml")


if __name__ == "__main__":
    sys.exit(main())
