"""Several hosts on one machine: network namespaces on a private bridge, for multi-host tests.

Each host is a network namespace with one veth link to a bridge that lives in a hub namespace of
its own, so the hosts see each other at their own addresses (10.27.0.0/24) and nothing else: the
machine's own network namespace gets no address, no route and no interface. Every process a test
starts on a host also gets its own UTS namespace with the host's name as hostname, so anything
that records ``socket.gethostname()`` (bnpipe's claim owner, Prefect's infrastructure pid) says
which host it ran on.

Cutting a host off is ``ip link set down`` on its hub-side link (the host keeps its address and
its processes, as a host behind a pulled cable does); killing a host is SIGKILL to every process
in its namespace (``ip netns pids``). Everything is torn down on exit, also when a test fails.
Needs root and iproute2; ``unavailable()`` says in one line why not, for a skip.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.27.0"  # a /24 that exists only on this test's bridge
PREFIX = "bnpc"  # namespace names: bnpc<owner pid>-<host>


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (one line), or None when they can."""
    if os.geteuid() != 0:
        return "cluster tests need root (network namespaces)"
    probe = f"{PREFIX}probe{os.getpid()}-{uuid.uuid4().hex[:4]}"
    try:
        made = _ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "cluster tests need iproute2's ip (network namespaces)"
    if made.returncode != 0:
        return f"cluster tests cannot create a network namespace: {made.stderr.strip()[:120]}"
    _ip("netns", "del", probe, check=False)
    return None


def remove_stale() -> None:
    """Delete namespaces left by a test process that died before its teardown (its pid gone)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        owner = name.removeprefix(PREFIX).split("-")[0]
        if name.startswith(PREFIX) and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _kill_all(name)
            _ip("netns", "del", name, check=False)


def _kill_all(netns: str) -> list[int]:
    pids = [int(p) for p in _ip("netns", "pids", netns, check=False).stdout.split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


@dataclass
class Hosts:
    """Named hosts on one bridge; use as a context manager (teardown always runs)."""

    names: Iterable[str]
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    addresses: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.names = list(self.names)
        self.hub = f"{self.tag}-hub"

    def netns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def __enter__(self) -> Hosts:
        try:
            _ip("netns", "add", self.hub)
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            for i, host in enumerate(self.names, start=1):
                ns = self.netns(host)
                _ip("netns", "add", ns)
                # Created inside the namespaces: no interface ever appears on the machine's own.
                _ip(
                    "link", "add", "eth0", "netns", ns, "type", "veth",
                    "peer", "name", f"to-{host}"[:15], "netns", self.hub,
                )  # fmt: skip
                _ip("-n", self.hub, "link", "set", f"to-{host}"[:15], "master", "br0", "up")
                address = f"{SUBNET}.{i}"
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                self.addresses[host] = address
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every process on every host, then delete the namespaces (the links go too)."""
        for host in self.names:
            self.kill(host)
        for host in self.names:
            _ip("netns", "del", self.netns(host), check=False)
        _ip("netns", "del", self.hub, check=False)

    def command(self, host: str, cmd: list[str], *, user: str | None = None) -> list[str]:
        """``cmd`` as run on ``host``: in its network namespace, under its own hostname."""
        as_user = ["runuser", "-u", user, "--"] if user else []
        return [
            "ip", "netns", "exec", self.netns(host),
            "unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', host,
            *as_user, *cmd,
        ]  # fmt: skip

    def kill(self, host: str) -> list[int]:
        """SIGKILL every process on ``host`` (a power cut); returns their pids."""
        pids = _kill_all(self.netns(host))
        deadline = time.monotonic() + 10
        while (
            time.monotonic() < deadline
            and _ip("netns", "pids", self.netns(host), check=False).stdout.split()
        ):
            time.sleep(0.2)
        return pids

    def link(self, host: str, up: bool) -> None:
        """Pull (``up=False``) or plug back the host's cable: its hub-side link."""
        _ip("-n", self.hub, "link", "set", f"to-{host}"[:15], "up" if up else "down")
