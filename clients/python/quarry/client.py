"""The Quarry client: KV, named logs, SQL databases, with leader routing, retries and
exactly-once writes."""

from __future__ import annotations

import itertools
import random
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import grpc

from . import errors
from ._proto import quarry_pb2 as pb
from ._proto import quarry_pb2_grpc as rpc

# Codes after which a call is tried again (at another node, after a pause): no
# leader or a leader change, a lost answer, an overloaded node. A write is retried
# with the same client id and sequence, so it applies once.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
PAUSE_FIRST = 0.05
PAUSE_MAX = 0.8
# One attempt at one node; past it the call is tried at another.
ATTEMPT_TIMEOUT = 3.0
# Largest answer accepted (a query or range may be large).
MESSAGE_MAX = 256 << 20


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    revision: int


@dataclass(frozen=True)
class ExecuteResult:
    rows_affected: int
    last_insert_rowid: int
    kind: str


@dataclass(frozen=True)
class QueryResult:
    """Rows of a query; `columns` are (name, declared type) pairs."""

    columns: list[tuple[str, str]]
    rows: list[tuple[Any, ...]]
    more: bool

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.columns]

    def to_arrow(self):
        """The rows as a `pyarrow.Table` (column types inferred from the values)."""
        import pyarrow as pa

        data = {name: [row[i] for row in self.rows] for i, name in enumerate(self.names)}
        return pa.table(data) if self.columns else pa.table({})


_KINDS = {
    pb.SQL_DATA_CHANGE: "data change",
    pb.SQL_CREATE_TABLE: "create table",
    pb.SQL_DROP_TABLE: "drop table",
    pb.SQL_ALTER_TABLE: "alter table",
    pb.SQL_CREATE_INDEX: "create index",
    pb.SQL_DROP_INDEX: "drop index",
    pb.SQL_OTHER_SCHEMA_CHANGE: "schema change",
}


