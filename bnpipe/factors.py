"""The grid's factors: what may vary from cell to cell, how a level is spelled, how it reaches
training and how it is keyed, and strata.

A cell is (factor levels, seed). Every module outside the code that implements a level handles
cells through this module only: ``TrainSpec`` (which levels members share), the training groups
(``grid.GROUP_SPANS``), the design id and the cell params read the registry. A new factor is
an entry here, its default field in ``bnpipe/config.py``, and the code that gives its levels a
meaning: the model builder and the fused kernel for the architecture, ``train/optimizers.py``
for an optimizer, the engines for anything else. ``keyless_default`` is not optional in spirit:
a factor added without it gives every stored cell a new key (tests/test_grid_factors.py lists
the factors allowed to be keyed at every level).

Levels are stored in registry order (FACTORS), whatever order ``grid.factors`` lists them in:
the same levels always make the same cell. A stratum is a cell's levels without the compared
factor and the seed: one paired comparison per stratum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Level = tuple[str, Any]
Stratum = tuple[Level, ...]

# How a level reaches training (Factor.reaches):
# - MEMBER: a setting of each model; the members of one training group may differ in it (the
#   fused engine gives every member its own init, and shards by learning rate).
# - GROUP: one value for a whole group, compiled into its program (batch size, optimizer).
# - ARCHITECTURE: the model's layers; the model builder takes it by name (``build_model``) and
#   every member of a group shares it, unless the factor ``spans_groups``.
MEMBER, GROUP, ARCHITECTURE = "member", "group", "architecture"


@dataclass(frozen=True)
class Factor:
    """One setting that may vary per cell.

    Attributes:
        name: the config, params, results-column and MLflow-param name.
        label: short name in run names (``bs=32``).
        kind: the Python type of a level (bool, int, float or str).
        reaches: how the level reaches training: MEMBER, GROUP or ARCHITECTURE (above).
        default_field: dotted config field a cell takes its level from when the factor is not
            in ``grid.factors``.
        choices: the allowed levels of a str factor.
        keyless_default: a level left out of a cell's params (and so its key) because cells were
            keyed before the factor existed: those cells keep their keys and stay reusable.
        gt: a numeric level must be greater than this (config validation).
        le: a numeric level must be at most this (config validation).
        title: the factor in sentences (``BN``, ``batch size``); default: the name in words.
        spans_groups: the fused engine trains all levels in one group although they change the
            program (BN: a shard of both arms is one masked program in which each member trains
            bit for bit as apart), so a comparison's arms cost one compile, not two.
        bare_stratum: a stratum of this factor alone enters the design id as its bare level
            (the id designs had when their strata were batch sizes).
        keyless_compare: comparing exactly these levels leaves ``grid.compare`` out of the
            design id (designs from before ``grid.compare`` existed compared BN off/on).
    """

    name: str
    label: str
    kind: type
    reaches: str
    default_field: str
    choices: tuple[str, ...] | None = None
    keyless_default: Any = None
    gt: float | None = None
    le: float | None = None
    title: str = ""
    spans_groups: bool = False
    bare_stratum: bool = False
    keyless_compare: tuple[Any, ...] | None = None

    @property
    def words(self) -> str:
        """The factor in sentences: ``BN``, ``batch size``, ``learning rate``."""
        return self.title or self.name.replace("_", " ")

    def format(self, value: Any) -> str:
        """A level as run names, tables and figure labels show it."""
        if self.kind is bool:
            return "on" if value else "off"
        if self.kind is float:
            return f"{value:g}"
        return str(value)


FACTORS: dict[str, Factor] = {
    f.name: f
    for f in (
        Factor("bn", "bn", bool, ARCHITECTURE, "model.bn", title="BN", spans_groups=True,
               keyless_compare=(False, True)),
        Factor("bn_position", "pos", str, ARCHITECTURE, "model.bn_position",
               choices=("after_relu", "before_relu"), keyless_default="after_relu",
               title="BN position"),
        # A batch far beyond any data set overflows int32 shapes inside TensorFlow.
        Factor("batch_size", "bs", int, GROUP, "train.batch_size", gt=0, le=1 << 24,
               bare_stratum=True),
        Factor("learning_rate", "lr", float, MEMBER, "train.learning_rate", gt=0),
        Factor("init_scale", "init", float, MEMBER, "model.init_scale", keyless_default=1.0,
               gt=0),
        # Adam is the reference's (and what every cell keyed before this factor trained with).
        Factor("optimizer", "opt", str, GROUP, "train.optimizer", choices=("adam", "sgd"),
               keyless_default="adam"),
    )
}  # fmt: skip
_ORDER = {name: i for i, name in enumerate(FACTORS)}
# Factors whose levels may differ inside one training group of the fused engine.
SPANNING = tuple(n for n, f in FACTORS.items() if f.spans_groups)


def factor(name: str) -> Factor:
    """The registry entry of ``name``.

    Raises:
        KeyError: with the known names, for an unknown factor.
    """
    try:
        return FACTORS[name]
    except KeyError:
        raise KeyError(f"unknown factor {name!r}; known: {', '.join(FACTORS)}") from None


def canonical(levels: Mapping[str, Any] | Iterable[Level]) -> tuple[Level, ...]:
    """``levels`` as a tuple of (name, level) pairs in registry order (unknown names: KeyError)."""
    pairs = dict(levels.items() if isinstance(levels, Mapping) else levels)
    for name in pairs:
        factor(name)
    return tuple(sorted(pairs.items(), key=lambda kv: _ORDER[kv[0]]))


@dataclass(frozen=True, order=True)
class Cell:
    """One grid cell: the levels of the grid's factors, and a seed."""

    levels: tuple[Level, ...]
    seed: int

    @classmethod
    def of(cls, seed: int, **levels: Any) -> Cell:
        """``Cell.of(3, bn=True, batch_size=32)``."""
        return cls(canonical(levels), seed)

    def __getitem__(self, name: str) -> Any:
        for n, v in self.levels:
            if n == name:
                return v
        raise KeyError(f"cell {self.name!r} has no factor {name!r}")

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.levels).get(name, default)

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.levels)

    @property
    def name(self) -> str:
        """The MLflow run name: ``bn=on bs=32 seed=3``."""
        return " ".join([*(level_text(n, v) for n, v in self.levels), f"seed={self.seed}"])

    def replace(self, **changes: Any) -> Cell:
        """This cell with some levels (or ``seed``) changed."""
        seed = changes.pop("seed", self.seed)
        return Cell(canonical({**dict(self.levels), **changes}), seed)

    def stratum(self, compare: str) -> Stratum:
        """The levels without the compared factor: the comparison this cell belongs to."""
        return tuple((n, v) for n, v in self.levels if n != compare)


