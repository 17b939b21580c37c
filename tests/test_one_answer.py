"""One answer, told the same way everywhere: a small sequential grid that ends decided, and every
surface a user reads (the printed summary, the MLflow parent, report.md / report.html, the
Prefect artifacts and log lines on a real Prefect server) read back and held against the
design's decisions. A fixed-sample verdict showing anywhere after a sequential design fails it.
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from bnpipe.stats import VERDICTS
from tests.test_design import SEQ
from tests.test_resume import run_flow

DECIDED = {"benefit", "harm", "equivalent"}


def _prefect_records(flow_run_id: str) -> tuple[dict, list[str]]:
    """The flow run's artifacts (by key) and log messages, from the Prefect server's API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter
    from prefect.logging.handlers import APILogHandler

    async def read() -> tuple:
        async with get_client() as client:
            by_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            artifacts = await client.read_artifacts(artifact_filter=by_run)
            logs = await client.read_logs(LogFilter(flow_run_id={"any_": [flow_run_id]}))
            return {a.key: a for a in artifacts}, [log.message for log in logs]

    APILogHandler().flush()  # logs are sent in batches, in the background
    return asyncio.run(read())


def _no_verdict(text: str, where: str) -> None:
    shown = [v for v in VERDICTS if v in text]
    assert not shown, f"{where} shows fixed-sample verdict(s) {shown} after a sequential design"


def _table_decisions(markdown: str, labels: dict[str, str]) -> dict[str, str]:
    """``{comparison: decision}`` from a Markdown decision table whose first cell is the
    stratum's level (``| 32 | **benefit** | ...``)."""
    found = {}
    for line in markdown.splitlines():
        m = re.match(r"\| ([^|]+) \| \*\*(\w+)\*\* \|", line)
        if m and m[1].strip() in labels:
            found[labels[m[1].strip()]] = m[2]
    return found


@pytest.mark.usefixtures("prefect_api")
def test_every_surface_tells_the_design_decision(monkeypatch, tiny_mnist, store) -> None:
    from bnpipe.cli import format_run_summary

    out, cfg = run_flow(monkeypatch, tiny_mnist, store, [*SEQ, "stats.n_resamples=99"])
    decided = {d["comparison"]: d["decision"] for d in out["decisions"]}
    assert out["design"] == "sequential"
    assert set(decided) == {"batch_size=32", "batch_size=64"}
    assert set(decided.values()) <= DECIDED, f"the grid must end decided: {decided}"
    labels = {label.split("=")[1]: label for label in decided}

    # The terminal: the decided table, and the descriptive table without any verdict.
    printed = format_run_summary(out)
    _no_verdict(printed, "the printed summary")
    for label, decision in decided.items():
        assert re.search(rf"^{re.escape(label)}\s+{decision}\s", printed, re.M), printed
    assert "(descriptive" in printed

    # The MLflow parent: tags, description, and the tables it logged.
    client = mlflow.MlflowClient(store)
    parent = client.get_run(out["parent_run_id"])
    tags = parent.data.tags
    for label, decision in decided.items():
        assert tags[f"bnpipe.decision.{label.replace('=', '_')}"] == decision
    description = tags["mlflow.note.content"]
    _no_verdict(description, "the MLflow parent's description")
    assert _table_decisions(description, labels) == decided
    folder = Path(client.download_artifacts(parent.info.run_id, "", str(Path(store[10:]).parent)))
    decisions_csv = pd.read_csv(folder / "decisions.csv")
    assert dict(zip(decisions_csv["comparison"], decisions_csv["decision"], strict=True)) == decided
    assert "verdict" not in pd.read_csv(folder / "summary.csv").columns
    # The grid is recorded by its levels, not by defaults no cell used.
    params = parent.data.params
    assert "model.bn" not in params and "train.batch_size" not in params
    assert params["grid.factors.bn"] == "[False, True]"

    # report.md and report.html (as written, and as logged on the parent).
    report = Path(out["report"]).read_text(encoding="utf-8")
    _no_verdict(report, "report.md")
    assert _table_decisions(report, labels) == decided
    _no_verdict((folder / "report" / "report.html").read_text(encoding="utf-8"), "report.html")

    # Prefect: the table artifact is the decided table; the report artifact and every log line
    # say nothing else.
    artifacts, messages = _prefect_records(tags["bnpipe.prefect.flow_run_id"])
    table = artifacts["bn-ablation-report-table"].data
    rows = pd.read_json(io.StringIO(table)) if isinstance(table, str) else pd.DataFrame(table)
    assert "verdict" not in rows.columns
    assert dict(zip(rows["comparison"], rows["decision"], strict=True)) == decided
    _no_verdict(artifacts["bn-ablation-report"].data, "the Prefect report artifact")
    assert _table_decisions(artifacts["bn-ablation-report"].data, labels) == decided
    for message in messages:
        _no_verdict(message, f"the Prefect log line {message[:60]!r}")
    last = next(m for m in reversed(messages) if m.startswith("Decided:"))
    assert _table_decisions(last, labels) == decided


def test_printed_ci_level_is_the_configured_one() -> None:
    import numpy as np

    from bnpipe.analysis import analyze_frames
    from bnpipe.cli import format_summary

    rng = np.random.default_rng(0)
    results = pd.DataFrame(
        {
            "bn": [False, True] * 6,
            "batch_size": 32,
            "seed": np.repeat(np.arange(6), 2),
            "status": "finished",
            "test_accuracy": 0.97 + 0.001 * rng.normal(size=12),
        }
    )
    summary = analyze_frames(results, pd.DataFrame(), alpha=0.2, n_resamples=99).summary
    printed = format_summary(summary.to_dict("records"))
    assert "80% CI" in printed and "95%" not in printed
