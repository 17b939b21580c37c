"""bnpipe from Python (a notebook): ``bnpipe.run`` and ``bnpipe.load``, warm between calls.

``run`` is ``bnpipe run`` without the command's process: the same flow (flows.pipeline's
``ablation``), the same MLflow record, cell keys and reuse, overrides validated as ``--set``.
What the command pays on every call is paid once per Python process here: the imports, Prefect's
temporary server and the training process (bnpipe.trainer, TensorFlow imported once) are kept for
the next call and stopped when the interpreter exits (a Jupyter kernel shut down or restarted;
killed, the server gets the kernel's death signal and the training process sees its pipe close).

Both return a :class:`Run`, which renders the run's :class:`bnpipe.analysis.Analysis` (computed
once, by the flow or, for a recorded run, as ``bnpipe report`` does) and computes nothing.
"""

from __future__ import annotations

import atexit
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnpipe.config import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from bnpipe.analysis import Analysis
    from bnpipe.config import Config
    from bnpipe.trainer import TrainerProcess
    from flows.server import TemporaryServer

__all__ = ["Html", "Run", "load", "run", "stop"]


@dataclass(frozen=True)
class Run:
    """One run of the grid, as the flow returned it or as MLflow recorded it.

    Attributes:
        run_id: The MLflow parent run's id (``bnpipe.load(run_id)`` reads it back).
        run_name: Its name, also the Prefect flow run's.
        analysis: The run's answer; every view below renders it.
        mlflow_url: The parent run's page in the MLflow UI (``make ui`` serves a local store).
        flow_run_id: The Prefect flow run that wrote it.
        flow_run_url: Its page in the Prefect UI, where a UI is configured (PREFECT_UI_URL).
        trained, reused: Cells trained by this run and reused from earlier ones (None: loaded).
    """

    run_id: str
    run_name: str
    analysis: Analysis
    mlflow_url: str
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    trained: int | None = None
    reused: int | None = None
    _read_report: Callable[[str], bytes] = field(default=lambda name: b"", repr=False)

    @property
    def decisions(self) -> pd.DataFrame:
        """The decided table: one row per comparison (``Analysis.decisions``)."""
        return self.analysis.decisions

    @property
    def summary(self) -> pd.DataFrame:
        """The fixed-sample tests per comparison (descriptive after a sequential design)."""
        return self.analysis.summary

    @property
    def cells(self) -> pd.DataFrame:
        """One row per cell (levels, seed, status, metrics) with its MLflow run id (``run_id``)."""
        return self.analysis.results

    def report(self) -> Html:
        """The whole report inline: the run's report.html (figures embedded), in a frame."""
        from bnpipe.report.html import framed

        return Html(framed(self._read_report("report.html").decode("utf-8")))

    def _figure(self) -> bytes | None:
        from bnpipe.report.html import headline_figure

        try:
            return self._read_report(headline_figure(self.analysis))
        except (OSError, ValueError):  # no figure to show: the table and links still are
            return None

    def _facts(self) -> str:
        cells = len(self.analysis.results)
        if self.trained is None:
            return f"{cells} cells, read back from MLflow"
        return f"{cells} cells: {self.trained} trained, {self.reused} reused"

    def _repr_html_(self) -> str:
        from bnpipe.report.html import run_view_html

        flow = f"Prefect flow run {self.flow_run_id}" if self.flow_run_id else "Prefect: unknown"
        return run_view_html(
            self.analysis,
            title=f"bnpipe run {self.run_name}",
            figure_png=self._figure(),
            links=[
                (f"MLflow parent run {self.run_id}", self.mlflow_url),
                (flow, self.flow_run_url),
            ],
            facts=self._facts(),
        )

    def __repr__(self) -> str:
        from bnpipe.report.markdown import answer_markdown

        return (
            f"bnpipe run {self.run_name} (MLflow parent run {self.run_id}; {self._facts()})\n"
            + answer_markdown(self.analysis)
        )


class Html(str):
    """HTML that Jupyter shows as such (and any other caller reads as the text it is)."""

    def _repr_html_(self) -> str:
        return str(self)


def overrides(sections: Mapping[str, Any]) -> list[str]:
    """``run``'s keyword sections as ``--set`` overrides: ``grid={"seeds": [0, 1]}`` is
    ``--set grid.seeds=[0, 1]`` (each key of a section replaces that setting, as one --set)."""
    import yaml

    out = []
    for section, values in sections.items():
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"{section}: expected a mapping of settings, e.g. {section}={{...: ...}} "
                f"(got {type(values).__name__})"
            )
        for key, value in values.items():
            text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
            text = text.removesuffix("\n...").removesuffix("...").strip()
            out.append(f"{section}.{key}={text}")
    return out


