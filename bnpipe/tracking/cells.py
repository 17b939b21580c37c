"""The cell-claims protocol: a RUNNING child run is a cell's claim; races are settled by reading
back, and claims whose process is gone are marked abandoned.

Resume and concurrency rest on three facts kept in run tags:

- ``bnpipe.cell_key`` on every child run: the hash of everything that decides the cell's numbers.
  A FINISHED child with the key is a result any later run may reuse instead of training: its
  ``bnpipe.status`` says which outcome, ``finished`` (trained, evaluated) or ``diverged``
  (non-finite loss; with fixed seeds it diverges again identically, so it is not retrained).
- A child run is created RUNNING *before* its cell trains: that run is the cell's claim. Two
  processes that claim the same key both see both claims on reading back; the earliest claim
  (start time, then run id) trains, the other withdraws its claim (deletes that run) and waits.
- ``bnpipe.owner`` (host, pid, process start) on every run and ``bnpipe.heartbeat`` on parents
  tell a live claim from one whose process was killed: those are marked FAILED ("abandoned") and
  their cells trained again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from bnpipe.factors import Cell
from bnpipe.tracking.names import (
    ABANDONED,
    ARM_ROLE,
    CELL_KEY_TAG,
    ERROR_TAG,
    FAILURE_TAG,
    HEARTBEAT_TAG,
    INTERRUPTED,
    OUTCOMES,
    OWNER_TAG,
    PARENT_TAG,
    ROLE_TAG,
    STATUS_TAG,
    UNUSABLE_TAG,
    WITHDRAWN,
    current_names,
    logged_params,
    metric_name,
    recorded_cell,
    recorded_cell_params,
)
from bnpipe.tracking.store import Store, first_line, release_interrupted_write

# A parent's heartbeat is refreshed this often; a run on another host whose heartbeat is older
# than STALE_AFTER_S counts as abandoned (on the same host the process table decides at once).
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
_log = logging.getLogger(__name__)


# -- who owns a run ------------------------------------------------------------------------------
def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return text.rpartition(")")[2].split()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return ""


def _start_token(pid: int) -> str:
    """Boot id + start time of ``pid`` (tells a pid reused after a reboot or wrap-around apart).

    Empty where /proc does not exist (macOS): then only the pid and the heartbeat are known.
    """
    if not Path("/proc/self/stat").exists():
        return ""
    fields = _proc_stat(pid)
    return f"{_boot_id()}:{fields[19]}" if fields else ""


@dataclass(frozen=True)
class Owner:
    """The process that created a run: host name, pid, and the process's start token."""

    host: str
    pid: int
    started: str

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), _start_token(os.getpid()))

    @classmethod
    def parse(cls, value: str | None) -> Owner | None:
        if not value:
            return None
        host, _, rest = value.partition("|")
        pid, _, started = rest.partition("|")
        return cls(host, int(pid), started) if pid.isdigit() else None

    def tag(self) -> dict[str, str]:
        return {OWNER_TAG: f"{self.host}|{self.pid}|{self.started}"}

    def is_gone(self) -> bool | None:
        """True if the process has ended, False if it runs, None if this host cannot tell."""
        if self.host != socket.gethostname():
            return None
        if self.started and Path("/proc/self/stat").exists():
            fields = _proc_stat(self.pid)
            # A zombie (state Z) has exited; only its parent has not reaped it yet.
            return fields is None or fields[0] == "Z" or _start_token(self.pid) != self.started
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # it exists, owned by another user
        return False


# -- records -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellSpec:
    """What a claim records before training: the cell's key, run name, params and tags."""

    key: str
    name: str
    params: Mapping[str, Any]
    tags: Mapping[str, Any]


