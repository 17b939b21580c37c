"""params.yaml -> a frozen, validated, typed config. The one module that reads YAML."""

from __future__ import annotations

import difflib
import re
import reprlib
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from bnpipe.factors import FACTORS, Factor

# Bounds on what a params file or --set may make bnpipe read, build or echo: a hostile or broken
# input (/dev/zero, a billion-laughs alias bomb, 20,000 nested brackets) must fail in one line,
# fast, instead of hanging or printing a traceback.
MAX_PARAMS_BYTES = 1 << 20
MAX_LOOKS = 100  # planned looks of a sequential design (see StatsConfig._whole_looks)
MAX_NAME_BYTES = 255  # a file name on Linux file systems (NAME_MAX)
# PATH_MAX is 4096; a run adds "/<run name>/<figure>.png" (~80 bytes) below the reports folder.
MAX_REPORTS_PATH_BYTES = 3800
MAX_YAML_NODES = 100_000  # after expanding aliases; params.yaml has ~50
MAX_ECHO_CHARS = 80
MAX_NESTING = 50  # PyYAML recurses per level and slows down quadratically with flow depth
# Derived seeds (bnpipe.models.layer_seed = seed * 1000 + layer) must fit int32 for every layer.
MAX_HIDDEN_LAYERS = 100
MAX_SEED = (2**31 - 1) // 1000 - 1
# A batch above the training set is one batch of all examples (as in Keras fit); far beyond any
# data set it overflows int32 shapes inside TensorFlow (the registry holds the bound).
MAX_BATCH_SIZE = int(FACTORS["batch_size"].le or 0)
# The grid's spelling before grid.factors existed, still accepted: grid.<alias> fills
# grid.factors.<factor>. Every params file and --set of that time keeps working unchanged.
GRID_ALIASES = {"bn": "bn", "batch_sizes": "batch_size"}
# The grid when params name none: the reference ablation, BN off/on x four batch sizes.
DEFAULT_FACTORS: dict[str, tuple[Any, ...]] = {"bn": (False, True), "batch_size": (16, 32, 64, 128)}
# The factor a grid compares when params (or a caller) name none: the reference ablation's.
DEFAULT_COMPARE = "bn"
# Fused engine: members per stacked model. Two shards of 5 cover the default 10 seeds and keep
# both cores of a 2-core machine busy. (Here, not in the engines: config sits below them.)
DEFAULT_SHARD_SIZE = 5


class ConfigError(ValueError):
    """Invalid params: the message is one line naming the field or file."""


class _Section(BaseModel):
    # Frozen so a config passed down can't be changed behind the caller's back; forbid so a typo
    # in params.yaml is an error instead of a silently ignored setting. Strict numbers: "10" is
    # not an epoch count, and .inf is not a learning rate.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _yaml_quirks(cls, v: Any, info: ValidationInfo) -> Any:
        # YAML gives lists; tuples keep the frozen config hashable and immutable.
        if isinstance(v, list):
            return tuple(v)
        # For float fields: YAML 1.1 reads "1e-3" as a string and "1" as an int; both are
        # meant as numbers. Nothing else is coerced (strict mode).
        if cls.model_fields[info.field_name].annotation is float:
            if isinstance(v, int) and not isinstance(v, bool):
                return float(v)
            if isinstance(v, str):
                try:
                    return float(v)
                except ValueError:
                    return v
        return v


class DataConfig(_Section):
    dir: str | None = None
    limit_train: int | None = Field(default=None, gt=0)
    limit_test: int | None = Field(default=None, gt=0)
    # Issue 28: each seed trains on its own bootstrap resample of the (limit_train) training set,
    # shared by all of that seed's cells, so training-set sampling enters the seed variance. Off
    # by default: the reference recipe trains every model on the same 60,000 images.
    bootstrap_train: bool = False


