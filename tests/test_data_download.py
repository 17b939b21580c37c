"""A failed MNIST download is one line only when it is a network or file problem; a bug in the
download path keeps its traceback."""

from __future__ import annotations

import urllib.error

import pytest

from bnpipe.data import DataError, load_mnist
from bnpipe.tfkeras import keras


@pytest.fixture
def no_local_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("BNPIPE_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))


def _failing_download(monkeypatch, exc_factory):
    def load_data(*_args, **_kwargs):
        raise exc_factory()

    monkeypatch.setattr(keras.datasets.mnist, "load_data", load_data)


def _keras_style_url_error() -> Exception:
    # keras.utils.get_file re-raises a URLError as a bare Exception while handling it
    try:
        raise urllib.error.URLError("Name or service not known")
    except urllib.error.URLError as exc:
        try:
            raise Exception(f"URL fetch failure: {exc.reason}")
        except Exception as wrapped:
            return wrapped


@pytest.mark.parametrize(
    "exc_factory",
    [
        _keras_style_url_error,
        lambda: ConnectionResetError(104, "Connection reset by peer"),
        lambda: OSError(28, "No space left on device"),
        lambda: ValueError("Incomplete or corrupted file detected."),
    ],
    ids=["url-error", "connection-reset", "disk-full", "corrupted"],
)
def test_network_and_file_problems_are_one_line(no_local_copy, monkeypatch, exc_factory):
    _failing_download(monkeypatch, exc_factory)
    with pytest.raises(DataError, match="could not be downloaded") as err:
        load_mnist(None)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bug", [TypeError, KeyError, AttributeError, ZeroDivisionError])
def test_bugs_are_not_reported_as_offline(no_local_copy, monkeypatch, bug):
    _failing_download(monkeypatch, lambda: bug("a bug in the download path"))
    with pytest.raises(bug):
        load_mnist(None)
