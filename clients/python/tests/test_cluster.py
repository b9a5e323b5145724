"""The Python client against a real 3-node cluster: KV, logs, SQL, a leader killed
mid-run with every write applied once, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pyarrow as pa
import pytest

import quarry
from quarry._proto import quarry_pb2 as pb
from quarry._proto import quarry_pb2_grpc as rpc


def test_kv_put_get_delete_cas_range(client):
    revision = client.put("fruit/apple", "red")
    assert client.get("fruit/apple") == b"red"
    assert client.get("fruit/none") is None
    assert client.cas("fruit/apple", revision + 1000, "green") == (False, revision)
    ok, new_revision = client.cas("fruit/apple", revision, "green")
    assert ok and new_revision > revision
    client.put("fruit/banana", b"yellow")
    assert [(kv.key, kv.value) for kv in client.range("fruit/", "fruit0")] == [
        (b"fruit/apple", b"green"),
        (b"fruit/banana", b"yellow"),
    ]
    assert client.delete("fruit/apple") is True
    assert client.delete("fruit/apple") is False
    assert client.get("fruit/apple", serializable=True) is None


def test_logs_append_read_and_tail_over_flight(client):
    for i in range(1, 6):
        assert client.append("wal", f"record-{i}") == i
    assert client.read("wal", 2, limit=2) == [b"record-2", b"record-3"]
    tailed = []
    for index, data in client.tail("wal", 3, timeout=5):
        tailed.append((index, data))
        if index == 5:
            break
    assert tailed == [(3, b"record-3"), (4, b"record-4"), (5, b"record-5")]
    with pytest.raises(quarry.NotFound):
        client.read("no-such-log")


def test_watch_changes_as_arrow_batches_over_flight(client):
    import pyarrow as pa

    first = client.put("watch/a", "1")
    client.put("watch/a", "2")
    client.put("watch/b", "3")
    client.delete("watch/a")
    rows = []
    for batch in client.watch_batches("watch/", prefix=True, start_revision=1, timeout=5):
        rows.extend(pa.Table.from_batches([batch]).to_pylist())
        if len(rows) == 4:
            break
    by_key = {}
    for row in rows:
        by_key.setdefault(row["key"], []).append(row)
    assert [(r["kind"], r["value"]) for r in by_key[b"watch/a"]] == [("PUT", b"1"), ("PUT", b"2"), ("DELETE", None)]
    assert [(r["kind"], r["value"], r["prev_value"]) for r in by_key[b"watch/b"]] == [("PUT", b"3", None)]
    assert by_key[b"watch/a"][0]["revision"] == first
    assert by_key[b"watch/a"][2]["prev_value"] == b"2"


def test_sql_users_example_end_to_end(client):
    created = client.execute("app", "CREATE TABLE users(name TEXT PRIMARY KEY, value INTEGER)")
    assert created.kind == "create table"
    results = client.execute_many(
        "app",
        [
            ("INSERT INTO users VALUES (?, ?)", ["ann", 1]),
            ("INSERT INTO users VALUES (:name, :value)", {"name": "bob", "value": 2}),
            "INSERT INTO users VALUES ('cy', 3)",
        ],
    )
    assert [(r.rows_affected, r.last_insert_rowid) for r in results] == [(1, 1), (1, 2), (1, 3)]
    result = client.query("app", "SELECT name, value FROM users WHERE value >= ? ORDER BY name", [2])
    assert result.columns == [("name", "TEXT"), ("value", "INTEGER")]
    assert result.rows == [("bob", 2), ("cy", 3)]
    table = client.query_arrow("app", "SELECT name, value FROM users ORDER BY value")
    assert isinstance(table, pa.Table)
    assert table.column("value").to_pylist() == [1, 2, 3]
    page = client.query("app", "SELECT name FROM users ORDER BY name", max_rows=2)
    assert page.rows == [("ann",), ("bob",)] and page.more
    schema = client.schema("app")
    assert [c["kind"] for c in schema["changes"]] == ["create table"]
    assert schema["image"]["bytes"] > 0
    # Every value type round-trips.
    client.execute("app", "CREATE TABLE kinds(a, b, c, d, e)")
    client.execute("app", "INSERT INTO kinds VALUES (?, ?, ?, ?, ?)", [None, -(1 << 63), 2.5, "é", b"\x00\xff"])
    assert client.query("app", "SELECT * FROM kinds").rows == [(None, -(1 << 63), 2.5, "é", b"\x00\xff")]


def test_a_failing_statement_changes_nothing_and_names_itself(client):
    client.execute("shop", "CREATE TABLE items(name TEXT UNIQUE, qty INTEGER CHECK (qty >= 0))")
    client.execute("shop", "INSERT INTO items VALUES ('nail', 10)")
    with pytest.raises(quarry.SqlError) as failed:
        client.execute_many(
            "shop", ["UPDATE items SET qty = qty - 1", "INSERT INTO items VALUES ('nail', 1)"]
        )
    assert failed.value.statement == 1 and "UNIQUE" in failed.value.message
    with pytest.raises(quarry.SqlError) as failed:
        client.execute("shop", "UPDATE items SET qty = -5")
    assert "CHECK" in failed.value.message
    with pytest.raises(quarry.SqlError):
        client.execute("shop", "INSERT INTO nowhere VALUES (1)")
    assert client.query("shop", "SELECT qty FROM items").rows == [(10,)]
    for node in range(3):  # every replica agrees, read locally
        with quarry.Client(client.endpoints[node]) as local:
            rows = local.query("shop", "SELECT qty FROM items", serializable=True).rows
            assert rows == [(10,)], f"node {node + 1}"


def test_bad_input_gets_clear_errors(client):
    with pytest.raises(quarry.InvalidArgument, match="database name"):
        client.execute("bad name!", "CREATE TABLE t(a)")
    with pytest.raises(quarry.SqlError, match="Query"):
        client.execute("app2", "SELECT 1")
    with pytest.raises(quarry.SqlError, match="PRAGMA"):
        client.execute("app2", "PRAGMA foreign_keys = OFF")
    with pytest.raises(quarry.SqlError, match="exceeds"):
        client.execute("app2", "INSERT INTO t VALUES ('" + "x" * 70_000 + "')")
    with pytest.raises(quarry.NotFound):
        client.query("never-created", "SELECT 1")
    with pytest.raises(quarry.InvalidArgument):
        client.execute("app2", "INSERT INTO t VALUES (?)", [object()])
    with pytest.raises(quarry.InvalidArgument, match="64 bits"):
        client.execute("app2", "INSERT INTO t VALUES (?)", [1 << 70])
    client.execute("app2", "CREATE TABLE t(a)")
    with pytest.raises(quarry.SqlError, match="writes"):
        client.query("app2", "DELETE FROM t")


def test_a_retried_write_applies_once(cluster):
    """The same client id and sequence sent twice (a retry after a lost answer)."""
    import grpc

    with grpc.insecure_channel(cluster.addrs[0]) as channel:
        sql = rpc.SqlStub(channel)
        create = pb.SqlExecuteRequest(database="once", statements=[pb.SqlStatement(sql="CREATE TABLE t(a)")])
        sql.Execute(create, timeout=10)
        insert = pb.SqlExecuteRequest(
            database="once",
            statements=[pb.SqlStatement(sql="INSERT INTO t VALUES (random())")],
            client_id=77,
            sequence=1,
        )
        first = sql.Execute(insert, timeout=10)
        again = sql.Execute(insert, timeout=10)
        assert first.results == again.results
        count = sql.Query(pb.SqlQueryRequest(database="once", statement=pb.SqlStatement(sql="SELECT count(*) FROM t")))
        assert count.rows[0].values[0].integer == 1


def test_writes_survive_the_leader_being_killed_mid_run_and_apply_once(cluster):
    writes = 120
    with quarry.Client(cluster.endpoints, timeout=30.0) as client:
        client.execute("ledger", "CREATE TABLE entries(n INTEGER)")
        leader = cluster.leader_of("ledger")
        assert cluster.leader_of("events") >= 1
        killed = threading.Event()

        def kill_when_halfway(n: int) -> None:
            if n == writes // 2 and not killed.is_set():
                killed.set()
                cluster.kill(leader)

        for n in range(writes):
            kill_when_halfway(n)
            client.execute("ledger", "INSERT INTO entries VALUES (?)", [n])
            client.append("events", f"event-{n}")
        assert killed.is_set()
        rows = client.query("ledger", "SELECT n FROM entries ORDER BY rowid").rows
        assert [n for (n,) in rows] == list(range(writes)), "every write applied exactly once, in order"
        events = []
        while len(events) < writes + 1:
            batch = client.read("events", len(events) + 1, limit=100)
            if not batch:
                break
            events += batch
        assert events == [f"event-{n}".encode() for n in range(writes)]


def test_command_line(cluster):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "quarry", "--endpoints", cluster.endpoints, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert run("put", "greeting", "hello").returncode == 0
    assert run("get", "greeting").stdout.strip() == "hello"
    assert run("get", "missing").returncode == 3
    script = "CREATE TABLE users(name TEXT, value INTEGER);\nINSERT INTO users VALUES ('ann', 1); -- done;\n"
    assert run("sql", "cli", script).returncode == 0
    assert run("sql", "cli", "INSERT INTO users VALUES (?, ?)", "--param", "bob", "--param", "2").returncode == 0
    table = run("query", "cli", "SELECT * FROM users ORDER BY name")
    assert table.returncode == 0
    assert table.stdout.splitlines() == ["name  value", "----  -----", "ann   1", "bob   2"]
    rows = json.loads(run("--json", "query", "cli", "SELECT value FROM users ORDER BY value").stdout)
    assert rows == {"columns": ["value"], "rows": [[1], [2]], "more": False}
    bad = run("sql", "cli", "INSERT INTO nowhere VALUES (1)")
    assert bad.returncode == 1 and "no such table: nowhere" in bad.stderr
    unreachable = subprocess.run(
        [sys.executable, "-m", "quarry", "--endpoints", "127.0.0.1:1", "--timeout", "1", "get", "k"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 1 and "is the cluster running?" in unreachable.stderr


def test_mutual_tls(tls_cluster):
    with tls_cluster.client(timeout=30.0) as client:
        client.put("k", "v")
        assert client.get("k") == b"v"
        client.execute("app", "CREATE TABLE users(name TEXT, value INTEGER)")
        client.execute("app", "INSERT INTO users VALUES (?, ?)", ["ann", 1])
        assert client.query("app", "SELECT * FROM users").rows == [("ann", 1)]
        client.append("wal", "r1")
        assert next(client.tail("wal", 1, timeout=5)) == (1, b"r1")
    # Without a client certificate the nodes refuse the call (and it is not retried).
    ca = tls_cluster.credentials()["ca"]
    with quarry.Client(tls_cluster.endpoints, ca=ca, timeout=3.0) as anonymous:
        with pytest.raises(quarry.QuarryError):
            anonymous.get("k")


def test_a_write_nobody_received_is_unavailable_not_unknown():
    with quarry.Client("127.0.0.1:1", timeout=1.0) as nobody:
        with pytest.raises(quarry.Unavailable, match="is the cluster running"):
            nobody.put("k", "v")


def test_committed_stubs_match_the_proto():
    import pathlib

    here = pathlib.Path(__file__).resolve().parents[1]
    check = subprocess.run([sys.executable, "generate_stubs.py", "--check"], cwd=here, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
