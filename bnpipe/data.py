"""MNIST loading: local IDX/npz copy, Keras cache, or download; checksums; preprocessing."""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Canonical MD5 sums of the four original files (the ones torchvision and TFDS check).
IDX_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# keras.datasets.mnist checks this SHA-256 for its mnist.npz.
NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
NPZ_NAME = "mnist.npz"
DATA_DIR_ENV = "BNPIPE_DATA_DIR"


class DataError(ValueError):
    """MNIST could not be found or failed verification; the message says what to do."""


@dataclass(frozen=True)
class MnistData:
    """Preprocessed MNIST: float32 pixels in [0, 1], shape (n, 784); int labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    digest: str
    source: str

    def subset(self, limit_train: int | None, limit_test: int | None) -> MnistData:
        """First ``limit`` examples of each split (deterministic, for quick runs)."""
        if limit_train is None and limit_test is None:
            return self
        digest = hashlib.sha256(f"{self.digest}:{limit_train}:{limit_test}".encode()).hexdigest()
        return MnistData(
            self.x_train[:limit_train],
            self.y_train[:limit_train],
            self.x_test[:limit_test],
            self.y_test[:limit_test],
            digest=digest,
            source=self.source,
        )


def _file_hash(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_idx(path: Path, magic: int) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    header = np.frombuffer(raw, dtype=">i4", count=2)
    if header[0] != magic:
        raise DataError(f"{path}: not an IDX file (magic {header[0]}, expected {magic})")
    ndim = magic & 0xFF
    dims = np.frombuffer(raw, dtype=">i4", count=1 + ndim)[1:]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim)).reshape(tuple(dims))


def _verify(path: Path, expected: str, algo: str) -> None:
    actual = _file_hash(path, algo)
    if actual != expected:
        raise DataError(
            f"{path}: {algo} checksum mismatch (got {actual}, expected {expected}); "
            "the file is corrupted or truncated, replace it with an original copy"
        )


def _load_idx_dir(d: Path) -> tuple[tuple[np.ndarray, ...], str]:
    for name, md5 in IDX_MD5.items():
        _verify(d / name, md5, "md5")
    arrays = (
        _read_idx(d / "train-images-idx3-ubyte.gz", 2051),
        _read_idx(d / "train-labels-idx1-ubyte.gz", 2049),
        _read_idx(d / "t10k-images-idx3-ubyte.gz", 2051),
        _read_idx(d / "t10k-labels-idx1-ubyte.gz", 2049),
    )
    return arrays, "md5:" + ",".join(IDX_MD5.values())


def _load_npz(path: Path) -> tuple[tuple[np.ndarray, ...], str]:
    _verify(path, NPZ_SHA256, "sha256")
    with np.load(path) as f:
        arrays = (f["x_train"], f["y_train"], f["x_test"], f["y_test"])
    return arrays, "sha256:" + NPZ_SHA256


def _from_dir(d: Path) -> tuple[tuple[np.ndarray, ...], str] | None:
    if all((d / name).is_file() for name in IDX_MD5):
        files = [d / name for name in IDX_MD5]
        return _cached(_load_idx_dir, d, _stamp(files))
    if (d / NPZ_NAME).is_file():
        return _cached(_load_npz, d / NPZ_NAME, _stamp([d / NPZ_NAME]))
    return None


# The last files read, verified and preprocessed, by path, size and modification time: `bnpipe
# run` checks the data before any run is created and its flow loads it again (about 1 s each
# here), and a warm session loads it at every call (preprocessing alone was 0.12 s of a 1.4 s
# rerun); any change to a file is a new stamp and a fresh read. The arrays are read-only, so no
# caller can change what the next one gets.
_last: dict[tuple, tuple[tuple[np.ndarray, ...], str]] = {}


def _stamp(files: list[Path]) -> tuple:
    return tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def _cached(load, path: Path, stamp: tuple) -> tuple[tuple[np.ndarray, ...], str]:
    if stamp not in _last:
        arrays, digest = load(path)
        _last.clear()
        _last[stamp] = (_prepared(arrays), digest)
    return _last[stamp]


def _prepared(arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """IDX arrays as training takes them (pixels / 255, int32 labels), read-only."""
    x_train, y_train, x_test, y_test = arrays
    out = (
        preprocess(x_train),
        y_train.astype(np.int32),
        preprocess(x_test),
        y_test.astype(np.int32),
    )
    for a in out:
        a.flags.writeable = False
    return out


def _keras_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def preprocess(x: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) -> float32 (n, 784) in [0, 1], as the reference does (pixels / 255)."""
    return (x.reshape(len(x), -1).astype(np.float32)) / np.float32(255.0)


