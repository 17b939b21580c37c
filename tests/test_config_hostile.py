"""Hostile params files and --set values: one line, exit 2, no traceback, and fast."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnpipe.cli import EXIT_BAD_INPUT, _parser, main
from bnpipe.config import MAX_ECHO_CHARS, MAX_SEED, ConfigError, load_config


def billion_laughs(levels: int = 9) -> str:
    """~400 bytes that expand to 9**levels strings if aliases are followed naively."""
    items = [f"&b0 [{','.join(['lol'] * 9)}]"]
    items += [f"&b{i} [{','.join([f'*b{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"experiment: [{', '.join(items)}]\n"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def assert_one_line_exit_2(capsys, argv: list[str], fragment: str, seconds: float = 5.0) -> str:
    start = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT, err
    assert err.startswith("bnpipe: error: ") and "\n" not in err, err
    assert fragment in err, err
    assert "Traceback" not in err
    assert elapsed < seconds, f"{elapsed:.1f}s"
    return err


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    _parser()  # its imports (Prefect for `serve`) are paid here, not inside the timed calls
    return tmp_path


def test_billion_laughs_is_refused_at_once(capsys, workdir):
    text = billion_laughs()
    assert len(text) < 450
    (workdir / "lol.yaml").write_text(text)
    assert_one_line_exit_2(
        capsys, ["run", "--params", "lol.yaml"], "values once aliases are expanded", 2.0
    )


def test_small_aliases_still_work(tmp_path):
    (tmp_path / "p.yaml").write_text("grid: {seeds: &s [1, 2], batch_sizes: *s}\n")
    assert load_config(tmp_path / "p.yaml").grid.batch_sizes == (1, 2)


def test_recursive_alias_is_refused(tmp_path):
    (tmp_path / "r.yaml").write_text("grid: {seeds: &x [*x]}\n")
    with pytest.raises(ConfigError, match="aliases are expanded"):
        load_config(tmp_path / "r.yaml")


def test_binary_params_file(capsys, workdir):
    (workdir / "bin.yaml").write_bytes(b"\xff\xfe\x00\x01grid:\x80\x81")
    assert_one_line_exit_2(capsys, ["run", "--params", "bin.yaml"], "bin.yaml: not UTF-8 text")


def test_dev_zero_reads_a_bounded_amount(capsys, workdir):
    assert_one_line_exit_2(
        capsys, ["run", "--params", "/dev/zero"], "/dev/zero: larger than 1048576 bytes"
    )


def test_deep_nesting_in_a_file(capsys, workdir):
    (workdir / "deep.yaml").write_text(f"grid: {{seeds: {nested(20_000)}}}\n")
    assert_one_line_exit_2(capsys, ["run", "--params", "deep.yaml"], "deep.yaml: nested too deeply")


def test_deep_nesting_in_set(capsys, workdir):
    err = assert_one_line_exit_2(
        capsys, ["run", "--set", f"model.hidden_units={nested(20_000)}"], "nested too deeply"
    )
    assert len(err) < 200


def test_deep_but_parseable_value_is_echoed_short(capsys, workdir):
    err = assert_one_line_exit_2(
        capsys, ["run", "--set", f"model.hidden_units={nested(40)}"], "model.hidden_units"
    )
    assert len(err) < 200


def test_deep_dotted_key(capsys, workdir):
    err = assert_one_line_exit_2(capsys, ["run", "--set", ".".join(["a"] * 20_000) + "=1"], "'a'")
    assert len(err) < 300


def test_long_values_are_cut_in_the_message(workdir):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [f"train.engine={'x' * 100_000}"])
    assert "train.engine" in str(exc.value)
    assert len(str(exc.value)) < 120 + MAX_ECHO_CHARS


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("grid.seeds=[18446744073709551616]", "grid.seeds: seeds must be at most 2147482"),
        (f"grid.seeds=[{MAX_SEED + 1}]", "grid.seeds"),
        ("grid.batch_sizes=[1000000000]", "grid.batch_sizes: batch sizes must be at most"),
        ("grid.batch_sizes=[1e9]", "grid.batch_sizes"),
        (f"model.hidden_units=[{','.join(['1'] * 101)}]", "at most 100 hidden layers"),
    ],
)
def test_values_that_overflow_later_are_refused(capsys, workdir, override, fragment):
    assert_one_line_exit_2(capsys, ["run", "--set", override], fragment)


def test_largest_seed_fits_every_derived_seed():
    from bnpipe.models import layer_seed

    assert load_config(None, [f"grid.seeds=[{MAX_SEED}]"]).grid.seeds == (MAX_SEED,)
    assert layer_seed(MAX_SEED, 100) < 2**31


def test_deep_block_nesting_without_brackets(capsys, workdir):
    (workdir / "dash.yaml").write_text("grid:\n  seeds:\n    " + "- " * 20_000 + "1\n")
    assert_one_line_exit_2(capsys, ["run", "--params", "dash.yaml"], "dash.yaml: nested too deeply")


@pytest.mark.parametrize("params", ["lol.yaml", "/dev/zero"])
def test_the_installed_command_refuses_in_one_line(tmp_path, params):
    (tmp_path / "lol.yaml").write_text(billion_laughs())
    bnpipe = Path(sys.executable).parent / "bnpipe"
    done = subprocess.run(
        [str(bnpipe), "run", "--params", params],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,  # the import of a cold CLI on a busy machine; the refusal itself is ms
    )
    assert done.returncode == EXIT_BAD_INPUT
    err = done.stderr.strip()
    assert err.startswith("bnpipe: error: ") and "\n" not in err, err


def test_a_key_given_twice_is_refused(capsys, workdir):
    # PyYAML keeps the last of two keys: a second `train:` section silently dropped `epochs: 3`.
    (workdir / "dup.yaml").write_text("train:\n  epochs: 3\nmodel:\n  bn: false\ntrain:\n  lr: 1\n")
    assert_one_line_exit_2(
        capsys, ["run", "--params", "dup.yaml"], "dup.yaml: key 'train' given twice (line 5)"
    )
    factors = "grid.factors={bn: [false, true], batch_size: [32], batch_size: [64, 128]}"
    assert_one_line_exit_2(
        capsys, ["run", "--set", factors], "--set grid.factors: key 'batch_size' given twice"
    )
    # Aliases and merge keys are not duplicates.
    (workdir / "ok.yaml").write_text("base: &b {epochs: 2}\ntrain:\n  <<: *b\n  batch_size: 16\n")
    with pytest.raises(ConfigError, match="base"):  # an unknown section, not a duplicate
        load_config(workdir / "ok.yaml")


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        # The password stays out of the message, as it stays out of everything else.
        ("tracking.uri=http://user:secret@[127.0.0.1:1/", "tracking.uri: not a valid URI"),
        ("tracking.reports_dir=" + "r" * 300, "tracking.reports_dir: folder name of 300 bytes"),
        ("tracking.reports_dir=" + "/r" * 2000, "tracking.reports_dir: path longer than"),
    ],
)
def test_malformed_uri_and_overlong_paths(capsys, workdir, item, fragment):
    err = assert_one_line_exit_2(capsys, ["run", "--set", item], fragment)
    assert "secret" not in err


def test_bn_position_compared_without_bn(capsys, workdir):
    # Both arms would be the same network: trained twice for a difference of exactly 0.
    factors = "grid.factors={bn_position: [after_relu, before_relu]}"
    argv = ["run", "--set", factors, "--set", "grid.compare=bn_position"]
    assert_one_line_exit_2(capsys, argv, "BN is off in every cell")
    assert load_config(None, [factors, "grid.compare=bn_position", "model.bn=true"])


def test_designs_and_grids_too_large_to_finish_are_refused(capsys, workdir):
    # 5,000 looks: the boundary computation sat silent for minutes before look 1.
    argv = ["run", "--set", "stats.look_every=2", "--set", "stats.max_seeds=10000"]
    assert_one_line_exit_2(capsys, argv, "stats.max_seeds: 4991 looks of stats.look_every 2")
    # A grid that could train more than LARGE_GRID_CELLS cells asks for --large first.
    from bnpipe.cli import LARGE_GRID_CELLS, grid_too_large

    rates = ", ".join(str(0.001 * (k + 1)) for k in range(400))
    big = [f"grid.factors={{bn: [false, true], learning_rate: [{rates}]}}", "grid.seeds=[0,1,2]"]
    err = assert_one_line_exit_2(capsys, ["run", *(a for b in big for a in ("--set", b))], "2400")
    assert f"more than {LARGE_GRID_CELLS}" in err and "--large" in err
    assert grid_too_large(load_config(None)) is None  # the default design: at most 800
