"""``bnpipe``: parse arguments, load params, call a flow, print the summary."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from bnpipe import trainer
from bnpipe.config import Config, ConfigError, load_config
from bnpipe.factors import Cell, contrast_phrase, factor_columns, strata_phrase
from bnpipe.progress import PhaseClock, format_breakdown

EXIT_OK, EXIT_FAILED_CELLS, EXIT_BAD_INPUT = 0, 1, 2
EXIT_MISMATCH = 1  # bnpipe reproduce: the re-trained cell differs from its record
DEFAULT_PARAMS = "params.yaml"
# A Dask scheduler that does not accept a connection in this time is reported before any claim.
DASK_CONNECT_TIMEOUT_S = 5.0
# The bench figures `bnpipe plan` estimates time from: this project's 2-core box.
BENCH_FILE = Path(__file__).resolve().parents[1] / "docs" / "bench-2core.json"
# A run that could train more cells than this asks for --large: the default design's cap is 800
# (4 comparisons x 2 arms x 100 seeds), and a typo in a grid can ask for 160,000 per look.
LARGE_GRID_CELLS = 2000


def _add_params_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--params",
        default=None,
        help=f"experiment definition (default: ./{DEFAULT_PARAMS} if present, else built-ins)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one setting, e.g. --set train.epochs=2 --set grid.seeds=[0,1]",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the BN x batch-size x seed grid (cells finished in earlier runs are reused)",
    )
    _add_params_args(run)
    run.add_argument(
        "--fresh",
        action="store_true",
        help="train every cell, even those an earlier run finished with the same cell key",
    )
    run.add_argument(
        "--new-design",
        action="store_true",
        help="start this sequential design even though another design already looked at the "
        "same cells (recorded on the parent run and said in the report)",
    )
    run.add_argument(
        "--large",
        action="store_true",
        help=f"run a grid of more than {LARGE_GRID_CELLS} cells (bnpipe plan says what it costs)",
    )
    plan = sub.add_parser(
        "plan",
        help="what the params' design will cost (models, est. time) and how it decides; trains "
        "nothing",
    )
    _add_params_args(plan)
    plan.add_argument(
        "--bench",
        default=None,
        metavar="FILE",
        help=f"a `bnpipe bench --json` report for the time estimate (default: {BENCH_FILE.name} "
        "in this checkout's docs/, when present)",
    )
    plan.add_argument(
        "--n-sim", type=int, default=20_000, help="simulated comparisons per true effect"
    )
    claims = sub.add_parser(
        "claims",
        help="run every study under studies/ and write one report testing the notebook's claims",
    )
    _add_claims_args(claims)
    reproduce = sub.add_parser(
        "reproduce",
        help="re-train one cell from its MLflow run and compare metrics and weights exactly",
    )
    reproduce.add_argument("run_id", help="a child run id (one cell), as shown in MLflow")
    _add_params_args(reproduce)
    report = sub.add_parser("report", help="rebuild a run's report from MLflow (no training)")
    report.add_argument("run_id", help="the parent run id that `bnpipe run` printed")
    _add_params_args(report)
    bench = sub.add_parser("bench", help="time the reference recipe and both engines")
    from bnpipe import bench as bench_mod

    bench_mod.add_arguments(bench)
    serve = sub.add_parser(
        "serve", help="serve the flow on a cron schedule (needs a Prefect server)"
    )
    _add_params_args(serve)
    from flows import serve as serve_mod

    serve_mod.add_arguments(serve)
    return parser


def _add_claims_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--studies", default="studies", help="folder of study params files")
    p.add_argument(
        "--study", dest="only", action="append", default=[], help="run only this study (repeat)"
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a setting in every study, e.g. --set train.epochs=2",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke scale: 2 epochs, 2000 examples")
    p.add_argument("--fresh", action="store_true", help="train every cell again")
    p.add_argument(
        "--new-design",
        action="store_true",
        help="start sequential studies' designs even where another design looked at their cells",
    )


def cmd_claims(args: argparse.Namespace) -> int:
    """Every study through the flow `bnpipe run` uses, then the claims report."""
    from flows.claims import QUICK, study_paths

    try:
        paths = study_paths(args.studies, args.only)
    except ConfigError as exc:
        return bad_input(str(exc))
    sets = [*(QUICK if args.quick else ()), *args.overrides]
    cfgs = {}
    for name, path in paths.items():  # every study checked before any trains
        study = argparse.Namespace(params=str(path), overrides=sets)
        cfg = checked_config(study, new_design=args.new_design)
        if cfg is None:
            return EXIT_BAD_INPUT
        cfgs[name] = cfg
    from flows.server import ServerError, TemporaryServer, check_api

    refused = check_api()  # a configured Prefect server that refuses us: before any study trains
    if refused is not None:
        return bad_input(refused)
    with TemporaryServer() as server:
        from bnpipe.tracking import ArtifactWriteError
        from flows.claims import run_claims
        from flows.pipeline import quiet_reported_errors

        try:
            server.wait()
        except ServerError as exc:
            return bad_input(str(exc))
        quiet_reported_errors()
        _hide_interrupt_reports()
        try:
            out = run_claims(
                cfgs, fresh=args.fresh, new_design=args.new_design, on_study=_print_study
            )
        except ArtifactWriteError as exc:
            bad_input(str(exc))
            return EXIT_FAILED_CELLS
    print(out.report.description)
    print(f"report: {out.report.markdown_path} (and {out.report.html_path.name})")
    print(f"claims run: {out.run_id}; open it in the MLflow UI: {out.run_url}")
    if out.failed:
        print(f"FAILED: {out.failed} cells failed with an error (listed above, per study)")
    return EXIT_FAILED_CELLS if out.failed else EXIT_OK


def _print_study(name: str, out: dict) -> None:
    print(f"\nstudy {name}:")
    print(format_run_summary(out))


def resolve_config(params: str | None, overrides: list[str]) -> Config:
    """params.yaml (explicit, or ./params.yaml when present) plus overrides, validated."""
    from bnpipe.tracking import without_credentials

    if params is None and Path(DEFAULT_PARAMS).is_file():
        params = DEFAULT_PARAMS
    return without_credentials(load_config(params, overrides))


def preflight(cfg: Config, clock: PhaseClock | None = None, new_design: bool | None = None) -> None:
    """Fail fast, before any run is created: the data must verify and the store must open.

    Also everything that would otherwise fail only after training started: a reports folder
    that cannot be made, an unreachable Dask scheduler, a SQLite store path that is a folder,
    and (unless ``new_design`` is None) a sequential design changed under its data.
    """
    clock = clock or PhaseClock()
    from bnpipe.data import load_mnist
    from bnpipe.tracking import Tracker, check_sqlite_path, resolve_uri

    uri = resolve_uri(cfg.tracking.uri)
    check_reports_dir(cfg.tracking.reports_dir)
    check_sqlite_path(uri)
    if cfg.orchestration.task_runner == "dask" and cfg.orchestration.dask_address:
        check_dask_address(cfg.orchestration.dask_address)
    with clock.phase("data"):
        data = load_mnist(cfg.data.dir)
    # Labels past the softmax's width give a NaN loss: every cell would be stored "diverged",
    # an outcome later runs reuse.
    classes = int(max(data.y_train.max(), data.y_test.max())) + 1
    if cfg.model.num_classes < classes:
        raise ConfigError(
            f"model.num_classes: {cfg.model.num_classes} is fewer than the data's {classes} "
            f"classes (labels 0-{classes - 1})"
        )
    with clock.phase("tracking"):
        tracker = Tracker(uri, cfg.tracking.experiment)
        tracker.check()
        if new_design is not None:
            from bnpipe.runner import design_start

            digest = data.subset(cfg.data.limit_train, cfg.data.limit_test).digest
            design_start(cfg, tracker, digest, new_design)


def check_reports_dir(reports_dir: str) -> None:
    """The reports folder exists as a writable folder, or its nearest existing parent is one.

    Nothing is created here: a run refused later in preflight leaves no trace.
    """
    path = Path(reports_dir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    what = "tracking.reports_dir"
    if not existing.is_dir():
        raise ConfigError(f"{what}: {existing} is not a folder, so {reports_dir} cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: {existing} is not writable, so {reports_dir} cannot be made")


def check_dask_address(address: str) -> None:
    """The Dask scheduler accepts a TCP connection within DASK_CONNECT_TIMEOUT_S."""
    what = f"orchestration.dask_address {address}"
    try:
        parsed = urlsplit(address if "://" in address else f"tcp://{address}")
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host = port = None
    if not host or port is None:
        raise ConfigError(f"{what}: expected tcp://host:port")
    try:
        socket.create_connection((host, port), timeout=DASK_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{what}: cannot connect ({reason})") from None


def _width(rows: list[dict], key: str, head: str) -> int:
    return max([len(head), *(len(str(r[key])) for r in rows)])


def format_summary(summary: list[dict]) -> str:
    """The per-comparison table printed at the end of a run (control and treatment arms)."""
    w = _width(summary, "stratum", "comparison")
    # Arms named by their levels (bn=off, bn=on), as in the run names.
    arms = ("acc ctrl", "acc treat")
    if summary and summary[0].get("compare"):
        from bnpipe.factors import level_text

        r0 = summary[0]
        arms = tuple(
            f"acc {level_text(r0['compare'], r0[k])}" for k in ("control_level", "treatment_level")
        )
    aw = max(9, *map(len, arms))
    # A fixed design's verdict is its decision; after a sequential one the table is descriptive.
    verdicts = bool(summary) and "verdict" in summary[0]
    ci_head = f"{100 * (1 - summary[0]['alpha']):g}% CI" if summary else "CI"
    head = (
        f"{'comparison':<{w}}  {'n':>3}  {arms[0]:>{aw}}  {arms[1]:>{aw}}  {'diff':>10}  "
        f"{ci_head:>19}  {'p (t)':>7}  {'p Holm':>7}" + ("  decision" if verdicts else "")
    )
    lines = [head, "-" * len(head)]

    def f(x: float, spec: str) -> str:
        return format(x, spec) if x is not None and math.isfinite(x) else "n/a"

    for r in summary:
        ci = f"[{f(r['ci_low'], '+.4f')}, {f(r['ci_high'], '+.4f')}]"
        lines.append(
            f"{r['stratum']:<{w}}  {r['n_pairs']:>3}  {f(r['acc_control'], '.4f'):>{aw}}  "
            f"{f(r['acc_treatment'], '.4f'):>{aw}}  {f(r['mean_diff'], '+.4f'):>10}  {ci:>19}  "
            f"{f(r['t_pvalue'], '.4f'):>7}  {f(r['p_holm'], '.4f'):>7}"
            + (f"  {r['verdict']}" if verdicts else "")
        )
    return "\n".join(lines)


def format_decisions(decisions: list[dict]) -> str:
    """The sequential design's decided table printed at the end of a run."""
    w = _width(decisions, "comparison", "comparison")
    head = (
        f"{'comparison':<{w}}  {'decision':>10}  {'pairs':>5}  {'looks':>5}  {'diff':>10}  "
        f"{'repeated CI':>19}"
    )
    lines = [head, "-" * len(head)]
    for r in decisions:
        ci = f"[{r['rci_low']:+.4f}, {r['rci_high']:+.4f}]"
        why = f" (stopped: {r['stop_reason']})" if r.get("stop_reason") else ""
        lines.append(
            f"{r['comparison']:<{w}}  {r['decision']:>10}  {r['n_pairs']:>5}  {r['looks']:>5}  "
            f"{r['mean_diff']:>+10.4f}  {ci:>19}{why}"
        )
    return "\n".join(lines)


