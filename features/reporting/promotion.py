"""A registered version's promotion story, written where the MLflow UI shows it (its description and tags): the
decision, each gate with its evidence, the feature cell it reads, what it relies on, and the DVC hashes of the
data and features it was trained on. A reviewer reads it without opening a JSON artifact."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RELIED_ON = 5  # latents listed in the description (the promotion report lists more)


def _f1(cell: Mapping[str, Any]) -> str:
    value, low, high = (cell.get(f"logged_macro_f1{end}") for end in ("", "_low", "_high"))
    if value is None:
        return "not measured"
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(value).replace("|", "/") for value in row) + " |" for row in rows)]


def version_story(report: Mapping[str, Any], feature_service: str,
                  data: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The Markdown description and the tags of the version `report` (promote's) registered."""
    candidate, hidden = report["candidate"], report.get("hidden_baseline") or {}
    version, champion = report["challenger_version"], report["champion"]
    # what happened when it was registered: the aliases on the version's page say where it stands now
    promoted = champion == version
    state = "promoted to champion" if promoted else "not promoted (" + (
        f"champion stays version {champion})" if champion is not None else "no version is champion)")
    lines = [f"**Promotion of `{report['registered_model']}` version {version}: {state}**", "",
             f"Decision: {report['decision']}", "",
             f"Evidence: test macro F1 of this fit {_f1(candidate)} (95% interval over resampled test texts); "
             f"best hidden-state probe `{hidden.get('cell', '-')}` {_f1(hidden)}.", ""]
    versus = report.get("versus_champion")
    if versus:
        difference, low = _number(versus.get("difference")), _number(versus.get("low"))
        lines += [f"Versus the champion on the same test texts: macro F1 difference {difference} "
                  f"(lower 95% bound {low}).", ""]
    checks = report.get("checks") or []
    if checks:
        lines += _table(["gate", "value", "threshold", "passed", "detail"],
                        [[c["name"], "-" if c["value"] is None else f"{c['value']:.4f}", c["threshold"],
                          "yes" if c["passed"] else "NO", c["detail"]] for c in checks]) + [""]
    lines += [f"Features: service `{feature_service}`; cell `{candidate['cell']}` (model {candidate.get('model')}, "
              f"layer {candidate.get('layer')}, pooling {candidate.get('pooling')}, binarize "
              f"{candidate.get('binarize')}).", ""]
    relied = report.get("influential_latents") or []
    if relied:
        lines += ["Relies most on:", ""]
        lines += _table(["latent", "weight", "label"], [[e["latent"], e["weight"], e.get("label", "-")]
                                                        for e in relied[:RELIED_ON]]) + [""]
    audit = report.get("shortcut_audit") or {}
    if "flagged_weight_share" in audit:
        lines += [f"Shortcut audit: {audit['flagged_weight_share']:.0%} of its weight sits on latents flagged as "
                  "surface features (see the promotion report).", ""]
    if data:
        lines += ["Data and features (DVC):", ""] + _table(["path", "md5"], [[p, h] for p, h in sorted(data.items())])
    tags = {"saefs.decision": "promoted" if promoted else "not promoted",
            "saefs.feature_service": feature_service, "saefs.test_macro_f1": _f1(candidate),
            "saefs.gates": "passed" if all(c["passed"] for c in checks) else
            "failed: " + ", ".join(c["name"] for c in checks if not c["passed"])}
    return "\n".join(lines), tags
