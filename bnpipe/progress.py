"""Progress lines for long runs: cells done / total, the current cell or group, elapsed time."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from bnpipe.train.common import Cell


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    """Prints one line per finished cell and one per epoch of the group being trained."""

    def __init__(self, total_cells: int, epochs: int, stream: TextIO | None = None) -> None:
        self.total = total_cells
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