@dataclass(frozen=True)
class CellRun:
    """One child run as stored: status, params, latest metrics, tags."""

    run_id: str
    name: str
    status: str
    lifecycle: str
    start_time: int
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    # Its grid's factors, from its parent's params (names.grid_factors): read by
    # Tracker.cell_run only, as runs found in bulk never need their cell.
    factors: tuple[str, ...] | None = None

    @classmethod
    def of(cls, run: Run, factors: tuple[str, ...] | None = None) -> CellRun:
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name or "",
            status=run.info.status,
            lifecycle=run.info.lifecycle_stage,
            start_time=int(run.info.start_time or 0),
            params=dict(run.data.params),
            metrics=current_names(run.data.metrics),
            tags=dict(run.data.tags),
            factors=factors,
        )

    @property
    def key(self) -> str:
        return self.tags.get(CELL_KEY_TAG, "")

    @property
    def parent_id(self) -> str:
        return self.tags.get(PARENT_TAG, "")

    @property
    def is_arm(self) -> bool:
        """A summary run of one arm's cells (Tracker.log_arm_runs), not a cell."""
        return self.tags.get(ROLE_TAG) == ARM_ROLE

    @property
    def outcome(self) -> str:
        """The cell's status as recorded: "finished", "diverged", "failed", "running", ..."""
        return self.tags.get(STATUS_TAG, "")

    @property
    def reusable(self) -> bool:
        """A cell outcome that stands for any run with its key: finished with a test accuracy,
        or diverged (never evaluated). Runs older than diverged-as-outcome recorded diverged
        cells FAILED: those are not reusable and train once more."""
        return (
            self.status == "FINISHED"
            and self.lifecycle == "active"
            and self.outcome in OUTCOMES
            and (self.outcome == "diverged" or metric_name("test_accuracy") in self.metrics)
            and UNUSABLE_TAG not in self.tags
        )

    @property
    def test_accuracy(self) -> float:
        """The recorded test accuracy; NaN for a diverged cell (never evaluated)."""
        return self.metrics.get(metric_name("test_accuracy"), float("nan"))

    @property
    def test_loss(self) -> float:
        return self.metrics.get(metric_name("test_loss"), float("nan"))

    @property
    def cell_params(self) -> dict[str, str]:
        """The params under grid.cell_params' names (``bn`` "True"/"False"), old runs or new."""
        return recorded_cell_params(self.params)

    @property
    def cell(self) -> Cell:
        """The grid cell this run recorded: its factors' levels and seed, from its params.

        Raises:
            LookupError: its grid's factors were not read (see :attr:`factors`).
            KeyError, ValueError: its params do not describe a cell of that grid.
        """
        if self.factors is None:
            raise LookupError(f"run {self.run_id}: its grid is unknown (read it by cell_run)")
        return recorded_cell(self.params, self.factors)

    @property
    def order(self) -> tuple[int, str]:
        """Claims and duplicate results are ranked by this: the earliest wins, everywhere."""
        return (self.start_time, self.run_id)


@dataclass
class Claims:
    """Outcome of claiming cells: what to train, what to reuse, what to wait for (by key)."""

    won: dict[str, str] = field(default_factory=dict)  # key -> our claim run id: train it
    finished: dict[str, CellRun] = field(default_factory=dict)  # key -> a result to reuse
    taken: dict[str, str] = field(default_factory=dict)  # key -> another live claim: wait