def _contrast(summary: list[dict]) -> str:
    """``BN on minus BN off test accuracy per batch size``, from the summary's own columns."""
    if not summary:
        return "test accuracy"
    r = summary[0]
    arms = (r["control_level"], r["treatment_level"])
    levels = arms if arms[1] is not None and arms[1] == arms[1] else ()
    others = [c for c in factor_columns(r) if c != r["compare"]]
    return f"{contrast_phrase(r['compare'], levels)} test accuracy {strata_phrase(others)}"


def checked_config(
    args: argparse.Namespace, clock: PhaseClock | None = None, new_design: bool | None = None
) -> Config | None:
    """Config from --params/--set with data and store verified; None after a bad-input error."""
    cfg = parsed_config(args)
    return cfg if cfg is not None and checked(cfg, clock, new_design) else None


def parsed_config(args: argparse.Namespace) -> Config | None:
    """Config from --params/--set, not yet checked; None after a bad-input error."""
    try:
        return resolve_config(args.params, args.overrides)
    except ConfigError as exc:  # before MLflow is imported: bad params answer in milliseconds
        bad_input(str(exc))
        return None


def checked(cfg: Config, clock: PhaseClock | None = None, new_design: bool | None = None) -> bool:
    """:func:`preflight`, with a bad-input error printed when it fails."""
    from bnpipe.data import DataError
    from bnpipe.tracking import TrackingError

    try:
        preflight(cfg, clock, new_design)
    except (ConfigError, DataError, TrackingError) as exc:
        bad_input(str(exc))
        return False
    return True