def _to_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def sql_value(value: Any) -> pb.SqlValue:
    """A Python value as a SQL value: None, bool/int, float, str, bytes."""
    if value is None:
        return pb.SqlValue()
    if isinstance(value, bool):
        return pb.SqlValue(integer=int(value))
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            raise errors.InvalidArgument(f"integer {value} does not fit in 64 bits")
        return pb.SqlValue(integer=value)
    if isinstance(value, float):
        return pb.SqlValue(real=value)
    if isinstance(value, str):
        return pb.SqlValue(text=value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return pb.SqlValue(blob=bytes(value))
    raise errors.InvalidArgument(f"cannot send {type(value).__name__} as a SQL value")


def python_value(value: pb.SqlValue) -> Any:
    which = value.WhichOneof("value")
    return None if which is None else getattr(value, which)


def _statement(sql: str, params: Sequence[Any] | Mapping[str, Any] | None) -> pb.SqlStatement:
    if params is None:
        return pb.SqlStatement(sql=sql)
    if isinstance(params, Mapping):
        return pb.SqlStatement(sql=sql, named={k: sql_value(v) for k, v in params.items()})
    if isinstance(params, (str, bytes)):
        raise errors.InvalidArgument("params must be a sequence or a mapping, not a single string")
    return pb.SqlStatement(sql=sql, params=[sql_value(v) for v in params])


class _Lanes:
    """Client ids with their next sequence number. A write takes an idle lane, so
    writes in flight at once never share a client id (the cluster remembers only a
    client's latest sequence)."""

    def __init__(self) -> None:
        self._idle: list[list[int]] = []
        self._lock = threading.Lock()

    def take(self) -> list[int]:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return [random.getrandbits(63) | 1, 1]

    def give_back(self, lane: list[int]) -> None:
        lane[1] += 1
        with self._lock:
            self._idle.append(lane)


class Client:
    """A client of a Quarry cluster.

    `endpoints` is "host:port,host:port" or a list of them. Calls go to the leader of
    the key's group when known (learned from the cluster's status and every answer),
    and are retried at other nodes with back-off until `timeout` seconds have passed.
    Pass `ca`, `cert` and `key` (PEM file paths) for a cluster serving TLS.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 10.0,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ):
        if isinstance(endpoints, str):
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise errors.InvalidArgument("no endpoints given")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._tls = (ca, cert, key) if ca else None
        options = [("grpc.max_receive_message_length", MESSAGE_MAX)]
        if self._tls:
            read = lambda path: open(path, "rb").read() if path else None  # noqa: E731
            credentials = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
            self._channels = [grpc.secure_channel(e, credentials, options) for e in self.endpoints]
        else:
            self._channels = [grpc.insecure_channel(e, options) for e in self.endpoints]
        self._kv = [rpc.KvStub(c) for c in self._channels]
        self._log = [rpc.LogStub(c) for c in self._channels]
        self._sql = [rpc.SqlStub(c) for c in self._channels]
        self._admin = [rpc.AdminStub(c) for c in self._channels]
        self._lanes = _Lanes()
        self._lock = threading.Lock()
        self._groups = 0
        self._node_endpoint: dict[int, int] = {}
        self._leaders: dict[int, int] = {}
        self._discovered = False
        self._next = itertools.count()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ routing

    def _discover(self) -> None:
        if self._discovered:
            return
        for i, admin in enumerate(self._admin):
            try:
                status = admin.Status(pb.StatusRequest(), timeout=2.0)
            except grpc.RpcError:
                continue
            with self._lock:
                self._node_endpoint[status.node] = i
                self._groups = max([self._groups] + [g.group + 1 for g in status.groups])
                self._leaders.update({g.group: g.leader for g in status.groups if g.leader})
        self._discovered = True

    def _group(self, key: bytes) -> int | None:
        return zlib.crc32(key) % self._groups if self._groups else None

    def _endpoint_for(self, key: bytes) -> int:
        with self._lock:
            group = self._group(key)
            leader = self._leaders.get(group) if group is not None else None
            if leader in self._node_endpoint:
                return self._node_endpoint[leader]
        return next(self._next) % len(self._channels)

    def _learn(self, key: bytes, header: pb.ResponseHeader | None, failed: bool) -> None:
        with self._lock:
            group = self._group(key)
            if group is None:
                return
            if failed:
                self._leaders.pop(group, None)
            elif header is not None and header.leader:
                self._leaders[header.group] = header.leader

    def _call(self, key: bytes, stubs: list, method: str, request, *, write: bool, sql: bool = False):
        """Calls `method` for `key` at its leader (when known) until it answers,
        fails for good, or the client's deadline passes."""
        self._discover()
        deadline = time.monotonic() + self.timeout
        pause = PAUSE_FIRST
        # Whether some attempt may have been carried out: it timed out, or the node
        # said its outcome is unknown. Refusals (no leader, overloaded, no connection)
        # carried out nothing.
        maybe_applied = False
        while True:
            endpoint = self._endpoint_for(key)
            remaining = deadline - time.monotonic()
            try:
                answer = getattr(stubs[endpoint], method)(request, timeout=max(0.05, min(ATTEMPT_TIMEOUT, remaining)))
            except grpc.RpcError as error:
                code = error.code()
                if code not in RETRYABLE:
                    raise errors.from_rpc(error, sql) from None
                details = error.details() or code.name
                if code == grpc.StatusCode.DEADLINE_EXCEEDED or "outcome unknown" in details:
                    maybe_applied = True
                self._learn(key, None, failed=True)
                if time.monotonic() + pause >= deadline:
                    where = ", ".join(self.endpoints)
                    if write and maybe_applied:
                        raise errors.OutcomeUnknown(
                            f"no answer within {self.timeout}s from {where} ({details}); the write may or may not "
                            "have applied: retrying it through this client applies it once",
                            code,
                        ) from None
                    raise errors.Unavailable(
                        f"no node at {where} served the call within {self.timeout}s ({details}): is the cluster "
                        "running?",
                        code,
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, PAUSE_MAX)
                continue
            self._learn(key, getattr(answer, "header", None), failed=False)
            return answer

    def _write(self, key: bytes, stubs: list, method: str, build, *, sql: bool = False):
        lane = self._lanes.take()
        try:
            request = build(lane[0], lane[1])
            return self._call(key, stubs, method, request, write=True, sql=sql)
        finally:
            self._lanes.give_back(lane)

    # ------------------------------------------------------------------ key-value

    def put(self, key: bytes | str, value: bytes | str) -> int:
        """Writes `value` under `key`; returns the new revision."""
        key, value = _to_bytes(key), _to_bytes(value)
        build = lambda c, s: pb.PutRequest(key=key, value=value, client_id=c, sequence=s)  # noqa: E731
        return self._write(key, self._kv, "Put", build).revision

    def get(self, key: bytes | str, *, serializable: bool = False) -> bytes | None:
        """The value under `key`, or None (linearizable unless `serializable`)."""
        found = self.get_versioned(key, serializable=serializable)
        return found.value if found else None

    def get_versioned(self, key: bytes | str, *, serializable: bool = False) -> KeyValue | None:
        key = _to_bytes(key)
        answer = self._call(key, self._kv, "Get", pb.GetRequest(key=key, serializable=serializable), write=False)
        return KeyValue(key, answer.value, answer.revision) if answer.found else None

    def delete(self, key: bytes | str) -> bool:
        """Deletes `key`; returns whether it existed."""
        key = _to_bytes(key)
        build = lambda c, s: pb.DeleteRequest(key=key, client_id=c, sequence=s)  # noqa: E731
        return self._write(key, self._kv, "Delete", build).existed

    def cas(self, key: bytes | str, expected_revision: int, value: bytes | str) -> tuple[bool, int]:
        """Writes `value` if `key` is at `expected_revision` (0: absent). Returns
        (succeeded, the new or current revision)."""
        key, value = _to_bytes(key), _to_bytes(value)
        build = lambda c, s: pb.CasRequest(  # noqa: E731
            key=key, expected_revision=expected_revision, value=value, client_id=c, sequence=s
        )
        answer = self._write(key, self._kv, "Cas", build)
        return answer.succeeded, answer.revision

    def range(
        self, start: bytes | str, end: bytes | str = b"", *, limit: int = 100, serializable: bool = False
    ) -> list[KeyValue]:
        """Keys in [start, end) across every group, in order (empty end: to the last)."""
        start, end = _to_bytes(start), _to_bytes(end)
        request = pb.RangeRequest(start=start, end=end, limit=limit, serializable=serializable)
        answer = self._call(start, self._kv, "Range", request, write=False)
        return [KeyValue(kv.key, kv.value, kv.revision) for kv in answer.kvs]

    # ------------------------------------------------------------------ named logs

    def append(self, log: str, data: bytes | str) -> int:
        """Appends `data` to the named log; returns its 1-based position."""
        data = _to_bytes(data)
        build = lambda c, s: pb.LogAppendRequest(log=log, data=data, client_id=c, sequence=s)  # noqa: E731
        return self._write(log.encode(), self._log, "Append", build).index

    def read(self, log: str, start: int = 1, *, limit: int = 100, serializable: bool = False) -> list[bytes]:
        """Records of the named log from position `start`, at most `limit`."""
        request = pb.LogReadRequest(log=log, **{"from": start}, limit=limit, serializable=serializable)
        return list(self._call(log.encode(), self._log, "Read", request, write=False).entries)

    def tail(self, log: str, start: int = 1, *, timeout: float | None = None) -> Iterator[tuple[int, bytes]]:
        """Follows the named log's committed records from `start` over Arrow Flight,
        yielding (position, data) as they commit; stops after `timeout` seconds
        without a record (None: never)."""
        for batch in self._flight_batches(f"log/{start}/{log}".encode(), timeout):
            for index, data in zip(batch.column("index").to_pylist(), batch.column("data").to_pylist()):
                yield index, data

    def watch_batches(
        self, key: bytes | str, *, prefix: bool = False, start_revision: int = 0, timeout: float | None = None
    ) -> Iterator[Any]:
        """Follows every put and delete of `key` (or, with `prefix`, of the keys under
        it) over Arrow Flight from `start_revision` in each group (0: from now),
        yielding `pyarrow.RecordBatch`es with columns group, revision, kind ("PUT" or
        "DELETE"), key, value (null for a delete), prev_value and prev_revision (null
        where the key did not exist). Each group's changes come in revision order;
        stops after `timeout` seconds without a change (None: never). A revision no
        longer held raises `pyarrow.flight.FlightError` naming the oldest one held."""
        kind = "prefix" if prefix else "key"
        ticket = f"watch/{kind}/{start_revision}/".encode() + _to_bytes(key)
        yield from self._flight_batches(ticket, timeout)

    def _flight_batches(self, ticket: bytes, timeout: float | None) -> Iterator[Any]:
        """The record batches of a `DoGet` for `ticket` at one node, until the stream
        ends or stays quiet for `timeout` seconds."""
        import pyarrow.flight as flight

        scheme = "grpc+tls" if self._tls else "grpc"
        location = f"{scheme}://{self.endpoints[next(self._next) % len(self.endpoints)]}"
        kwargs = {}
        if self._tls:
            ca, cert, key = self._tls
            read = lambda path: open(path, "rb").read() if path else None  # noqa: E731
            kwargs = {"tls_root_certs": read(ca), "cert_chain": read(cert), "private_key": read(key)}
        client = flight.FlightClient(location, **kwargs)
        options = flight.FlightCallOptions(timeout=timeout)
        try:
            reader = client.do_get(flight.Ticket(ticket), options)
            while True:
                try:
                    chunk = reader.read_chunk()
                except (StopIteration, flight.FlightTimedOutError):
                    return
                if chunk.data is not None:
                    yield chunk.data
        finally:
            client.close()

    # ------------------------------------------------------------------ SQL

    def execute(
        self, database: str, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> ExecuteResult:
        """Applies one statement to `database` (created by its first write). `params`
        binds `?` in order (a sequence) or `:name` (a mapping)."""
        return self.execute_many(database, [(sql, params)])[0]

    def execute_many(self, database: str, statements: Sequence[str | tuple[str, Any]]) -> list[ExecuteResult]:
        """Applies statements atomically, as one log entry: all of them or none. Each
        is a SQL string or a (sql, params) pair."""
        built = [_statement(s, None) if isinstance(s, str) else _statement(*s) for s in statements]
        build = lambda c, s: pb.SqlExecuteRequest(  # noqa: E731
            database=database, statements=built, client_id=c, sequence=s
        )
        answer = self._write(database.encode(), self._sql, "Execute", build, sql=True)
        return [ExecuteResult(r.rows_affected, r.last_insert_rowid, _KINDS.get(r.kind, "unknown")) for r in answer.results]

    def query(
        self,
        database: str,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        serializable: bool = False,
        max_rows: int = 0,
    ) -> QueryResult:
        """Runs one read-only statement (linearizable unless `serializable`). With
        `max_rows` the answer stops there (`more` says whether rows were left);
        without it a query returning more than 10,000 rows is refused."""
        request = pb.SqlQueryRequest(
            database=database, statement=_statement(sql, params), serializable=serializable, max_rows=max_rows
        )
        answer = self._call(database.encode(), self._sql, "Query", request, write=False, sql=True)
        rows = [tuple(python_value(v) for v in row.values) for row in answer.rows]
        return QueryResult([(c.name, c.declared_type) for c in answer.columns], rows, answer.more)

    def query_arrow(self, database: str, sql: str, params=None, **options):
        """`query` as a `pyarrow.Table`."""
        return self.query(database, sql, params, **options).to_arrow()

    def schema(self, database: str) -> dict:
        """The database's tables, indexes, views and triggers, and its latest schema
        changes with the log index that applied each."""
        answer = self._call(database.encode(), self._sql, "Schema", pb.SqlSchemaRequest(database=database), write=False)
        return {
            "objects": [{"type": o.type, "name": o.name, "table": o.table, "sql": o.sql} for o in answer.objects],
            "changes": [{"index": c.index, "kind": _KINDS.get(c.kind, "unknown"), "sql": c.sql} for c in answer.changes],
            "image": {"bytes": answer.image_bytes, "crc32": answer.image_crc32},
        }

    # ------------------------------------------------------------------ admin

    def status(self, endpoint: int = 0) -> pb.StatusResponse:
        """The status of the node at position `endpoint` in the endpoint list."""
        try:
            return self._admin[endpoint].Status(pb.StatusRequest(), timeout=ATTEMPT_TIMEOUT)
        except grpc.RpcError as error:
            raise errors.from_rpc(error) from None