def level_text(name: str, value: Any) -> str:
    """``bs=32``, ``bn=on``: one level as a run name shows it."""
    f = factor(name)
    return f"{f.label}={f.format(value)}"


def stratum_label(stratum: Stratum) -> str:
    """A comparison's name in tables, figures and the terminal: ``batch_size=32``, or
    ``batch_size=32, learning_rate=0.1``; ``all`` when the grid has only the compared factor."""
    if not stratum:
        return "all"
    return ", ".join(f"{n}={factor(n).format(v)}" for n, v in stratum)


def stratum_key(stratum: Stratum) -> str:
    """A comparison's name inside MLflow metric and tag names, which may not contain ``=`` or
    ``,``: ``batch_size_32``, ``batch_size_32.learning_rate_0.1``, ``all``."""
    if not stratum:
        return "all"
    # MLflow also rejects "+": a level formatted 1e+30 is named 1e30.
    return ".".join(f"{n}_{factor(n).format(v)}" for n, v in stratum).replace("+", "")


def parse_level(name: str, text: str) -> Any:
    """A level read back from an MLflow param string (``"on"``, ``"True"``, ``"32"``, ``"0.1"``)."""
    f = factor(name)
    if f.kind is bool:
        if text in ("on", "True", "true"):
            return True
        if text in ("off", "False", "false"):
            return False
        raise ValueError(f"{name}: not a BN level: {text!r}")
    if f.kind is int:
        return int(text)
    if f.kind is float:
        return float(text)
    return text


def levels_text(levels: Iterable[Level]) -> str:
    """``bn=on bs=32``: levels as group names (a run name without its seed) show them."""
    return " ".join(level_text(n, v) for n, v in levels)


def factor_columns(columns: Iterable[str]) -> list[str]:
    """The names among ``columns`` that are factors, in registry order (a results table's
    factor columns)."""
    present = set(columns)
    return [name for name in FACTORS if name in present]


def level_phrase(name: str, value: Any) -> str:
    """One level in a sentence: ``BN on``, ``batch size 64``, ``learning rate 0.1``."""
    f = factor(name)
    return f"{f.words} {f.format(value)}"


def stratum_phrase(stratum: Stratum) -> str:
    """A comparison in a sentence: ``batch size 64``, ``batch size 64, learning rate 0.1``;
    ``the whole grid`` when the grid has only the compared factor."""
    return ", ".join(level_phrase(n, v) for n, v in stratum) or "the whole grid"


def contrast_phrase(compare: str, levels: Sequence[Any]) -> str:
    """What a comparison's difference is: ``BN on minus BN off`` (treatment minus control)."""
    if len(levels) != 2:
        return f"{factor(compare).words} (one level: nothing to compare)"
    return f"{level_phrase(compare, levels[1])} minus {level_phrase(compare, levels[0])}"


def strata_phrase(names: Iterable[str]) -> str:
    """How the comparisons are split: ``per batch size``, ``per batch size x learning rate``;
    ``over the whole grid`` when no factor but the compared one varies."""
    words = " x ".join(factor(n).words for n in names)
    return f"per {words}" if words else "over the whole grid"