def grid_too_large(cfg: Config) -> str | None:
    """Why ``cfg``'s grid needs ``--large`` (more than LARGE_GRID_CELLS cells at most, with an
    estimate of the training time from the bench's figures), or None."""
    import json

    from bnpipe.bench import model_epoch_seconds
    from bnpipe.design import plan_of

    plan = plan_of(cfg)
    seeds = plan.max_seeds if plan.sequential else len(plan.seeds)
    cells = max(1, len(cfg.grid.compare_levels)) * len(plan.strata) * seeds
    if cells <= LARGE_GRID_CELLS:
        return None
    estimate = ""
    with contextlib.suppress(OSError, ValueError):
        per = model_epoch_seconds(json.loads(BENCH_FILE.read_text()), cfg.train.engine)[None]
        estimate = f", ~{cells * cfg.train.epochs * per / 3600:.1f} h of training on the bench box"
    return (
        f"grid: up to {cells} cells{estimate}; more than {LARGE_GRID_CELLS}: check it with "
        "`bnpipe plan`, then run it with --large"
    )


def cmd_run(args: argparse.Namespace, *, trainer_process: bool = False) -> int:
    """``bnpipe run``; ``trainer_process``: train in a process beside the flow's when the run
    trains serially with the fused engine (:mod:`bnpipe.trainer`), as the command does."""
    clock = PhaseClock()
    cfg = parsed_config(args)
    if cfg is None:
        return EXIT_BAD_INPUT
    if not args.large and (too_large := grid_too_large(cfg)) is not None:
        return bad_input(too_large)
    wanted = trainer_process and trainer.wanted(cfg.orchestration.task_runner, cfg.train.engine)
    # The process imports TensorFlow from here on, while this one checks and starts the flow.
    with trainer.started() if wanted else contextlib.nullcontext() as process:
        if not checked(cfg, clock, new_design=args.new_design):
            return EXIT_BAD_INPUT
        return _run_checked(cfg, args, clock, process)


