"""Re-train one recorded grid cell and compare it, bit for bit, with what its MLflow run recorded.

On the same machine and versions the engines are deterministic (op determinism, fixed data order,
per-layer initializer seeds), so every per-epoch metric, every test metric and every weight must
be identical. When they are not, the environment facts recorded with the run say what changed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnpipe.config import Config, logged_bool
from bnpipe.data import MnistData, load_mnist
from bnpipe.factors import FACTORS, parse_level
from bnpipe.grid import Group, evaluate_cell, history_frame, train_cells
from bnpipe.provenance import code_digest, environment_facts, package_versions
from bnpipe.tracking import (
    STATUS_TAG,
    TAG_PREFIX,
    CellRun,
    Tracker,
    UnreadableArtifact,
    metric_name,
)
from bnpipe.train.common import DEFAULT_SHARD_SIZE, Cell

# Per-epoch metrics that must match; epoch_time_s is wall time and never does.
COMPARED_HISTORY = ("loss", "accuracy", "val_loss", "val_accuracy")


class ReproduceError(ValueError):
    """The run cannot be reproduced as asked (not a cell run, different data); one line."""


@dataclass(frozen=True)
class Difference:
    """One compared value: what it is, as recorded, as now."""

    what: str
    recorded: str
    now: str


@dataclass
class Reproduction:
    """Outcome of re-training one cell."""

    run_id: str
    cell: Cell
    engine: str
    epochs: int
    n_metrics: int
    metric_diffs: list[Difference] = field(default_factory=list)
    n_weights: int = 0
    weight_diffs: list[Difference] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # recorded values that could not be compared
    env_diffs: list[Difference] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        """Everything was compared (history, metrics, weights) and is identical."""
        return not self.metric_diffs and not self.weight_diffs and not self.missing


@dataclass(frozen=True)
class RecordedSettings:
    """What a child run recorded about how its cell was trained."""

    cell: Cell
    engine: str
    epochs: int
    levels: dict[str, Any]  # every factor's level (the cell's and the defaults it trained with)
    hidden_units: tuple[int, ...]
    num_classes: int
    limit_train: int | None
    limit_test: int | None
    data_digest: str
    shard_size: int
    bootstrap_train: bool = False  # absent from the params of a cell trained without it

    def config(self) -> Config:
        """The settings as a config, so the cell trains through the flow's own code path: a
        one-cell grid of the cell's own factors, every other factor in its default field."""
        raw: dict[str, Any] = {
            "data": {
                "limit_train": self.limit_train,
                "limit_test": self.limit_test,
                "bootstrap_train": self.bootstrap_train,
            },
            "model": {"hidden_units": list(self.hidden_units), "num_classes": self.num_classes},
            "train": {"epochs": self.epochs, "engine": self.engine, "shard_size": self.shard_size},
            "grid": {
                "factors": {name: [level] for name, level in self.cell.levels},
                "compare": self.cell.factor_names[0],
                "seeds": [self.cell.seed],
            },
        }
        for name, level in self.levels.items():
            if name not in self.cell.factor_names:
                section, _, attr = FACTORS[name].default_field.partition(".")
                raw[section][attr] = level
        return Config.model_validate(raw)


def _optional_int(value: str | None) -> int | None:
    return None if value in (None, "None", "null", "") else int(value)


