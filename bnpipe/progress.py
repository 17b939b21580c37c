"""Progress of long runs (cells done / total, the current group and stage, elapsed time, ETA) as
plain lines or a live terminal bar, and where the run's wall time went."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from bnpipe.factors import Cell, levels_text


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    """Progress of a run: one line per finished cell, per epoch of the group being trained and
    per stage (a sequential look, say), or a live bar when ``stream`` is a terminal.

    Lines also go to every ``sinks`` callable (the flow sends them to Prefect's log), and
    ``on_cell(done, total)`` hears of every finished cell (the flow's progress artifact). Call
    ``close()`` (or use it as a context manager) to take the bar down.
    """

    def __init__(
        self,
        total_cells: int,
        epochs: int,
        stream: TextIO | None = None,
        clock: PhaseClock | None = None,
        *,
        sinks: Sequence[Callable[[str], None]] = (),
        on_cell: Callable[[int, int], None] | None = None,
        live: bool | None = None,
    ) -> None:
        self.total = total_cells  # may grow while running (the cells of a new look)
        self.clock = clock or PhaseClock()
        self.epochs = epochs
        self.done = 0
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self.sinks = list(sinks)
        self.on_cell = on_cell
        self.stage = ""
        self._group = ""
        self._last_epoch: tuple[tuple, int] | None = None
        # A bar only where a person watches: logs, pipes and CI keep plain lines. A Jupyter
        # kernel's output is watched, but is no terminal: its bar is an output updated in place.
        is_tty = getattr(self.stream, "isatty", lambda: False)()
        notebook = _in_notebook(self.stream)
        watched = is_tty or notebook if live is None else live
        self._bar: _Bar | _NotebookBar | None = None
        if watched:
            self._bar = _NotebookBar(total_cells) if notebook else _Bar(self.stream, total_cells)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Take the live bar down (a no-op with plain lines); idempotent."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _say(self, text: str, *, on_bar: bool = False) -> None:
        elapsed = _clock(time.perf_counter() - self.start)
        line = f"[{self.done:>3}/{self.total}] {elapsed} {text}"
        if self._bar is not None:
            if not on_bar:  # the bar shows it in place
                self._bar.print(line)
        else:
            print(line, file=self.stream, flush=True)
        for sink in self.sinks:
            sink(line)

    def _show(self) -> None:
        if self._bar is not None:
            text = " | ".join(t for t in (self.stage, self._group) if t)
            self._bar.update(self.done, self.total, text)

    def note(self, text: str) -> None:
        """A line above the bar (or a plain line), also sent to the sinks (Prefect's log)."""
        self._say(text)

    def set_stage(self, text: str) -> None:
        """Say which stage the run is in (e.g. ``look 2/5``): shown on the bar, and as a line."""
        self.stage = text
        self._show()
        self._say(text)

    def epoch(self, cell: Cell, epoch: int, row: dict[str, float]) -> None:
        """Called per model per epoch; a fused group reports once per epoch, not per member."""
        key = (cell.levels, epoch)
        if key == self._last_epoch:
            return
        self._last_epoch = key
        self._group = f"{levels_text(cell.levels)} epoch {epoch}/{self.epochs}"
        self._show()
        # On a bar the epoch shows in place; as lines it is the only sign of life in a long group.
        self._say(
            f"training {self._group} "
            f"(val_accuracy {row.get('val_accuracy', float('nan')):.4f}, "
            f"{row.get('epoch_time_s', float('nan')):.1f}s)",
            on_bar=True,
        )

    def cell(self, cell: Cell, status: str, test_accuracy: float) -> None:
        self.done += 1
        self._show()
        self._say(f"{cell.name}: {status}, test_accuracy {test_accuracy:.4f}")
        if self.on_cell is not None:
            self.on_cell(self.done, self.total)


class _Bar:
    """rich's live bar: cells done / total, what is running, elapsed and ETA."""

    def __init__(self, stream: TextIO, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._rich = RichProgress(
            TextColumn("cells"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=Console(file=stream),
            # Other print() calls (the plan, each look) land above the bar instead of through
            # it. stderr is left alone: Prefect's and TensorFlow's loggers hold their own handle.
            redirect_stdout=True,
            redirect_stderr=False,
        )
        self._task = self._rich.add_task("", total=total)
        self._rich.start()

    def update(self, done: int, total: int, text: str) -> None:
        # The total can grow: a sequential design adds a look's cells as the look starts.
        self._rich.update(self._task, completed=done, total=total, description=text)

    def print(self, line: str) -> None:
        self._rich.console.print(line, markup=False, highlight=False)

    def stop(self) -> None:
        self._rich.stop()


def _in_notebook(stream: TextIO) -> bool:
    """Whether ``stream`` is a Jupyter kernel's output (ipykernel's OutStream)."""
    return type(stream).__module__.startswith("ipykernel")


class _NotebookBar:
    """The live bar in a notebook: one HTML output updated in place (IPython display ids), and
    the lines printed below it."""

    def __init__(self, total: int) -> None:
        from IPython.display import display

        self._start = time.perf_counter()
        self._handle = display(self._html(0, total, ""), display_id=True)

    def _html(self, done: int, total: int, text: str) -> object:
        import html

        from IPython.display import HTML

        elapsed = time.perf_counter() - self._start
        eta = _clock(elapsed / done * (total - done)) if 0 < done < total else "-"
        return HTML(
            f'<progress value="{done}" max="{max(total, 1)}" style="width: 30em"></progress> '
            f"<code>cells {done}/{total} {_clock(elapsed)} ETA {eta} {html.escape(text)}</code>"
        )

    def update(self, done: int, total: int, text: str) -> None:
        if self._handle is not None:
            self._handle.update(self._html(done, total, text))

    def print(self, line: str) -> None:
        print(line, flush=True)

    def stop(self) -> None:
        self._handle = None


class PhaseClock:
    """Wall seconds of a run, each instant counted once: in the one phase then running, in
    ``overlap`` while several run at once (a group logged while the next trains), and in
    ``orchestration`` while none does. The parts add up to the total.

    Phases are timed where the work happens (inside tasks, around tracker calls), so Prefect's
    own cost of creating and finishing task runs lands in what is left over. A phase that runs
    on several threads at once (groups training side by side) is one phase running.
    """

    # tf_import: loading TensorFlow, which training needs whatever orchestrates it.
    WORK = ("data", "tf_import", "training", "evaluation", "analysis")
    OVERHEAD = ("tracking", "orchestration")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = dict.fromkeys((*self.WORK, "tracking"), 0.0)
        # Several phases at once, by the phases: "evaluation+training".
        self.overlaps: dict[str, float] = {}
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}  # phase -> threads in it
        self._since = self.start  # the last change of the open phases

    def _account(self) -> None:
        """Charge the time since the last change to the phases open during it (lock held)."""
        now = time.perf_counter()
        names = sorted(self._open)
        if len(names) == 1:
            self.seconds[names[0]] += now - self._since
        elif names:
            key = "+".join(names)
            self.overlaps[key] = self.overlaps.get(key, 0.0) + now - self._since
        self._since = now

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with self._lock:  # tasks may run on several threads
            self._account()
            self._open[name] = self._open.get(name, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._account()
                self._open[name] -= 1
                if not self._open[name]:
                    del self._open[name]

    def breakdown(self, inner: dict[str, float] | None = None) -> dict[str, float]:
        """Seconds per phase, ``overlap`` (several at once), ``orchestration`` (none), ``total``
        and ``overhead_share``; the parts add up to ``total``.

        ``inner`` is the breakdown of a part of this clock's span timed by another clock (the
        flow run inside a command, while this clock times no phase); its parts are added.
        """
        with self._lock:
            self._account()
            total = time.perf_counter() - self.start
            out = {name: s + (inner or {}).get(name, 0.0) for name, s in self.seconds.items()}
            out["overlap"] = sum(self.overlaps.values()) + (inner or {}).get("overlap", 0.0)
        out["orchestration"] = max(0.0, total - sum(out.values()))
        out["total"] = total
        out["overhead_share"] = sum(out[k] for k in self.OVERHEAD) / total if total else 0.0
        return out


def format_breakdown(command: dict[str, float], flow: dict[str, float]) -> str:
    """Where a command's wall time went, and the tracking + orchestration share of it and of
    its flow run alone (what a scheduled deployment's run costs)."""
    names = (*PhaseClock.WORK, *(["overlap"] if command.get("overlap") else []))
    parts = ", ".join(f"{k} {command[k]:.1f}" for k in (*names, *PhaseClock.OVERHEAD))
    return (
        f"time: {command['total']:.1f}s = {parts}; tracking + orchestration "
        f"{100 * command['overhead_share']:.1f}% of the command, "
        f"{100 * flow['overhead_share']:.1f}% of its {flow['total']:.1f}s flow run"
    )