def _run_checked(
    cfg: Config, args: argparse.Namespace, clock: PhaseClock, process: trainer.TrainerProcess | None
) -> int:
    from flows.server import ServerError, TemporaryServer, check_api

    refused = check_api()  # a configured Prefect server; before TensorFlow prints its banner
    if refused is not None:
        return bad_input(refused)
    with TemporaryServer() as server:  # boots while TensorFlow is imported; always stopped
        if process is None:
            with clock.phase("tf_import"):
                import bnpipe.tfkeras  # noqa: F401 -- timed here; the pipeline imports it anyway
        from bnpipe.runner import Outage
        from bnpipe.tracking import ArtifactWriteError
        from flows.pipeline import ablation, quiet_reported_errors

        try:
            server.wait()
        except ServerError as exc:
            return bad_input(str(exc))
        if process is not None:  # the last refusal is behind: the run goes ahead there too
            process.serve(cfg.data)
        quiet_reported_errors()
        _hide_interrupt_reports()
        try:
            out = ablation(
                cfg.model_dump(mode="json"), fresh=args.fresh, new_design=args.new_design
            )
        except ArtifactWriteError as exc:  # mid-run: the claimed cells are recorded FAILED
            bad_input(str(exc))
            return EXIT_FAILED_CELLS
        except Outage as exc:
            print(
                f"bnpipe: stopped: {exc}; {exc.runs_failed} open cell run(s) marked FAILED, "
                "finished cells kept; rerun to continue",
                file=sys.stderr,
            )
            return EXIT_FAILED_CELLS
    print()
    print(format_run_summary(out))
    print(format_breakdown(clock.breakdown(out["timing"]), out["timing"]))
    return EXIT_FAILED_CELLS if any(r["status"] == "failed" for r in out["results"]) else EXIT_OK


