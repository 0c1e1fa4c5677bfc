"""The promotion story a registered version carries: what was decided at registration, on what evidence."""

from __future__ import annotations

from features.reporting.promotion import version_story


def report(version: int, champion: int | None, passed: bool) -> dict:
    return {"registered_model": "saefs-x", "challenger_version": version, "champion": champion,
            "decision": "promote" if passed else "keep: macro_f1 0.61 < 0.8",
            "candidate": {"cell": "m__l1__sae64__sum__raw", "model": "m", "layer": 1, "logged_macro_f1": 0.61},
            "checks": [{"name": "macro_f1", "value": 0.61, "threshold": 0.8, "passed": passed, "detail": "d|e"}],
            "versus_champion": {"difference": -0.0312, "low": -0.09} if champion else None}


def test_a_version_that_failed_a_gate_says_so_and_names_the_champion_that_stays() -> None:
    description, tags = version_story(report(3, 2, passed=False), "m__l1__sae64__sum__raw", {})
    assert description.startswith("**Promotion of `saefs-x` version 3: not promoted (champion stays version 2)**")
    assert "| macro_f1 | 0.6100 | 0.8 | NO | d/e |" in description  # a pipe in a detail cannot break the table
    assert "macro F1 difference -0.0312 (lower 95% bound -0.0900)" in description
    assert "Data and features (DVC)" not in description  # no lock entries: no empty table
    assert tags == {"saefs.decision": "not promoted", "saefs.feature_service": "m__l1__sae64__sum__raw",
                    "saefs.test_macro_f1": "0.610", "saefs.gates": "failed: macro_f1"}


def test_without_any_champion_the_story_says_none_is() -> None:
    description, tags = version_story(report(1, None, passed=False), "s", {"data/prepared/x.parquet": "abc"})
    assert "version 1: not promoted (no version is champion)" in description
    assert "| data/prepared/x.parquet | abc |" in description and tags["saefs.decision"] == "not promoted"