def run(
    params: str | Path | None = "params.yaml",
    *,
    fresh: bool = False,
    new_design: bool = False,
    large: bool = False,
    sets: Sequence[str] = (),
    **sections: Mapping[str, Any],
) -> Run:
    """Run the grid of ``params`` with overrides, as ``bnpipe run --params ... --set ...`` does.

    Args:
        params: The params file (None: ./params.yaml when present, else the built-in defaults).
        fresh, new_design, large: As ``bnpipe run --fresh / --new-design / --large``.
        sets: Overrides as ``--set`` takes them (``["train.epochs=1"]``), before ``sections``.
        **sections: Overrides by section, e.g. ``grid={"seeds": [0, 1]}, train={"epochs": 1}``.

    Raises:
        ConfigError, DataError, TrackingError: bad input (one line naming the field or file),
            before any MLflow run is created.
        KeyboardInterrupt: interrupted (the kernel's stop button); open cell runs are closed
            FAILED, finished cells are kept, and the next call continues.
    """
    from bnpipe import cli
    from bnpipe.progress import PhaseClock

    cli._quiet_defaults()
    sets = [*sets, *overrides(sections)]
    cfg = cli.resolve_config(None if params is None else str(params), sets)
    if not large and (too_large := cli.grid_too_large(cfg)) is not None:
        raise ConfigError(too_large.replace("--large", "large=True"))
    clock = PhaseClock()
    warm = _session()
    process = warm.start(cfg)  # the first call: TensorFlow imports there while this one checks
    cli.preflight(cfg, clock, new_design)
    out = warm.run_flow(cfg, process, fresh=fresh, new_design=new_design)
    return Run(
        run_id=out["parent_run_id"],
        run_name=out["run_name"],
        analysis=out["analysis"],
        mlflow_url=out["parent_url"],
        flow_run_id=out["flow_run_id"],
        flow_run_url=out["flow_run_url"],
        trained=out["trained"],
        reused=out["reused"],
        _read_report=_local_report(Path(out["report"]).parent),
    )


def load(run_id: str, params: str | Path | None = "params.yaml", **sections: Any) -> Run:
    """A recorded run (its MLflow parent run id), analysed as ``bnpipe report`` does: under its
    own recorded design, from the results it recorded. Trains nothing, starts no server.

    ``params`` and ``sections`` say where the store is (``tracking``), as for :func:`run`.
    """
    from bnpipe import cli
    from bnpipe.analysis import analyze
    from bnpipe.design import design_overrides
    from bnpipe.tracking import FLOW_RUN_ID_TAG, FLOW_RUN_URL_TAG, Tracker, resolve_uri

    cli._quiet_defaults()
    params = None if params is None else str(params)
    sets = overrides(sections)
    cfg = cli.resolve_config(params, sets)
    tracker = Tracker(resolve_uri(cfg.tracking.uri), cfg.tracking.experiment)
    tracker.check()
    results, histories, run_name, recorded = tracker.parent_tables(run_id)
    own = cli.resolve_config(params, [*sets, *design_overrides(recorded)])
    tags = tracker.parent_tags(run_id)
    return Run(
        run_id=run_id,
        run_name=run_name,
        analysis=analyze(results, histories, own),
        mlflow_url=tracker.run_url(run_id),
        flow_run_id=tags.get(FLOW_RUN_ID_TAG),
        flow_run_url=tags.get(FLOW_RUN_URL_TAG),
        _read_report=lambda name: tracker.report_file(run_id, name),
    )


def _local_report(folder: Path) -> Callable[[str], bytes]:
    return lambda name: (folder / name).read_bytes()


def stop() -> None:
    """Stop this process's warm training process and Prefect server now (the next ``run``
    starts them again); done at interpreter exit anyway."""
    if _warm is not None:
        _warm.close()


# -- the warm session --------------------------------------------------------------------------

_warm: _Warm | None = None
_warm_lock = threading.Lock()


def _session() -> _Warm:
    global _warm
    with _warm_lock:
        if _warm is None:
            import multiprocessing.util  # noqa: F401 -- registers its exit handler now, before ours

            _warm = _Warm()
            # After multiprocessing's own exit handler (handlers run last-registered first), so
            # the training process has left before it joins its children.
            atexit.register(_warm.close)
        return _warm


