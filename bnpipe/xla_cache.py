"""Persistent XLA compilation cache: a later process with the same programs compiles nothing.

TensorFlow saves each jit-compiled executable under ``--tf_xla_persistent_cache_directory``
and, on a later call, loads the one whose signature and whole HLO module match exactly (it
compares the stored HLO, not just a hash). A loaded program is the machine code a compile would
have produced, so the cache changes speed, never bits (tests/test_xla_cache.py checks weights).

Two traps shape the layout ``<root>/<machine key>/``:

- TF writes an entry in place and fails the call when it reads a torn one, so no process ever
  writes into the shared folder: each gets a private folder under ``.staging/`` holding hard
  links to the shared entries, and moves its new entries into the shared folder atomically
  (``os.replace``) when it exits. Concurrent processes only ever see whole files.
- The stored HLO does not cover the CPU, TensorFlow's version or XLA_FLAGS, yet the executable is
  machine code built under them; the machine key hashes them, so a folder shared between
  machines (a network home) never hands one CPU's code to another.

``BNPIPE_XLA_CACHE`` picks the root (default ``$XDG_CACHE_HOME/bnpipe/xla``); ``off`` disables.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bnpipe.provenance import (
    NUMERIC_PACKAGES,
    environment_facts,
    package_versions,
    strip_cache_flags,
)

ENV_VAR = "BNPIPE_XLA_CACHE"
# XLA's CPU code generation settings that bnpipe picks for speed (each checked to change no bit:
# tests/test_fused.py, tests/test_default_numbers.py). The thunk runtime (XLA's default) compiles
# every fused op as a kernel of its own: 2-3x the compile time of the whole-program emitter on the
# fused engine's programs, and ~5% slower steps. A value the user sets in XLA_FLAGS wins.
SPEED_XLA_FLAGS = {"--xla_cpu_use_thunk_runtime": "false"}
DIR_FLAG = "--tf_xla_persistent_cache_directory"
STAGING = ".staging"
CHECKED = ".checked.json"  # the shared entries already found readable (see _remove_unreadable)
_OFF = {"off", "0", "false", "no", "none"}

# Set once per process (a forked child gets its own: see enable()).
_active: dict[int, Path] = {}


def cache_root() -> Path | None:
    """The cache's root folder, or None when ``BNPIPE_XLA_CACHE`` turns it off."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnpipe" / "xla"


