"""``bnpipe bench``'s options and entry point: engines, smoke grids or the full grid."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from bnpipe.bench.commands import run_full_grid, run_smoke
from bnpipe.bench.engines import DEFAULT_BATCH_SIZES, run_bench
from bnpipe.bench.report import format_report
from bnpipe.data import DataError, load_mnist


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bnpipe bench``."""
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES), metavar="B"
    )
    parser.add_argument("--bn", choices=("on", "off", "both"), default="on")
    parser.add_argument("--seeds", type=int, default=10, help="models trained by the fused engine")
    parser.add_argument("--keras-seeds", type=int, default=2, help="models for the keras engine")
    parser.add_argument(
        "--reference-seeds", type=int, default=1, help="models for the reference recipe"
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs per model (>= 2 gives steady-state times)"
    )
    parser.add_argument("--steps-per-execution", type=int, default=100, help="keras engine knob")
    parser.add_argument("--limit-train", type=int, default=None, help="first N training images")
    parser.add_argument("--limit-test", type=int, default=None, help="first N test images")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (else $BNPIPE_DATA_DIR)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write results")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="time whole `bnpipe run` smoke grids (cold and warm XLA cache) against "
        "`python -c 'import tensorflow'` instead of the engines",
    )
    parser.add_argument(
        "--smoke-set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="extra --set for the smoke grid, e.g. train.shard_size=2",
    )
    parser.add_argument("--repeats", type=int, default=1, help="smoke rounds (median ratios)")
    parser.add_argument(
        "--prefect-server",
        action="store_true",
        help="with --smoke: also time the warm grid against a long-lived `prefect server start` "
        "(PREFECT_API_URL), as when iterating, instead of a temporary server per run",
    )
    parser.add_argument(
        "--no-session",
        action="store_true",
        help="with --smoke: leave out the warm session's rows (bnpipe.run three times in one "
        "Python process: the smoke grid, new seeds, the new seeds again)",
    )
    parser.add_argument(
        "--full-grid",
        action="store_true",
        help="time the whole default `bnpipe run --fresh` (plus any --smoke-set) against the "
        "FLOP floor",
    )
    parser.add_argument(
        "--peers",
        nargs="*",
        choices=("jax",),
        default=[],
        help="also time the same recipe in these frameworks (make bench-peers installs JAX)",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``bnpipe bench``; returns the exit status."""
    if args.full_grid:
        report = run_full_grid(args.smoke_set)
        print(f"full grid: {report['ratio']:.2f}x the FLOP floor end to end")
        return _write_json(args.json, report)
    if args.smoke:
        report = run_smoke(
            args.smoke_set,
            repeats=args.repeats,
            served=args.prefect_server,
            session=not args.no_session,
        )
        served = (
            f", warm with a long-lived Prefect server {report['served_ratio']:.2f}x"
            if args.prefect_server
            else ""
        )
        print(
            f"smoke: cold {report['cold_ratio']:.2f}x, warm {report['warm_ratio']:.2f}x{served} "
            f"the time of `import tensorflow` (median of {args.repeats}; its CPU alone allows no "
            f"less than {report['cold_cpu_bound_ratio']:.2f}x / "
            f"{report['warm_cpu_bound_ratio']:.2f}x on {report['cores']} cores; 1-min load "
            f"{report['load_avg_1min']:.1f}; square GEMM {report['square_gflops']:.0f} GFLOP/s)"
        )
        if not args.no_session:
            print(
                f"warm session (bnpipe.run): new seeds {report['session_new_seeds_ratio']:.2f}x "
                f"(target <= 1x), rerun reusing every cell {report['session_rerun_ratio']:.2f}x "
                "(target <= 0.2x) the time of `import tensorflow`; the new seeds' training "
                f"alone {report['session_train_alone_ratio']:.2f}x (the floor under new seeds)"
            )
        return _write_json(args.json, report)
    try:
        data = load_mnist(args.data_dir).subset(args.limit_train, args.limit_test)
    except DataError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if "jax" in args.peers and importlib.util.find_spec("jax") is None:
        print("bench: --peers jax needs JAX: make bench-peers installs it", file=sys.stderr)
        return 2
    bn_values = {"on": (True,), "off": (False,), "both": (False, True)}[args.bn]
    report = run_bench(
        data,
        batch_sizes=args.batch_sizes,
        bn_values=bn_values,
        seeds=args.seeds,
        keras_seeds=args.keras_seeds,
        reference_seeds=args.reference_seeds,
        epochs=args.epochs,
        steps_per_execution=args.steps_per_execution,
        peers=args.peers,
    )
    print(format_report(report))
    return _write_json(args.json, report)


def _write_json(path: Path | None, report: dict) -> int:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)  # a long bench must not fail at its end
        path.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {path}")
    return 0