def format_run_summary(out: dict) -> str:
    """Everything printed after a run: the table, what was reused, what failed and why."""
    results = out["results"]
    failed = [r for r in results if r["status"] == "failed"]
    diverged = [r for r in results if r["status"] == "diverged"]
    counts = (
        f"{len(results)} cells: {out['trained']} trained, {out['reused']} reused; "
        f"{out['wall_time_s']:.0f}s"
    )
    about = out["population_text"]  # what the decisions are about (issue 28)
    if out.get("design") == "sequential" and out.get("decisions"):
        alpha = out["decisions"][0]["alpha"]
        lines = [
            f"Decided: {_contrast(out['summary'])}, sequential design ({counts}; "
            f"alpha {alpha:.4g} per comparison), about {about}:",
            format_decisions(out["decisions"]),
            "",
            "Fixed-sample tests on the same pairs (descriptive; seeds were added until decided):",
            format_summary(out["summary"]),
        ]
    else:
        lines = [
            f"{_contrast(out['summary'])}, paired by seed ({counts}), about {about}:",
            format_summary(out["summary"]),
        ]
    if out["reused"]:
        lines.append(
            f"reused {out['reused']} finished cells of earlier runs (same cell key; listed in "
            "reused.csv on the parent run); --fresh trains everything"
        )
    if out["abandoned"]:
        lines.append(
            f"marked {len(out['abandoned'])} run(s) of a killed bnpipe process FAILED "
            "(bnpipe.failure_reason=abandoned)"
        )
    for r in diverged:
        lines.append(
            f"diverged: {_cell_name(r)} (non-finite loss; its pair is left out of the statistics)"
        )
    if failed:
        lines.append(f"FAILED: {len(failed)} of {len(results)} cells (their pairs are left out):")
        lines += [f"  {_cell_name(r)}: {r['error']}  [run {r['run_id']}]" for r in failed]
    lines.append(f"report: {out['report']}")
    from bnpipe.tracking import redact_uri

    where = redact_uri(out["tracking_uri"])
    lines.append(f"parent run: {out['parent_run_id']} ({out['run_name']}) in {where}")
    if out.get("parent_url"):
        lines.append(f"open it in the MLflow UI: {out['parent_url']}")
    return "\n".join(lines)


def _cell_name(r: dict) -> str:
    return Cell.of(int(r["seed"]), **{n: r[n] for n in factor_columns(r)}).name


def cmd_plan(args: argparse.Namespace) -> int:
    """``bnpipe plan``: the design's cost and decision probabilities; no data, no store."""
    import json

    from bnpipe.bench import model_epoch_seconds
    from bnpipe.design import plan_of, plan_summary

    cfg = parsed_config(args)
    if cfg is None:
        return EXIT_BAD_INPUT
    if args.n_sim < 100:
        return bad_input(f"--n-sim: must be >= 100 (got {args.n_sim})")
    bench_path = Path(args.bench) if args.bench else BENCH_FILE
    seconds: dict = {}
    if args.bench or bench_path.is_file():
        try:
            seconds = model_epoch_seconds(json.loads(bench_path.read_text()), cfg.train.engine)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            return bad_input(f"--bench {bench_path}: not a bnpipe bench report ({exc})")
    plan = plan_of(cfg)
    if not plan.sequential:
        print(format_fixed_plan(plan, cfg, seconds))
        return EXIT_OK
    summary = plan_summary(plan, n_sim=args.n_sim)
    shown = Path(os.path.relpath(bench_path)) if bench_path.is_absolute() else bench_path
    print(format_plan(summary, cfg, seconds, shown if seconds else None))
    return EXIT_OK


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}" if math.isfinite(seconds) else "n/a"


def format_fixed_plan(plan, cfg: Config, seconds: dict) -> str:
    """A fixed design's plan: its models and their estimated training time."""
    models = len(cfg.grid.compare_levels) * len(plan.strata) * len(plan.seeds)
    per = seconds.get(None, math.nan)
    return (
        f"{plan.describe()}: {models} models, training ~"
        f"{_minutes(models * cfg.train.epochs * per)} min (an estimate from the bench's mean "
        "s/model-epoch)"
    )


