"""The cell key decides reuse: every setting that changes a cell's numbers must change it, and
speed-only or bookkeeping settings must not. Walks every config field, so a new field that is
not classified in bnpipe.grid fails here."""

from __future__ import annotations

import shutil
import typing
from importlib import metadata

import pytest
from pydantic import BaseModel

from bnpipe import grid, provenance
from bnpipe.config import Config, load_config
from bnpipe.factors import FACTORS
from bnpipe.grid import FACTOR_FIELDS, cell_key_for, cell_params, field_kind
from bnpipe.provenance import NUMERIC_ENV_VARS, NUMERIC_PACKAGES, cell_key
from bnpipe.train.common import Cell

CELL = Cell.of(3, bn=True, batch_size=32)
# A cell whose grid lists no factor: every factor's level comes from its default field.
BARE = Cell.of(3)
DIGEST = "data-digest"
BASE = Config(grid={"seeds": (3, 4), "batch_sizes": (32,)})
# What cell_params gave for CELL under params.yaml before the factors were generalised (captured
# from main at 86d33a8): the default grid's cells keep exactly these params, hence their keys.
MAIN_PARAMS = {
    "bn": True,
    "batch_size": 32,
    "seed": 3,
    "optimizer": "adam",
    "loss": "sparse_categorical_crossentropy",
    "epochs": 10,
    "learning_rate": 0.001,
    "hidden_units": [64, 64],
    "num_classes": 10,
    "engine": "fused",
    "shard_size": 5,
    "limit_train": None,
    "limit_test": None,
    "data_digest": "d" * 64,
}


def all_fields() -> list[tuple[str, str]]:
    return [(s, f) for s, sec in Config.model_fields.items() for f in sec.annotation.model_fields]


def _literals(annotation: object) -> list:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _literals(arg)]


def _candidates(value: object, annotation: object):
    yield from _literals(annotation)
    if isinstance(value, BaseModel):  # grid.factors
        yield {"bn": [True], "batch_size": [32], "learning_rate": [0.1]}
    if isinstance(value, str):  # grid.compare
        yield from FACTORS
    if isinstance(value, bool):
        yield not value
    elif isinstance(value, int | float):
        yield from (value + 1, value / 2, value - 1)
    elif isinstance(value, str):
        yield value + "-other"
    elif isinstance(value, tuple) and value:
        yield value[:1] if len(value) > 1 else (*value, value[-1] + 1)
    yield from (1, 0.5, "other", True, (1,), None)


def changed(cfg: Config, section: str, name: str) -> Config:
    """``cfg`` with one field set to another valid value (the first candidate that validates)."""
    dump = cfg.model_dump(mode="json")
    current = getattr(getattr(cfg, section), name)
    annotation = type(getattr(cfg, section)).model_fields[name].annotation
    for candidate in _candidates(current, annotation):
        if candidate == current:
            continue
        dump[section][name] = candidate
        if section == "grid" and name in ("bn", "batch_sizes"):  # the aliases of grid.factors
            dump[section].pop("factors", None)
        try:
            return Config.model_validate(dump)
        except ValueError:
            continue
    raise AssertionError(f"{section}.{name}: add a way to change it to tests/test_cell_key.py")


def test_every_config_field_is_classified():
    unclassified = [f"{s}.{f}" for s, f in all_fields() if field_kind(f"{s}.{f}") is None]
    assert not unclassified, f"classify in bnpipe/grid.py (numeric or speed-only): {unclassified}"
    # and the classification names no field that does not exist
    names = {f"{s}.{f}" for s, f in all_fields()}
    listed = {*grid.NUMERIC_FIELDS, *grid.GRID_FIELDS, *grid.SPEED_ONLY_FIELDS}
    assert listed <= names, listed - names


@pytest.mark.parametrize(("section", "name"), all_fields(), ids=lambda v: str(v))
def test_field_changes_the_key_exactly_when_it_changes_numbers(section, name):
    other = changed(BASE, section, name)
    # A factor's default field decides the cells whose grid does not list the factor.
    cell = BARE if f"{section}.{name}" in FACTOR_FIELDS else CELL
    before, after = cell_key_for(BASE, cell, DIGEST), cell_key_for(other, cell, DIGEST)
    if field_kind(f"{section}.{name}") == "numeric":
        assert before != after, f"{section}.{name} changes numbers but not the cell key"
    else:  # speed-only, bookkeeping, or the grid's lists (the cell carries its own levels)
        assert before == after, f"{section}.{name} changes no numbers but changes the cell key"


def test_shard_size_counts_for_the_fused_engine_only():
    keras = changed(BASE, "train", "engine")
    assert keras.train.engine == "keras"
    wider = Config.model_validate(
        {**keras.model_dump(mode="json"), "train": {**keras.train.model_dump(), "shard_size": 7}}
    )
    assert cell_key_for(keras, CELL, DIGEST) == cell_key_for(wider, CELL, DIGEST)