class _Warm:
    """This process's training process and Prefect server, kept between runs."""

    def __init__(self) -> None:
        self.trainer: TrainerProcess | None = None
        self.server: TemporaryServer | None = None
        self._lock = threading.Lock()  # one run at a time per process

    def start(self, cfg: Config) -> TrainerProcess | None:
        """Start what is not running (again, if it died); the training process a run of
        ``cfg`` uses, or None (it trains in this process, as ``bnpipe run`` would)."""
        from bnpipe import trainer, xla_cache
        from bnpipe.report.figures import keep_figures
        from bnpipe.tracking.cell_record import keep_reads
        from flows.server import TemporaryServer

        xla_cache.enable()  # before the first compile here, and inherited by the trainer
        keep_reads()  # a rerun reads each reused cell's history and outcomes once per session
        keep_figures()  # ... and draws a report's figures once per set of inputs
        wanted = trainer.wanted(cfg.orchestration.task_runner, cfg.train.engine)
        if wanted and (self.trainer is None or not self.trainer.alive()):
            if self.trainer is not None:
                self.trainer.close()
            self.trainer = trainer.TrainerProcess()
        if self.server is None or not self.server.alive():
            if self.server is not None:
                self.server.stop()
            # Entered from the calling thread: the server's death signal follows that thread.
            self.server = TemporaryServer().__enter__()
        return self.trainer if wanted else None

    def run_flow(
        self, cfg: Config, process: TrainerProcess | None, *, fresh: bool, new_design: bool
    ) -> dict[str, Any]:
        """The ablation flow on the warm server, training in ``process`` when there is one."""
        import contextlib

        from bnpipe import cli
        from bnpipe.runner import Outage
        from flows.pipeline import Interrupted, ablation, quiet_reported_errors
        from flows.server import check_api

        refused = check_api()
        if refused is not None:
            raise ConfigError(refused)
        assert self.server is not None
        self.server.wait()
        quiet_reported_errors()
        cli._hide_interrupt_reports()
        with (
            self._lock,
            process.serving(cfg.data) if process else contextlib.nullcontext(),
            _no_default_heartbeats(),
        ):
            try:
                return ablation(cfg.model_dump(mode="json"), fresh=fresh, new_design=new_design)
            except Interrupted as exc:
                print(
                    f"interrupted: {exc.runs_failed} open cell run(s) marked FAILED, finished "
                    "cells kept; run again to continue",
                    file=sys.stderr,
                )
                raise
            except Outage as exc:
                print(
                    f"bnpipe: stopped: {exc}; {exc.runs_failed} open cell run(s) marked FAILED, "
                    "finished cells kept; run again to continue",
                    file=sys.stderr,
                )
                raise

    def close(self) -> None:
        """Stop the training process (it publishes its XLA cache entries), then the server."""
        trainer, self.trainer = self.trainer, None
        server, self.server = self.server, None
        if trainer is not None:
            trainer.close()
        if server is not None:
            server.stop()

    def pids(self) -> list[int]:
        """The processes this session keeps (tests check none outlives the interpreter)."""
        out = []
        if self.trainer is not None:
            out.append(self.trainer.pid)
        if self.server is not None and self.server.process is not None:
            out.append(self.server.process.pid)
        return [p for p in out if p is not None]


# The settings a session's flow runs use when the user's have Prefect's default heartbeats:
# (their settings, the same without heartbeats), built once (a copy costs ~0.07 s).
_unbeating: list[Any] = [None, None]


def _no_default_heartbeats() -> Any:
    """A settings context in which this session's flow runs send no heartbeats, unless the user
    set their frequency (PREFECT_FLOWS_HEARTBEAT_FREQUENCY or a profile's).

    Prefect's default sends one every 180 s from a thread that sleeps in whole seconds, and the
    end of every flow run waits for that thread: 0-1 s, about a third of a warm rerun (0.44 s of
    a profiled 1.2 s one). Heartbeats only serve an automation a user creates to mark a silent
    flow run crashed; whoever has one sets the frequency. `bnpipe run` keeps Prefect's default.
    """
    import contextlib

    from prefect.context import SettingsContext, get_settings_context
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    context = get_settings_context()
    if "heartbeat_frequency" in context.settings.flows.model_fields_set:
        return contextlib.nullcontext()
    if _unbeating[0] is not context.settings:
        update = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        _unbeating[:] = [context.settings, context.settings.copy_with_update(updates=update)]
    return SettingsContext(profile=context.profile, settings=_unbeating[1])


def session_pids() -> list[int]:
    """The warm session's processes in this interpreter (none before the first ``run``)."""
    return _warm.pids() if _warm is not None else []
