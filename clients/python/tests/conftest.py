"""A real 3-node quarryd cluster for the tests: ports picked here, data in a temporary
directory, every process stopped by PID at the end."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import time

import pytest

import quarry

REPO = pathlib.Path(__file__).resolve().parents[3]
GROUPS = 8
READY_DEADLINE = 60.0


def quarryd_binary() -> str:
    path = os.environ.get("QUARRY_BIN") or str(REPO / "target" / "ci" / "quarryd")
    if not os.path.exists(path):
        pytest.fail(f"no quarryd at {path}: run `cargo build --profile ci` first or set QUARRY_BIN")
    return path


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Cluster:
    def __init__(self, directory: pathlib.Path, tls: bool = False):
        ports = free_ports(6)
        self.dir = directory
        self.addrs = [f"127.0.0.1:{p}" for p in ports[:3]]
        self.metrics = [f"127.0.0.1:{p}" for p in ports[3:]]
        self.initial = ",".join(f"{i + 1}={a}" for i, a in enumerate(self.addrs))
        self.procs: dict[int, subprocess.Popen] = {}
        self.binary = quarryd_binary()
        self.tls = tls
        if tls:
            self.make_certificates()

    def make_certificates(self) -> None:
        """A CA, a certificate per node and one for a client, made by quarryctl."""
        ctl = str(pathlib.Path(self.binary).with_name("quarryctl"))
        pki = self.dir / "pki"
        commands = [["ca"], ["client", "alice"]] + [["node", str(n), "--hosts", "127.0.0.1"] for n in (1, 2, 3)]
        for args in commands:
            subprocess.run([ctl, "certs", *args, "--dir", str(pki)], check=True, capture_output=True)

    def credentials(self) -> dict:
        """What a client passes to connect to a TLS cluster."""
        pki = self.dir / "pki"
        return {"ca": str(pki / "ca.pem"), "cert": str(pki / "alice.pem"), "key": str(pki / "alice.key")}

    @property
    def endpoints(self) -> str:
        return ",".join(self.addrs)

    def start(self, node: int) -> None:
        log = open(self.dir / f"node{node}.log", "ab")
        self.procs[node] = subprocess.Popen(
            [
                self.binary,
                "--node-id", str(node),
                "--initial-cluster", self.initial,
                "--groups", str(GROUPS),
                "--tick-ms", "20",
                "--metrics-listen", self.metrics[node - 1],
                "--data-dir", str(self.dir / f"node{node}"),
                *self.tls_flags(node),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def tls_flags(self, node: int) -> list[str]:
        if not self.tls:
            return []
        pki = self.dir / "pki"
        return [
            "--cert-file", str(pki / f"node-{node}.pem"),
            "--key-file", str(pki / f"node-{node}.key"),
            "--trusted-ca-file", str(pki / "ca.pem"),
            "--client-cert-auth",
        ]

    def client(self, endpoints: str | None = None, **options) -> quarry.Client:
        credentials = self.credentials() if self.tls else {}
        return quarry.Client(endpoints or self.endpoints, **credentials, **options)

    def kill(self, node: int) -> None:
        """SIGKILL to this node's PID only."""
        proc = self.procs.pop(node)
        proc.kill()
        proc.wait()

    def stop_all(self) -> None:
        for node in list(self.procs):
            self.kill(node)

    def leader_of(self, name: str) -> int:
        """The node leading the group of `name` (a key, log or database), polled."""
        import zlib

        group = zlib.crc32(name.encode()) % GROUPS
        deadline = time.monotonic() + READY_DEADLINE
        while time.monotonic() < deadline:
            for i in self.procs:
                try:
                    with self.client(self.addrs[i - 1]) as client:
                        leader = client.status().groups[group].leader
                    if leader:
                        return leader
                except quarry.QuarryError:
                    pass
            time.sleep(0.1)
        pytest.fail(f"no leader for group {group}")

    def wait_for_leaders(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE
        for node in self.procs:
            with self.client(self.addrs[node - 1]) as client:
                while True:
                    try:
                        groups = client.status().groups
                        if len(groups) == GROUPS and all(g.leader for g in groups):
                            break
                    except quarry.QuarryError:
                        pass
                    if time.monotonic() > deadline:
                        log = (self.dir / f"node{node}.log").read_text(errors="replace")
                        pytest.fail(f"node {node}: not every group elected a leader in time\n{log}")
                    time.sleep(0.05)


def running(c: Cluster):
    try:
        for node in (1, 2, 3):
            c.start(node)
        c.wait_for_leaders()
        yield c
    finally:
        c.stop_all()


@pytest.fixture
def cluster(tmp_path):
    yield from running(Cluster(tmp_path))


@pytest.fixture
def tls_cluster(tmp_path):
    yield from running(Cluster(tmp_path, tls=True))


@pytest.fixture
def client(cluster):
    with quarry.Client(cluster.endpoints, timeout=30.0) as c:
        yield c