def recorded_settings(run: CellRun) -> RecordedSettings:
    """Parse a child run's params.

    Raises:
        ReproduceError: if the run is not a grid cell (e.g. a parent run id was given).
    """
    if not run.key:
        raise ReproduceError(
            f"run {run.run_id} is not a grid cell (no {TAG_PREFIX}cell_key tag); pass the id of "
            "a child run (one per cell), not of a parent run"
        )
    p = run.cell_params  # old and new param spellings alike
    try:
        # A factor absent from the params is at its keyless default (keyed before it existed).
        levels = {
            name: parse_level(name, p[name]) if name in p else f.keyless_default
            for name, f in FACTORS.items()
        }
        missing = [name for name, level in levels.items() if level is None]
        if missing:
            raise KeyError(", ".join(missing))
        return RecordedSettings(
            cell=run.cell,
            engine=p["engine"],
            epochs=int(p["epochs"]),
            levels=levels,
            hidden_units=tuple(int(u) for u in json.loads(p["hidden_units"])),
            num_classes=int(p["num_classes"]),
            limit_train=_optional_int(p.get("limit_train")),
            limit_test=_optional_int(p.get("limit_test")),
            data_digest=p["data_digest"],
            shard_size=_optional_int(p.get("shard_size")) or DEFAULT_SHARD_SIZE,
            bootstrap_train=logged_bool(p.get("bootstrap_train")),
        )
    except (KeyError, ValueError) as exc:
        raise ReproduceError(
            f"run {run.run_id}: its params do not describe a cell ({type(exc).__name__}: {exc})"
        ) from None


def _same(a: float, b: float) -> bool:
    """Bit-for-bit equality of two recorded floats, where two non-finite values count as equal."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


def _fmt(x: float) -> str:
    return "missing" if x is None else f"{x:.10g}"


def environment_diffs(run: CellRun) -> list[Difference]:
    """Recorded provenance facts (versions, code digest, machine) that differ now."""
    now = {f"version.{k}": v for k, v in package_versions().items()}
    now |= {f"env.{k}": v for k, v in environment_facts().items()}
    now["code_digest"] = code_digest()
    out = []
    for name in sorted(now):
        recorded = run.tags.get(TAG_PREFIX + name)
        if recorded is not None and recorded != now[name]:
            out.append(Difference(name, recorded, now[name]))
    return out


def load_cell_data(settings: RecordedSettings, data_dir: str | None) -> MnistData:
    """The data the cell was trained on: same source, same limits, same digest.

    Raises:
        ReproduceError: when the data found now has another digest than the recorded one.
    """
    data = load_mnist(data_dir).subset(settings.limit_train, settings.limit_test)
    if data.digest != settings.data_digest:
        raise ReproduceError(
            f"data digest {data.digest[:12]} of {data.source} differs from the recorded "
            f"{settings.data_digest[:12]}: this is not the data the cell was trained on "
            "(set data.dir or BNPIPE_DATA_DIR to the original MNIST)"
        )
    return data


def reproduce_run(tracker: Tracker, run_id: str, data_dir: str | None) -> Reproduction:
    """Re-train the cell of child run ``run_id`` from its params and compare with its record.

    Args:
        tracker: the store holding the run.
        run_id: a child (cell) run id.
        data_dir: where MNIST is (None: $BNPIPE_DATA_DIR, then the Keras cache).

    Raises:
        ReproduceError: not a cell run, or the data differs from the recorded data.
        mlflow.exceptions.MlflowException: no such run.
    """
    run = tracker.cell_run(run_id)
    s = recorded_settings(run)
    cfg = s.config()
    data = load_cell_data(s, data_dir)
    result = train_cells(cfg, Group.of(s.cell.levels, (s.cell.seed,)), data)[0]
    rep = Reproduction(run_id, s.cell, s.engine, s.epochs, n_metrics=0)
    recorded_status = run.tags.get(STATUS_TAG, "")
    if recorded_status != result.status:
        rep.metric_diffs.append(Difference("status", recorded_status, result.status))
    _compare_history(rep, tracker, run_id, history_frame(result))
    if result.status == "finished":
        now = evaluate_cell(cfg, result, data).metrics()
        for name, value in now.items():
            rep.n_metrics += 1
            recorded = run.metrics.get(metric_name(name))
            # Non-finite values are never logged (MLflow would reject NaN history plots).
            if recorded is None and not math.isfinite(value):
                continue
            if recorded is None or not _same(recorded, value):
                rep.metric_diffs.append(Difference(name, _fmt(recorded), _fmt(value)))
    try:
        recorded_weights = tracker.weights(run_id)
    except UnreadableArtifact as exc:
        rep.missing.append(str(exc))
    else:
        if recorded_weights is None:
            rep.missing.append(_why_no_weights(tracker, run))
        else:
            _compare_weights(rep, recorded_weights, result.weights)
    rep.env_diffs = environment_diffs(run)
    return rep


def _why_no_weights(tracker: Tracker, run: CellRun) -> str:
    """Why a run has no weights.npz: the parent's params say whether weights were logged."""
    logged = tracker.parent_param(run, "tracking.log_weights")
    if logged == "False":
        return "weights: not logged (tracking.log_weights was off for this run)"
    if logged == "True":
        return "weights.npz: gone from the artifact store (the run logged it)"
    return "weights.npz: not on the run"


