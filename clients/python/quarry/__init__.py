"""Python client for Quarry, a replicated key-value store, log service and SQL
(SQLite) database.

    import quarry
    with quarry.Client("127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003") as q:
        q.execute("app", "CREATE TABLE users(name TEXT, value INTEGER)")
        q.execute("app", "INSERT INTO users VALUES (?, ?)", ["ann", 1])
        print(q.query("app", "SELECT * FROM users").rows)
"""

from .client import Client, ExecuteResult, KeyValue, QueryResult
from .errors import (
    InvalidArgument,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    QuarryError,
    Refused,
    SqlError,
    Unavailable,
)

__all__ = [
    "Client",
    "ExecuteResult",
    "InvalidArgument",
    "KeyValue",
    "NotFound",
    "OutcomeUnknown",
    "PermissionDenied",
    "QuarryError",
    "QueryResult",
    "Refused",
    "SqlError",
    "Unavailable",
]
__version__ = "0.1.0"