def test_the_cell_itself_and_the_data_digest_change_the_key():
    key = cell_key_for(BASE, CELL, DIGEST)
    for cell in (CELL.replace(bn=False), CELL.replace(batch_size=64), CELL.replace(seed=4)):
        assert cell_key_for(BASE, cell, DIGEST) != key
    assert cell_key_for(BASE, CELL, "other-data") != key


def test_numeric_package_versions_change_the_key(monkeypatch):
    key = cell_key_for(BASE, CELL, DIGEST)
    real = metadata.version
    for package in NUMERIC_PACKAGES:
        monkeypatch.setattr(
            provenance.metadata,
            "version",
            lambda name, package=package: "0.0.1" if name == package else real(name),
        )
        try:
            real(package)
        except metadata.PackageNotFoundError:
            continue  # e.g. tensorflow-cpu when tensorflow is installed
        assert cell_key_for(BASE, CELL, DIGEST) != key, package
    monkeypatch.setattr(provenance.metadata, "version", real)
    assert cell_key_for(BASE, CELL, DIGEST) == key


@pytest.mark.parametrize("var", NUMERIC_ENV_VARS)
def test_numeric_environment_variables_change_the_key(monkeypatch, var):
    monkeypatch.delenv(var, raising=False)
    key = cell_key_for(BASE, CELL, DIGEST)
    monkeypatch.setenv(var, "1")
    assert cell_key_for(BASE, CELL, DIGEST) != key


def test_the_compile_cache_flag_does_not_change_the_key(monkeypatch):
    # bnpipe.xla_cache adds it once something trains: keys taken before and after must agree.
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=0")
    key = cell_key_for(BASE, CELL, DIGEST)
    monkeypatch.setenv(
        "TF_XLA_FLAGS", "--tf_xla_auto_jit=0 --tf_xla_persistent_cache_directory=/tmp/x"
    )
    assert cell_key_for(BASE, CELL, DIGEST) == key
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_persistent_cache_directory=/tmp/x")
    monkeypatch.delenv("TF_XLA_FLAGS")
    unset = cell_key_for(BASE, CELL, DIGEST)
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_persistent_cache_directory=/tmp/x")
    assert cell_key_for(BASE, CELL, DIGEST) == unset


def test_numeric_code_changes_the_key_and_comments_do_not(monkeypatch, tmp_path):
    copy = tmp_path / "bnpipe"
    shutil.copytree(provenance._PACKAGE_DIR, copy)
    monkeypatch.setattr(provenance, "_PACKAGE_DIR", copy)
    provenance.code_digest.cache_clear()
    try:
        key = cell_key_for(BASE, CELL, DIGEST)
        fused = copy / "train" / "fused.py"
        source = fused.read_text()
        fused.write_text(source + "\n# a comment changes no numbers\n")
        provenance.code_digest.cache_clear()
        assert cell_key_for(BASE, CELL, DIGEST) == key
        fused.write_text(source.replace("BN_EPSILON = 1e-3", "BN_EPSILON = 1e-5"))
        provenance.code_digest.cache_clear()
        assert cell_key_for(BASE, CELL, DIGEST) != key
    finally:
        provenance.code_digest.cache_clear()


def test_default_grid_cells_keep_their_params_and_keys():
    cfg = load_config(grid.__file__.replace("bnpipe/grid.py", "params.yaml"))
    params = cell_params(cfg, CELL, "d" * 64)
    assert params == MAIN_PARAMS
    # The key hashes exactly these params (same versions, code and environment as main's).
    assert cell_key_for(cfg, CELL, "d" * 64) == cell_key(
        {
            "params": MAIN_PARAMS,
            "versions": provenance.package_versions(NUMERIC_PACKAGES),
            "code": provenance.code_digest(),
            "env": provenance.numeric_env(),
        }
    )
    # The keras engine's cells too (no shard width).
    keras = load_config(None, ["train.engine=keras"])
    assert cell_params(keras, CELL, "d" * 64) == {
        **MAIN_PARAMS,
        "engine": "keras",
        "shard_size": None,
    }


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("bn", False),
        ("bn_position", "before_relu"),
        ("batch_size", 64),
        ("learning_rate", 0.01),
        ("init_scale", 0.5),
    ],
)
def test_every_factor_level_changes_the_key(name, level):
    assert FACTORS[name].kind is type(level)
    key = cell_key_for(BASE, CELL, DIGEST)
    assert cell_key_for(BASE, CELL.replace(**{name: level}), DIGEST) != key
    # Listed in the grid or taken from its default field: one level, one key.
    field = FACTORS[name].default_field
    section, _, attr = field.partition(".")
    default = getattr(getattr(BASE, section), attr)
    assert cell_key_for(BASE, CELL.replace(**{name: default}), DIGEST) == cell_key_for(
        BASE, Cell(tuple((n, v) for n, v in CELL.levels if n != name), 3), DIGEST
    )


def test_keyless_defaults_are_left_out_of_the_params():
    params = cell_params(BASE, CELL, DIGEST)
    assert "bn_position" not in params and "init_scale" not in params
    other = cell_params(BASE, CELL.replace(bn_position="before_relu", init_scale=2.0), DIGEST)
    assert other["bn_position"] == "before_relu" and other["init_scale"] == 2.0
