from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Box(_message.Message):
    __slots__ = ("left", "top", "right", "bottom")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_FIELD_NUMBER: _ClassVar[int]
    left: float
    top: float
    right: float
    bottom: float
    def __init__(self, left: _Optional[float] = ..., top: _Optional[float] = ..., right: _Optional[float] = ..., bottom: _Optional[float] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "model")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    model: str
    def __init__(self, values: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ...) -> None: ...

class Probe(_message.Message):
    __slots__ = ("photo", "embedding", "face")
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    photo: bytes
    embedding: Embedding
    face: FaceChoice
    def __init__(self, photo: _Optional[bytes] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., face: _Optional[_Union[FaceChoice, _Mapping]] = ...) -> None: ...

class FaceChoice(_message.Message):
    __slots__ = ("rule", "box")
    class Rule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RULE_UNSPECIFIED: _ClassVar[FaceChoice.Rule]
        RULE_LARGEST: _ClassVar[FaceChoice.Rule]
        RULE_CENTRE: _ClassVar[FaceChoice.Rule]
    RULE_UNSPECIFIED: FaceChoice.Rule
    RULE_LARGEST: FaceChoice.Rule
    RULE_CENTRE: FaceChoice.Rule
    RULE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    rule: FaceChoice.Rule
    box: Box
    def __init__(self, rule: _Optional[_Union[FaceChoice.Rule, str]] = ..., box: _Optional[_Union[Box, _Mapping]] = ...) -> None: ...

class Gallery(_message.Message):
    __slots__ = ("name", "model", "dimension", "identity_count", "face_count", "index_kind", "index_training", "index_memory_bytes", "create_time", "index_device", "index_gpu_memory_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_COUNT_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    INDEX_KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_TRAINING_FIELD_NUMBER: _ClassVar[int]
    INDEX_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    INDEX_DEVICE_FIELD_NUMBER: _ClassVar[int]
    INDEX_GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    dimension: int
    identity_count: int
    face_count: int
    index_kind: str
    index_training: bool
    index_memory_bytes: int
    create_time: str
    index_device: str
    index_gpu_memory_bytes: int
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., dimension: _Optional[int] = ..., identity_count: _Optional[int] = ..., face_count: _Optional[int] = ..., index_kind: _Optional[str] = ..., index_training: _Optional[bool] = ..., index_memory_bytes: _Optional[int] = ..., create_time: _Optional[str] = ..., index_device: _Optional[str] = ..., index_gpu_memory_bytes: _Optional[int] = ...) -> None: ...

class CreateGalleryRequest(_message.Message):
    __slots__ = ("gallery_id",)
    GALLERY_ID_FIELD_NUMBER: _ClassVar[int]
    gallery_id: str
    def __init__(self, gallery_id: _Optional[str] = ...) -> None: ...

class GetGalleryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListGalleriesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListGalleriesResponse(_message.Message):
    __slots__ = ("galleries",)
    GALLERIES_FIELD_NUMBER: _ClassVar[int]
    galleries: _containers.RepeatedCompositeFieldContainer[Gallery]
    def __init__(self, galleries: _Optional[_Iterable[_Union[Gallery, _Mapping]]] = ...) -> None: ...

class DeleteGalleryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteGalleryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("parent", "identity_id", "probe", "all_faces", "display_name", "attributes_json")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    ALL_FACES_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_JSON_FIELD_NUMBER: _ClassVar[int]
    parent: str
    identity_id: str
    probe: Probe
    all_faces: bool
    display_name: str
    attributes_json: str
    def __init__(self, parent: _Optional[str] = ..., identity_id: _Optional[str] = ..., probe: _Optional[_Union[Probe, _Mapping]] = ..., all_faces: _Optional[bool] = ..., display_name: _Optional[str] = ..., attributes_json: _Optional[str] = ...) -> None: ...

