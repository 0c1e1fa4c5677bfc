"""A data gate's outcome as a page (features/reporting/sections.py): every expectation, whether it held, what GX
observed, and the rows that broke it. It replaces GX's Data Docs, whose scripts and styles come from CDNs and
render blank offline."""

from __future__ import annotations

import pandas as pd

from features.reporting.sections import Section, render
from features.stores.validation import ValidationReport

ROW_COLUMNS = ("text_id", "label", "split", "text")
TEXT_CHARS = 200  # of each failing row's text shown


def validation_sections(report: ValidationReport, frame: pd.DataFrame) -> list[Section]:
    """A summary with one row per expectation, then per broken expectation the rows GX sampled as unexpected."""
    verdict = "passed" if report.success else f"failed {len(report.failures)} of {len(report.checks)}"
    checks = pd.DataFrame([{"expectation": c.expectation, "result": "passed" if c.success else "FAILED",
                            "detail": c.detail, "column": c.column or "", "GX expectation": c.gx_type}
                           for c in report.checks])
    sections = [Section("summary", f"{report.subject} {report.dataset}: {verdict} expectations",
                        [report.message(), f"{report.n_rows} rows validated with Great Expectations."],
                        tables=[("Expectations", checks)])]
    columns = [c for c in ROW_COLUMNS if c in frame]
    for number, check in enumerate(c for c in report.checks if not c.success):
        rows = frame.loc[[i for i in check.failing_rows if i in frame.index], columns]
        if "text" in rows:
            rows = rows.assign(text=rows["text"].map(lambda t: t[:TEXT_CHARS] if isinstance(t, str) else repr(t)))
        shown = f"{len(rows)} of the rows that broke it (GX samples at most 20)" if len(rows) else \
            "GX names no single row for this expectation (it is about the whole table or a column)."
        sections.append(Section(f"failed-{number}", f"FAILED: {check.expectation}", [check.detail, shown],
                                tables=[("Failing rows", rows)] if len(rows) else []))
    return sections


def validation_page(report: ValidationReport, frame: pd.DataFrame) -> str:
    html, _ = render(validation_sections(report, frame), f"Validation: {report.subject} {report.dataset}")
    return html
