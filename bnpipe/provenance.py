"""Facts about where a result came from: package versions, git commit, the cell key."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from typing import Any

# Packages whose version can change the numbers a cell produces (part of the cell key), and the
# orchestration/tracking ones that are recorded but cannot change a result.
NUMERIC_PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "numpy")
RECORDED_PACKAGES = (*NUMERIC_PACKAGES, "mlflow", "prefect", "pandas", "scipy", "bnpipe")


def package_versions(names: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (absent packages are left out), plus Python's."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


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