class EnrolledFace(_message.Message):
    __slots__ = ("name", "face_id", "box", "detection_score", "already_enrolled")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    ALREADY_ENROLLED_FIELD_NUMBER: _ClassVar[int]
    name: str
    face_id: int
    box: Box
    detection_score: float
    already_enrolled: bool
    def __init__(self, name: _Optional[str] = ..., face_id: _Optional[int] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., detection_score: _Optional[float] = ..., already_enrolled: _Optional[bool] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("faces",)
    FACES_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[EnrolledFace]
    def __init__(self, faces: _Optional[_Iterable[_Union[EnrolledFace, _Mapping]]] = ...) -> None: ...

class BulkEnrollResult(_message.Message):
    __slots__ = ("index", "faces", "error_code", "error_message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    faces: _containers.RepeatedCompositeFieldContainer[EnrolledFace]
    error_code: int
    error_message: str
    def __init__(self, index: _Optional[int] = ..., faces: _Optional[_Iterable[_Union[EnrolledFace, _Mapping]]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class EnrollBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[EnrollRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[EnrollRequest, _Mapping]]] = ...) -> None: ...

class EnrollBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BulkEnrollResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BulkEnrollResult, _Mapping]]] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("parent", "probe", "top_k", "threshold", "min_similarity", "nprobe", "rerank_factor")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    RERANK_FACTOR_FIELD_NUMBER: _ClassVar[int]
    parent: str
    probe: Probe
    top_k: int
    threshold: float
    min_similarity: float
    nprobe: int
    rerank_factor: int
    def __init__(self, parent: _Optional[str] = ..., probe: _Optional[_Union[Probe, _Mapping]] = ..., top_k: _Optional[int] = ..., threshold: _Optional[float] = ..., min_similarity: _Optional[float] = ..., nprobe: _Optional[int] = ..., rerank_factor: _Optional[int] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("identity", "identity_id", "display_name", "attributes_json", "face_id", "distance", "similarity", "is_match")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_JSON_FIELD_NUMBER: _ClassVar[int]
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    IS_MATCH_FIELD_NUMBER: _ClassVar[int]
    identity: str
    identity_id: str
    display_name: str
    attributes_json: str
    face_id: int
    distance: float
    similarity: float
    is_match: bool
    def __init__(self, identity: _Optional[str] = ..., identity_id: _Optional[str] = ..., display_name: _Optional[str] = ..., attributes_json: _Optional[str] = ..., face_id: _Optional[int] = ..., distance: _Optional[float] = ..., similarity: _Optional[float] = ..., is_match: _Optional[bool] = ...) -> None: ...

class FaceMatches(_message.Message):
    __slots__ = ("box", "detection_score", "matches")
    BOX_FIELD_NUMBER: _ClassVar[int]
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    box: Box
    detection_score: float
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., detection_score: _Optional[float] = ..., matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("faces", "threshold")
    FACES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[FaceMatches]
    threshold: float
    def __init__(self, faces: _Optional[_Iterable[_Union[FaceMatches, _Mapping]]] = ..., threshold: _Optional[float] = ...) -> None: ...

class IdentifyBatchRequest(_message.Message):
    __slots__ = ("parent", "probes", "top_k", "threshold", "min_similarity", "nprobe", "rerank_factor")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    RERANK_FACTOR_FIELD_NUMBER: _ClassVar[int]
    parent: str
    probes: _containers.RepeatedCompositeFieldContainer[Probe]
    top_k: int
    threshold: float
    min_similarity: float
    nprobe: int
    rerank_factor: int
    def __init__(self, parent: _Optional[str] = ..., probes: _Optional[_Iterable[_Union[Probe, _Mapping]]] = ..., top_k: _Optional[int] = ..., threshold: _Optional[float] = ..., min_similarity: _Optional[float] = ..., nprobe: _Optional[int] = ..., rerank_factor: _Optional[int] = ...) -> None: ...

class SearchFacesRequest(_message.Message):
    __slots__ = ("parent", "face_ids", "top_k", "threshold", "min_similarity", "nprobe", "rerank_factor")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    RERANK_FACTOR_FIELD_NUMBER: _ClassVar[int]
    parent: str
    face_ids: _containers.RepeatedScalarFieldContainer[int]
    top_k: int
    threshold: float
    min_similarity: float
    nprobe: int
    rerank_factor: int
    def __init__(self, parent: _Optional[str] = ..., face_ids: _Optional[_Iterable[int]] = ..., top_k: _Optional[int] = ..., threshold: _Optional[float] = ..., min_similarity: _Optional[float] = ..., nprobe: _Optional[int] = ..., rerank_factor: _Optional[int] = ...) -> None: ...

class IdentifyBatchResult(_message.Message):
    __slots__ = ("index", "faces", "error_code", "error_message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    faces: _containers.RepeatedCompositeFieldContainer[FaceMatches]
    error_code: int
    error_message: str
    def __init__(self, index: _Optional[int] = ..., faces: _Optional[_Iterable[_Union[FaceMatches, _Mapping]]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class IdentifyBatchResponse(_message.Message):
    __slots__ = ("results", "threshold")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[IdentifyBatchResult]
    threshold: float
    def __init__(self, results: _Optional[_Iterable[_Union[IdentifyBatchResult, _Mapping]]] = ..., threshold: _Optional[float] = ...) -> None: ...

class ClusterFacesRequest(_message.Message):
    __slots__ = ("parent", "probes", "strict_distance", "loose_distance")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    STRICT_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    LOOSE_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    parent: str
    probes: _containers.RepeatedCompositeFieldContainer[Probe]
    strict_distance: float
    loose_distance: float
    def __init__(self, parent: _Optional[str] = ..., probes: _Optional[_Iterable[_Union[Probe, _Mapping]]] = ..., strict_distance: _Optional[float] = ..., loose_distance: _Optional[float] = ...) -> None: ...

class ClusteredFace(_message.Message):
    __slots__ = ("index", "box", "identity_id", "similarity")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    box: Box
    identity_id: str
    similarity: float
    def __init__(self, index: _Optional[int] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., identity_id: _Optional[str] = ..., similarity: _Optional[float] = ...) -> None: ...

class FaceCluster(_message.Message):
    __slots__ = ("faces", "representative", "cohesion", "singleton", "identity_id")
    FACES_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATIVE_FIELD_NUMBER: _ClassVar[int]
    COHESION_FIELD_NUMBER: _ClassVar[int]
    SINGLETON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[ClusteredFace]
    representative: int
    cohesion: float
    singleton: bool
    identity_id: str
    def __init__(self, faces: _Optional[_Iterable[_Union[ClusteredFace, _Mapping]]] = ..., representative: _Optional[int] = ..., cohesion: _Optional[float] = ..., singleton: _Optional[bool] = ..., identity_id: _Optional[str] = ...) -> None: ...

class ClusterFacesResponse(_message.Message):
    __slots__ = ("clusters", "errors", "strict_distance", "loose_distance")
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    STRICT_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    LOOSE_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    clusters: _containers.RepeatedCompositeFieldContainer[FaceCluster]
    errors: _containers.RepeatedCompositeFieldContainer[IdentifyBatchResult]
    strict_distance: float
    loose_distance: float
    def __init__(self, clusters: _Optional[_Iterable[_Union[FaceCluster, _Mapping]]] = ..., errors: _Optional[_Iterable[_Union[IdentifyBatchResult, _Mapping]]] = ..., strict_distance: _Optional[float] = ..., loose_distance: _Optional[float] = ...) -> None: ...

class StartClusteringRequest(_message.Message):
    __slots__ = ("parent", "strict_distance", "loose_distance", "update_of", "identity_prefix")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    STRICT_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    LOOSE_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_OF_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    parent: str
    strict_distance: float
    loose_distance: float
    update_of: str
    identity_prefix: str
    def __init__(self, parent: _Optional[str] = ..., strict_distance: _Optional[float] = ..., loose_distance: _Optional[float] = ..., update_of: _Optional[str] = ..., identity_prefix: _Optional[str] = ...) -> None: ...

class Clustering(_message.Message):
    __slots__ = ("name", "state", "phase", "done", "total", "face_count", "cluster_count", "singleton_count", "strict_distance", "loose_distance", "neighbours", "error", "create_time", "update_time", "finish_time", "update_of", "identity_prefix")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Clustering.State]
        RUNNING: _ClassVar[Clustering.State]
        SUCCEEDED: _ClassVar[Clustering.State]
        FAILED: _ClassVar[Clustering.State]
    STATE_UNSPECIFIED: Clustering.State
    RUNNING: Clustering.State
    SUCCEEDED: Clustering.State
    FAILED: Clustering.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_COUNT_FIELD_NUMBER: _ClassVar[int]
    SINGLETON_COUNT_FIELD_NUMBER: _ClassVar[int]
    STRICT_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    LOOSE_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_OF_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: Clustering.State
    phase: str
    done: int
    total: int
    face_count: int
    cluster_count: int
    singleton_count: int
    strict_distance: float
    loose_distance: float
    neighbours: int
    error: str
    create_time: str
    update_time: str
    finish_time: str
    update_of: str
    identity_prefix: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[Clustering.State, str]] = ..., phase: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., face_count: _Optional[int] = ..., cluster_count: _Optional[int] = ..., singleton_count: _Optional[int] = ..., strict_distance: _Optional[float] = ..., loose_distance: _Optional[float] = ..., neighbours: _Optional[int] = ..., error: _Optional[str] = ..., create_time: _Optional[str] = ..., update_time: _Optional[str] = ..., finish_time: _Optional[str] = ..., update_of: _Optional[str] = ..., identity_prefix: _Optional[str] = ...) -> None: ...

class GetClusteringRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListClusteringsRequest(_message.Message):
    __slots__ = ("parent",)
    PARENT_FIELD_NUMBER: _ClassVar[int]
    parent: str
    def __init__(self, parent: _Optional[str] = ...) -> None: ...

class ListClusteringsResponse(_message.Message):
    __slots__ = ("clusterings",)
    CLUSTERINGS_FIELD_NUMBER: _ClassVar[int]
    clusterings: _containers.RepeatedCompositeFieldContainer[Clustering]
    def __init__(self, clusterings: _Optional[_Iterable[_Union[Clustering, _Mapping]]] = ...) -> None: ...

class ListClustersRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "min_size")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    min_size: int
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., min_size: _Optional[int] = ...) -> None: ...

