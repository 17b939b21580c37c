"""Progress lines for long runs (cells done / total, the current group, elapsed time) and where
the run's wall time went."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from bnpipe.train.common import Cell


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    """Prints one line per finished cell and one per epoch of the group being trained."""

    def __init__(
        self,
        total_cells: int,
        epochs: int,
        stream: TextIO | None = None,
        clock: PhaseClock | None = None,
    ) -> None:
        self.total = total_cells
        self.clock = clock or PhaseClock()
        self.epochs = epochs
        self.done = 0
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self._last_epoch: tuple[bool, int, int] | None = None

    def _say(self, text: str) -> None:
        elapsed = _clock(time.perf_counter() - self.start)
        print(f"[{self.done:>3}/{self.total}] {elapsed} {text}", file=self.stream, flush=True)

    def epoch(self, cell: Cell, epoch: int, row: dict[str, float]) -> None:
        """Called per model per epoch; a fused group reports once per epoch, not per member."""
        key = (cell.bn, cell.batch_size, epoch)
        if key == self._last_epoch:
            return
        self._last_epoch = key
        group = f"bn={'on' if cell.bn else 'off'} bs={cell.batch_size}"
        self._say(
            f"training {group} epoch {epoch}/{self.epochs} "
            f"(val_accuracy {row.get('val_accuracy', float('nan')):.4f}, "
            f"{row.get('epoch_time_s', float('nan')):.1f}s)"
        )

    def cell(self, cell: Cell, status: str, test_accuracy: float) -> None:
        self.done += 1
        self._say(f"{cell.name}: {status}, test_accuracy {test_accuracy:.4f}")


class PhaseClock:
    """Wall seconds spent in each phase of a run; the time no phase claims is orchestration.

    Phases are timed where the work happens (inside tasks, around tracker calls), so Prefect's
    own cost of creating and finishing task runs lands in what is left over.
    """

    # tf_import: loading TensorFlow, which training needs whatever orchestrates it.
    WORK = ("data", "tf_import", "training", "evaluation", "analysis")
    OVERHEAD = ("tracking", "orchestration")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = dict.fromkeys((*self.WORK, "tracking"), 0.0)
        self._lock = threading.Lock()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:  # tasks may run on several threads
                self.seconds[name] += time.perf_counter() - t0

    def breakdown(self, inner: dict[str, float] | None = None) -> dict[str, float]:
        """Seconds per phase, ``orchestration`` (the rest), ``total`` and ``overhead_share``.

        ``inner`` is the breakdown of a part of this clock's span timed by another clock (the
        flow run inside a command); its named phases are added to this clock's.
        """
        total = time.perf_counter() - self.start
        out = {name: s + (inner or {}).get(name, 0.0) for name, s in self.seconds.items()}
        out["orchestration"] = max(0.0, total - sum(out.values()))
        out["total"] = total
        out["overhead_share"] = sum(out[k] for k in self.OVERHEAD) / total if total else 0.0
        return out


def format_breakdown(command: dict[str, float], flow: dict[str, float]) -> str:
    """Where a command's wall time went, and the tracking + orchestration share of it and of
    its flow run alone (what a scheduled deployment's run costs)."""
    parts = ", ".join(f"{k} {command[k]:.1f}" for k in PhaseClock.WORK + PhaseClock.OVERHEAD)
    return (
        f"time: {command['total']:.1f}s = {parts}; tracking + orchestration "
        f"{100 * command['overhead_share']:.1f}% of the command, "
        f"{100 * flow['overhead_share']:.1f}% of its {flow['total']:.1f}s flow run"
    )
