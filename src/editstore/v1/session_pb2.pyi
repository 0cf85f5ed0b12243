import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATUS_UNSPECIFIED: _ClassVar[SessionStatus]
    SESSION_STATUS_IN_PROGRESS: _ClassVar[SessionStatus]
    SESSION_STATUS_COMPLETED: _ClassVar[SessionStatus]
    SESSION_STATUS_FAILED: _ClassVar[SessionStatus]

class FeedbackType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_TYPE_UNSPECIFIED: _ClassVar[FeedbackType]
    FEEDBACK_TYPE_ACCEPT: _ClassVar[FeedbackType]
    FEEDBACK_TYPE_REJECT: _ClassVar[FeedbackType]
    FEEDBACK_TYPE_PARTIAL: _ClassVar[FeedbackType]
SESSION_STATUS_UNSPECIFIED: SessionStatus
SESSION_STATUS_IN_PROGRESS: SessionStatus
SESSION_STATUS_COMPLETED: SessionStatus
SESSION_STATUS_FAILED: SessionStatus
FEEDBACK_TYPE_UNSPECIFIED: FeedbackType
FEEDBACK_TYPE_ACCEPT: FeedbackType
FEEDBACK_TYPE_REJECT: FeedbackType
FEEDBACK_TYPE_PARTIAL: FeedbackType

