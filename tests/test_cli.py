"""Bad input: a one-line error naming the field or file, exit code 2, and no MLflow run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnpipe.cli import EXIT_BAD_INPUT, main
from tests.test_data import fake_idx_dir


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BNPIPE_DATA_DIR", raising=False)
    (tmp_path / "mnist").mkdir()
    fake_idx_dir(tmp_path / "mnist")
    return tmp_path


def assert_rejected(capsys, argv: list[str], fragment: str, workdir: Path) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT
    assert err.startswith("bnpipe: error: ") and "\n" not in err, err
    assert fragment in err, err
    # nothing half-written: no tracking store, so certainly no run
    assert not (workdir / "mlruns").exists()


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epochz=1", "unknown key 'train.epochz'; did you mean 'train.epochs'?"),
        ("train.epochs=ten", "train.epochs"),
        ("grid.batch_sizes=[0]", "grid.batch_sizes"),
        ("grid.seeds=[]", "grid.seeds: must not be empty"),
        ("grid.seeds=[3,3]", "grid.seeds: has duplicates"),
        ("train.epochs=0", "train.epochs"),
        ("train.learning_rate=0", "train.learning_rate"),
        # grid.factors: one error each, in one line, before anything runs
        ("grid.factors={dropout: [0.1]}", "unknown key 'grid.factors.dropout' (valid: bn,"),
        ("grid.factors={bn: []}", "grid.factors.bn: must not be empty"),
        ("grid.factors={bn: [true, true]}", "grid.factors.bn: has duplicates"),
        ("grid.factors={bn: [no, 1]}", "grid.factors.bn: Input should be a valid boolean"),
        ("grid.factors={bn: [false, true], batch_size: [0]}", "grid.factors.batch_size: levels"),
        ("grid.factors={bn: [false, true], batch_size: [2e9]}", "grid.factors.batch_size"),
        ("grid.factors={bn: [false, true], learning_rate: [-1]}", "grid.factors.learning_rate"),
        ("grid.factors={bn: [false, true], init_scale: [0]}", "grid.factors.init_scale: levels"),
        ("grid.factors={bn: [false, true], bn_position: [x]}", "grid.factors.bn_position"),
        ("grid.compare=depth", "grid.compare: unknown factor 'depth'"),
        ("grid.compare=init_scale", "grid.compare: init_scale is not in grid.factors"),
        ("grid.compare=batch_size", "grid.compare: batch_size has 4 levels"),
        ("grid.factors={bn: [true]}", "stats.design: sequential needs grid.factors.bn"),
        ("model.init_scale=0", "model.init_scale"),
        ("model.bn_position=inside", "model.bn_position"),
        ("train.batch_size=0", "train.batch_size"),
    ],
)
def test_bad_config_exits_2(capsys, workdir, override, fragment):
    assert_rejected(capsys, ["run", "--set", override], fragment, workdir)


def test_grid_alias_and_factor_both_given_exits_2(capsys, workdir):
    (workdir / "both.yaml").write_text("grid: {bn: [true], factors: {bn: [false, true]}}\n")
    assert_rejected(
        capsys,
        ["run", "--params", "both.yaml"],
        "both.yaml: grid.bn and grid.factors.bn both given; keep one",
        workdir,
    )


def test_unreadable_params_file(capsys, workdir):
    (workdir / "params.yaml").write_text("grid: {seeds: [1, 2\n")
    assert_rejected(capsys, ["run"], "params.yaml: unreadable YAML", workdir)


def test_missing_params_file(capsys, workdir):
    assert_rejected(capsys, ["run", "--params", "other.yaml"], "other.yaml: cannot read", workdir)


def test_missing_data_dir(capsys, workdir):
    assert_rejected(
        capsys,
        ["run", "--set", "data.dir=./nowhere"],
        "data.dir: nowhere is not a directory",
        workdir,
    )


def test_checksum_mismatch(capsys, workdir):
    assert_rejected(capsys, ["run", "--set", "data.dir=mnist"], "md5 checksum mismatch", workdir)


def test_plan_prints_cost_and_decision_chances(capsys, workdir):
    # The built-in defaults (no params.yaml here) are params.yaml's design; nothing is opened.
    assert main(["plan", "--n-sim", "2000"]) == 0
    out = capsys.readouterr().out
    assert "first look at 20 seed pairs, then every 5, at most 100 per comparison" in out
    assert "equivalence inside ±0.2 pp by two one-sided tests at 0.0125 each" in out
    # gsDesign's summary: boundaries per look, then the chance of each decision per true effect.
    assert "look  pairs  models  benefit/harm t  equivalence t  alpha spent" in out
    assert "  17    100     200" in out
    for effect in ("-0.40", "-0.20", "-0.10", "+0.00", "+0.10", "+0.20", "+0.40"):
        assert f"{effect} pp" in out, effect
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("batch_")}
    assert list(rows) == [f"batch_size={b}" for b in (16, 32, 64, 128)]
    total = next(line.split() for line in out.splitlines() if line.startswith("total"))
    assert total[5] == "800" and all(r[5] == "200" for r in rows.values())
    assert "Times are estimates" in out and "bench-2core.json" in out
    assert not (workdir / "mlruns").exists()


def test_plan_time_is_models_x_epochs_x_bench_seconds(capsys, workdir):
    import json

    cells = [
        {"bn": bn, "batch_size": bs, "fused": {"s_per_model_epoch": 0.6}}
        for bn in (False, True)
        for bs in (16, 32, 64, 128)
    ]
    (workdir / "bench.json").write_text(json.dumps({"cells": cells}))
    assert main(["plan", "--n-sim", "500", "--bench", "bench.json"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("batch_", "total"))]
    # At most 200 models per comparison x 10 epochs x 0.6 s = 20 min; 80 min in total.
    assert [r[-1] for r in rows] == ["20.0", "20.0", "20.0", "20.0", "80.0"]
    assert "bench.json" in out


def test_plan_bad_input_exits_2(capsys, workdir):
    assert_rejected(capsys, ["plan", "--set", "stats.spending=linear"], "stats.spending", workdir)
    assert_rejected(capsys, ["plan", "--bench", "none.json"], "--bench none.json", workdir)
    (workdir / "bad.json").write_text("[1, 2]")
    assert_rejected(capsys, ["plan", "--bench", "bad.json"], "not a bnpipe bench report", workdir)


def test_plan_of_a_fixed_design(capsys, workdir):
    assert main(["plan", "--set", "grid.seeds=[0,1]"]) == 0
    assert "fixed design: seeds [0, 1]: 16 models" in capsys.readouterr().out


def test_a_signal_reaches_the_training_calls_whatever_python_handler_runs():
    """Prefect swaps in its own SIGTERM handler for a flow run, and its exception can be lost
    (raised inside a weakref callback: "Exception ignored"). The command notes the signal below
    Python's handlers, from the wakeup fd, for the training calls (bnpipe.trainer)."""
    import os
    import signal
    import time

    from bnpipe import cli, trainer

    swallowed: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: swallowed.append(signum))
    undo = cli._watch_signals()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while trainer.stop_signal() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert swallowed == [signal.SIGTERM]  # the Python handler ran and raised nothing
        assert trainer.stop_signal() == signal.SIGTERM
    finally:
        undo()
        signal.signal(signal.SIGTERM, previous)
        trainer.clear_stop()
