"""What a Quarry call can fail with. Every error carries the gRPC code and the
node's message; an outcome the client does not know is never reported as a failure."""

from __future__ import annotations

import grpc


class QuarryError(Exception):
    """A call failed; `code` is the gRPC status code, `message` the node's words."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.message = message
        self.code = code


class Unavailable(QuarryError):
    """No node answered (or none had a leader) before the deadline; nothing was written."""


class OutcomeUnknown(QuarryError):
    """A write was sent but no answer came before the deadline: it may or may not have
    applied. Retrying it through the same client (same client id and sequence) is
    safe; the client does so itself until its deadline."""


class InvalidArgument(QuarryError):
    """The request is malformed or names something that cannot work (a SQL syntax
    error, an unknown table, a statement Quarry cannot replicate)."""


class NotFound(QuarryError):
    """No such log or database."""


class Refused(QuarryError):
    """The cluster refused the request and changed nothing (a SQL constraint, a
    bound such as a database's size)."""


class PermissionDenied(QuarryError):
    """The certificate presented may not make this call."""


class SqlError(QuarryError):
    """A SQL statement failed or was refused (`statement`: its 0-based position in the
    call); nothing of the call applied. `code` says whose doing: INVALID_ARGUMENT (a
    syntax error, an unknown table, a statement Quarry cannot replicate) or
    FAILED_PRECONDITION (a constraint, a bound such as the database's size)."""

    def __init__(self, message: str, code: grpc.StatusCode | None, statement: int):
        super().__init__(message, code)
        self.statement = statement


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: Refused,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
}


def from_rpc(error: grpc.RpcError, sql: bool = False) -> QuarryError:
    code = error.code() if hasattr(error, "code") else None
    message = (error.details() if hasattr(error, "details") else None) or str(error)
    head = message[len("statement "):].split(":", 1)[0] if message.startswith("statement ") else ""
    if sql and head.isdigit() and code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        return SqlError(message, code, int(head))
    return _BY_CODE.get(code, QuarryError)(message, code)
