import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from bnpipe.data import IDX_MD5, DataError, _read_idx, load_mnist, preprocess
from tests.conftest import REAL_DATA, requires_mnist


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 + array.ndim
    header = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def fake_idx_dir(d: Path) -> Path:
    rng = np.random.default_rng(0)
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 28, 28)))
    write_idx(d / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 5))
    write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (3, 28, 28)))
    write_idx(d / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 3))
    return d


def test_idx_reader_round_trips(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(_read_idx(tmp_path / "x.gz", 2051), images)


def test_idx_reader_rejects_wrong_magic(tmp_path):
    write_idx(tmp_path / "labels.gz", np.arange(4))
    with pytest.raises(DataError, match="not an IDX file"):
        _read_idx(tmp_path / "labels.gz", 2051)


def test_preprocess_scales_and_flattens():
    x = preprocess(np.full((2, 28, 28), 255, dtype=np.uint8))
    assert x.shape == (2, 784) and x.dtype == np.float32 and x.max() == 1.0


def test_checksum_mismatch_is_an_error_naming_the_file(tmp_path):
    fake_idx_dir(tmp_path)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: md5 checksum mismatch"):
        load_mnist(tmp_path)


def test_missing_dir_is_named(tmp_path):
    with pytest.raises(DataError, match=r"data.dir: .*nowhere is not a directory"):
        load_mnist(tmp_path / "nowhere")


def test_dir_without_mnist_files(tmp_path):
    with pytest.raises(DataError, match="holds neither the four MNIST IDX"):
        load_mnist(tmp_path)


def test_offline_without_local_copy_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("BNPIPE_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(DataError, match="BNPIPE_DATA_DIR=/path/to/mnist"):
        load_mnist(None, allow_download=False)


def test_subset_changes_the_digest(tiny_mnist):
    small = tiny_mnist.subset(100, 50)
    assert len(small.x_train) == 100 and len(small.x_test) == 50
    assert small.digest != tiny_mnist.digest
    assert tiny_mnist.subset(None, None) is tiny_mnist


@pytest.mark.slow
@requires_mnist
def test_real_mnist_matches_the_known_facts():
    d = load_mnist(REAL_DATA)
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert d.x_train.min() >= 0.0 and d.x_train.max() == 1.0
    assert np.bincount(d.y_train).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert np.bincount(d.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert d.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


@pytest.mark.slow
@requires_mnist
def test_truncated_real_file_is_rejected(tmp_path):
    for name in IDX_MD5:
        shutil.copy(Path(REAL_DATA) / name, tmp_path / name)
    victim = tmp_path / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: md5 checksum mismatch"):
        load_mnist(tmp_path)