class CellClaims(Store):
    """Claiming cells, finding finished ones, waiting for other runs, marking abandoned runs."""

    # A search returns whole runs (params, metrics and tags as ORM objects, ~3 ms a run on
    # SQLite), so finding a group's few keys by scanning every cell run grew with the store
    # (0.15 s a group at 48 runs; a full grid and the studies hold hundreds). A search for one
    # key reads only its runs (~5 ms). Past this many keys one scan of the experiment is cheaper.
    keys_per_search_max: int = 64

    def claim_cells(
        self, parent_id: str, specs: list[CellSpec], owner: Owner, *, exclusive: bool = True
    ) -> Claims:
        """Create one RUNNING child run per cell (its claim), then settle races by reading back.

        With ``exclusive`` (the default), a cell that another run finished meanwhile is reused and
        a cell another live run claimed earlier is left to it; our own claim on those cells is
        withdrawn (closed KILLED, then deleted, so no empty duplicate remains). Without it
        (``--fresh``) every claim is ours to train. If this raises (Ctrl-C included), no claim it
        made is left open: each is marked FAILED ("interrupted").
        """
        mine: dict[str, str] = {}
        closed: set[str] = set()
        try:
            for s in specs:
                mine[s.key] = self.start_run(
                    s.name,
                    params=logged_params(s.params),
                    tags={**s.tags, CELL_KEY_TAG: s.key, STATUS_TAG: "running", **owner.tag()},
                    parent_id=parent_id,
                )
            if not exclusive or not mine:
                return Claims(won=mine)
            return self._settle(mine, closed)
        except BaseException as exc:
            release_interrupted_write(exc)
            for run_id in mine.values():
                if run_id not in closed:
                    self.fail_run(run_id, f"{type(exc).__name__}: {exc}", failure=INTERRUPTED)
            raise

    def _settle(self, mine: dict[str, str], closed: set[str]) -> Claims:
        """Keep the claims that won their race; withdraw the others (their ids go to ``closed``)."""
        by_key = self._cell_runs_by_key(mine)
        claims, parents = Claims(), {}
        for key, run_id in mine.items():
            found = by_key.get(key, [])
            done = [r for r in found if r.reusable]
            live = [
                r
                for r in found
                if r.status == "RUNNING"
                and r.lifecycle == "active"
                and (r.run_id == run_id or not self._abandoned(r, parents))
            ]
            first = min(live, key=lambda r: r.order) if live else None
            if done:
                claims.finished[key] = min(done, key=lambda r: r.order)
                why = f"run {claims.finished[key].run_id} had finished the cell"
            elif first is None or first.run_id == run_id:
                claims.won[key] = run_id
                continue
            else:
                claims.taken[key] = first.run_id
                why = f"run {first.run_id} claimed the cell first"
            self._withdraw(run_id, why)
            closed.add(run_id)
        return claims

    def _withdraw(self, run_id: str, why: str) -> None:
        """Close a lost claim, then delete it: a deleted run must not stay RUNNING."""
        tags = {FAILURE_TAG: WITHDRAWN, STATUS_TAG: WITHDRAWN, ERROR_TAG: why}
        self._log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, "KILLED")
        self.client.delete_run(run_id)

    def _cell_runs_by_key(self, keys: Iterable[str]) -> dict[str, list[CellRun]]:
        wanted = set(keys)
        if len(wanted) <= self.keys_per_search_max:
            # Keys are hex digests (provenance.cell_key): safe inside quotes.
            runs = (r for k in sorted(wanted) for r in self._runs(f"tags.`{CELL_KEY_TAG}` = '{k}'"))
        else:
            runs = self._runs(f"tags.`{CELL_KEY_TAG}` IS NOT NULL")
        out: dict[str, list[CellRun]] = {}
        for run in runs:
            cell = CellRun.of(run)
            if cell.key in wanted:
                out.setdefault(cell.key, []).append(cell)
        return out

    def finished_cells(self, keys: Iterable[str]) -> dict[str, CellRun]:
        """For each key with a reusable result, the earliest such run (one pick, every time)."""
        return {
            key: min(done, key=lambda r: r.order)
            for key, runs in self._cell_runs_by_key(keys).items()
            if (done := [r for r in runs if r.reusable])
        }

    def wait_for(self, run_ids: Iterable[str], poll_s: float = 2.0) -> dict[str, CellRun | None]:
        """Block until at least one of the claims ``run_ids`` is settled; return the settled ones.

        A settled claim maps to its run when it finished with a result, or to None when it
        failed, was withdrawn, or its process is gone (then it is marked FAILED here).
        """
        ids = list(run_ids)
        while True:
            settled: dict[str, CellRun | None] = {}
            parents: dict[str, float | None] = {}
            for run in self._runs(
                "attributes.run_id IN (" + ",".join(f"'{i}'" for i in ids) + ")", ViewType.ALL
            ):
                cell = CellRun.of(run)
                if cell.reusable:
                    settled[cell.run_id] = cell
                elif cell.status != "RUNNING" or cell.lifecycle != "active":
                    settled[cell.run_id] = None
                elif self._abandoned(cell, parents):
                    self._mark_abandoned(cell)
                    settled[cell.run_id] = None
            if settled:
                return settled
            time.sleep(poll_s)

    # -- runs whose process is gone ----------------------------------------------------------
    def _heartbeat_age(self, parent_id: str, cache: dict[str, float | None]) -> float | None:
        if parent_id not in cache:
            beat = self.client.get_run(parent_id).data.tags.get(HEARTBEAT_TAG)
            cache[parent_id] = time.time() - float(beat) if beat else None
        return cache[parent_id]

    def _abandoned(self, run: CellRun, parents: dict[str, float | None]) -> bool:
        """Whether a RUNNING run's process is gone (killed, crashed, machine off)."""
        owner = Owner.parse(run.tags.get(OWNER_TAG))
        if owner is None:
            return False  # not written by this version of bnpipe: cannot tell, leave it alone
        gone = owner.is_gone()
        if gone is not None:
            return gone
        age = self._heartbeat_age(run.parent_id or run.run_id, parents)
        return age is not None and age > STALE_AFTER_S

    def _mark_abandoned(self, run: CellRun) -> None:
        owner = Owner.parse(run.tags.get(OWNER_TAG))
        who = f"process {owner.pid} on {owner.host}" if owner else "its process"
        self.fail_run(
            run.run_id,
            f"{who} ended before the run finished (killed, crashed or the machine stopped); "
            f"marked FAILED by {Owner.current().host}|{os.getpid()} at {time.ctime()}",
            failure=ABANDONED,
        )

    def fail_abandoned_runs(self) -> list[str]:
        """Mark FAILED every RUNNING run of the experiment whose process is gone; their ids.

        Runs of processes that are alive (a concurrent ``bnpipe run``) are left alone.
        """
        parents: dict[str, float | None] = {}
        failed = []
        # Read every page first: marking runs FAILED while paging would shift the pages (offset
        # tokens) under the search and skip runs.
        for cell in [CellRun.of(r) for r in self._runs("attributes.status = 'RUNNING'")]:
            # An arm run carries no owner: its numbers come from cells, it holds no claim.
            if not cell.is_arm and self._abandoned(cell, parents):
                self._mark_abandoned(cell)
                failed.append(cell.run_id)
        return failed

    @contextlib.contextmanager
    def heartbeat(self, run_id: str, every_s: float = HEARTBEAT_S) -> Iterator[None]:
        """Refresh ``bnpipe.heartbeat`` on ``run_id`` in a background thread while inside."""
        stop = threading.Event()

        def beat() -> None:
            while True:
                try:
                    self.client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
                except MlflowException as exc:
                    # A missed beat only matters after STALE_AFTER_S of them; keep training.
                    _log.warning("heartbeat of run %s not written: %s", run_id, first_line(exc))
                if stop.wait(every_s):
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat-{run_id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=30)
