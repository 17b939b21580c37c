"""Facts about where a result came from: package versions, code, machine, git commit, cell key."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

# Packages whose version can change the numbers a cell produces (part of the cell key), and the
# orchestration/tracking ones that are recorded but cannot change a result.
NUMERIC_PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "numpy")
RECORDED_PACKAGES = (*NUMERIC_PACKAGES, "mlflow", "prefect", "pandas", "scipy", "bnpipe")

# The modules whose code decides a cell's numbers: preprocessing, the model, the engines and the
# test evaluation. An edit to their logic must never let an old result stand in for a new one.
NUMERIC_MODULES = (
    "data.py",
    "models.py",
    "evaluate.py",
    "train/common.py",
    "train/engines.py",
    "train/keras_engine.py",
    "train/fused.py",
    "train/optimizers.py",
)
# Environment variables that change TF's kernels or XLA's code generation, hence the last bits.
NUMERIC_ENV_VARS = ("TF_ENABLE_ONEDNN_OPTS", "XLA_FLAGS", "TF_XLA_FLAGS", "TF_DETERMINISTIC_OPS")
_PACKAGE_DIR = Path(__file__).resolve().parent


def package_versions(names: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (absent packages are left out), plus Python's."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return tree


@cache
def code_digest(modules: tuple[str, ...] = NUMERIC_MODULES) -> str:
    """Hash of the syntax trees of the modules that compute a cell's numbers.

    Comments, docstrings and formatting do not count (the AST has no comments and docstrings are
    dropped), so only a change to what the code does gives new cell keys and a retrain.
    """
    h = hashlib.sha256()
    for name in modules:
        tree = _strip_docstrings(ast.parse((_PACKAGE_DIR / name).read_text(encoding="utf-8")))
        h.update(name.encode())
        h.update(ast.dump(tree, annotate_fields=False).encode())
    return h.hexdigest()[:16]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass  # not Linux: platform.processor() below is the best portable answer
    return platform.processor() or "unknown"


def environment_facts() -> dict[str, str]:
    """Machine facts that can change floating-point results without any version changing.

    Recorded on every run so ``bnpipe reproduce`` can say which of them differ when numbers do.
    """
    facts = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": str(os.cpu_count()),
    }
    for var, value in numeric_env().items():
        facts[var] = value or "unset"
    return facts


def numeric_env() -> dict[str, str | None]:
    """The environment variables that change a cell's numbers, without the compile-cache and
    speed flags (bnpipe.xla_cache sets those once something trains: a cell key taken before that
    must equal one taken after)."""
    return {var: strip_cache_flags(os.environ.get(var, "")) or None for var in NUMERIC_ENV_VARS}


# Flags that change speed, never results: TF's persistent cache (each process of a run caches in
# its own folder, so leaving it in would make every run's recorded environment differ) and the
# XLA code generation settings of bnpipe.xla_cache.SPEED_XLA_FLAGS.
SPEED_ONLY_FLAG_PREFIXES = ("--tf_xla_persistent_cache", "--xla_cpu_use_thunk_runtime")


def strip_cache_flags(flags: str) -> str:
    """``flags`` without the options that change speed, never results."""
    return " ".join(t for t in flags.split() if not t.startswith(SPEED_ONLY_FLAG_PREFIXES))


def git_commit() -> str | None:
    """HEAD of the working directory's git checkout, with ``-dirty`` if it has changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def cell_key(definition: dict[str, Any]) -> str:
    """Stable hash of everything that determines a cell's result (JSON with sorted keys)."""
    blob = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
