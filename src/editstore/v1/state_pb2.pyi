from editstore.v1 import session_pb2 as _session_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_EVENT_TYPE_UNSPECIFIED: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_SNAPSHOT: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_CHANGE: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_HISTORY_LOST: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_HEARTBEAT: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_SESSION_DELETED: _ClassVar[WatchEventType]
WATCH_EVENT_TYPE_UNSPECIFIED: WatchEventType
WATCH_EVENT_TYPE_SNAPSHOT: WatchEventType
WATCH_EVENT_TYPE_CHANGE: WatchEventType
WATCH_EVENT_TYPE_HISTORY_LOST: WatchEventType
WATCH_EVENT_TYPE_HEARTBEAT: WatchEventType
WATCH_EVENT_TYPE_SESSION_DELETED: WatchEventType

class GetStateRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class PutStateRequest(_message.Message):
    __slots__ = ("session_id", "document_json", "expected_version", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    document_json: str
    expected_version: int
    request_id: str
    def __init__(self, session_id: _Optional[str] = ..., document_json: _Optional[str] = ..., expected_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class PatchStateRequest(_message.Message):
    __slots__ = ("session_id", "merge_patch_json", "expected_version", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MERGE_PATCH_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    merge_patch_json: str
    expected_version: int
    request_id: str
    def __init__(self, session_id: _Optional[str] = ..., merge_patch_json: _Optional[str] = ..., expected_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListStateVersionsRequest(_message.Message):
    __slots__ = ("session_id", "after_version", "page_size")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    after_version: int
    page_size: int
    def __init__(self, session_id: _Optional[str] = ..., after_version: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListStateVersionsResponse(_message.Message):
    __slots__ = ("versions", "oldest_kept_version")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_KEPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[_session_pb2.StateDocument]
    oldest_kept_version: int
    def __init__(self, versions: _Optional[_Iterable[_Union[_session_pb2.StateDocument, _Mapping]]] = ..., oldest_kept_version: _Optional[int] = ...) -> None: ...

class StreamStateUpdatesRequest(_message.Message):
    __slots__ = ("sequence", "session_id", "document_json", "merge_patch_json", "expected_version", "request_id", "combine_acknowledgement")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    MERGE_PATCH_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COMBINE_ACKNOWLEDGEMENT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    session_id: str
    document_json: str
    merge_patch_json: str
    expected_version: int
    request_id: str
    combine_acknowledgement: bool
    def __init__(self, sequence: _Optional[int] = ..., session_id: _Optional[str] = ..., document_json: _Optional[str] = ..., merge_patch_json: _Optional[str] = ..., expected_version: _Optional[int] = ..., request_id: _Optional[str] = ..., combine_acknowledgement: _Optional[bool] = ...) -> None: ...

class StreamStateUpdatesResponse(_message.Message):
    __slots__ = ("sequence", "version", "code", "message", "applied_sequences", "applied_versions")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    version: int
    code: int
    message: str
    applied_sequences: _containers.RepeatedScalarFieldContainer[int]
    applied_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sequence: _Optional[int] = ..., version: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., applied_sequences: _Optional[_Iterable[int]] = ..., applied_versions: _Optional[_Iterable[int]] = ...) -> None: ...

class WatchStateRequest(_message.Message):
    __slots__ = ("session_id", "from_version")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    from_version: int
    def __init__(self, session_id: _Optional[str] = ..., from_version: _Optional[int] = ...) -> None: ...

class WatchStateResponse(_message.Message):
    __slots__ = ("type", "state", "merge_patch_json")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MERGE_PATCH_JSON_FIELD_NUMBER: _ClassVar[int]
    type: WatchEventType
    state: _session_pb2.StateDocument
    merge_patch_json: str
    def __init__(self, type: _Optional[_Union[WatchEventType, str]] = ..., state: _Optional[_Union[_session_pb2.StateDocument, _Mapping]] = ..., merge_patch_json: _Optional[str] = ...) -> None: ...
