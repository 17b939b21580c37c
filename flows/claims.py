"""``bnpipe claims``: every study through the same flow as ``bnpipe run``, then one report.

The studies run one after another in this process (one Prefect flow run and one MLflow parent
run each, reusing finished cells like any run); their recorded results and histories are then
read back from MLflow and handed to the pure functions of ``bnpipe.claims``. The report goes to
``<tracking.reports_dir>/claims/`` and onto a parent run of its own (role ``claims``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnpipe.config import Config, ConfigError

if TYPE_CHECKING:
    from bnpipe.claims import ClaimsReport

# Prefect, MLflow and the statistics are imported when the studies run, not here: a bad study
# name or file answers in milliseconds (as bad params do for `bnpipe run`).
STUDIES_DIR = Path("studies")
# --quick: every study on a smoke scale (for checking the wiring, never for conclusions).
QUICK = (
    "train.epochs=2",
    "data.limit_train=2000",
    "data.limit_test=1000",
    "grid.seeds=[0,1,2]",
    "train.shard_size=3",
    "stats.n_resamples=999",
)


def study_paths(folder: str | Path = STUDIES_DIR, only: Sequence[str] = ()) -> dict[str, Path]:
    """The study files to run, in the claims' run order: all of them, or those named in ``only``.

    Raises:
        ConfigError: an unknown study name or a missing file (one line, naming it).
    """
    # The registry, not a list here, says which studies there are and in which order they run
    # (each claim's ``run_rank``); it is imported here so that importing this module stays light.
    from bnpipe.claims import run_order

    order = run_order()
    folder = Path(folder)
    unknown = [n for n in only if n not in order]
    if unknown:
        raise ConfigError(f"--study {unknown[0]}: unknown study; known: {', '.join(order)}")
    names = [n for n in order if not only or n in only]
    paths = {n: folder / f"{n}.yaml" for n in names}
    for name, path in paths.items():
        if not path.is_file():
            raise ConfigError(f"study {name}: {path} does not exist")
    return paths


@dataclass(frozen=True)
class ClaimsOutcome:
    """What ``run_claims`` produced: the report, its MLflow run, and each study's run."""

    report: ClaimsReport
    run_id: str
    run_url: str
    studies: dict[str, dict[str, Any]]
    failed: int = 0  # cells that failed with an error, over all studies (diverged ones are not)


def run_claims(
    configs: Mapping[str, Config],
    *,
    fresh: bool = False,
    new_design: bool = False,
    on_study: Callable[[str, dict[str, Any]], None] | None = None,
) -> ClaimsOutcome:
    """Run every study's flow, test the claims on what they recorded, write and log the report.

    Args:
        configs: study name -> its validated config, in the order to run.
        fresh: train every cell again (as ``bnpipe run --fresh``).
        new_design: start sequential studies' designs knowingly (as ``bnpipe run --new-design``).
        on_study: called with each study's flow result as it finishes (the CLI prints it).
    """
    from bnpipe.analysis import analyze
    from bnpipe.claims import StudyData, check_claims, write_report
    from bnpipe.tracking import ROLE_TAG, TAG_PREFIX, Tracker, redact_uri, resolve_uri
    from flows.pipeline import ablation

    t0 = time.perf_counter()
    outs: dict[str, dict[str, Any]] = {}
    for name, cfg in configs.items():
        print(f"claims: study {name} ({len(outs) + 1} of {len(configs)})", flush=True)
        outs[name] = ablation(cfg.model_dump(mode="json"), fresh=fresh, new_design=new_design)
        if on_study is not None:
            on_study(name, outs[name])
    studies: dict[str, StudyData] = {}
    info: dict[str, dict[str, str]] = {}
    for name, out in outs.items():
        cfg = configs[name]
        tracker = Tracker(resolve_uri(cfg.tracking.uri), cfg.tracking.experiment)
        results, histories, _, _ = tracker.parent_tables(out["parent_run_id"])
        # The study's analysis as its run computed it: the claims read its typed frames.
        analysis = analyze(results, histories, cfg)
        studies[name] = StudyData(
            analysis.results,
            analysis.histories,
            epochs=cfg.train.epochs,
            val_threshold=cfg.stats.val_threshold,
            num_classes=cfg.model.num_classes,
            equivalence_margin=cfg.stats.equivalence_margin,
        )
        info[name] = {
            "parent run": out["parent_run_id"],
            "cells": f"{len(out['results'])} ({out['trained']} trained, {out['reused']} reused)",
            "wall s": f"{out['wall_time_s']:.0f}",
            "epochs": str(cfg.train.epochs),
        }
    first = next(iter(configs.values()))
    alpha = first.stats.alpha
    tests = check_claims(
        studies, alpha=alpha, n_resamples=min(c.stats.n_resamples for c in configs.values())
    )
    folder = Path(first.tracking.reports_dir) / "claims"
    report = write_report(tests, folder, alpha=alpha, studies=info)
    tracker = Tracker(resolve_uri(first.tracking.uri), first.tracking.experiment)
    run_id = tracker.start_run(
        f"claims-{datetime.now():%Y%m%d-%H%M%S}",
        params={f"study.{n}": out["parent_run_id"] for n, out in outs.items()}
        | {"stats.alpha": alpha, "studies": ",".join(outs)},
        tags={ROLE_TAG: "claims", TAG_PREFIX + "fresh": fresh},
    )
    table = report.table
    metrics = {}
    for r in table.itertuples(index=False):
        metrics |= {
            f"effect_{r.claim}": r.effect,
            f"p_holm_{r.claim}": r.p_holm,
            f"n_{r.claim}": r.n,
        }
    tracker.finish_parent(
        run_id,
        metrics=metrics | {"wall_time_s": time.perf_counter() - t0},
        tables={"claims": table},
        tags={f"{TAG_PREFIX}verdict.{r.claim}": r.verdict for r in table.itertuples(index=False)},
        files=[report.markdown_path, report.html_path, *report.figures],
        description=report.description,
    )
    info_out = {n: {**info[n], "url": o.get("parent_url", "")} for n, o in outs.items()}
    print(f"claims: tracking {redact_uri(tracker.uri)}", flush=True)
    failed = sum(r["status"] == "failed" for o in outs.values() for r in o["results"])
    return ClaimsOutcome(report, run_id, tracker.run_url(run_id), info_out, failed)