def machine_key() -> str:
    """Hash of what the stored HLO does not pin down: CPU, numeric versions and env flags."""
    facts = {**environment_facts(), **package_versions(NUMERIC_PACKAGES)}
    facts["cpu_flags"] = _cpu_flags()
    # numeric_env leaves out the speed flags (they change no bit), but they change the code; the
    # key is the same before and after tune_xla sets them.
    facts["xla_flags"] = tuned_flags()
    with contextlib.suppress(AttributeError):  # not Linux
        facts["affinity"] = str(len(os.sched_getaffinity(0)))
    blob = json.dumps(facts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cpu_flags() -> str:
    # Two VMs with one model name can expose different instruction sets.
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.partition(":")[2].strip()
    return ""


def tune_xla() -> None:
    """Add :data:`SPEED_XLA_FLAGS` to XLA_FLAGS, unless set there already.

    XLA reads XLA_FLAGS at its first compile in a process, so this runs before it (the fused
    engine calls it first thing); later calls change nothing.
    """
    flags = tuned_flags()
    if flags != os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = flags


def tuned_flags() -> str:
    """XLA_FLAGS as :func:`tune_xla` leaves them: the user's, plus the speed flags not set."""
    flags = os.environ.get("XLA_FLAGS", "")
    missing = [f"{k}={v}" for k, v in SPEED_XLA_FLAGS.items() if _flag_value(flags, k) is None]
    return " ".join([flags, *missing]).strip()


def enable() -> Path | None:
    """Point TF's persistent cache at a private folder seeded from the shared one.

    Call it before the process's first XLA compile (TF reads TF_XLA_FLAGS then, not at import).
    Idempotent; a child process that inherited its parent's folder gets its own. A cache folder
    the user set in TF_XLA_FLAGS is left alone.

    Returns:
        The private folder in use, or None (cache off, or the user's own folder).
    """
    pid = os.getpid()
    if pid in _active:
        return _active[pid]
    tune_xla()  # before machine_key: cached code is built under these flags
    root = cache_root()
    flags = os.environ.get("TF_XLA_FLAGS", "")
    current = _flag_value(flags, DIR_FLAG)
    if root is None or (current and Path(current).parent.name != STAGING):
        return None
    shared = root / machine_key()
    private = shared / STAGING / f"{socket.gethostname()}-{pid}-{uuid.uuid4().hex[:8]}"
    seeded: set[str] = set()
    try:
        private.mkdir(parents=True)
        _reap_stale(shared / STAGING)
        _remove_unreadable(shared)
        for entry in shared.glob("*.pb"):
            _link_or_copy(entry, private / entry.name)
            seeded.add(entry.name)
    except OSError:
        # A cache that cannot be set up costs a compile, never a run.
        shutil.rmtree(private, ignore_errors=True)
        return None
    os.environ["TF_XLA_FLAGS"] = f"{strip_cache_flags(flags)} {DIR_FLAG}={private}".strip()
    _active[pid] = private
    atexit.register(publish, private, shared, seeded)
    return private


def readable(entry: Path) -> bool:
    """Whether ``entry`` is a whole serialized protocol buffer, as TensorFlow stores an entry.

    A shallow parse (field tags and lengths, not the nested messages): random bytes and a torn
    file fail it (checked on 200 random files and 7 truncations of a real entry), which TF
    would otherwise report as DataLossError / OutOfRangeError on every run that loads them.
    """
    from google.protobuf import empty_pb2
    from google.protobuf.message import DecodeError

    try:
        data = entry.read_bytes()
        empty_pb2.Empty().ParseFromString(data)  # unknown fields are parsed and kept
    except (OSError, DecodeError):
        return False
    return len(data) > 0


def _remove_unreadable(shared: Path) -> None:
    """Remove the shared entries TF could not read (one warning line): they compile again.

    Each entry is parsed once: its inode, size and modification time are noted in
    :data:`CHECKED` and a later process parses only what is new or changed since. Every
    process that trains starts here, and parsing all of a grown cache (1.4 GB, 1,800 entries)
    cost each one 0.4 s of CPU.
    """
    record = shared / CHECKED
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    checked: dict[str, list[int]] = {}
    bad = []
    for entry in shared.glob("*.pb"):
        try:
            st = entry.stat()
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        # Not the change time: linking an entry into a private folder changes it.
        stamp = [st.st_ino, st.st_size, st.st_mtime_ns]
        if known.get(entry.name) == stamp or readable(entry):
            checked[entry.name] = stamp
        else:
            bad.append(entry)
    if checked != known:
        # Replaced whole (processes start at once); a record lost to a race costs a parse.
        tmp = shared / f"{CHECKED}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            tmp.write_text(json.dumps(checked))
            os.replace(tmp, record)
        except OSError:  # a full or read-only disk: no record, a parse next time
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    for entry in bad:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
    if bad:
        names = ", ".join(e.name for e in bad[:2]) + (", ..." if len(bad) > 2 else "")
        print(
            f"XLA cache: removed {len(bad)} unreadable entr{'y' if len(bad) == 1 else 'ies'} "
            f"({names}); they compile again",
            file=sys.stderr,
            flush=True,
        )


# TensorFlow's errors for an entry it cannot read: random bytes (DataLossError: "Can't parse
# <path> as binary proto") or a torn file (OutOfRangeError); both name the file.
_UNREADABLE = ("DataLossError", "OutOfRangeError")
_ENTRY = re.compile(r"(/\S*/xla_compile_cache__\S+?\.pb)\b")


def heal(exc: BaseException) -> Path | None:
    """Remove the cache entry ``exc`` says TensorFlow could not read, here and in the shared
    folder, so the next call compiles it afresh (the same machine code: bits do not change).

    Returns:
        The entry removed, or None when ``exc`` is not about one of this process's entries.
    """
    found = _ENTRY.search(str(exc)) if type(exc).__name__ in _UNREADABLE else None
    private = _active.get(os.getpid())
    if found is None or private is None or Path(found[1]).parent != private:
        return None
    entry = Path(found[1])
    for path in (entry, private.parent.parent / entry.name):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return entry


def publish(private: Path, shared: Path, seeded: set[str] | None = None) -> int:
    """Move the entries this process compiled into the shared folder; returns how many.

    ``seeded``: the names linked in from the shared folder at the start, never moved back (an
    entry removed from the shared folder as unreadable must not return from a process's link).
    """
    moved = 0
    for entry in private.glob("*.pb"):
        # Without ``seeded``: a hard link of a shared entry has two names, a new entry one.
        new = entry.name not in seeded if seeded is not None else entry.stat().st_nlink == 1
        if new and not (shared / entry.name).exists():
            with contextlib.suppress(OSError):
                os.replace(entry, shared / entry.name)
                moved += 1
    shutil.rmtree(private, ignore_errors=True)
    return moved


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _reap_stale(staging: Path) -> None:
    """Remove private folders this host's killed processes left behind."""
    host = socket.gethostname()
    for folder in staging.iterdir():
        name_host, _, rest = folder.name.rpartition("-")[0].rpartition("-")
        if name_host != host or not rest.isdigit() or _alive(int(rest)):
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _flag_value(flags: str, name: str) -> str | None:
    for token in flags.split():
        key, sep, value = token.partition("=")
        if key == name and sep:
            return value
    return None


_naming = threading.local()


def stable_names(fn: Callable, *key: object) -> Callable:
    """``fn`` (a tf.function) traced with names that depend on ``key`` and shapes, not history.

    TF names each traced function ``__inference_<name>_<n>`` with a process-wide counter, and
    the persistent cache's key includes that name: a process that traced other functions first
    (another grid order, ``bnpipe reproduce`` of one cell, a Dask worker) would miss every entry.
    Here the counter is replaced, during this call on this thread only, by a hash of ``key``
    and the arguments' shapes and a count within the trace. Names change nothing but names.
    """
    from bnpipe.tfkeras import tf

    def call(*args: Any) -> Any:
        shapes = [(t.shape.as_list(), t.dtype.name) for t in tf.nest.flatten(args)]
        digest = hashlib.sha256(repr((key, shapes)).encode()).hexdigest()[:12]
        _patch_namers()
        _naming.stack = [*getattr(_naming, "stack", []), [digest, 0]]
        try:
            return fn(*args)
        finally:
            _naming.stack.pop()

    return call


def _stable_suffix(fallback: Callable[[], int]) -> str | int:
    stack = getattr(_naming, "stack", None)
    if not stack:
        return fallback()
    frame = stack[-1]
    frame[1] += 1
    return f"{frame[0]}_{frame[1]}"


@functools.cache
def _patch_namers() -> None:
    """Route TF's function-name counters through :func:`_stable_suffix` (once per process)."""
    from tensorflow.python.eager.polymorphic_function import concrete_function as cf
    from tensorflow.python.framework import ops
    from tensorflow.python.ops import control_flow_util_v2 as cfu

    def suffix() -> str | int:
        return _stable_suffix(ops.uid)

    cf._forward_name = lambda n: f"{cf._FORWARD_PREFIX}{n}_{suffix()}"
    cf._backward_name = lambda n: f"{cf._BACKWARD_PREFIX}{n}_{suffix()}"
    cf._inference_name = lambda n: f"{cf._INFERENCE_PREFIX}{n}_{suffix()}"
    cfu.unique_fn_name = lambda scope, name: f"{scope}{name}_{suffix()}".replace("/", "_")
    cfu.unique_grad_fn_name = lambda forward_name: f"{forward_name}_grad_{suffix()}"
