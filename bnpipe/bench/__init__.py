"""``bnpipe bench``: a tool beside the library that times it.

By job: ``engines`` (the reference recipe, the keras and the fused engine timed side by side,
against a FLOP floor from a matmul probe), ``commands`` (whole ``bnpipe run`` commands: smoke
grids, the full grid, a long-lived Prefect server), ``report`` (the table, and reading a saved
report back), ``cli`` (the options and entry point) and ``peers`` (the same recipe in other
frameworks, optional). TensorFlow is imported inside functions: ``bnpipe --help`` must not pay
for it.
"""

from bnpipe.bench.cli import add_arguments, run
from bnpipe.bench.commands import prefect_server, run_full_grid, run_smoke
from bnpipe.bench.engines import (
    DEFAULT_BATCH_SIZES,
    ENGINE_KEYS,
    all_cells,
    flops_per_model_epoch,
    matmul_probe,
    peak_rss_mib,
    run_bench,
)
from bnpipe.bench.report import format_report, model_epoch_seconds

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "ENGINE_KEYS",
    "add_arguments",
    "all_cells",
    "flops_per_model_epoch",
    "format_report",
    "matmul_probe",
    "model_epoch_seconds",
    "peak_rss_mib",
    "prefect_server",
    "run",
    "run_bench",
    "run_full_grid",
    "run_smoke",
]
