from pathlib import Path

import pytest

from bnpipe.config import Config, ConfigError, load_config

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
    assert flat["grid.batch_sizes"] == [16, 32, 64, 128]
