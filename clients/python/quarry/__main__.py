"""`python -m quarry`: put, get, sql and query from the command line.

Exit codes: 0 success, 1 the cluster refused or failed the request, 2 bad usage,
3 a key `get` did not find.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys

from . import Client, QuarryError


def split_script(text: str) -> list[str]:
    """Statements of a script, split where SQLite's own shell would."""
    statements, current = [], ""
    for line in text.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


def parse_value(text: str):
    """A command-line parameter: NULL, an integer, a real, x'hex', or text ('quoted'
    to keep text that looks like a number)."""
    if text.upper() == "NULL":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text[:2].lower() == "x'" and text.endswith("'"):
        try:
            return bytes.fromhex(text[2:-1])
        except ValueError:
            return text
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1]
    return text


def table(columns: list[str], rows: list[tuple]) -> str:
    cells = [[("NULL" if v is None else f"x'{v.hex()}'" if isinstance(v, bytes) else str(v)) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quarry", description="Quarry command-line client")
    parser.add_argument(
        "--endpoints",
        default=os.environ.get("QUARRY_ENDPOINTS", "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"),
        help="nodes, host:port comma-separated (env QUARRY_ENDPOINTS)",
    )
    parser.add_argument("--cacert", default=os.environ.get("QUARRY_CACERT"), help="CA of the nodes (PEM): use TLS")
    parser.add_argument("--cert", default=os.environ.get("QUARRY_CERT"), help="this client's certificate (PEM)")
    parser.add_argument("--key", default=os.environ.get("QUARRY_KEY"), help="the key of --cert (PEM)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a call keeps retrying")
    parser.add_argument("--json", action="store_true", help="print JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    put = commands.add_parser("put", help="write a value")
    put.add_argument("key")
    put.add_argument("value")
    get = commands.add_parser("get", help="read a value")
    get.add_argument("key")
    get.add_argument("--serializable", action="store_true", help="read any replica (may be stale)")
    sql = commands.add_parser("sql", help="apply SQL statements to a database, atomically")
    sql.add_argument("database")
    sql.add_argument("statement", nargs="?", help="one statement or several separated by ';'")
    sql.add_argument("--file", help="read the statements from this file")
    sql.add_argument("--param", action="append", default=[], help="a positional parameter (repeat in order)")
    query = commands.add_parser("query", help="run a read-only SQL statement")
    query.add_argument("database")
    query.add_argument("statement")
    query.add_argument("--param", action="append", default=[], help="a positional parameter (repeat in order)")
    query.add_argument("--serializable", action="store_true", help="read any replica (may be stale)")
    args = parser.parse_args(argv)

    try:
        client = Client(args.endpoints, timeout=args.timeout, ca=args.cacert, cert=args.cert, key=args.key)
    except (QuarryError, OSError) as error:
        print(f"quarry: {error}", file=sys.stderr)
        return 2
    out = lambda value, text: print(json.dumps(value) if args.json else text)  # noqa: E731
    try:
        with client:
            if args.command == "put":
                revision = client.put(args.key, args.value)
                out({"revision": revision}, f"OK revision {revision}")
            elif args.command == "get":
                found = client.get_versioned(args.key, serializable=args.serializable)
                if found is None:
                    print(f"quarry: key {args.key!r} not found", file=sys.stderr)
                    return 3
                text = found.value.decode(errors="replace")
                out({"key": args.key, "value": text, "revision": found.revision}, text)
            elif args.command == "sql":
                if (args.statement is None) == (args.file is None):
                    print("quarry: give a statement or --file", file=sys.stderr)
                    return 2
                text = open(args.file).read() if args.file else args.statement
                statements = split_script(text)
                if args.param and len(statements) != 1:
                    print("quarry: parameters need a single statement", file=sys.stderr)
                    return 2
                params = [parse_value(p) for p in args.param]
                results = client.execute_many(args.database, [(s, params or None) for s in statements])
                rows = [(i, r.kind, r.rows_affected, r.last_insert_rowid) for i, r in enumerate(results)]
                out(
                    {"results": [dict(zip(("kind", "rows_affected", "last_insert_rowid"), r[1:])) for r in rows]},
                    table(["#", "kind", "rows_affected", "last_insert_rowid"], rows),
                )
            elif args.command == "query":
                params = [parse_value(p) for p in args.param] or None
                result = client.query(args.database, args.statement, params, serializable=args.serializable)
                as_json = [[v.hex() if isinstance(v, bytes) else v for v in row] for row in result.rows]
                out({"columns": result.names, "rows": as_json, "more": result.more}, table(result.names, result.rows))
    except QuarryError as error:
        print(f"quarry: {error.message}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"quarry: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
