"""`bnpipe bench` from the command line (bnpipe.bench.cli)."""

from __future__ import annotations

import json

import pytest

from bnpipe.cli import main
from tests.conftest import requires_mnist


@pytest.mark.slow
@requires_mnist
def test_fused_only_bench_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--keras-seeds", "0", "--reference-seeds", "0", "--seeds", "1"]
    argv += ["--batch-sizes", "128", "--epochs", "2", "--limit-train", "256", "--limit-test", "64"]
    assert main([*argv, "--json", str(out)]) == 0
    assert "not run (0 models asked): reference, keras" in capsys.readouterr().out
    assert json.loads(out.read_text())["not_run"] == ["reference", "keras"]
