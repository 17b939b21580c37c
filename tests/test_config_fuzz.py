"""Fuzz the config loader: any params.yaml or --set either loads into a valid config or fails with
one line (ConfigError, exit code 2). Never a traceback, never a config the flow then rejects."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnpipe import cli
from bnpipe.config import Config, ConfigError, load_config

SECTIONS = {name: list(f.annotation.model_fields) for name, f in Config.model_fields.items()}
KEYS = [*SECTIONS, *(k for fields in SECTIONS.values() for k in fields), "epochz", "", "1"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["fused", "keras", "dask", "serial", "1e-3", "10", "[1, 2]", "null"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3), st.booleans())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
# Mostly well-formed sections with wrong or odd values, plus arbitrary documents and raw text.
sections = st.fixed_dictionaries(
    {},
    optional={
        name: st.dictionaries(st.sampled_from([*fields, "typo"]), values, max_size=4)
        for name, fields in SECTIONS.items()
    },
)
documents = st.one_of(
    sections.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    values.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.text(max_size=200),
    st.sampled_from(["grid: {seeds: [1, 2\n", "!!python/object:os.system {}\n", "a: &x [*x]\n"]),
)
overrides = st.lists(
    st.builds(
        lambda k, v: f"{k}={v}",
        st.one_of(
            st.sampled_from([f"{s}.{f}" for s, fields in SECTIONS.items() for f in fields]),
            st.text(max_size=15),
        ),
        st.one_of(st.text(max_size=15), values.map(lambda v: yaml.safe_dump(v).strip())),
    ),
    max_size=3,
)


class _ConfigAccepted(Exception):
    """Raised instead of starting any work once the CLI has accepted a config."""


def _check_cli(argv: list[str]) -> None:
    """The CLI on ``argv``: a valid config reaches preflight, anything else exits 2 in one line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except _ConfigAccepted:
            return
    text = err.getvalue().strip()
    assert code == cli.EXIT_BAD_INPUT
    assert text.startswith("bnpipe: error: ") and "\n" not in text, text


def _check_load(path: str | None, sets: list[str]) -> None:
    try:
        cfg = load_config(path, sets)
    except ConfigError as exc:
        assert str(exc), repr(exc)  # (its one-line rendering is the CLI's job, checked there)
        return
    # The flow receives the config as JSON-able params and validates it again.
    assert Config.model_validate(cfg.model_dump(mode="json")) == cfg


@pytest.fixture
def accept_instead_of_running(monkeypatch):
    def stop(*_args, **_kwargs):  # preflight's signature is not what this test is about
        raise _ConfigAccepted

    monkeypatch.setattr(cli, "preflight", stop)


# database=None: no .hypothesis/ folder in the checkout; a failure prints its example anyway.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(text=documents)
def test_any_params_file_loads_or_fails_in_one_line(accept_instead_of_running, text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(text, encoding="utf-8")
        _check_load(str(path), [])
        _check_cli(["run", "--params", str(path)])


@FUZZ
@given(sets=overrides)
def test_any_overrides_load_or_fail_in_one_line(accept_instead_of_running, sets):
    _check_load(None, sets)
    # --set=VALUE: a value starting with "-" must not read as an option (that is argparse's job)
    _check_cli(["run", *[f"--set={s}" for s in sets]])
