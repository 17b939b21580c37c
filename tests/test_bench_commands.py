"""bnpipe.bench.commands: timing whole commands (children's CPU too) and the served Prefect."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bnpipe.bench.commands import _process_cpu_s, _timed, prefect_server


def test_smoke_timer_names_the_log_of_a_failed_command(tmp_path):
    log = tmp_path / "x.log"
    wall, cpu = _timed([sys.executable, "-c", "print('hi')"], {}, tmp_path, log)
    assert wall > 0 and cpu > 0
    assert log.read_text() == "hi\n"
    with pytest.raises(RuntimeError, match="x.log"):
        _timed([sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path, log)


def test_smoke_timer_counts_the_cpu_of_processes_the_command_waited_for(tmp_path):
    # A command that sleeps while its child burns ~1 s of CPU: the bound must see the child.
    burn = "import time; t = time.process_time(); exec('while time.process_time() - t < 1: pass')"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"
    wall, cpu = _timed([sys.executable, "-c", parent], {}, tmp_path, tmp_path / "x.log")
    assert 1.0 <= cpu <= wall + 0.5


def test_process_cpu_counts_a_live_process():
    # The child burns 1.5 s of CPU by its own clock, then waits; /proc counts in clock ticks,
    # sampled, and can stay a tick short of the child's clock for good: wait for 1 s there, with
    # a deadline (a loop waiting for exactly the child's figure once spun for 13 minutes).
    burn = "import time; t = time.process_time(); exec('while time.process_time() - t < 1.5: pass')"
    with subprocess.Popen([sys.executable, "-c", burn + "; input()"], stdin=subprocess.PIPE) as p:
        first = _process_cpu_s(p.pid)
        deadline = time.monotonic() + 60
        while (later := _process_cpu_s(p.pid)) < 1.0 and time.monotonic() < deadline:
            time.sleep(0.01)
        p.communicate(b"\n")
    assert 0 <= first < 1.0 <= later


@pytest.mark.server
def test_served_prefect_server_answers_and_is_stopped(tmp_path):
    import httpx

    with prefect_server(tmp_path) as (api, pid):
        assert httpx.get(f"{api}/health", timeout=10).json() is True
        assert _process_cpu_s(pid) > 0
    # Stopped and reaped: no process is left behind the bench.
    with pytest.raises(FileNotFoundError):
        _process_cpu_s(pid)