def _floor_lines(plan) -> list[str]:
    """`bnpipe plan`'s lines on the test-example floor (about digits only)."""
    if not plan.crossed:
        return [f"Decisions about {plan.population_text}, as stats.population: test_set asks."]
    f, pp = plan.floor(), 100.0
    verdict = (
        "so equivalence near 0 is out of reach: such comparisons stop undecided (reason floor)"
        if f["reaches_margin"]
        else "inside the margin: the floor does not stop the design"
    )
    return [
        f"Test-example floor (stats.planning_example_se): SE {f['floor_se'] * pp:g} pp that no "
        f"number of seeds lowers; at {plan.max_seeds} pairs the SE is {f['se_max'] * pp:.3f} pp "
        f"and the narrowest equivalence interval ±{f['half_eq_max'] * pp:.3f} pp, {verdict}."
    ]


def format_plan(summary, cfg: Config, seconds: dict, bench: Path | None) -> str:
    """`bnpipe plan`'s text: the design, its boundaries, decision probabilities and cost, laid
    out as gsDesign's design summary (per comparison: all comparisons share one design)."""
    plan = summary.plan
    pp = 100.0
    looks = summary.looks
    lines = [
        f"{_contrast_cfg(cfg)}: {summary.comparisons} comparisons",
        f"The {plan.describe()}.",
        f"Per comparison: alpha {plan.alpha_per_comparison:.4g} (two-sided, benefit or harm); "
        + (
            f"equivalence inside ±{plan.margin * pp:g} pp by two one-sided tests at "
            f"{plan.alpha_per_comparison:.4g} each"
            if plan.equivalence == "tost"
            else f"equivalence inside ±{plan.margin * pp:g} pp by the same interval"
        )
        + f"; planning SD {plan.planning_sd * pp:g} pp per seed pair.",
        *_floor_lines(plan),
        "",
        "Boundaries per look, |t| at n-1 df: benefit or harm when mean ± t·SE excludes 0 "
        "(first t), equivalent when mean ± t·SE lies inside the margin (second t):",
        f"{'look':>4}  {'pairs':>5}  {'models':>6}  {'benefit/harm t':>14}  "
        f"{'equivalence t':>13}  {'alpha spent':>11}",
    ]
    for r in looks.itertuples(index=False):
        lines.append(
            f"{r.look:>4}  {r.n:>5}  {summary.arms * r.n:>6}  {r.t_crit:>14.3f}  "
            f"{r.t_crit_eq:>13.3f}  {r.alpha_spent:>11.4f}"
        )
    oc = summary.characteristics
    lines += [
        "",
        f"Per comparison at the planning SD ({int(oc['n_sim'].iloc[0]):,} simulated comparisons "
        "per true effect):",
        f"{'true effect':>11}  {'expected pairs':>14}  {'expected models':>15}  "
        f"{'P(benefit)':>10}  {'P(harm)':>7}  {'P(equivalent)':>13}  {'P(undecided)':>12}",
    ]
    for r in oc.itertuples(index=False):
        lines.append(
            f"{r.effect * pp:>+8.2f} pp  {r.asn:>14.1f}  {r.models:>15.1f}  {r.p_benefit:>10.4f}  "
            f"{r.p_harm:>7.4f}  {r.p_equivalent:>13.4f}  {r.p_undecided:>12.4f}"
        )
    cost = summary.cost(cfg.train.epochs, seconds, cfg.train.batch_size)
    lines += [
        "",
        "Models and estimated training time (expected: fewest to most over the true effects "
        "above, and at effect 0; max: every look):",
        f"{'comparison':<16}  {'expected models':>19}  {'max':>5}  {'est. min expected':>21}  "
        f"{'est. min max':>12}",
    ]
    for r in cost.itertuples(index=False):
        expected = f"{r.models_low:.0f}-{r.models_high:.0f} ({r.models_zero:.0f} at 0)"
        time_exp = (
            f"{_minutes(r.seconds_low)}-{_minutes(r.seconds_high)} ({_minutes(r.seconds_zero)})"
        )
        lines.append(
            f"{r.comparison:<16}  {expected:>19}  {r.models_max:>5.0f}  {time_exp:>21}  "
            f"{_minutes(r.seconds_max):>12}"
        )
    if bench is None:
        lines.append(
            "No time estimate: no bench figures (run `bnpipe bench --json FILE`, then "
            "`bnpipe plan --bench FILE`)."
        )
    else:
        lines.append(
            f"Times are estimates: models x {cfg.train.epochs} epochs x the {cfg.train.engine} "
            f"engine's overall s/model-epoch at each batch size in {bench}, training only "
            "(evaluation, tracking and orchestration add to it: the 440-model run of 2026-12-05 "
            "trained 475 s of its 575 s), on the machine that bench ran on."
        )
    return "\n".join(lines)


