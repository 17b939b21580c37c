"""A bench report read and shown: the fixed-width table, and seconds per model-epoch."""

from __future__ import annotations

from typing import Any

import numpy as np

from bnpipe.bench.engines import ENGINE_KEYS


def model_epoch_seconds(report: dict[str, Any], engine: str) -> dict[Any, float]:
    """Overall seconds per model-epoch (compiles included) of ``engine`` in a bench report
    (``bnpipe bench --json``): per batch size the mean of its cells, under None the mean of all;
    empty when the report did not time that engine."""
    by_batch: dict[Any, list[float]] = {}
    for row in report.get("cells", []):
        if isinstance(row, dict) and isinstance(row.get(engine), dict):
            by_batch.setdefault(row.get("batch_size"), []).append(
                float(row[engine]["s_per_model_epoch"])
            )
    out: dict[Any, float] = {bs: float(np.mean(v)) for bs, v in by_batch.items()}
    if out:
        out[None] = float(np.mean([x for v in by_batch.values() for x in v]))
    return out


def format_report(report: dict) -> str:
    """A fixed-width table: seconds per model-epoch, speed-ups over (a), fused / FLOP floor."""
    lines = [
        f"MNIST {report['n_train']} train / {report['n_val']} val; floor "
        f"{report['floor_s']:.3f} s/model-epoch at {report['probe']['square_gflops']:.1f} GFLOP/s",
        "s/model-epoch overall (steady state after epoch 1 in brackets)",
        f"{'bn':>3} {'bs':>4} {'(a) reference':>16} {'(b) keras':>16} {'(c) fused':>16}"
        f" {'b/a':>6} {'c/a':>6} {'c/floor':>13}",
    ]
    for row in report["cells"]:

        def cell(key: str, row: dict = row) -> str:
            t = row[key]
            if t is None:
                return NOT_RUN
            return f"{t['s_per_model_epoch']:.3f} ({t['steady_s_per_model_epoch']:.3f})"

        lines.append(
            f"{'on' if row['bn'] else 'off':>3} {row['batch_size']:>4} {cell('reference'):>16}"
            f" {cell('keras'):>16} {cell('fused'):>16} {_num(row['speedup_keras'], '5.1f', 'x'):>6}"
            f" {_num(row['speedup_fused'], '5.1f', 'x'):>6}"
            f" {_num(row['fused_floor_ratio'], '5.2f')}"
            f" ({_num(row['fused_steady_floor_ratio'], '.2f')})"
        )
    lines.append("CPU-s per model-epoch (all threads; less sensitive to other load on the machine)")
    for row in report["cells"]:
        cpu = "  ".join(
            f"({label}) {_num(row[k] and row[k]['cpu_s_per_model_epoch'], '.3f')}"
            for label, k in zip("abc", ENGINE_KEYS, strict=True)
        )
        lines.append(f"{'on' if row['bn'] else 'off':>3} {row['batch_size']:>4}  {cpu}")
    lines.append("fused compile s per group (first epoch's wall time minus a steady epoch's)")
    lines += [
        f"{'on' if row['bn'] else 'off':>3} {row['batch_size']:>4}  {row['fused']['compile_s']:.2f}"
        for row in report["cells"]
        if row["fused"] is not None
    ]
    for row in report["cells"]:
        peers = [(k, v) for k, v in row.items() if k.endswith("_vs_fused") and row["fused"]]
        for key, peer in peers:
            name = key.removesuffix("_vs_fused")
            lines.append(
                f"{'on' if row['bn'] else 'off':>3} {row['batch_size']:>4}  fused/{name}: steady "
                f"{peer['fused_steady_ratio']:.2f}x ({row['fused']['steady_s_per_model_epoch']:.3f}"
                f" vs {peer[name]['steady_s_per_model_epoch']:.3f} s/model-epoch), compile "
                f"{peer['fused_compile_ratio']:.2f}x ({row['fused']['compile_s']:.2f} vs "
                f"{peer[name]['compile_s']:.2f} s)"
            )
    every = report["all_cells"]
    secs = [
        f"({label}) {_num(every[f'{k}_s'], '.2f', 's')}"
        for label, k in zip("abc", ENGINE_KEYS, strict=True)
    ]
    lines.append(
        f"all cells (one model-epoch each, as in the grid): {' '.join(secs)} -> "
        f"b/a {_num(every['speedup_keras'], '.1f', 'x')}, "
        f"c/a {_num(every['speedup_fused'], '.1f', 'x')}"
    )
    if report["not_run"]:
        lines.append(f"not run (0 models asked): {', '.join(report['not_run'])}")
    lines.append(f"peak RSS {report['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)


NOT_RUN = "not run"


def _num(x: float | None, spec: str, unit: str = "") -> str:
    return NOT_RUN if x is None else f"{x:{spec}}{unit}"
