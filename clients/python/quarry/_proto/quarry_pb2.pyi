from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SqlStatementKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SQL_STATEMENT_KIND_UNSPECIFIED: _ClassVar[SqlStatementKind]
    SQL_DATA_CHANGE: _ClassVar[SqlStatementKind]
    SQL_CREATE_TABLE: _ClassVar[SqlStatementKind]
    SQL_DROP_TABLE: _ClassVar[SqlStatementKind]
    SQL_ALTER_TABLE: _ClassVar[SqlStatementKind]
    SQL_CREATE_INDEX: _ClassVar[SqlStatementKind]
    SQL_DROP_INDEX: _ClassVar[SqlStatementKind]
    SQL_OTHER_SCHEMA_CHANGE: _ClassVar[SqlStatementKind]
SQL_STATEMENT_KIND_UNSPECIFIED: SqlStatementKind
SQL_DATA_CHANGE: SqlStatementKind
SQL_CREATE_TABLE: SqlStatementKind
SQL_DROP_TABLE: SqlStatementKind
SQL_ALTER_TABLE: SqlStatementKind
SQL_CREATE_INDEX: SqlStatementKind
SQL_DROP_INDEX: SqlStatementKind
SQL_OTHER_SCHEMA_CHANGE: SqlStatementKind

class Noop(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConfChangeSingle(_message.Message):
    __slots__ = ("kind", "node")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ADD_VOTER: _ClassVar[ConfChangeSingle.Kind]
        ADD_LEARNER: _ClassVar[ConfChangeSingle.Kind]
        REMOVE_NODE: _ClassVar[ConfChangeSingle.Kind]
    ADD_VOTER: ConfChangeSingle.Kind
    ADD_LEARNER: ConfChangeSingle.Kind
    REMOVE_NODE: ConfChangeSingle.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    kind: ConfChangeSingle.Kind
    node: int
    def __init__(self, kind: _Optional[_Union[ConfChangeSingle.Kind, str]] = ..., node: _Optional[int] = ...) -> None: ...

class ConfChange(_message.Message):
    __slots__ = ("leave_joint", "changes")
    LEAVE_JOINT_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    leave_joint: bool
    changes: _containers.RepeatedCompositeFieldContainer[ConfChangeSingle]
    def __init__(self, leave_joint: _Optional[bool] = ..., changes: _Optional[_Iterable[_Union[ConfChangeSingle, _Mapping]]] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("term", "index", "noop", "normal", "conf_change")
    TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NOOP_FIELD_NUMBER: _ClassVar[int]
    NORMAL_FIELD_NUMBER: _ClassVar[int]
    CONF_CHANGE_FIELD_NUMBER: _ClassVar[int]
    term: int
    index: int
    noop: Noop
    normal: bytes
    conf_change: ConfChange
    def __init__(self, term: _Optional[int] = ..., index: _Optional[int] = ..., noop: _Optional[_Union[Noop, _Mapping]] = ..., normal: _Optional[bytes] = ..., conf_change: _Optional[_Union[ConfChange, _Mapping]] = ...) -> None: ...

class ConfState(_message.Message):
    __slots__ = ("voters", "voters_outgoing", "learners")
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    VOTERS_OUTGOING_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    voters: _containers.RepeatedScalarFieldContainer[int]
    voters_outgoing: _containers.RepeatedScalarFieldContainer[int]
    learners: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, voters: _Optional[_Iterable[int]] = ..., voters_outgoing: _Optional[_Iterable[int]] = ..., learners: _Optional[_Iterable[int]] = ...) -> None: ...

class SnapshotMeta(_message.Message):
    __slots__ = ("index", "term", "conf_state")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    CONF_STATE_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    conf_state: ConfState
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., conf_state: _Optional[_Union[ConfState, _Mapping]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("meta", "size", "crc32")
    META_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    meta: SnapshotMeta
    size: int
    crc32: int
    def __init__(self, meta: _Optional[_Union[SnapshotMeta, _Mapping]] = ..., size: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class MsgPreVote(_message.Message):
    __slots__ = ("last_index", "last_term", "commit", "commit_term")
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TERM_FIELD_NUMBER: _ClassVar[int]
    last_index: int
    last_term: int
    commit: int
    commit_term: int
    def __init__(self, last_index: _Optional[int] = ..., last_term: _Optional[int] = ..., commit: _Optional[int] = ..., commit_term: _Optional[int] = ...) -> None: ...

class MsgVote(_message.Message):
    __slots__ = ("last_index", "last_term", "transfer", "commit", "commit_term")
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_TERM_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TERM_FIELD_NUMBER: _ClassVar[int]
    last_index: int
    last_term: int
    transfer: bool
    commit: int
    commit_term: int
    def __init__(self, last_index: _Optional[int] = ..., last_term: _Optional[int] = ..., transfer: _Optional[bool] = ..., commit: _Optional[int] = ..., commit_term: _Optional[int] = ...) -> None: ...

class MsgVoteResponse(_message.Message):
    __slots__ = ("reject", "commit", "commit_term")
    REJECT_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TERM_FIELD_NUMBER: _ClassVar[int]
    reject: bool
    commit: int
    commit_term: int
    def __init__(self, reject: _Optional[bool] = ..., commit: _Optional[int] = ..., commit_term: _Optional[int] = ...) -> None: ...

class MsgAppend(_message.Message):
    __slots__ = ("prev_index", "prev_term", "entries", "commit")
    PREV_INDEX_FIELD_NUMBER: _ClassVar[int]
    PREV_TERM_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    prev_index: int
    prev_term: int
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    commit: int
    def __init__(self, prev_index: _Optional[int] = ..., prev_term: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., commit: _Optional[int] = ...) -> None: ...

class RejectHint(_message.Message):
    __slots__ = ("index", "term")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ...) -> None: ...

class MsgAppendResponse(_message.Message):
    __slots__ = ("index", "reject")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    index: int
    reject: RejectHint
    def __init__(self, index: _Optional[int] = ..., reject: _Optional[_Union[RejectHint, _Mapping]] = ...) -> None: ...

class MsgHeartbeat(_message.Message):
    __slots__ = ("commit", "round", "quiesce")
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    QUIESCE_FIELD_NUMBER: _ClassVar[int]
    commit: int
    round: int
    quiesce: bool
    def __init__(self, commit: _Optional[int] = ..., round: _Optional[int] = ..., quiesce: _Optional[bool] = ...) -> None: ...

class MsgHeartbeatResponse(_message.Message):
    __slots__ = ("round",)
    ROUND_FIELD_NUMBER: _ClassVar[int]
    round: int
    def __init__(self, round: _Optional[int] = ...) -> None: ...

class MsgTimeoutNow(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MsgCommitQuery(_message.Message):
    __slots__ = ("nonce", "last_index")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    last_index: int
    def __init__(self, nonce: _Optional[int] = ..., last_index: _Optional[int] = ...) -> None: ...

class MsgCommitAnswer(_message.Message):
    __slots__ = ("nonce", "commit")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    commit: int
    def __init__(self, nonce: _Optional[int] = ..., commit: _Optional[int] = ...) -> None: ...

class RaftMessage(_message.Message):
    __slots__ = ("group", "to", "term", "pre_vote", "pre_vote_response", "vote", "vote_response", "append", "append_response", "heartbeat", "heartbeat_response", "snapshot", "timeout_now", "commit_query", "commit_answer")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    VOTE_FIELD_NUMBER: _ClassVar[int]
    VOTE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    APPEND_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_NOW_FIELD_NUMBER: _ClassVar[int]
    COMMIT_QUERY_FIELD_NUMBER: _ClassVar[int]
    COMMIT_ANSWER_FIELD_NUMBER: _ClassVar[int]
    group: int
    to: int
    term: int
    pre_vote: MsgPreVote
    pre_vote_response: MsgVoteResponse
    vote: MsgVote
    vote_response: MsgVoteResponse
    append: MsgAppend
    append_response: MsgAppendResponse
    heartbeat: MsgHeartbeat
    heartbeat_response: MsgHeartbeatResponse
    snapshot: Snapshot
    timeout_now: MsgTimeoutNow
    commit_query: MsgCommitQuery
    commit_answer: MsgCommitAnswer
    def __init__(self, group: _Optional[int] = ..., to: _Optional[int] = ..., term: _Optional[int] = ..., pre_vote: _Optional[_Union[MsgPreVote, _Mapping]] = ..., pre_vote_response: _Optional[_Union[MsgVoteResponse, _Mapping]] = ..., vote: _Optional[_Union[MsgVote, _Mapping]] = ..., vote_response: _Optional[_Union[MsgVoteResponse, _Mapping]] = ..., append: _Optional[_Union[MsgAppend, _Mapping]] = ..., append_response: _Optional[_Union[MsgAppendResponse, _Mapping]] = ..., heartbeat: _Optional[_Union[MsgHeartbeat, _Mapping]] = ..., heartbeat_response: _Optional[_Union[MsgHeartbeatResponse, _Mapping]] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., timeout_now: _Optional[_Union[MsgTimeoutNow, _Mapping]] = ..., commit_query: _Optional[_Union[MsgCommitQuery, _Mapping]] = ..., commit_answer: _Optional[_Union[MsgCommitAnswer, _Mapping]] = ..., **kwargs) -> None: ...

class CoalescedHeartbeats(_message.Message):
    __slots__ = ("groups", "terms", "commits", "rounds")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedScalarFieldContainer[int]
    terms: _containers.RepeatedScalarFieldContainer[int]
    commits: _containers.RepeatedScalarFieldContainer[int]
    rounds: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, groups: _Optional[_Iterable[int]] = ..., terms: _Optional[_Iterable[int]] = ..., commits: _Optional[_Iterable[int]] = ..., rounds: _Optional[_Iterable[int]] = ...) -> None: ...

class CoalescedHeartbeatResponses(_message.Message):
    __slots__ = ("groups", "terms", "rounds")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedScalarFieldContainer[int]
    terms: _containers.RepeatedScalarFieldContainer[int]
    rounds: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, groups: _Optional[_Iterable[int]] = ..., terms: _Optional[_Iterable[int]] = ..., rounds: _Optional[_Iterable[int]] = ...) -> None: ...

class CatchUpOffer(_message.Message):
    __slots__ = ("group", "term", "from_index", "to_index")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    FROM_INDEX_FIELD_NUMBER: _ClassVar[int]
    TO_INDEX_FIELD_NUMBER: _ClassVar[int]
    group: int
    term: int
    from_index: int
    to_index: int
    def __init__(self, group: _Optional[int] = ..., term: _Optional[int] = ..., from_index: _Optional[int] = ..., to_index: _Optional[int] = ...) -> None: ...

class PeerBatch(_message.Message):
    __slots__ = ("cluster_id", "from_node", "messages", "to_node", "heartbeats", "heartbeat_responses", "catch_up", "from_address", "incarnation")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEATS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_RESPONSES_FIELD_NUMBER: _ClassVar[int]
    CATCH_UP_FIELD_NUMBER: _ClassVar[int]
    FROM_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    cluster_id: int
    from_node: int
    messages: _containers.RepeatedCompositeFieldContainer[RaftMessage]
    to_node: int
    heartbeats: CoalescedHeartbeats
    heartbeat_responses: CoalescedHeartbeatResponses
    catch_up: _containers.RepeatedCompositeFieldContainer[CatchUpOffer]
    from_address: str
    incarnation: int
    def __init__(self, cluster_id: _Optional[int] = ..., from_node: _Optional[int] = ..., messages: _Optional[_Iterable[_Union[RaftMessage, _Mapping]]] = ..., to_node: _Optional[int] = ..., heartbeats: _Optional[_Union[CoalescedHeartbeats, _Mapping]] = ..., heartbeat_responses: _Optional[_Union[CoalescedHeartbeatResponses, _Mapping]] = ..., catch_up: _Optional[_Iterable[_Union[CatchUpOffer, _Mapping]]] = ..., from_address: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class PeerPing(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResponseHeader(_message.Message):
    __slots__ = ("group", "leader")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    group: int
    leader: int
    def __init__(self, group: _Optional[int] = ..., leader: _Optional[int] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("key", "value", "client_id", "sequence")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    client_id: int
    sequence: int
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., client_id: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("header", "revision")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    revision: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key", "serializable")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SERIALIZABLE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    serializable: bool
    def __init__(self, key: _Optional[bytes] = ..., serializable: _Optional[bool] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("header", "found", "value", "revision")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    found: bool
    value: bytes
    revision: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., found: _Optional[bool] = ..., value: _Optional[bytes] = ..., revision: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key", "client_id", "sequence")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    client_id: int
    sequence: int
    def __init__(self, key: _Optional[bytes] = ..., client_id: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("header", "existed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    existed: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., existed: _Optional[bool] = ...) -> None: ...

class RangeRequest(_message.Message):
    __slots__ = ("start", "end", "limit", "serializable", "group")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SERIALIZABLE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    start: bytes
    end: bytes
    limit: int
    serializable: bool
    group: int
    def __init__(self, start: _Optional[bytes] = ..., end: _Optional[bytes] = ..., limit: _Optional[int] = ..., serializable: _Optional[bool] = ..., group: _Optional[int] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value", "revision")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    revision: int
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., revision: _Optional[int] = ...) -> None: ...

class RangeResponse(_message.Message):
    __slots__ = ("kvs", "more")
    KVS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    kvs: _containers.RepeatedCompositeFieldContainer[KeyValue]
    more: bool
    def __init__(self, kvs: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class CasRequest(_message.Message):
    __slots__ = ("key", "expected_revision", "value", "client_id", "sequence")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    expected_revision: int
    value: bytes
    client_id: int
    sequence: int
    def __init__(self, key: _Optional[bytes] = ..., expected_revision: _Optional[int] = ..., value: _Optional[bytes] = ..., client_id: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class CasResponse(_message.Message):
    __slots__ = ("header", "succeeded", "revision")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    succeeded: bool
    revision: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., succeeded: _Optional[bool] = ..., revision: _Optional[int] = ...) -> None: ...

class BatchOp(_message.Message):
    __slots__ = ("put", "delete", "cas")
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    CAS_FIELD_NUMBER: _ClassVar[int]
    put: PutRequest
    delete: DeleteRequest
    cas: CasRequest
    def __init__(self, put: _Optional[_Union[PutRequest, _Mapping]] = ..., delete: _Optional[_Union[DeleteRequest, _Mapping]] = ..., cas: _Optional[_Union[CasRequest, _Mapping]] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("ops", "client_id", "sequence")
    OPS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[BatchOp]
    client_id: int
    sequence: int
    def __init__(self, ops: _Optional[_Iterable[_Union[BatchOp, _Mapping]]] = ..., client_id: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("header", "succeeded", "failed_at", "current_revision")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_REVISION_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    succeeded: bool
    failed_at: int
    current_revision: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., succeeded: _Optional[bool] = ..., failed_at: _Optional[int] = ..., current_revision: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("key", "prefix", "start_revision", "resume", "prev_value")
    class ResumeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    PREV_VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    prefix: bool
    start_revision: int
    resume: _containers.ScalarMap[int, int]
    prev_value: bool
    def __init__(self, key: _Optional[bytes] = ..., prefix: _Optional[bool] = ..., start_revision: _Optional[int] = ..., resume: _Optional[_Mapping[int, int]] = ..., prev_value: _Optional[bool] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("kind", "group", "revision", "key", "value", "has_prev", "prev_value", "prev_revision")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PUT: _ClassVar[WatchEvent.Kind]
        DELETE: _ClassVar[WatchEvent.Kind]
    PUT: WatchEvent.Kind
    DELETE: WatchEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HAS_PREV_FIELD_NUMBER: _ClassVar[int]
    PREV_VALUE_FIELD_NUMBER: _ClassVar[int]
    PREV_REVISION_FIELD_NUMBER: _ClassVar[int]
    kind: WatchEvent.Kind
    group: int
    revision: int
    key: bytes
    value: bytes
    has_prev: bool
    prev_value: bytes
    prev_revision: int
    def __init__(self, kind: _Optional[_Union[WatchEvent.Kind, str]] = ..., group: _Optional[int] = ..., revision: _Optional[int] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., has_prev: _Optional[bool] = ..., prev_value: _Optional[bytes] = ..., prev_revision: _Optional[int] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("events", "progress")
    class ProgressEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[WatchEvent]
    progress: _containers.ScalarMap[int, int]
    def __init__(self, events: _Optional[_Iterable[_Union[WatchEvent, _Mapping]]] = ..., progress: _Optional[_Mapping[int, int]] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[SessionCall]
    def __init__(self, calls: _Optional[_Iterable[_Union[SessionCall, _Mapping]]] = ...) -> None: ...

class SessionCall(_message.Message):
    __slots__ = ("id", "put", "get", "delete", "cas", "append")
    ID_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    CAS_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    id: int
    put: PutRequest
    get: GetRequest
    delete: DeleteRequest
    cas: CasRequest
    append: LogAppendRequest
    def __init__(self, id: _Optional[int] = ..., put: _Optional[_Union[PutRequest, _Mapping]] = ..., get: _Optional[_Union[GetRequest, _Mapping]] = ..., delete: _Optional[_Union[DeleteRequest, _Mapping]] = ..., cas: _Optional[_Union[CasRequest, _Mapping]] = ..., append: _Optional[_Union[LogAppendRequest, _Mapping]] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[SessionAnswer]
    def __init__(self, answers: _Optional[_Iterable[_Union[SessionAnswer, _Mapping]]] = ...) -> None: ...

class SessionAnswer(_message.Message):
    __slots__ = ("id", "put", "get", "delete", "cas", "append", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    CAS_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    put: PutResponse
    get: GetResponse
    delete: DeleteResponse
    cas: CasResponse
    append: LogAppendResponse
    error: SessionError
    def __init__(self, id: _Optional[int] = ..., put: _Optional[_Union[PutResponse, _Mapping]] = ..., get: _Optional[_Union[GetResponse, _Mapping]] = ..., delete: _Optional[_Union[DeleteResponse, _Mapping]] = ..., cas: _Optional[_Union[CasResponse, _Mapping]] = ..., append: _Optional[_Union[LogAppendResponse, _Mapping]] = ..., error: _Optional[_Union[SessionError, _Mapping]] = ...) -> None: ...

class SessionError(_message.Message):
    __slots__ = ("code", "message", "leader")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    leader: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., leader: _Optional[int] = ...) -> None: ...

class LogAppendRequest(_message.Message):
    __slots__ = ("log", "data", "client_id", "sequence")
    LOG_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    log: str
    data: bytes
    client_id: int
    sequence: int
    def __init__(self, log: _Optional[str] = ..., data: _Optional[bytes] = ..., client_id: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class LogAppendResponse(_message.Message):
    __slots__ = ("header", "index")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    index: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., index: _Optional[int] = ...) -> None: ...

class LogReadRequest(_message.Message):
    __slots__ = ("log", "limit", "serializable")
    LOG_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SERIALIZABLE_FIELD_NUMBER: _ClassVar[int]
    log: str
    limit: int
    serializable: bool
    def __init__(self, log: _Optional[str] = ..., limit: _Optional[int] = ..., serializable: _Optional[bool] = ..., **kwargs) -> None: ...

class LogReadResponse(_message.Message):
    __slots__ = ("header", "entries", "next")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    entries: _containers.RepeatedScalarFieldContainer[bytes]
    next: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., entries: _Optional[_Iterable[bytes]] = ..., next: _Optional[int] = ...) -> None: ...

class SqlValue(_message.Message):
    __slots__ = ("integer", "real", "text", "blob")
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    REAL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    integer: int
    real: float
    text: str
    blob: bytes
    def __init__(self, integer: _Optional[int] = ..., real: _Optional[float] = ..., text: _Optional[str] = ..., blob: _Optional[bytes] = ...) -> None: ...

class SqlStatement(_message.Message):
    __slots__ = ("sql", "params", "named")
    class NamedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SqlValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SqlValue, _Mapping]] = ...) -> None: ...
    SQL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    NAMED_FIELD_NUMBER: _ClassVar[int]
    sql: str
    params: _containers.RepeatedCompositeFieldContainer[SqlValue]
    named: _containers.MessageMap[str, SqlValue]
    def __init__(self, sql: _Optional[str] = ..., params: _Optional[_Iterable[_Union[SqlValue, _Mapping]]] = ..., named: _Optional[_Mapping[str, SqlValue]] = ...) -> None: ...

class SqlExecuteRequest(_message.Message):
    __slots__ = ("database", "statements", "client_id", "sequence")
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    STATEMENTS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    database: str
    statements: _containers.RepeatedCompositeFieldContainer[SqlStatement]
    client_id: int
    sequence: int
    def __init__(self, database: _Optional[str] = ..., statements: _Optional[_Iterable[_Union[SqlStatement, _Mapping]]] = ..., client_id: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class SqlStatementResult(_message.Message):
    __slots__ = ("rows_affected", "last_insert_rowid", "kind")
    ROWS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_INSERT_ROWID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    rows_affected: int
    last_insert_rowid: int
    kind: SqlStatementKind
    def __init__(self, rows_affected: _Optional[int] = ..., last_insert_rowid: _Optional[int] = ..., kind: _Optional[_Union[SqlStatementKind, str]] = ...) -> None: ...

class SqlExecuteResponse(_message.Message):
    __slots__ = ("header", "results")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    results: _containers.RepeatedCompositeFieldContainer[SqlStatementResult]
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., results: _Optional[_Iterable[_Union[SqlStatementResult, _Mapping]]] = ...) -> None: ...

class SqlQueryRequest(_message.Message):
    __slots__ = ("database", "statement", "serializable", "max_rows")
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    SERIALIZABLE_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    database: str
    statement: SqlStatement
    serializable: bool
    max_rows: int
    def __init__(self, database: _Optional[str] = ..., statement: _Optional[_Union[SqlStatement, _Mapping]] = ..., serializable: _Optional[bool] = ..., max_rows: _Optional[int] = ...) -> None: ...

class SqlColumn(_message.Message):
    __slots__ = ("name", "declared_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DECLARED_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    declared_type: str
    def __init__(self, name: _Optional[str] = ..., declared_type: _Optional[str] = ...) -> None: ...

class SqlRow(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[SqlValue]
    def __init__(self, values: _Optional[_Iterable[_Union[SqlValue, _Mapping]]] = ...) -> None: ...

class SqlQueryResponse(_message.Message):
    __slots__ = ("header", "columns", "rows", "more")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    columns: _containers.RepeatedCompositeFieldContainer[SqlColumn]
    rows: _containers.RepeatedCompositeFieldContainer[SqlRow]
    more: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., columns: _Optional[_Iterable[_Union[SqlColumn, _Mapping]]] = ..., rows: _Optional[_Iterable[_Union[SqlRow, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class SqlSchemaRequest(_message.Message):
    __slots__ = ("database", "serializable")
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    SERIALIZABLE_FIELD_NUMBER: _ClassVar[int]
    database: str
    serializable: bool
    def __init__(self, database: _Optional[str] = ..., serializable: _Optional[bool] = ...) -> None: ...

class SqlSchemaObject(_message.Message):
    __slots__ = ("type", "name", "table", "sql")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    type: str
    name: str
    table: str
    sql: str
    def __init__(self, type: _Optional[str] = ..., name: _Optional[str] = ..., table: _Optional[str] = ..., sql: _Optional[str] = ...) -> None: ...

class SqlSchemaChange(_message.Message):
    __slots__ = ("index", "kind", "sql")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    index: int
    kind: SqlStatementKind
    sql: str
    def __init__(self, index: _Optional[int] = ..., kind: _Optional[_Union[SqlStatementKind, str]] = ..., sql: _Optional[str] = ...) -> None: ...

class SqlSchemaResponse(_message.Message):
    __slots__ = ("header", "objects", "changes", "image_bytes", "image_crc32")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_CRC32_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    objects: _containers.RepeatedCompositeFieldContainer[SqlSchemaObject]
    changes: _containers.RepeatedCompositeFieldContainer[SqlSchemaChange]
    image_bytes: int
    image_crc32: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., objects: _Optional[_Iterable[_Union[SqlSchemaObject, _Mapping]]] = ..., changes: _Optional[_Iterable[_Union[SqlSchemaChange, _Mapping]]] = ..., image_bytes: _Optional[int] = ..., image_crc32: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GroupStatus(_message.Message):
    __slots__ = ("group", "leader", "term", "commit", "applied", "role", "voters", "outgoing_voters", "learners", "last_index", "progress", "abstaining")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ABSTAINING_FIELD_NUMBER: _ClassVar[int]
    group: int
    leader: int
    term: int
    commit: int
    applied: int
    role: str
    voters: _containers.RepeatedScalarFieldContainer[int]
    outgoing_voters: _containers.RepeatedScalarFieldContainer[int]
    learners: _containers.RepeatedScalarFieldContainer[int]
    last_index: int
    progress: _containers.RepeatedCompositeFieldContainer[PeerProgress]
    abstaining: bool
    def __init__(self, group: _Optional[int] = ..., leader: _Optional[int] = ..., term: _Optional[int] = ..., commit: _Optional[int] = ..., applied: _Optional[int] = ..., role: _Optional[str] = ..., voters: _Optional[_Iterable[int]] = ..., outgoing_voters: _Optional[_Iterable[int]] = ..., learners: _Optional[_Iterable[int]] = ..., last_index: _Optional[int] = ..., progress: _Optional[_Iterable[_Union[PeerProgress, _Mapping]]] = ..., abstaining: _Optional[bool] = ...) -> None: ...

class PeerProgress(_message.Message):
    __slots__ = ("node", "matched", "active")
    NODE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    node: int
    matched: int
    active: bool
    def __init__(self, node: _Optional[int] = ..., matched: _Optional[int] = ..., active: _Optional[bool] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("node", "cluster_id", "groups")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    node: int
    cluster_id: int
    groups: _containers.RepeatedCompositeFieldContainer[GroupStatus]
    def __init__(self, node: _Optional[int] = ..., cluster_id: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[GroupStatus, _Mapping]]] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("node", "address", "voter")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VOTER_FIELD_NUMBER: _ClassVar[int]
    node: int
    address: str
    voter: bool
    def __init__(self, node: _Optional[int] = ..., address: _Optional[str] = ..., voter: _Optional[bool] = ...) -> None: ...

class MembersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MembersResponse(_message.Message):
    __slots__ = ("members", "change")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    change: str
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., change: _Optional[str] = ...) -> None: ...

class AddMemberRequest(_message.Message):
    __slots__ = ("node", "address", "learner_only")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LEARNER_ONLY_FIELD_NUMBER: _ClassVar[int]
    node: int
    address: str
    learner_only: bool
    def __init__(self, node: _Optional[int] = ..., address: _Optional[str] = ..., learner_only: _Optional[bool] = ...) -> None: ...

class PromoteMemberRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: int
    def __init__(self, node: _Optional[int] = ...) -> None: ...

class RemoveMemberRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: int
    def __init__(self, node: _Optional[int] = ...) -> None: ...

class ReplaceMemberRequest(_message.Message):
    __slots__ = ("old_node", "new_node", "new_address")
    OLD_NODE_FIELD_NUMBER: _ClassVar[int]
    NEW_NODE_FIELD_NUMBER: _ClassVar[int]
    NEW_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    old_node: int
    new_node: int
    new_address: str
    def __init__(self, old_node: _Optional[int] = ..., new_node: _Optional[int] = ..., new_address: _Optional[str] = ...) -> None: ...

class MemberChangeResponse(_message.Message):
    __slots__ = ("members", "groups_changed")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    groups_changed: int
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., groups_changed: _Optional[int] = ...) -> None: ...

class TransferLeaderRequest(_message.Message):
    __slots__ = ("group", "to")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    group: int
    to: int
    def __init__(self, group: _Optional[int] = ..., to: _Optional[int] = ...) -> None: ...

class TransferLeaderResponse(_message.Message):
    __slots__ = ("leader",)
    LEADER_FIELD_NUMBER: _ClassVar[int]
    leader: int
    def __init__(self, leader: _Optional[int] = ...) -> None: ...

class DrainLeadersRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: int
    def __init__(self, node: _Optional[int] = ...) -> None: ...

class BalanceLeadersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LeaderMove(_message.Message):
    __slots__ = ("group", "to")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    group: int
    to: int
    def __init__(self, group: _Optional[int] = ..., to: _Optional[int] = ..., **kwargs) -> None: ...

class LeaderMovesResponse(_message.Message):
    __slots__ = ("moves",)
    MOVES_FIELD_NUMBER: _ClassVar[int]
    moves: _containers.RepeatedCompositeFieldContainer[LeaderMove]
    def __init__(self, moves: _Optional[_Iterable[_Union[LeaderMove, _Mapping]]] = ...) -> None: ...

class ChangeGroupRequest(_message.Message):
    __slots__ = ("group", "add_learners", "add_voters", "remove")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ADD_LEARNERS_FIELD_NUMBER: _ClassVar[int]
    ADD_VOTERS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    group: int
    add_learners: _containers.RepeatedScalarFieldContainer[int]
    add_voters: _containers.RepeatedScalarFieldContainer[int]
    remove: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, group: _Optional[int] = ..., add_learners: _Optional[_Iterable[int]] = ..., add_voters: _Optional[_Iterable[int]] = ..., remove: _Optional[_Iterable[int]] = ...) -> None: ...

class ChangeGroupResponse(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: int
    def __init__(self, index: _Optional[int] = ...) -> None: ...

class SnapshotNowRequest(_message.Message):
    __slots__ = ("group",)
    GROUP_FIELD_NUMBER: _ClassVar[int]
    group: int
    def __init__(self, group: _Optional[int] = ...) -> None: ...

class SnapshotNowResponse(_message.Message):
    __slots__ = ("leader", "index", "term", "size", "crc32", "voters", "outgoing_voters", "learners")
    LEADER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    leader: int
    index: int
    term: int
    size: int
    crc32: int
    voters: _containers.RepeatedScalarFieldContainer[int]
    outgoing_voters: _containers.RepeatedScalarFieldContainer[int]
    learners: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, leader: _Optional[int] = ..., index: _Optional[int] = ..., term: _Optional[int] = ..., size: _Optional[int] = ..., crc32: _Optional[int] = ..., voters: _Optional[_Iterable[int]] = ..., outgoing_voters: _Optional[_Iterable[int]] = ..., learners: _Optional[_Iterable[int]] = ...) -> None: ...
