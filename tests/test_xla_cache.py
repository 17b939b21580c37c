"""The persistent XLA cache: same weights with and without it, hits in any order, no key churn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnpipe import xla_cache
from bnpipe.provenance import environment_facts, strip_cache_flags


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache root under tmp_path, TF_XLA_FLAGS restored afterwards, no folder yet in use."""
    monkeypatch.setenv(xla_cache.ENV_VAR, str(tmp_path / "xla"))
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_enable_lazy_compilation=false")
    monkeypatch.setattr(xla_cache, "_active", {})
    return tmp_path / "xla"


def test_cache_flag_changes_no_recorded_environment_fact(monkeypatch):
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_enable_lazy_compilation=false")
    before = environment_facts()
    monkeypatch.setenv(
        "TF_XLA_FLAGS",
        "--tf_xla_enable_lazy_compilation=false --tf_xla_persistent_cache_directory=/x/y",
    )
    assert environment_facts() == before
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_persistent_cache_directory=/x/y")
    assert environment_facts()["TF_XLA_FLAGS"] == "unset"
    assert strip_cache_flags("--a=1 --tf_xla_persistent_cache_read_only=true --b") == "--a=1 --b"


def test_machine_key_follows_code_generation_flags(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    plain = xla_cache.machine_key()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    assert xla_cache.machine_key() != plain
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_persistent_cache_directory=/elsewhere")
    assert xla_cache.machine_key() == plain


# A whole protocol buffer (field 1, 15 bytes), as TensorFlow's entries are.
ENTRY = b"\x0a\x0fcompiled before"


def test_unreadable_entries_are_removed_and_never_published_back(fresh_cache, capsys):
    shared = fresh_cache / xla_cache.machine_key()
    shared.mkdir(parents=True)
    (shared / "good.pb").write_bytes(ENTRY)
    (shared / "random.pb").write_bytes(os.urandom(4096))
    (shared / "torn.pb").write_bytes(ENTRY[:-3])
    (shared / "empty.pb").write_bytes(b"")
    other = shared / xla_cache.STAGING / "elsewhere-1-ab"  # another process's link to one
    other.mkdir(parents=True)
    os.link(shared / "random.pb", other / "random.pb")
    private = xla_cache.enable()
    assert private is not None
    assert sorted(p.name for p in private.glob("*.pb")) == ["good.pb"]
    assert sorted(p.name for p in shared.glob("*.pb")) == ["good.pb"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "XLA cache: removed 3 unreadable entries" in err
    # The other process's link is not one it compiled: it does not come back.
    assert xla_cache.publish(other, shared, {"random.pb"}) == 0
    assert not (shared / "random.pb").exists()


def test_an_entry_is_parsed_once_until_it_changes(fresh_cache, monkeypatch):
    """Every process that trains starts with the check above: what it found readable is noted,
    and the next process parses only what is new or was written since."""
    shared = fresh_cache / xla_cache.machine_key()
    shared.mkdir(parents=True)
    for name in ("a.pb", "b.pb"):
        (shared / name).write_bytes(ENTRY)
    parsed: list[str] = []
    check = xla_cache.readable
    monkeypatch.setattr(xla_cache, "readable", lambda e: parsed.append(e.name) or check(e))

    def next_process() -> list[str]:
        monkeypatch.setattr(xla_cache, "_active", {})
        parsed.clear()
        assert xla_cache.enable() is not None
        return sorted(parsed)

    assert next_process() == ["a.pb", "b.pb"]
    assert next_process() == []
    (shared / "c.pb").write_bytes(ENTRY)
    assert next_process() == ["c.pb"]
    # Torn in place later (same inode and size; the clock's tick is coarser than these steps,
    # so the later write's time is set): parsed again, and removed.
    torn = shared / "b.pb"
    was = torn.stat()
    torn.write_bytes(b"\xff" * len(ENTRY))
    os.utime(torn, ns=(was.st_atime_ns, was.st_mtime_ns + 10**9))
    assert next_process() == ["b.pb"]
    assert sorted(p.name for p in shared.glob("*.pb")) == ["a.pb", "c.pb"]
    # A record that is not one (a torn write of it) only costs a parse of everything.
    (shared / xla_cache.CHECKED).write_text("[1,")
    assert next_process() == ["a.pb", "c.pb"]
    assert next_process() == []


def test_private_folder_links_shared_entries_and_publishes_only_new_ones(fresh_cache):
    shared = fresh_cache / xla_cache.machine_key()
    shared.mkdir(parents=True)
    (shared / "old.pb").write_bytes(ENTRY)
    private = xla_cache.enable()
    assert private is not None and private.parent.parent == shared
    assert xla_cache.enable() == private  # once per process
    flags = os.environ["TF_XLA_FLAGS"]
    assert f"{xla_cache.DIR_FLAG}={private}" in flags
    assert "--tf_xla_enable_lazy_compilation=false" in flags
    assert (private / "old.pb").read_bytes() == ENTRY
    (private / "new.pb").write_bytes(ENTRY)
    assert xla_cache.publish(private, shared) == 1
    assert sorted(p.name for p in shared.glob("*.pb")) == ["new.pb", "old.pb"]
    assert not private.exists()


def test_inherited_folder_is_replaced_and_a_users_own_is_kept(fresh_cache, monkeypatch):
    parent = fresh_cache / "k" / xla_cache.STAGING / "host-1-abcd"
    monkeypatch.setenv("TF_XLA_FLAGS", f"{xla_cache.DIR_FLAG}={parent}")
    private = xla_cache.enable()
    assert private is not None and private != parent
    assert os.environ["TF_XLA_FLAGS"] == f"{xla_cache.DIR_FLAG}={private}"
    monkeypatch.setattr(xla_cache, "_active", {})
    monkeypatch.setenv("TF_XLA_FLAGS", f"{xla_cache.DIR_FLAG}=/users/own")
    assert xla_cache.enable() is None
    assert os.environ["TF_XLA_FLAGS"] == f"{xla_cache.DIR_FLAG}=/users/own"


# Trains two tiny fused groups in the order given by argv[1]; prints each group's weights' hash.
_TRAIN = """
import hashlib, json, sys
from bnpipe import xla_cache
xla_cache.enable()
import numpy as np
from bnpipe.train.common import TrainData, TrainSpec
from bnpipe.train.fused import train_fused
rng = np.random.default_rng(0)
x, y = rng.random((320, 784), np.float32), rng.integers(0, 10, 320).astype(np.int32)
digests, first_epoch = {}, {}
for bn in json.loads(sys.argv[1]):
    spec = TrainSpec.of([0, 1], bn=bn, batch_size=64, epochs=2, shard_size=2)
    res = train_fused(spec, TrainData(x[:256], y[:256], x[256:], y[256:]))
    first_epoch[str(bn)] = 2 * res[0].history[0]["epoch_time_s"]
    h = hashlib.sha256()
    for r in res:
        for w in r.weights:
            h.update(w.tobytes())
    digests[str(bn)] = h.hexdigest()
print(json.dumps({"digests": digests, "first_epoch_s": first_epoch}))
"""


def _train(order: list[bool], cache: str) -> tuple[dict, str]:
    env = {
        **os.environ,
        xla_cache.ENV_VAR: cache,
        "TF_CPP_MIN_LOG_LEVEL": "0",
        # TF says at VLOG 1 when it runs a program from the cache instead of compiling it.
        "TF_CPP_VMODULE": "device_executable_persistor=1",
    }
    env.pop("TF_XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-c", _TRAIN, json.dumps(order)],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.slow
def test_cache_gives_identical_weights_and_hits_in_another_order(tmp_path):
    cache = tmp_path / "xla"
    t0 = time.perf_counter()
    off, _ = _train([False, True], "off")
    cold, cold_log = _train([False, True], str(cache))
    entries = list(cache.glob("*/*.pb"))
    # A warm process that traces the programs in the other order still finds every one.
    warm, warm_log = _train([True, False], str(cache))
    assert off["digests"] == cold["digests"] == warm["digests"]
    assert len(entries) == 2  # the epoch-and-validation program of each of the two groups
    assert "Loading cached entry" not in cold_log
    assert warm_log.count("Loading cached entry") == 2
    assert sorted(cache.glob("*/*.pb")) == sorted(entries)  # nothing compiled anew
    assert not list(cache.glob(f"*/{xla_cache.STAGING}/*"))  # private folders cleaned up

    # A broken cache (random bytes, a torn file) costs a compile, never a cell: same weights.
    first, second = sorted(entries)
    first.write_bytes(os.urandom(first.stat().st_size))
    os.truncate(second, second.stat().st_size // 2)
    healed, healed_log = _train([False, True], str(cache))
    assert healed["digests"] == off["digests"]
    assert "XLA cache: removed 2 unreadable entries" in healed_log
    recompiled = list(cache.glob("*/*.pb"))
    assert len(recompiled) == 2 and all(xla_cache.readable(e) for e in recompiled)
    print(  # measured, not asserted: a loaded machine would make any bound flaky
        f"first epoch s (compile included) cold {cold['first_epoch_s']}, "
        f"warm {warm['first_epoch_s']}; total {time.perf_counter() - t0:.0f}s"
    )
