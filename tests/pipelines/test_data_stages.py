"""prepare_data and validate_data as stages: run in a scratch folder with their own params.yaml."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from features.core.prepare import PrepareError
from features.errors import SaefsError
from pipelines import paths, prepare_data, validate_data
from tests.helpers import REPO, embedded_params, write_params


def tickets(n: int = 200) -> pd.DataFrame:
    return pd.DataFrame({"body": [f"ticket {i} about thing {i % 7}" for i in range(n)], "y": [i % 2 for i in range(n)]})


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def configure(workdir: Path, frame: pd.DataFrame, **dataset: object) -> None:
    frame.to_csv(workdir / "tickets.csv", index=False)
    spec = {"source": "file:tickets.csv", "text_field": "body", "label_field": "y", "labels": [0, 1], **dataset}
    write_params(workdir, embedded_params(datasets={"tickets": spec}))


def test_good_file_passes_both_stages(workdir: Path) -> None:
    configure(workdir, tickets())
    prepare_data.run("tickets")
    validate_data.run("tickets")
    assert len(pd.read_parquet(paths.prepared("tickets"))) == 200
    assert json.loads(paths.validation_metrics("tickets").read_text())["success"] is True
    assert "passed" in (paths.validation_dir("tickets") / "index.html").read_text()


def test_blank_texts_are_refused_by_prepare_naming_their_rows(workdir: Path) -> None:
    frame = tickets()
    frame.loc[[3, 8, 13], "body"] = ["   ", "\t", " \n "]
    configure(workdir, frame)
    with pytest.raises(PrepareError, match=r"3 of 200 rows have an empty or whitespace-only text: rows 4, 9, 14 "):
        prepare_data.run("tickets")
    assert not paths.prepared("tickets").exists()


def test_a_text_longer_than_the_gates_max_chars_is_refused_by_prepare(workdir: Path) -> None:
    frame = tickets()
    frame.loc[5, "body"] = "x" * 1_000_000
    configure(workdir, frame)
    with pytest.raises(PrepareError, match=r"1 rows have texts longer than validate_data.max_chars \(20000 .*rows 6 "):
        prepare_data.run("tickets")


def test_blank_texts_fail_the_gate_with_a_report(workdir: Path) -> None:
    configure(workdir, tickets())
    prepare_data.run("tickets")
    prepared = pd.read_parquet(paths.prepared("tickets"))  # blanked after prepare, which refuses them
    prepared.loc[[3, 8, 13], "text"] = ["   ", "\t", " \n "]
    prepared.to_parquet(paths.prepared("tickets"), index=False)
    with pytest.raises(validate_data.ValidationFailed, match=r"dataset 'tickets' failed .*empty.*3 of 200 rows"):
        validate_data.run("tickets")
    results = json.loads((paths.validation_dir("tickets") / "results.json").read_text())
    assert results["success"] is False
    assert "FAILED: text is not empty after stripping" in (paths.validation_dir("tickets") / "index.html").read_text()


def test_duplicates_kept_on_request_fail_the_gate(workdir: Path) -> None:
    configure(workdir, pd.concat([tickets(), tickets().head(5)]), dedupe=False)
    prepare_data.run("tickets")
    with pytest.raises(validate_data.ValidationFailed, match=r"text_id is unique \(10 of 205 rows\)"):
        validate_data.run("tickets")


def test_bad_labels_leave_no_output_behind(workdir: Path) -> None:
    frame = tickets()
    frame.loc[0, "y"] = 7
    configure(workdir, frame)
    with pytest.raises(PrepareError, match="labels outside the declared set"):
        prepare_data.run("tickets")
    assert not paths.prepared("tickets").exists()
    assert not list(workdir.rglob("*.tmp"))


def test_validate_without_prepared_data_names_the_file_and_the_command(workdir: Path) -> None:
    configure(workdir, tickets().assign(y=0))  # prepare_data fails on it, so there is nothing to validate
    assert prepare_data.main(["tickets"]) == 2
    expected = r"data/prepared/tickets.parquet: no prepared data .* run `dvc repro prepare_data@tickets`"
    with pytest.raises(SaefsError, match=expected):
        validate_data.run("tickets")
    assert not paths.validation_dir("tickets").exists()


def test_validate_logs_its_own_lines_but_not_great_expectations_info(workdir: Path) -> None:
    configure(workdir, tickets())
    prepare_data.run("tickets")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # a fresh process: GX logs most of its lines on import
    done = subprocess.run([sys.executable, "-m", "pipelines.validate_data", "tickets"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    assert "INFO saefs.validate_data: tickets: all expectations passed on 200 rows" in done.stderr
    assert [line for line in done.stderr.splitlines() if "great_expectations" in line] == []


def test_stage_main_reports_input_errors_without_a_traceback(workdir: Path, caplog) -> None:
    configure(workdir, tickets().assign(y=0))
    assert prepare_data.main(["tickets"]) == 2
    assert "one class only" in caplog.text


def normal_tickets() -> pd.DataFrame:
    """A file as users write them: padded texts, quotes, commas, non-ASCII, newlines inside a text, duplicates."""
    texts = [f"ticket {i}: printer {i % 7} says \"jam\", café ☕\nsecond line" if i % 5 == 0
             else f"  ticket {i} about thing {i % 7}  " for i in range(240)]
    return pd.DataFrame({"body": texts + texts[:6], "y": [i % 2 for i in range(240)] + [i % 2 for i in range(6)]})


def test_a_normal_file_prepares_to_the_same_bytes_as_before(workdir: Path) -> None:
    # data/prepared/*.parquet are DVC outputs: other bytes would rerun every stage after prepare_data.
    # The digests were taken before the input checks were added; pyarrow is pinned by requirements.lock.
    configure(workdir, normal_tickets(), max_rows=200)
    prepare_data.run("tickets")
    df = pd.read_parquet(paths.prepared("tickets"))
    values = df.to_json(orient="records", date_format="iso").encode()
    assert hashlib.sha256(values).hexdigest() == "246ac421f37b9b0c28e9e41f22dd8acab9b9135f33b8f6b616df13b144b4c224"
    digest = hashlib.sha256(paths.prepared("tickets").read_bytes()).hexdigest()
    assert digest == "e02002ad6614f69832b2d05bb31a992717ec93ac9cf9410155aa5c2986f6828d"
    summary = json.loads(paths.prepare_summary("tickets").read_text())
    assert (summary["rows_read"], summary["dropped_duplicates"], summary["dropped_by_max_rows"]) == (246, 6, 40)
