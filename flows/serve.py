"""``bnpipe serve --cron ...``: serve the ablation flow as a scheduled Prefect deployment.

Two ways to run the ablation on a schedule, both against a Prefect server (PREFECT_API_URL):

- ``bnpipe serve``: this process registers the deployment ``bn-ablation/<name>`` and runs its
  flow runs itself. The params are read once, when serving starts, and stored as the
  deployment's parameters (shown, and editable per run, in the Prefect UI).
- ``prefect deploy`` (prefect.yaml): a work pool's worker runs ``ablation_from_file`` from
  flows/pipeline.py, which reads params.yaml at the start of every run.

Nothing here imports Prefect at module level: the CLI builds its parser from this module, and
``bnpipe --help`` should not pay for Prefect (nor configure its logging) just to print options.
"""

from __future__ import annotations

import argparse
import sys

from bnpipe.config import Config

DEFAULT_NAME = "nightly"
EXIT_OK, EXIT_BAD_INPUT = 0, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bnpipe serve`` (``--params``/``--set`` come from the CLI's shared ones)."""
    parser.add_argument(
        "--cron",
        required=True,
        help='when to run, as a cron string, e.g. "0 3 * * *" (03:00 every day)',
    )
    parser.add_argument(
        "--timezone",
        default="UTC",
        help="IANA time zone of the cron string, e.g. Europe/Berlin (default: UTC)",
    )
    parser.add_argument(
        "--name", default=DEFAULT_NAME, help=f"deployment name (default: {DEFAULT_NAME})"
    )


def check_schedule(cron: str, timezone: str) -> str | None:
    """Why the schedule is unusable, or None: checked before anything is registered."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        first = exc.errors()[0]["msg"].removeprefix("Value error, ")
        return f"--cron {cron!r} / --timezone {timezone!r}: {first}"
    return None


def serve(cfg: Config, cron: str, name: str = DEFAULT_NAME, timezone: str = "UTC") -> None:
    """Serve the ablation flow as deployment ``bn-ablation/<name>`` on ``cron``; blocks until
    interrupted. The deployment's parameters are ``cfg`` (a typed form in the UI).

    One run at a time (``limit=1``): a run that outlasts the interval delays the next one rather
    than training two grids at once on the same machine. Stopping the server pauses the schedule,
    so no runs pile up while nothing serves them.
    """
    from prefect.schedules import Cron

    from flows.pipeline import ablation
    from flows.server import check_api, starting, wait_for_api

    while True:
        try:
            ablation.serve(
                name=name,
                schedules=[Cron(cron, timezone=timezone)],
                parameters={"params": cfg.model_dump(mode="json")},
                description=f"BN ablation on cron {cron!r}; parameters: the experiment as in "
                "params.yaml",
                tags=["bnpipe"],
                limit=1,
            )
            return
        except Exception:
            # Prefect's runner gives up after a few failed polls in a row (~30 s): a server
            # restarted under it, slowly on a busy box, would end serving for good. A server
            # that is away is waited for and served again (registering is idempotent); any
            # other failure is raised as it was.
            if not starting(check_api()):
                raise
        print(
            "bnpipe serve: the Prefect server went away; serving again once it answers", flush=True
        )
        why = wait_for_api(say=lambda line: print(line, flush=True))
        if why is not None:
            raise SystemExit(f"bnpipe: error: {why}")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Entry point of ``bnpipe serve`` after the CLI loaded and preflighted ``cfg``."""
    from prefect.settings import PREFECT_API_URL

    why = check_schedule(args.cron, args.timezone)
    if why is None and not PREFECT_API_URL.value():  # env or the active Prefect profile
        # A temporary API would vanish with this process, and with it the schedule's history.
        why = (
            "PREFECT_API_URL is not set: start a Prefect server (prefect server start --host "
            "127.0.0.1) and export PREFECT_API_URL=http://127.0.0.1:4200/api (docs/servers.md)"
        )
    if why is None:
        from flows.server import wait_for_api

        # A wrong auth string would otherwise fail only at registering; a server still
        # starting (started together with this by a service manager) is waited for.
        why = wait_for_api(say=lambda line: print(line, flush=True))
    if why is not None:
        print(f"bnpipe: error: {why}", file=sys.stderr)
        return EXIT_BAD_INPUT
    serve(cfg, args.cron, args.name, args.timezone)
    return EXIT_OK