def _compare_history(rep: Reproduction, tracker: Tracker, run_id: str, now) -> None:
    try:
        recorded = tracker.history(run_id)
    except UnreadableArtifact as exc:
        rep.missing.append(str(exc))
        return
    if len(recorded) != len(now):
        rep.metric_diffs.append(Difference("epochs trained", str(len(recorded)), str(len(now))))
    for i in range(min(len(recorded), len(now))):
        for col in COMPARED_HISTORY:
            rep.n_metrics += 1
            a, b = float(recorded[col].iloc[i]), float(now[col].iloc[i])
            if not _same(a, b):
                rep.metric_diffs.append(Difference(f"{col} (epoch {i + 1})", _fmt(a), _fmt(b)))


def _compare_weights(rep: Reproduction, recorded: list[np.ndarray], now: list[np.ndarray]) -> None:
    rep.n_weights = len(now)
    if len(recorded) != len(now):
        rep.weight_diffs.append(Difference("weight arrays", str(len(recorded)), str(len(now))))
        return
    for i, (a, b) in enumerate(zip(recorded, now, strict=True)):
        if a.shape != b.shape:
            rep.weight_diffs.append(Difference(f"weights[{i}] shape", str(a.shape), str(b.shape)))
        elif not np.array_equal(a, b, equal_nan=True):
            worst = float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            rep.weight_diffs.append(
                Difference(f"weights[{i}] {a.shape}", "recorded", f"max |difference| {worst:.3g}")
            )


def format_reproduction(rep: Reproduction) -> str:
    """What ``bnpipe reproduce`` prints."""
    lines = [
        f"reproduced {rep.cell.name} (run {rep.run_id}, engine {rep.engine}, {rep.epochs} "
        f"epochs): compared {rep.n_metrics} metrics and {rep.n_weights} weight arrays"
    ]
    if rep.matches:
        lines.append("MATCH: every metric and every weight is identical to the recorded run")
    elif not rep.metric_diffs and not rep.weight_diffs:
        # Nothing compared differs, but a reproduction that compared less is no match.
        lines.append("INCOMPLETE: what was compared is identical, but not everything could be:")
        lines += [f"  {m}" for m in rep.missing]
    else:
        lines.append(
            f"MISMATCH: {len(rep.metric_diffs)} metric(s) and {len(rep.weight_diffs)} weight "
            "array(s) differ"
        )
        width = max(len(d.what) for d in rep.metric_diffs + rep.weight_diffs)
        lines.append(f"  {'':<{width}}  {'recorded':>18}  {'now':>18}")
        for d in rep.metric_diffs + rep.weight_diffs:
            lines.append(f"  {d.what:<{width}}  {d.recorded:>18}  {d.now:>18}")
        lines += [f"  not compared: {m}" for m in rep.missing]
    if rep.env_diffs:
        lines.append("recorded environment facts that differ now:")
        width = max(len(d.what) for d in rep.env_diffs)
        lines += [f"  {d.what:<{width}}  recorded {d.recorded}, now {d.now}" for d in rep.env_diffs]
    elif rep.metric_diffs or rep.weight_diffs:
        lines.append(
            "no recorded environment fact differs (versions, bnpipe code, machine): the "
            "difference comes from non-determinism on this machine"
        )
    else:
        lines.append("environment: same versions, bnpipe code and machine facts as recorded")
    return "\n".join(lines)