def load_mnist(data_dir: str | Path | None = None, *, allow_download: bool = True) -> MnistData:
    """Load MNIST from, in order: ``data_dir``, $BNPIPE_DATA_DIR, the Keras cache, a download.

    A directory that is named explicitly must hold the data: a missing or wrong one is an error,
    never a silent fall-through to another source.
    """
    named = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if named is not None:
        d = Path(named)
        if not d.is_dir():
            raise DataError(f"data.dir: {d} is not a directory")
        found = _from_dir(d)
        if found is None:
            raise DataError(
                f"data.dir: {d} holds neither the four MNIST IDX .gz files nor {NPZ_NAME}"
            )
        prepared, digest = found
        source = str(d)
    elif (_keras_cache() / NPZ_NAME).is_file():
        arrays, digest = _load_npz(_keras_cache() / NPZ_NAME)
        prepared, source = _prepared(arrays), str(_keras_cache() / NPZ_NAME)
    else:
        if not allow_download:
            raise DataError(_offline_hint())
        import keras

        try:
            keras.datasets.mnist.load_data()
        except Exception as exc:
            problem = _download_problem(exc)
            if problem is None:
                raise  # a bug, not the network: its traceback is what helps
            raise DataError(f"{_offline_hint()} (download failed: {problem})") from exc
        arrays, digest = _load_npz(_keras_cache() / NPZ_NAME)
        prepared, source = _prepared(arrays), "download"
    return MnistData(*prepared, digest=hashlib.sha256(digest.encode()).hexdigest(), source=source)


def _download_problem(exc: BaseException) -> str | None:
    """What went wrong with a download, or None when ``exc`` is no network or file problem.

    Keras' get_file wraps URL errors in a bare Exception, so the cause chain is searched for the
    OSError (URLError, HTTPError, socket and disk errors are all OSErrors).
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, ValueError) and "corrupted" in str(exc):
        return "corrupted file"  # get_file's own hash check
    return None


def _offline_hint() -> str:
    return (
        "MNIST not found and could not be downloaded: set data.dir in params.yaml or "
        f"{DATA_DIR_ENV}=/path/to/mnist (a folder with the four IDX .gz files or {NPZ_NAME})"
    )


@functools.lru_cache(maxsize=1)
def read_data(data: Any) -> MnistData:
    """The data ``data`` (a :class:`bnpipe.config.DataConfig`) names, read once per process."""
    return load_mnist(data.dir).subset(data.limit_train, data.limit_test)


def worker_data(data: Any, digest: str) -> MnistData:
    """The data, read by the worker itself (once per worker process) and checked against the
    flow's copy; ``data`` is the run's :class:`bnpipe.config.DataConfig`.

    Workers read from ``data.dir`` (or their own $BNPIPE_DATA_DIR) instead of receiving 188 MB
    per task from the flow: on a remote cluster that is the only sane choice, and locally it
    costs one read per worker process. The digest check makes a worker with different files
    fail its group loudly instead of training on other data. The same holds for
    ``bnpipe run``'s training process (:mod:`bnpipe.trainer`).
    """
    found = read_data(data)
    if found.digest != digest:
        raise DataError(
            f"worker data from {found.source} has digest {found.digest[:12]}, the flow's has "
            f"{digest[:12]}: give the workers the same MNIST files (data.dir or BNPIPE_DATA_DIR)"
        )
    return found
