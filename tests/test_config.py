from pathlib import Path

import pytest

from bnpipe.config import Config, ConfigError, load_config, logged_bool

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_reproduce_the_reference():
    cfg = load_config(None)
    assert cfg.model.hidden_units == (64, 64)
    assert cfg.train.learning_rate == 1e-3
    assert cfg.train.epochs == 10
    assert cfg.grid.batch_sizes == (16, 32, 64, 128)
    assert cfg.grid.bn == (False, True)
    # No seed list: the sequential design picks seeds 0, 1, 2, ... until decided.
    assert cfg.grid.seeds is None and cfg.stats.design == "sequential"


def test_params_yaml_equals_the_defaults():
    assert load_config(ROOT / "params.yaml") == Config()


def test_set_overrides_with_types():
    cfg = load_config(None, ["train.epochs=2", "grid.seeds=[0,1]", "train.learning_rate=1"])
    assert cfg.train.epochs == 2
    assert cfg.grid.seeds == (0, 1)
    assert cfg.train.learning_rate == 1.0
    # YAML 1.1 reads 1e-3 as a string; it is still the number users mean
    assert load_config(None, ["train.learning_rate=1e-3"]).train.learning_rate == 1e-3


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(Exception, match="frozen"):
        cfg.train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epoch=2", "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
        ("trian.epochs=2", "did you mean 'train'?"),
        ("train.epochs=two", "train.epochs: Input should be a valid integer"),
        ("train.epochs=2.5", "train.epochs"),
        ("train.epochs=0", "train.epochs: Input should be greater than or equal to 1"),
        ("grid.batch_sizes=[0,32]", "grid.batch_sizes: batch sizes must be > 0"),
        ("grid.batch_sizes=[-16]", "grid.batch_sizes"),
        ("grid.seeds=[]", "grid.seeds: must not be empty"),
        ("grid.seeds=[1,1]", "grid.seeds: has duplicates"),
        ("train.learning_rate=0", "train.learning_rate: Input should be greater than 0"),
        ("train.learning_rate=-0.1", "train.learning_rate"),
        ("train.engine=turbo", "train.engine"),
        ("train.learning_rate=.inf", "train.learning_rate"),
        ("grid=3", "grid"),
        ("report.figures=maybe", "report.figures: Input should be a valid boolean"),
        ("nonsense", "expected key.path=value"),
    ],
)
def test_bad_overrides_give_one_line_errors(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_key_in_file_is_named_with_a_suggestion(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"params.yaml: unknown key 'train.epochs?z'"):
        load_config(p)
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        load_config(p)


def test_unreadable_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("train:\n  epochs: [1, 2\n  lr: 3\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: unreadable YAML at line \d+"):
        load_config(p)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


def test_flat_view_has_dotted_keys():
    flat = load_config(None).flat()
    assert flat["train.epochs"] == 10
    # The grid as grid.factors.<factor> (the aliases grid.bn / grid.batch_sizes are input only).
    assert flat["grid.factors.batch_size"] == [16, 32, 64, 128]
    assert flat["grid.factors.bn"] == [False, True] and "grid.batch_sizes" not in flat


def test_grid_factors_and_their_defaults():
    cfg = load_config(None, ["grid.factors={bn: [false, true], learning_rate: [0.001, 0.1]}"])
    assert cfg.grid.levels == {"bn": (False, True), "learning_rate": (0.001, 0.1)}
    assert cfg.grid.compare == "bn" and cfg.grid.compare_levels == (False, True)
    assert cfg.grid.batch_sizes is None  # not a grid factor: cells take train.batch_size
    assert cfg.train.batch_size == 32 and cfg.model.init_scale == 1.0
    assert cfg.model.bn is False and cfg.model.bn_position == "after_relu"
    # Levels are typed like any other field: YAML's 1e-3 string and an int are floats.
    lr = load_config(None, ["grid.factors={bn: [false, true], learning_rate: [1e-3, 1]}"])
    assert lr.grid.levels["learning_rate"] == (0.001, 1.0)
    # Registry order, whatever order the mapping lists them in: the same grid either way.
    a = load_config(None, ["grid.factors={learning_rate: [0.1], bn: [false, true]}"])
    b = load_config(None, ["grid.factors={bn: [false, true], learning_rate: [0.1]}"])
    assert a == b and list(a.grid.levels) == ["bn", "learning_rate"]


def test_grid_aliases_fill_grid_factors():
    # The older spelling, from the defaults or over params.yaml's grid.factors.
    for path in (None, ROOT / "params.yaml"):
        cfg = load_config(path, ["grid.batch_sizes=[16]", "grid.bn=[true]", "grid.seeds=[0]"])
        assert cfg.grid.levels == {"bn": (True,), "batch_size": (16,)}
        assert cfg.grid.bn == (True,) and cfg.grid.batch_sizes == (16,)
    # A whole new grid.factors replaces the aliases of an older params file.
    old = load_config(None, ["grid.bn=[false, true]", "grid.factors={bn: [false, true]}"])
    assert old.grid.levels == {"bn": (False, True)}
    # An added factor keeps the file's others.
    more = load_config(ROOT / "params.yaml", ["grid.factors.init_scale=[0.5, 2]"])
    assert more.grid.levels["init_scale"] == (0.5, 2.0) and len(more.grid.levels) == 3
    # The dump is the resolved grid and reads back as the same config (deployments, Dask).
    assert Config.model_validate(more.model_dump(mode="json")) == more


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        (
            "grid.factors={dropout: [0.1]}",
            "unknown key 'grid.factors.dropout' (valid: bn, bn_position, batch_size, "
            "learning_rate, init_scale, optimizer)",
        ),
        ("grid.factors={bn: []}", "grid.factors.bn: must not be empty"),
        ("grid.factors={bn: [false, false]}", "grid.factors.bn: has duplicates"),
        ("grid.factors={bn: [0, 1]}", "grid.factors.bn: Input should be a valid boolean"),
        ("grid.factors={bn: [false, true], batch_size: [32.0]}", "grid.factors.batch_size"),
        (
            "grid.factors={bn: [false, true], batch_size: [0]}",
            "grid.factors.batch_size: levels must be > 0",
        ),
        (
            "grid.factors={bn: [false, true], batch_size: [16777217]}",
            "grid.factors.batch_size: levels must be at most 16777216",
        ),
        (
            "grid.factors={bn: [false, true], learning_rate: [0]}",
            "grid.factors.learning_rate: levels must be > 0",
        ),
        ("grid.factors={bn: [false, true], learning_rate: [.nan]}", "grid.factors.learning_rate"),
        (
            "grid.factors={bn: [false, true], init_scale: [-1]}",
            "grid.factors.init_scale: levels must be > 0",
        ),
        ("grid.factors={bn: [false, true], bn_position: [middle]}", "grid.factors.bn_position"),
        ("grid.factors={bn: [false, true], learning_rate: [x]}", "grid.factors.learning_rate"),
        ("grid.factors=[bn]", "grid.factors"),
        ("grid.compare=dropout", "grid.compare: unknown factor 'dropout'; known: bn, bn_position"),
        (
            "grid.compare=learning_rate",
            "grid.compare: learning_rate is not in grid.factors (bn, batch_size)",
        ),
        (
            "grid.compare=batch_size",
            "grid.compare: batch_size has 4 levels; a paired comparison takes 2",
        ),
        (
            "grid.factors={bn: [true]}",
            "stats.design: sequential needs grid.factors.bn with 2 levels",
        ),
        ("model.init_scale=0", "model.init_scale: Input should be greater than 0"),
        ("model.bn_position=middle", "model.bn_position"),
        ("model.bn=1", "model.bn: Input should be a valid boolean"),
        ("train.batch_size=0", "train.batch_size: Input should be greater than or equal to 1"),
        ("train.batch_size=16777217", "train.batch_size: Input should be less than or equal to"),
    ],
)
def test_bad_grid_factors_give_one_line_errors(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_alias_and_factor_in_one_file_is_an_error(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("grid:\n  batch_sizes: [16]\n  factors: {bn: [false, true], batch_size: [32]}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(err.value) == (
        f"{p}: grid.batch_sizes and grid.factors.batch_size both given; keep one "
        "(grid.batch_sizes is the older spelling of grid.factors.batch_size)"
    )


def test_a_bool_read_back_from_logged_params() -> None:
    # MLflow stores a bool param as "True"/"False"; a run from before the setting existed has none.
    assert [logged_bool(v) for v in ("True", "true", "False", "false", None)] == [
        True,
        True,
        False,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="not a bool: 'yes'"):
        logged_bool("yes")