class GalleryCluster(_message.Message):
    __slots__ = ("name", "rank", "face_ids", "identity_ids", "representative_face_id", "cohesion", "singleton", "identity_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_IDS_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATIVE_FACE_ID_FIELD_NUMBER: _ClassVar[int]
    COHESION_FIELD_NUMBER: _ClassVar[int]
    SINGLETON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    rank: int
    face_ids: _containers.RepeatedScalarFieldContainer[int]
    identity_ids: _containers.RepeatedScalarFieldContainer[str]
    representative_face_id: int
    cohesion: float
    singleton: bool
    identity_id: str
    def __init__(self, name: _Optional[str] = ..., rank: _Optional[int] = ..., face_ids: _Optional[_Iterable[int]] = ..., identity_ids: _Optional[_Iterable[str]] = ..., representative_face_id: _Optional[int] = ..., cohesion: _Optional[float] = ..., singleton: _Optional[bool] = ..., identity_id: _Optional[str] = ...) -> None: ...

class ListClustersResponse(_message.Message):
    __slots__ = ("clusters", "next_page_token")
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    clusters: _containers.RepeatedCompositeFieldContainer[GalleryCluster]
    next_page_token: str
    def __init__(self, clusters: _Optional[_Iterable[_Union[GalleryCluster, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PromoteClusterRequest(_message.Message):
    __slots__ = ("name", "identity_id", "display_name", "attributes_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    identity_id: str
    display_name: str
    attributes_json: str
    def __init__(self, name: _Optional[str] = ..., identity_id: _Optional[str] = ..., display_name: _Optional[str] = ..., attributes_json: _Optional[str] = ...) -> None: ...

class MergeClusterRequest(_message.Message):
    __slots__ = ("name", "identity_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    identity_id: str
    def __init__(self, name: _Optional[str] = ..., identity_id: _Optional[str] = ...) -> None: ...

class ClusterActionResponse(_message.Message):
    __slots__ = ("identity", "moved_face_ids", "emptied_identity_ids")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    MOVED_FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    EMPTIED_IDENTITY_IDS_FIELD_NUMBER: _ClassVar[int]
    identity: Identity
    moved_face_ids: _containers.RepeatedScalarFieldContainer[int]
    emptied_identity_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, identity: _Optional[_Union[Identity, _Mapping]] = ..., moved_face_ids: _Optional[_Iterable[int]] = ..., emptied_identity_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteClusteringRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteClusteringResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("parent", "probe", "identity", "other", "threshold")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    OTHER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    parent: str
    probe: Probe
    identity: str
    other: Probe
    threshold: float
    def __init__(self, parent: _Optional[str] = ..., probe: _Optional[_Union[Probe, _Mapping]] = ..., identity: _Optional[str] = ..., other: _Optional[_Union[Probe, _Mapping]] = ..., threshold: _Optional[float] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("distance", "similarity", "is_match", "threshold", "face_id")
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    IS_MATCH_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    distance: float
    similarity: float
    is_match: bool
    threshold: float
    face_id: int
    def __init__(self, distance: _Optional[float] = ..., similarity: _Optional[float] = ..., is_match: _Optional[bool] = ..., threshold: _Optional[float] = ..., face_id: _Optional[int] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("name", "identity_id", "display_name", "attributes_json", "face_ids", "create_time", "update_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_JSON_FIELD_NUMBER: _ClassVar[int]
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    identity_id: str
    display_name: str
    attributes_json: str
    face_ids: _containers.RepeatedScalarFieldContainer[int]
    create_time: str
    update_time: str
    def __init__(self, name: _Optional[str] = ..., identity_id: _Optional[str] = ..., display_name: _Optional[str] = ..., attributes_json: _Optional[str] = ..., face_ids: _Optional[_Iterable[int]] = ..., create_time: _Optional[str] = ..., update_time: _Optional[str] = ...) -> None: ...

class GetIdentityRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListIdentitiesRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListIdentitiesResponse(_message.Message):
    __slots__ = ("identities", "next_page_token")
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    identities: _containers.RepeatedCompositeFieldContainer[Identity]
    next_page_token: str
    def __init__(self, identities: _Optional[_Iterable[_Union[Identity, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateIdentityRequest(_message.Message):
    __slots__ = ("name", "display_name", "attributes_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    attributes_json: str
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., attributes_json: _Optional[str] = ...) -> None: ...

class DeleteIdentityRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteIdentityResponse(_message.Message):
    __slots__ = ("face_ids",)
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    face_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, face_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DeleteFaceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteFaceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("photo",)
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    photo: bytes
    def __init__(self, photo: _Optional[bytes] = ...) -> None: ...

class DetectedFace(_message.Message):
    __slots__ = ("box", "score", "landmarks")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    box: Box
    score: float
    landmarks: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., score: _Optional[float] = ..., landmarks: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("faces", "width", "height")
    FACES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[DetectedFace]
    width: int
    height: int
    def __init__(self, faces: _Optional[_Iterable[_Union[DetectedFace, _Mapping]]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("photo", "aligned")
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_FIELD_NUMBER: _ClassVar[int]
    photo: bytes
    aligned: bool
    def __init__(self, photo: _Optional[bytes] = ..., aligned: _Optional[bool] = ...) -> None: ...

class EmbeddedFace(_message.Message):
    __slots__ = ("face", "embedding")
    FACE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    face: DetectedFace
    embedding: Embedding
    def __init__(self, face: _Optional[_Union[DetectedFace, _Mapping]] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("faces",)
    FACES_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[EmbeddedFace]
    def __init__(self, faces: _Optional[_Iterable[_Union[EmbeddedFace, _Mapping]]] = ...) -> None: ...