def _contrast_cfg(cfg: Config) -> str:
    # As bnpipe.runner.contrast_text, without importing MLflow for a command that never tracks.
    others = [n for n in cfg.grid.levels if n != cfg.grid.compare]
    compared = contrast_phrase(cfg.grid.compare, cfg.grid.compare_levels)
    return f"{compared} test accuracy {strata_phrase(others)}"


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from bnpipe.data import DataError
    from bnpipe.reproduce import ReproduceError, format_reproduction, reproduce_run
    from bnpipe.tracking import Tracker, TrackingError, resolve_uri

    try:
        cfg = resolve_config(args.params, args.overrides)
        tracker = Tracker(resolve_uri(cfg.tracking.uri), cfg.tracking.experiment)
        tracker.check()
        trainer.import_quietly()
        rep = reproduce_run(tracker, args.run_id, cfg.data.dir)
    except (ConfigError, DataError, TrackingError, ReproduceError) as exc:
        return bad_input(str(exc))
    except MlflowException as exc:
        return bad_input(f"run {args.run_id}: {_first_line(exc)}")
    print(format_reproduction(rep))
    return EXIT_OK if rep.matches else EXIT_MISMATCH


# Characters that start a new line in a terminal or for str.splitlines().
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def bad_input(message: str) -> int:
    """Print ``bnpipe: error: message`` as exactly one line; return exit code 2.

    Keys and values echoed in a message come from the user and may hold line breaks (a YAML key
    can); they are shown escaped so the error stays one line.
    """
    for ch in _LINE_BREAKS:
        message = message.replace(ch, ch.encode("unicode_escape").decode())
    print(f"bnpipe: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _quiet_defaults() -> None:
    """Keep the console readable: progress lines, not a log line per task state or TF banner.

    Only defaults: anything the user set in the environment wins.
    """
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")
    # 3, not 2: TF logs two false ERROR lines per program it loads from the XLA cache (a text
    # parse it tries before the binary one, and tuning flags it mistakes for missing CPU
    # features); real failures still raise, with their message, in Python.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # MLflow announces creating and migrating a new store at INFO; an error line must stand alone.
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:
        for name in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    # The temporary Prefect server would try to phone home; these machines are often offline.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def cmd_report(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from bnpipe.design import design_overrides, plan_of
    from bnpipe.report import build_run_report
    from bnpipe.tracking import Tracker, TrackingError, redact_uri, resolve_uri

    try:
        cfg = resolve_config(args.params, args.overrides)
        tracker = Tracker(resolve_uri(cfg.tracking.uri), cfg.tracking.experiment)
        tracker.check()
        results, histories, run_name, params = tracker.parent_tables(args.run_id)
        # The run's own design decides its report, whatever the params say now: a design
        # chosen after the data is not the one the error guarantee covers.
        own = resolve_config(args.params, [*args.overrides, *design_overrides(params)])
    except (ConfigError, TrackingError) as exc:
        return bad_input(str(exc))
    except (MlflowException, OSError) as exc:
        return bad_input(f"run {args.run_id}: {_first_line(exc)}")
    run_info = {
        "parent run": args.run_id,
        "tracking": redact_uri(tracker.uri),
        "rebuilt by": "bnpipe report",
    }
    if plan_of(own).design_id() != plan_of(cfg).design_id():
        print(f"design: the run's own, as recorded ({plan_of(own).describe()}), not the params'")
    out = build_run_report(results, histories, own, run_name, run_info)
    tracker.log_report(args.run_id, [out.report_path, *out.figures])
    analysis = out.analysis
    # The arms as the parent's own results table has them (a run from before arm runs gets its).
    tracker.log_arm_runs(args.run_id, analysis.arms, alpha=cfg.stats.alpha)
    if analysis.sequential:
        print(f"Decided: {_contrast(analysis.summary.to_dict('records'))}, sequential design:")
        print(format_decisions(analysis.decisions.to_dict("records")))
        print("\nFixed-sample tests on the same pairs (descriptive):")
    print(format_summary(analysis.summary.to_dict("records")))
    print(f"report: {out.report_path}")
    print(f"MLflow arm means (every seed): {tracker.arms_url(args.run_id)}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = checked_config(args)
    if cfg is None:
        return EXIT_BAD_INPUT
    from flows import serve as serve_mod

    return serve_mod.run(args, cfg)


_signals: list[int] = []  # SIGINT/SIGTERM received by this process, first first


def _on_signal(signum: int, _frame: object) -> None:
    """First SIGINT/SIGTERM: unwind (open runs are closed on the way out); a second: exit now."""
    if _signals:
        os._exit(128 + _signals[0])
    _signals.append(signum)
    raise KeyboardInterrupt


def _watch_signals() -> Callable[[], None]:
    """Tell the training calls about SIGINT/SIGTERM from below Python's handlers: whichever
    handler runs (Prefect's own SIGTERM one during a flow run), and wherever its exception ends
    up, the C-level handler writes the signal's number to the wakeup fd (bnpipe.trainer says
    why). Returns what undoes it."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def watch() -> None:
        with open(read_end, "rb", buffering=0) as signals:
            while numbers := signals.read(64):
                for signum in numbers:
                    if signum in (signal.SIGINT, signal.SIGTERM):
                        trainer.request_stop(signum)

    threading.Thread(target=watch, name="bnpipe-signals", daemon=True).start()

    def undo() -> None:
        signal.set_wakeup_fd(previous)
        os.close(write_end)  # the watcher reads the end of the pipe and leaves

    return undo


# How Prefect's crash reports name an interrupt (prefect.states.exception_to_crashed_state).
_INTERRUPT_REPORTS = (
    "aborted by an interrupt signal",
    "aborted by a termination signal",
    trainer.STOPPED,  # a group that stopped at its next epoch because the flow did
)


def _not_an_interrupt_report(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in _INTERRUPT_REPORTS)


def _hide_interrupt_reports() -> None:
    """Keep Prefect's per-run "Crash detected!" lines about an interrupt off the console (the
    Prefect API still records them): bnpipe prints one line for an interrupt instead."""
    for handler in logging.getLogger().handlers:
        if _not_an_interrupt_report not in handler.filters:
            handler.addFilter(_not_an_interrupt_report)


def interrupted(exc: KeyboardInterrupt) -> int:
    """The one line after Ctrl-C or SIGTERM; the shell's exit code for that signal."""
    runs = getattr(exc, "runs_failed", 0)
    signum = _signals[0] if _signals else getattr(exc, "signum", signal.SIGINT)
    print(f"interrupted: {runs} open cell run(s) marked FAILED; rerun to continue", file=sys.stderr)
    return 128 + signum


def console() -> int:
    """The ``bnpipe`` command: :func:`main` owning its process tree, so a run trains in a
    process beside the flow's (a library call of :func:`main` trains in its own process)."""
    return main(trainer_process=True)


def main(argv: list[str] | None = None, *, trainer_process: bool = False) -> int:
    _quiet_defaults()
    args = _parser().parse_args(argv)
    if args.command in ("run", "reproduce", "claims"):
        from bnpipe import xla_cache

        # Before TensorFlow's first compile in this process. Not for bench: it times compiles.
        xla_cache.enable()
    # Handlers only from the main thread (Python's rule); restored after, for callers in-process.
    previous, unwatch = {}, None
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        unwatch = _watch_signals()
    try:
        return _dispatch(args, trainer_process=trainer_process)
    except KeyboardInterrupt as exc:
        code = interrupted(exc)
        if _signals or getattr(exc, "signum", None) == signal.SIGTERM:
            # Told to stop by a signal, and the runs are closed and the server is stopped: skip
            # the interpreter's teardown (TensorFlow's takes 10+ s on a loaded machine).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if unwatch is not None:
            unwatch()
        _signals.clear()
        trainer.clear_stop()


def _dispatch(args: argparse.Namespace, *, trainer_process: bool = False) -> int:
    if args.command == "run":
        return cmd_run(args, trainer_process=trainer_process)
    if args.command == "report":
        return cmd_report(args)
    if args.command == "plan":
        return cmd_plan(args)
    if args.command == "claims":
        return cmd_claims(args)
    if args.command == "reproduce":
        return cmd_reproduce(args)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "bench":
        from bnpipe import bench

        return bench.run(args)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(console())