class Session(_message.Message):
    __slots__ = ("id", "create_time", "image_path", "naive_prompt", "status", "final_alignment_score", "etag")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    NAIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FINAL_ALIGNMENT_SCORE_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    id: str
    create_time: _timestamp_pb2.Timestamp
    image_path: str
    naive_prompt: str
    status: SessionStatus
    final_alignment_score: float
    etag: str
    def __init__(self, id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., image_path: _Optional[str] = ..., naive_prompt: _Optional[str] = ..., status: _Optional[_Union[SessionStatus, str]] = ..., final_alignment_score: _Optional[float] = ..., etag: _Optional[str] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    width: float
    height: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., width: _Optional[float] = ..., height: _Optional[float] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("id", "session_id", "iteration", "positive_prompt", "negative_prompt", "quality_score", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: int
    session_id: str
    iteration: int
    positive_prompt: str
    negative_prompt: str
    quality_score: float
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., session_id: _Optional[str] = ..., iteration: _Optional[int] = ..., positive_prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., quality_score: _Optional[float] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("id", "session_id", "entity_id", "label", "confidence", "bbox", "mask_path", "color_hex", "area_percent")
    ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    MASK_PATH_FIELD_NUMBER: _ClassVar[int]
    COLOR_HEX_FIELD_NUMBER: _ClassVar[int]
    AREA_PERCENT_FIELD_NUMBER: _ClassVar[int]
    id: int
    session_id: str
    entity_id: str
    label: str
    confidence: float
    bbox: BoundingBox
    mask_path: str
    color_hex: str
    area_percent: float
    def __init__(self, id: _Optional[int] = ..., session_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., label: _Optional[str] = ..., confidence: _Optional[float] = ..., bbox: _Optional[_Union[BoundingBox, _Mapping]] = ..., mask_path: _Optional[str] = ..., color_hex: _Optional[str] = ..., area_percent: _Optional[float] = ...) -> None: ...

class Validation(_message.Message):
    __slots__ = ("id", "session_id", "attempt_number", "alignment_score", "preserved_count", "modified_count", "unintended_count", "user_feedback", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_SCORE_FIELD_NUMBER: _ClassVar[int]
    PRESERVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNINTENDED_COUNT_FIELD_NUMBER: _ClassVar[int]
    USER_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: int
    session_id: str
    attempt_number: int
    alignment_score: float
    preserved_count: int
    modified_count: int
    unintended_count: int
    user_feedback: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., session_id: _Optional[str] = ..., attempt_number: _Optional[int] = ..., alignment_score: _Optional[float] = ..., preserved_count: _Optional[int] = ..., modified_count: _Optional[int] = ..., unintended_count: _Optional[int] = ..., user_feedback: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UserFeedback(_message.Message):
    __slots__ = ("id", "session_id", "feedback_type", "comments", "rating", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_TYPE_FIELD_NUMBER: _ClassVar[int]
    COMMENTS_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: int
    session_id: str
    feedback_type: FeedbackType
    comments: str
    rating: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., session_id: _Optional[str] = ..., feedback_type: _Optional[_Union[FeedbackType, str]] = ..., comments: _Optional[str] = ..., rating: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StateDocument(_message.Message):
    __slots__ = ("session_id", "version", "document_json", "update_time")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    version: int
    document_json: str
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., version: _Optional[int] = ..., document_json: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("session", "request_id")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session: Session
    request_id: str
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "create_time_after", "create_time_before")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_BEFORE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: SessionStatus
    create_time_after: _timestamp_pb2.Timestamp
    create_time_before: _timestamp_pb2.Timestamp
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[SessionStatus, str]] = ..., create_time_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateSessionRequest(_message.Message):
    __slots__ = ("session", "update_mask")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    session: Session
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ("deleted_records",)
    DELETED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    deleted_records: int
    def __init__(self, deleted_records: _Optional[int] = ...) -> None: ...

class CreatePromptRequest(_message.Message):
    __slots__ = ("prompt", "request_id")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    prompt: Prompt
    request_id: str
    def __init__(self, prompt: _Optional[_Union[Prompt, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListPromptsRequest(_message.Message):
    __slots__ = ("session_id", "page_size", "page_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    page_size: int
    page_token: str
    def __init__(self, session_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPromptsResponse(_message.Message):
    __slots__ = ("prompts", "next_page_token")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    next_page_token: str
    def __init__(self, prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class BatchCreateEntitiesRequest(_message.Message):
    __slots__ = ("session_id", "entities", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    request_id: str
    def __init__(self, session_id: _Optional[str] = ..., entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class BatchCreateEntitiesResponse(_message.Message):
    __slots__ = ("entities",)
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    def __init__(self, entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ...) -> None: ...

class ListEntitiesRequest(_message.Message):
    __slots__ = ("session_id", "page_size", "page_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    page_size: int
    page_token: str
    def __init__(self, session_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEntitiesResponse(_message.Message):
    __slots__ = ("entities", "next_page_token")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    next_page_token: str
    def __init__(self, entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateValidationRequest(_message.Message):
    __slots__ = ("validation", "request_id")
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    validation: Validation
    request_id: str
    def __init__(self, validation: _Optional[_Union[Validation, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListValidationsRequest(_message.Message):
    __slots__ = ("session_id", "page_size", "page_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    page_size: int
    page_token: str
    def __init__(self, session_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListValidationsResponse(_message.Message):
    __slots__ = ("validations", "next_page_token")
    VALIDATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    validations: _containers.RepeatedCompositeFieldContainer[Validation]
    next_page_token: str
    def __init__(self, validations: _Optional[_Iterable[_Union[Validation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateUserFeedbackRequest(_message.Message):
    __slots__ = ("user_feedback", "request_id")
    USER_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_feedback: UserFeedback
    request_id: str
    def __init__(self, user_feedback: _Optional[_Union[UserFeedback, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListUserFeedbackRequest(_message.Message):
    __slots__ = ("session_id", "page_size", "page_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    page_size: int
    page_token: str
    def __init__(self, session_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListUserFeedbackResponse(_message.Message):
    __slots__ = ("user_feedback", "next_page_token")
    USER_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_feedback: _containers.RepeatedCompositeFieldContainer[UserFeedback]
    next_page_token: str
    def __init__(self, user_feedback: _Optional[_Iterable[_Union[UserFeedback, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ResumeSessionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ResumeSessionResponse(_message.Message):
    __slots__ = ("session", "prompts", "entities", "validations", "user_feedback", "state", "prompts_next_page_token", "entities_next_page_token", "validations_next_page_token", "user_feedback_next_page_token")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    VALIDATIONS_FIELD_NUMBER: _ClassVar[int]
    USER_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VALIDATIONS_NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    USER_FEEDBACK_NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session: Session
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    validations: _containers.RepeatedCompositeFieldContainer[Validation]
    user_feedback: _containers.RepeatedCompositeFieldContainer[UserFeedback]
    state: StateDocument
    prompts_next_page_token: str
    entities_next_page_token: str
    validations_next_page_token: str
    user_feedback_next_page_token: str
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ..., entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., validations: _Optional[_Iterable[_Union[Validation, _Mapping]]] = ..., user_feedback: _Optional[_Iterable[_Union[UserFeedback, _Mapping]]] = ..., state: _Optional[_Union[StateDocument, _Mapping]] = ..., prompts_next_page_token: _Optional[str] = ..., entities_next_page_token: _Optional[str] = ..., validations_next_page_token: _Optional[str] = ..., user_feedback_next_page_token: _Optional[str] = ...) -> None: ...