class ModelConfig(_Section):
    hidden_units: tuple[int, ...] = (64, 64)
    num_classes: int = Field(default=10, ge=2)
    # Defaults of factors a grid does not vary (bnpipe.factors): a cell takes its level from
    # grid.factors when listed there, else from here.
    bn: bool = False
    bn_position: Literal["after_relu", "before_relu"] = "after_relu"
    # Multiplier of the Glorot-uniform limit of every Dense kernel (1: Keras' GlorotUniform).
    init_scale: float = Field(default=1.0, gt=0)

    @field_validator("hidden_units")
    @classmethod
    def _positive_units(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(u <= 0 for u in v):
            raise ValueError("must be a non-empty list of positive layer widths")
        if len(v) > MAX_HIDDEN_LAYERS:
            raise ValueError(f"at most {MAX_HIDDEN_LAYERS} hidden layers")
        return v


class TrainConfig(_Section):
    epochs: int = Field(default=10, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    # adam (the reference's) or sgd (momentum 0.9). Both train at learning_rate: 0.001 suits
    # Adam, SGD needs ~10-100x more, so an sgd grid lists its learning rates (studies/optimizer).
    optimizer: Literal["adam", "sgd"] = "adam"
    # The batch size of a grid without a batch_size factor.
    batch_size: int = Field(default=32, ge=1, le=MAX_BATCH_SIZE)
    engine: Literal["fused", "keras"] = "fused"
    steps_per_execution: int = Field(default=100, ge=1)
    # Fused engine: members per stacked model. It decides the last bits of every result (XLA
    # compiles per shape), so it is logged with each cell and is part of the cell key.
    shard_size: int = Field(default=DEFAULT_SHARD_SIZE, ge=1)
    # Fused engine: shards trained at once on threads (speed only); null: one per CPU core.
    parallel_shards: int | None = Field(default=None, ge=1)


def _as_float(v: Any) -> Any:
    # The float fields' YAML quirks (see _Section), for each level of a float factor.
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


class _FactorLevelsBase(_Section):
    """``grid.factors``: one optional list of levels per registry factor (bnpipe.factors).

    A model rather than a free mapping, so an unknown factor is an unknown key (named, with the
    known ones) and each factor's levels are typed as strictly as any other field.
    """

    @field_validator("*", mode="before")
    @classmethod
    def _yaml_quirks(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, list):
            v = tuple(v)
        if FACTORS[str(info.field_name)].kind is float and isinstance(v, tuple):
            v = tuple(_as_float(x) for x in v)
        return v

    @field_validator("*")
    @classmethod
    def _levels(cls, v: tuple | None, info: ValidationInfo) -> tuple | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must not be empty")
        if len(set(v)) != len(v):
            raise ValueError("has duplicates")
        f = FACTORS[str(info.field_name)]
        if f.gt is not None and any(x <= f.gt for x in v):
            raise ValueError(f"levels must be > {f.gt}")
        if f.le is not None and any(x > f.le for x in v):
            raise ValueError(f"levels must be at most {f.le}")
        return v

    @model_serializer(mode="wrap")
    def _listed_only(self, handler: Any) -> dict[str, Any]:
        # Factors the grid does not vary are absent, not null: params and dumps list the grid.
        return {k: v for k, v in handler(self).items() if v is not None}

    def levels(self) -> dict[str, tuple[Any, ...]]:
        """The listed factors' levels, in registry order."""
        return {n: getattr(self, n) for n in FACTORS if getattr(self, n) is not None}


def _level_type(f: Factor) -> Any:
    return Literal[f.choices] if f.choices else f.kind


FactorLevels = create_model(
    "FactorLevels",
    __base__=_FactorLevelsBase,
    **{n: (tuple[_level_type(f), ...] | None, None) for n, f in FACTORS.items()},
)


class GridConfig(_Section):
    # Factor name -> levels; a cell per combination and seed. Unlisted factors take their
    # default field's value (bnpipe.factors.Factor.default_field).
    factors: FactorLevels = FactorLevels(**DEFAULT_FACTORS)
    # The factor whose two levels are paired per seed (first level: the control); every other
    # listed factor's levels make the strata, one comparison each.
    compare: str = DEFAULT_COMPARE
    # Aliases (GRID_ALIASES): input only; after validation they read back the grid's levels.
    bn: tuple[bool, ...] | None = Field(default=None, exclude=True)
    batch_sizes: tuple[int, ...] | None = Field(default=None, exclude=True)
    # null: the sequential design picks seeds 0, 1, 2, ... as it needs them; a list: a fixed
    # design on exactly those seeds.
    seeds: tuple[int, ...] | None = None

    @field_validator("bn", "batch_sizes", "seeds")
    @classmethod
    def _non_empty_unique(cls, v: tuple | None) -> tuple | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must not be empty")
        if len(set(v)) != len(v):
            raise ValueError("has duplicates")
        return v

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batch(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is None:
            return v
        if any(b <= 0 for b in v):
            raise ValueError("batch sizes must be > 0")
        if any(b > MAX_BATCH_SIZE for b in v):
            raise ValueError(f"batch sizes must be at most {MAX_BATCH_SIZE}")
        return v

    @field_validator("seeds")
    @classmethod
    def _non_negative_seed(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and any(s < 0 for s in v):
            raise ValueError("seeds must be >= 0")
        if v is not None and any(s > MAX_SEED for s in v):
            raise ValueError(f"seeds must be at most {MAX_SEED}")
        return v

    @model_validator(mode="after")
    def _resolve_factors(self) -> GridConfig:
        listed = "factors" in self.model_fields_set
        levels = self.factors.levels() if listed else dict(DEFAULT_FACTORS)
        for alias, name in GRID_ALIASES.items():
            value = getattr(self, alias)
            if value is None:
                continue
            if listed and name in self.factors.levels():
                raise ValueError(
                    f"grid.{alias} and grid.factors.{name} both given; keep one (grid.{alias} "
                    f"is the older spelling of grid.factors.{name})"
                )
            levels[name] = value
        if self.compare not in FACTORS:
            raise ValueError(
                f"grid.compare: unknown factor {echo(self.compare)}; known: {', '.join(FACTORS)}"
            )
        if self.compare not in levels:
            raise ValueError(
                f"grid.compare: {self.compare} is not in grid.factors "
                f"({', '.join(levels) or 'none listed'}); list its two levels there"
            )
        if len(levels[self.compare]) > 2:
            raise ValueError(
                f"grid.compare: {self.compare} has {len(levels[self.compare])} levels; a paired "
                "comparison takes 2 (control first)"
            )
        # Frozen: the resolved grid is written once, here, before anyone can read the config.
        object.__setattr__(self, "factors", FactorLevels(**levels))
        for alias, name in GRID_ALIASES.items():
            object.__setattr__(self, alias, levels.get(name))
        return self

    @property
    def levels(self) -> dict[str, tuple[Any, ...]]:
        """The grid's factors and their levels, in registry order."""
        return self.factors.levels()

    @property
    def compare_levels(self) -> tuple[Any, ...]:
        """The compared factor's levels: (control, treatment), or one level."""
        return self.levels[self.compare]


# stats.population: what a decision is about, as every surface says it (issue 28).
DIGITS, TEST_SET = "digits", "test_set"
POPULATIONS = {
    DIGITS: "digits like MNIST's test set (seeds and test examples crossed)",
    TEST_SET: "these test images (seeds only)",
}
# The same under data.bootstrap_train: a seed's noise includes which training images it drew.
BOOTSTRAP_POPULATIONS = {
    DIGITS: "digits like MNIST's test set (seeds, with their own bootstrap training sets, and "
    "test examples crossed)",
    TEST_SET: "these test images (seeds only, with their own bootstrap training sets)",
}


def population_text(population: str, bootstrap_train: bool = False) -> str:
    """What a decision is about, as every surface says it: the one place that words it."""
    return (BOOTSTRAP_POPULATIONS if bootstrap_train else POPULATIONS)[population]


def logged_bool(value: str | None) -> bool:
    """A bool setting read back from a run's params (MLflow stores "True"); absent: off."""
    if value in (None, "False", "false"):
        return False
    if value in ("True", "true"):
        return True
    raise ValueError(f"not a bool: {value!r}")


class StatsConfig(_Section):
    alpha: float = Field(default=0.05, gt=0, lt=1)
    equivalence_margin: float = Field(default=0.002, gt=0)
    # sequential: add seed pairs per comparison until decided; fixed: exactly grid.seeds (an
    # explicit grid.seeds list means fixed whatever this says).
    design: Literal["sequential", "fixed"] = "sequential"
    # The default design (issue 24): its expected models at the measured effects and its error
    # rates are checked by simulation in tests/test_design.py.
    look_every: int = Field(default=5, ge=2, le=10_000)
    # Pairs at the first look (null: look_every); a later first look skips looks that with a few
    # pairs' SD practically never decide.
    first_look: int | None = Field(default=20, ge=2, le=10_000)
    # Capped so every seed the design may try (twice this, failed pairs included) stays in range.
    max_seeds: int = Field(default=100, ge=2, le=10_000)
    spending: Literal["obf", "pocock", "hsd"] = "pocock"
    hsd_gamma: float = Field(default=-4.0, ge=-40, le=40)  # spending: hsd only (gsDesign sfupar)
    # shared: one repeated CI decides all; tost: equivalence by two one-sided repeated tests at
    # alpha/m each (its own error budget: a false "equivalent" is a different error).
    equivalence: Literal["shared", "tost"] = "tost"
    # Looks one run may do (null: until every comparison is decided). A scheduled run with 1 does
    # the next look of the same design each time; the decisions equal a straight run's.
    looks_per_run: int | None = Field(default=None, ge=1)
    # SD of per-seed differences assumed when planning (design quantities such as the expected
    # seeds to a decision are computed from it, never from the observed effect).
    planning_sd: float = Field(default=0.003, gt=0)
    # Which population a decision is about (issue 28). digits: seeds and test examples as crossed
    # random factors, so an interval is about handwritten digits like MNIST's test set (the test
    # examples add noise that more seeds do not remove); test_set: seeds only, about these 10,000
    # test images (the narrower claim every run before issue 28 made).
    population: Literal["digits", "test_set"] = "digits"
    # The test-example part of the SE assumed when planning the digits design (measured on the
    # 440-model run: 0.029-0.034 pp per batch size): the floor no number of seeds goes below.
    planning_example_se: float = Field(default=0.0003, ge=0)
    n_resamples: int = Field(default=9999, ge=99)
    val_threshold: float = Field(default=0.97, gt=0, le=1)

    @field_validator("max_seeds")
    @classmethod
    def _whole_looks(cls, v: int, info: ValidationInfo) -> int:
        every, first = info.data.get("look_every"), info.data.get("first_look")
        if every is not None and v < every:
            raise ValueError(f"must be >= stats.look_every ({every})")
        if first is not None and v < first:
            raise ValueError(f"must be >= stats.first_look ({first})")
        if every is not None:
            looks = len(range(first or every, v, every)) + 1
            if looks > MAX_LOOKS:
                # The boundaries' numerical integration grows with the looks: 0.5 s at 100 looks,
                # 4 s at 200, hours at 5,000 (a run sat silent before its first look).
                raise ValueError(
                    f"{looks} looks of stats.look_every {every} pairs (at most {MAX_LOOKS}): look "
                    "less often or lower it"
                )
        return v

    @model_validator(mode="after")
    def _tost_alpha(self) -> StatsConfig:
        # Two one-sided tests at alpha/m each make a two-sided 2 alpha/m interval.
        if self.equivalence == "tost" and self.alpha >= 0.5:
            raise ValueError("stats.alpha: must be < 0.5 with stats.equivalence: tost")
        return self


class TrackingConfig(_Section):
    uri: str | None = None
    experiment: str = Field(default="bnpipe-bn-ablation", min_length=1)
    log_weights: bool = True
    log_models: bool = False
    reports_dir: str = "reports"

    @field_validator("uri")
    @classmethod
    def _parses(cls, v: str | None) -> str | None:
        # urllib raises deep inside MLflow otherwise (``Invalid IPv6 URL``), after the run began.
        if v is not None:
            try:
                urllib.parse.urlsplit(v).port  # noqa: B018 - the port is parsed lazily
            except ValueError as exc:
                raise ValueError(f"not a valid URI ({exc})") from None
        return v

    @field_validator("reports_dir")
    @classmethod
    def _fits_the_file_system(cls, v: str) -> str:
        # Each run writes <reports_dir>/<run name>/report.html: a folder name past the file
        # system's limit fails only then, as a traceback.
        long = next((p for p in Path(v).parts if len(p.encode()) > MAX_NAME_BYTES), None)
        if long is not None:
            raise ValueError(
                f"folder name of {len(long.encode())} bytes (at most {MAX_NAME_BYTES})"
            )
        if len(str(Path(v).absolute()).encode()) > MAX_REPORTS_PATH_BYTES:
            raise ValueError(f"path longer than {MAX_REPORTS_PATH_BYTES} bytes")
        return v


class ReportConfig(_Section):
    # false: report.md / report.html with every table and no figures (drawing them is 0.4-1.1 s
    # of CPU a run, the most of a quick run's report): for quick iterations, scheduled runs that
    # need only the decisions, CI. Numbers and decisions are the same either way.
    figures: bool = True


class OrchestrationConfig(_Section):
    task_runner: Literal["serial", "dask"] = "serial"
    dask_address: str | None = None
    dask_workers: int = Field(default=2, ge=1)
    retries: int = Field(default=2, ge=0)


class Config(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    grid: GridConfig = GridConfig()
    stats: StatsConfig = StatsConfig()
    tracking: TrackingConfig = TrackingConfig()
    report: ReportConfig = ReportConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    @model_validator(mode="after")
    def _design_has_pairs(self) -> Config:
        # A sequential design decides one paired comparison per stratum: without both arms no
        # look can ever decide, and it would train up to the seed cap for nothing.
        grid = self.grid
        if (
            self.stats.design == "sequential"
            and grid.seeds is None
            and len(grid.compare_levels) != 2
        ):
            spelled = next(
                (
                    f"grid.{alias}"
                    for alias, name in GRID_ALIASES.items()
                    if name == grid.compare and alias in grid.model_fields_set
                ),
                f"grid.factors.{grid.compare}",
            )
            raise ValueError(
                f"stats.design: sequential needs {spelled} with 2 levels (control first, e.g. "
                "[false, true]); give grid.seeds for a fixed design"
            )
        return self

    @model_validator(mode="after")
    def _arms_differ(self) -> Config:
        # Where BN sits means nothing without BN: both arms would be the same network, trained
        # twice for a difference of exactly 0.
        grid = self.grid
        bn_levels = grid.levels.get("bn", (self.model.bn,))
        if grid.compare == "bn_position" and not any(bn_levels):
            raise ValueError(
                "grid.compare: bn_position compares where BN sits, but BN is off in every cell "
                "(set model.bn=true or add bn to grid.factors)"
            )
        return self

    def flat(self) -> dict[str, Any]:
        """Dotted-key view (``train.epochs`` -> 10), for logging as MLflow params."""
        return _flatten(self.model_dump(mode="json"))


def factor_defaults() -> dict[str, Any]:
    """Every factor's level where neither the grid nor params set it: its default field's
    default (``TrainSpec.of`` trains at these unless told otherwise)."""
    out = {}
    for name, f in FACTORS.items():
        section, _, field = f.default_field.partition(".")
        out[name] = Config.model_fields[section].annotation.model_fields[field].default
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _section_fields(path: tuple[str | int, ...]) -> list[str]:
    """Valid keys at ``path`` (for did-you-mean suggestions)."""
    model: type[BaseModel] = Config
    for part in path:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _one_line(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not isinstance(p, int))
    field = cut(".".join(str(p) for p in loc) or "<root>")
    if e["type"] == "extra_forbidden":
        valid = _section_fields(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""
        return f"{source}: unknown key '{field}'{hint} (valid: {', '.join(valid)})"
    msg = e["msg"].removeprefix("Value error, ")
    if not loc or msg.startswith(f"{loc[0]}."):  # a check across fields names them itself
        return f"{source}: {msg}"
    # A URI's user:password@ never reaches the terminal, even in an error about that URI.
    got = _USERINFO.sub("//***@", echo(e.get("input")))
    return f"{source}: {field}: {msg} (got {got})"


_USERINFO = re.compile(r"//[^/@\s]*@")


_ECHO = reprlib.Repr()  # depth- and length-limited repr (Python 3.11 takes no arguments)
_ECHO.maxlevel, _ECHO.maxstring, _ECHO.maxother = 3, MAX_ECHO_CHARS, MAX_ECHO_CHARS


def cut(text: str) -> str:
    """``text`` shortened to MAX_ECHO_CHARS (user text in an error line)."""
    return text if len(text) <= MAX_ECHO_CHARS else text[: MAX_ECHO_CHARS - 3] + "..."


def echo(value: Any) -> str:
    """A user value as an error shows it: repr, depth-limited and cut to MAX_ECHO_CHARS."""
    return cut(_ECHO.repr(value))


def _expanded_size(root: yaml.Node) -> int:
    """Nodes the document has once every alias is expanded (shared nodes counted per use).

    Iterative with memoised subtree sizes, so an alias bomb is measured without expanding it;
    a node that contains itself (``a: &x [*x]``) counts as too large.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        kids: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        if children_done:
            open_nodes.discard(key)
            sizes[key] = min(MAX_YAML_NODES + 1, 1 + sum(sizes[id(k)] for k in kids))
            continue
        if key in open_nodes:
            return MAX_YAML_NODES + 1
        open_nodes.add(key)
        stack.append((node, True))
        for kid in kids:
            if id(kid) in open_nodes:
                return MAX_YAML_NODES + 1
            stack.append((kid, False))
    return sizes[id(root)]


def _check_duplicate_keys(root: yaml.Node, source: str) -> None:
    """Refuse a mapping that gives one key twice: PyYAML keeps the last silently, so a second
    ``train:`` section would drop the first one's settings without a word."""
    stack, seen_nodes = [root], set()
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:  # an alias: checked where it was defined
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in keys:
                        line = key.start_mark.line + 1
                        raise ConfigError(
                            f"{source}: key {echo(key.value)} given twice (line {line})"
                        )
                    keys.add(key.value)
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def _check_nesting(text: str, source: str) -> None:
    """Refuse brackets nested deeper than MAX_NESTING before PyYAML spends seconds on them.

    Brackets inside quoted strings count too; no real params file comes near the limit.
    """
    depth = 0
    for match in _BRACKETS.finditer(text):
        depth += 1 if match.group() in "[{" else -1
        if depth > MAX_NESTING:
            raise ConfigError(f"{source}: nested too deeply (more than {MAX_NESTING} levels)")


_BRACKETS = re.compile(r"[\[\]{}]")


def safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` with bounds: at most MAX_NESTING levels of brackets and at most
    MAX_YAML_NODES nodes after alias expansion.

    Raises:
        ConfigError: one line naming ``source`` (and the line for a syntax error).
    """
    _check_nesting(text, source)
    try:
        loader = yaml.SafeLoader(text)  # its reader already rejects control characters
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node) > MAX_YAML_NODES:
                raise ConfigError(
                    f"{source}: more than {MAX_YAML_NODES} values once aliases are expanded"
                )
            if node is not None:
                _check_duplicate_keys(node, source)
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except RecursionError:  # deep block-style nesting, which has no brackets to count
        raise ConfigError(f"{source}: nested too deeply") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{source}: unreadable YAML{at}") from None


def read_params_text(path: Path, source: str) -> str:
    """At most MAX_PARAMS_BYTES of UTF-8 text (``/dev/zero`` or a binary file fail in one line)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PARAMS_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read ({exc.strerror})") from exc
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_PARAMS_BYTES} bytes; not a params file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.epochs=2`` -> (["train", "epochs"], 2); the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {echo(item)}: expected key.path=value")
    if len(raw) > MAX_PARAMS_BYTES:
        raise ConfigError(f"--set {cut(key)}: value longer than {MAX_PARAMS_BYTES} bytes")
    value = safe_yaml(raw, f"--set {cut(key)}")
    return key.strip().split("."), value


def _grid_spelling(raw: dict[str, Any], keys: list[str]) -> list[str]:
    """An override of a grid factor replaces it in whichever spelling the params use.

    ``--set grid.batch_sizes=[16]`` over a file with ``grid.factors`` sets
    ``grid.factors.batch_size``; ``--set grid.factors...`` over a file with the aliases drops
    the alias it replaces (all of them when the whole mapping is set). Both spellings in one
    params file stay an error.
    """
    grid = raw.get("grid")
    if not isinstance(grid, dict) or len(keys) < 2 or keys[0] != "grid":
        return keys
    factors = grid.get("factors")
    if len(keys) == 2 and keys[1] in GRID_ALIASES and isinstance(factors, dict):
        return ["grid", "factors", GRID_ALIASES[keys[1]]]
    if keys[1] == "factors":
        for alias, name in GRID_ALIASES.items():
            if len(keys) == 2 or keys[2] == name:
                grid.pop(alias, None)
    return keys


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read params.yaml (or defaults when ``path`` is None), apply ``--set`` overrides, validate."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        loaded = safe_yaml(read_params_text(Path(path), source), source)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
        raw = loaded or {}
    for item in overrides or []:
        keys, value = parse_override(item)
        keys = _grid_spelling(raw, keys)
        node = raw
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {cut('.'.join(keys))}: {echo(k)} is not a section")
            node = child
        node[keys[-1]] = value
        source = source if path is not None else "--set"
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source)) from None
