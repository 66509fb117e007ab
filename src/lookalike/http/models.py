"""The JSON bodies of the HTTP service: what each route takes and answers, typed for OpenAPI.

Request models check shapes (a list, a string, an integer); the library checks values (a
filter's grammar, a vector's dimension, an id's length) and answers 400 with its own message, so
each rule lives in one place. Response models describe what the routes send; the routes build
that JSON from the library's results directly (see ``app.py``), and the OpenAPI fuzzer in
``tests/test_http_openapi.py`` holds every answer to these models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from ..errors import InvalidInputError
from ..retrieval import SimilarRequest, check_limit
from ..schema import FIELD_TYPES, MAX_DIM

FILTER_DESCRIPTION = ('a Milvus boolean expression over metadata fields, e.g. '
                      '`language == "fr" and year > 2020`')
FILTER_ALIAS_DESCRIPTION = "the former name of `filter_expr` (deprecated; give one of the two)"


def one_filter(filter_expr: str | None, alias: str | None) -> str | None:
    """``filter_expr``, or its deprecated alias ``filter``; both at once is the caller's error."""
    if filter_expr is not None and alias is not None:
        raise InvalidInputError("give filter_expr or its alias filter, not both")
    return alias if filter_expr is None else filter_expr


# -- shared pieces -----------------------------------------------------------------------------

class FieldDefinition(BaseModel):
    """One metadata field of a collection."""

    model_config = ConfigDict(extra="forbid")

    name: str
    type: Literal[tuple(FIELD_TYPES)]  # type: ignore[valid-type]  # the library's type names
    max_length: int | None = Field(None, description="varchar only: the longest value, in bytes")
    enable_analyzer: bool | None = Field(
        None, description="varchar only: true makes it a full-text field, searched by `keywords` "
                          "(lookalike adds the BM25 function and its index behind it)")
    analyzer_params: dict[str, Any] | None = Field(
        None, description='with enable_analyzer: the engine\'s analyser, e.g. {"type": "english"} '
                          'or {"tokenizer": "jieba"} (default: the standard analyser); see the '
                          "README for which suits which language")


# -- requests ------------------------------------------------------------------------------------

class CollectionSchema(BaseModel):
    """A collection's schema: the JSON of ``Collection.spec.to_json()`` (what describe shows)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "dim": 768,
        "fields": [{"name": "language", "type": "varchar", "max_length": 16},
                   {"name": "publication_date", "type": "int64"},
                   {"name": "text", "type": "varchar", "max_length": 4000,
                    "enable_analyzer": True}],
        "indexes": {"vec": {"index_type": "HNSW", "metric_type": "IP", "M": 32},
                    "language": None},
    }]})

    dim: int | None = Field(None, description="vector dimension (default 768, or the embedder's)",
                            json_schema_extra={"minimum": 1, "maximum": MAX_DIM})
    fields: list[FieldDefinition] = Field(default_factory=list, description="metadata fields")
    indexes: dict[str, dict[str, Any] | None] | None = Field(
        None, description='"vec": the vector index parameters; a field name: null (the engine\'s '
                          'default scalar index) or {"index_type": ...}')
    embedder: str | dict[str, Any] | None = Field(
        None, description='a registered text embedding model to bind: its name ("default", '
                          '"usem3", "e5", "minilm") or {"name": ...}; local model directories '
                          "are not accepted over HTTP")

    def to_spec_json(self) -> dict[str, Any]:
        """The JSON ``schema.creation_options`` reads (absent keys left out)."""
        return self.model_dump(exclude_none=True)


STRATEGIES = ["average_vector", "best_score"]
DECAY_FUNCTIONS = ["exp", "gauss", "linear"]
FUSIONS = ["rrf", "weighted"]
# The values the library takes, stated in the OpenAPI document for clients (an enum of the string,
# beside null, which leaves the library's default) but checked by the library alone: another
# value is its 400 naming the parameter, not a 422 here.
Strategy = Annotated[str, Field(json_schema_extra={"enum": STRATEGIES})]
DecayFunction = Annotated[str, Field(json_schema_extra={"enum": DECAY_FUNCTIONS})]
Fusion = Annotated[str, Field(json_schema_extra={"enum": FUSIONS})]

KEYWORDS_DESCRIPTION = ("words matched in the collection's full-text field (BM25); alone a "
                        "keyword search, beside `ids`, `vectors` or `texts` a hybrid search whose "
                        "two rankings are fused (see `fusion`)")
FUSION_DESCRIPTION = ("how a hybrid search fuses its rankings: rrf (default; Σ 1/(fusion_k + "
                      "rank) over the routes that found the hit) or weighted (fusion_weights over "
                      "each route's scores normalised to [0, 1])")
FUSION_K_DESCRIPTION = "rrf's constant k, ≥ 1 (default 60)"
FUSION_WEIGHTS_DESCRIPTION = ("with fusion=weighted: [meaning, keywords], two numbers ≥ 0, not "
                              "both 0")
KEYWORDS_FIELD_DESCRIPTION = ("the full-text field the keywords are matched in (needed only when "
                              "the collection has several)")


class Recency(BaseModel):
    """Milvus's decay ranker: each hit's score times a factor that falls with the distance of a
    numeric field from ``origin`` (see the README's Recommendations section for the formulas)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"field": "publication_date", "scale": 30, "decay": 0.5, "function": "exp"}]})

    field: str = Field(description="a numeric metadata field, e.g. a publication date")
    scale: float = Field(description="the distance from `origin` (past `offset`) at which the "
                                     "factor is `decay`")
    # Absent keys are left out of the library's dict: its defaults are the one rule.
    decay: float | None = Field(None, description="the factor at `scale`, in (0, 1) (default 0.5)")
    function: DecayFunction | None = Field(None, description="the decay's shape: exp (default), "
                                                             "gauss or linear")
    origin: float | None = Field(None, description="where the factor is 1 (default: now, in Unix "
                                                   "seconds)")
    offset: float | None = Field(None, description="a distance from `origin` with no decay "
                                                   "(default 0)")


class RetrieveSimilarRequest(BaseModel):
    """A similarity query by stored ids, by vectors or by texts (one of the three), by keywords,
    or by both (a hybrid search).

    The fields are the parameters of the library's ``retrieve_similar``; the library checks
    their values (400 naming the parameter), in the order the README's Recommendations section
    gives: filter and exclusions, candidates, recency, ``min_score``, groups, diversity, then
    ``offset`` and ``limit``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"vectors": [0.0, 1.0, 0.0, 0.0], "filter_expr": 'language == "fr"', "limit": 2,
         "output_fields": ["language"]},
        {"ids": ["a1", "a4"], "negative_ids": ["a3"], "exclude_ids": ["a2"],
         "group_by": "language", "diversity": 0.3, "limit": 5, "explain": True},
        {"texts": ["night train to Hamburg"], "keywords": "ICE 1127 Hamburg", "fusion": "rrf",
         "fusion_k": 60, "limit": 5, "explain": True},
    ]})

    ids: list[str] | None = Field(None, description="stored ids; several are averaged into one query")
    vectors: list[list[float]] | list[float] | None = Field(
        None, description="one vector, or several (averaged into one query)")
    texts: list[str] | None = Field(None, description="texts, embedded with the collection's model")
    keywords: str | None = Field(None, description=KEYWORDS_DESCRIPTION)
    fusion: Fusion | None = Field(None, description=FUSION_DESCRIPTION)
    fusion_k: int | None = Field(None, description=FUSION_K_DESCRIPTION,
                                 json_schema_extra={"minimum": 1})
    fusion_weights: list[float] | None = Field(None, description=FUSION_WEIGHTS_DESCRIPTION)
    keywords_field: str | None = Field(None, description=KEYWORDS_FIELD_DESCRIPTION)
    negative_ids: list[str] | None = Field(
        None, description="stored ids to steer away from (see `strategy`)")
    strategy: Strategy | None = Field(
        None, description="how the examples make the query: average_vector (default: "
                          "2·mean(positives) − mean(negatives)) or best_score (each candidate "
                          "scored by its best positive and best negative similarity)")
    weights: list[float] | None = Field(
        None, description="one weight per id or vector, ≥ 0 and not all 0: the query is the "
                          "weighted mean")
    filter_expr: str | None = Field(None, description=FILTER_DESCRIPTION)
    filter: str | None = Field(None, description=FILTER_ALIAS_DESCRIPTION, deprecated=True)
    # No ge/le here: the library's check_limit is the one rule (400 with its message).
    limit: int = Field(10, description="the number of hits (groups with `group_by`), at most the "
                                       "service's maximum (LOOKALIKE_HTTP_MAX_LIMIT)",
                       json_schema_extra={"minimum": 1})
    offset: int | None = Field(None, description="hits (groups with `group_by`) to skip first, "
                                                 "for paging; offset + limit ≤ 16384",
                               json_schema_extra={"minimum": 0})
    exclude_ids: bool | list[str] = Field(
        False, description="true: leave the query's own ids (`ids` and `negative_ids`) out of the "
                           "hits; a list: leave those ids out")
    group_by: str | None = Field(None, description="a scalar field: at most `group_size` hits per "
                                                   "value; `limit` then counts groups")
    group_size: int | None = Field(None, description="hits per group with `group_by` (default 1)",
                                   json_schema_extra={"minimum": 1})
    diversity: float | None = Field(
        None, description="maximal marginal relevance in [0, 1]: 0 is the plain ranking, higher "
                          "trades similarity to the query for variety among the hits",
        json_schema_extra={"minimum": 0, "maximum": 1})
    candidates: int | None = Field(
        None, description="how many nearest items rescoring, grouping, diversity and best_score "
                          "choose from (default: a few times `offset + limit`; in [offset + limit, 16384])",
        json_schema_extra={"minimum": 1})
    recency: Recency | None = Field(None, description="decay each hit's score by a numeric field")
    min_score: float | None = Field(None, description="leave out hits scoring below it (above it "
                                                      "for L2)")
    explain: bool = Field(False, description="give each hit an `explain` object saying how its "
                                             "score was made")
    output_fields: list[str] | None = Field(None, description="metadata fields to return with each hit")
    search_params: dict[str, Any] | None = Field(
        None, description='engine search parameters for the collection\'s index, e.g. {"ef": 128} for HNSW')

    def to_request(self, max_limit: int) -> SimilarRequest:
        """The library's request: the fields given (the library's defaults for the others), the
        ``filter`` alias folded into ``filter_expr``, the limit held to the service's maximum."""
        fields = self.model_dump(exclude={"filter", "recency"}, exclude_unset=True)
        fields["filter_expr"] = one_filter(self.filter_expr, self.filter)
        fields["limit"] = check_limit(self.limit, max_limit)
        if self.recency is not None:
            fields["recency"] = self.recency.model_dump(exclude_none=True)
        return SimilarRequest(**{key: value for key, value in fields.items() if value is not None})


class RetrieveSimilarBatchRequest(BaseModel):
    """Many similarity queries in one call (``retrieve_similar_batch``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"requests": [{"ids": ["a1"], "limit": 2, "exclude_ids": True},
                      {"ids": ["a4"], "limit": 2, "exclude_ids": True}]},
    ]})

    requests: list[RetrieveSimilarRequest] = Field(
        description="the queries, each the body of `retrieve_similar`; answered in this order",
        min_length=1)

    def to_requests(self, max_limit: int) -> list[SimilarRequest]:
        """The library's requests, each limit held to the service's maximum."""
        return [request.to_request(max_limit) for request in self.requests]


class MapRequest(BaseModel):
    """What ``map_sample`` draws: a sample of the collection, and ids and texts placed on it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"sample": 500, "seed": 0, "color_field": "language", "ids": ["a1", "a4"]},
    ]})

    sample: int = Field(2000, description="documents to sample, in [2, 20000]",
                        json_schema_extra={"minimum": 2, "maximum": 20000})
    seed: int = Field(0, description="picks the sample: the same seed and documents give the same map",
                      json_schema_extra={"minimum": 0})
    color_field: str | None = Field(None, description="a scalar field each point carries as `color`")
    ids: list[str] | None = Field(None, description="stored ids to place on the map (a query and "
                                                    "its hits); ids not stored are left out")
    texts: list[str] | None = Field(None, description="texts to place on the map, embedded with the "
                                                      "collection's model")

    @field_validator("sample", "seed", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        # pydantic would read true as 1; the schema says integer, and so does the library.
        if isinstance(value, bool):
            raise ValueError("an integer, not true or false")
        return value

    def options(self) -> dict[str, Any]:
        """The library's keyword arguments."""
        return self.model_dump()


def _not_a_bool(value: Any) -> Any:
    """pydantic reads true as 1 (and 1.0 as a number): the schema says a number, so does the library."""
    if isinstance(value, bool):
        raise ValueError("a number, not true or false")
    return value


NOT_A_BOOL = BeforeValidator(_not_a_bool)


class ClusterRequest(BaseModel):
    """How ``cluster`` groups the documents: ``k`` (k-means) or ``threshold`` (leader clustering)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"k": 8, "filter_expr": 'language == "en"'}, {"threshold": 0.8, "field": "topic"},
    ]})

    k: Annotated[int | None, NOT_A_BOOL] = Field(
        None, description="clusters of k-means (spherical for IP/COSINE), in [1, documents]; give k or threshold",
        json_schema_extra={"minimum": 1})
    threshold: Annotated[float | None, NOT_A_BOOL] = Field(
        None, description="leader clustering: a document joins the nearest cluster at least this similar "
                          "(IP/COSINE, in [-1, 1]; L2: within this squared distance), else starts one")
    filter_expr: str | None = Field(None, description=FILTER_DESCRIPTION)
    field: str | None = Field(None, description="an integer field each document's label is written into")
    seed: Annotated[int, NOT_A_BOOL] = Field(
        0, description="k-means' start: the same seed and documents give the same clusters",
        json_schema_extra={"minimum": 0})

    def options(self) -> dict[str, Any]:
        """The library's keyword arguments."""
        return self.model_dump()


class NearDuplicatesRequest(BaseModel):
    """Which pairs ``near_duplicates`` reports."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"threshold": 0.95}]})

    threshold: Annotated[float, NOT_A_BOOL] = Field(
        0.95, description="pairs at or above this similarity (IP/COSINE, in [-1, 1]; L2: at or below this "
                          "squared distance)")
    filter_expr: str | None = Field(None, description=FILTER_DESCRIPTION)

    def options(self) -> dict[str, Any]:
        """The library's keyword arguments."""
        return self.model_dump()


class IndexRequest(BaseModel):
    """Documents to store."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"documents": [{"id": "a1", "vec": [0.9, 0.1, 0.0, 0.1], "language": "en"}]},
    ]})

    documents: list[dict[str, Any]] = Field(
        description='each {"id", "vec" (or "text" with a bound embedder), and metadata fields}')
    normalize: bool = Field(True, description="scale vectors to unit length before storing them")
    upsert: bool = Field(True, description="replace documents with the same id; false refuses "
                                           "ids already stored (409) and stores nothing")


class DeleteDocumentsRequest(BaseModel):
    """What to delete: ids, a filter, or both (documents matching either are deleted)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"ids": ["a3"]}]})

    ids: list[str] | None = None
    filter_expr: str | None = Field(None, description=FILTER_DESCRIPTION)
    filter: str | None = Field(None, description=FILTER_ALIAS_DESCRIPTION, deprecated=True)


# -- responses ---------------------------------------------------------------------------------

class Status(BaseModel):
    status: str


class Hit(BaseModel):
    """One result of a similarity query; the ``output_fields`` asked for follow ``distance``."""

    model_config = ConfigDict(extra="allow")

    id: str
    distance: float = Field(description="the metric's score: higher is closer for IP and COSINE, "
                                        "lower for L2 (with `recency`: the similarity times the "
                                        "decay factor; with `keywords` alone: the BM25 score; "
                                        "in a hybrid search: the fused score, higher is better)")
    explain: dict[str, Any] | None = Field(
        None, description="with `explain`: how the score was made (similarity, decay factor, MMR "
                          "step, group value, nearest example; in a keyword or hybrid search "
                          '`{"dense": {"rank", "score"}, "keywords": {"rank", "score"}}`, each '
                          "route that found the hit with its rank from 1 and its own score, "
                          "`distance` being the fused score)")


class Document(BaseModel):
    """A stored document: ``id``, and the fields asked for (all, ``vec`` included, by default)."""

    model_config = ConfigDict(extra="allow")

    id: str
    vec: list[float] | None = None


class EmbedderInfo(BaseModel):
    name: str
    dim: int


class IndexState(BaseModel):
    """How far the vector index has got (``Collection.wait_for_index()``): rows flushed to segments
    that have their HNSW graph, and rows whose graph is still being built (searched exactly meanwhile)."""

    indexed_rows: int
    pending_rows: int
    built: bool = Field(description="no row pending")


class Readiness(BaseModel):
    """The service answers, and the index state of each collection of its own organisation."""

    status: str
    collections: dict[str, IndexState] = Field(default_factory=dict)


class CollectionDescription(BaseModel):
    """A collection's schema, indexes, engine and document count (``Collection.describe()``)."""

    name: str
    dim: int
    fields: list[FieldDefinition]
    indexes: dict[str, dict[str, Any] | None]
    embedder: EmbedderInfo | None = None
    metric: str
    engine: str
    count: int
    index: IndexState


class MapPoint(BaseModel):
    id: str
    x: float
    y: float
    color: str | int | float | bool | None = Field(None, description="the value of `color_field`")


class ProjectedPoint(BaseModel):
    """A given id or text on the map."""

    id: str | None = None
    text: str | None = None
    x: float
    y: float


class MapBasis(BaseModel):
    """The projection: a vector ``v`` lies at ``components @ (v - mean)``."""

    mean: list[float]
    components: list[list[float]] = Field(description="the first two principal axes")
    explained_variance_ratio: list[float] = Field(description="the share of the sample's "
                                                              "variance along each axis")


class MapSample(BaseModel):
    """A 2-D map of a sample of the collection (PCA)."""

    points: list[MapPoint]
    projected: list[ProjectedPoint] = Field(description="the ids and texts asked for, placed "
                                                        "on the same map")
    basis: MapBasis | None = Field(description="null when the collection is empty")
    sample: int = Field(description="documents drawn")
    count: int = Field(description="documents streamed to draw them")
    color_field: str | None


class Cluster(BaseModel):
    """One cluster of ``cluster``'s answer (largest first)."""

    label: int = Field(description="its position in the answer, the value written into `field`")
    size: int
    medoid: str = Field(description="the member nearest the cluster's centre")
    ids: list[str] = Field(description="its members, sorted")
    terms: list[str] = Field(description="words that set it apart (class-based TF-IDF over the text "
                                         "field), best first; empty without a text field")


class NearDuplicatePair(BaseModel):
    a: str
    b: str = Field(description="the other id (a < b)")
    score: float = Field(description="their similarity (L2: squared distance)")


class NearDuplicates(BaseModel):
    """Near-duplicate pairs, best first, and the groups they link, largest first."""

    pairs: list[NearDuplicatePair]
    groups: list[list[str]] = Field(description="sorted ids of each connected set of pairs")


class Indexed(BaseModel):
    indexed: int = Field(description="documents written")


class Deleted(BaseModel):
    deleted: int = Field(description="documents deleted, as the engine counts them")


class Dropped(BaseModel):
    dropped: bool = Field(description="false when there was no such collection")


class Count(BaseModel):
    count: int


class Error(BaseModel):
    """Every error answer: ``error`` is the kind a program tests, ``detail`` a message naming the culprit."""

    error: str
    detail: str


class ValidationProblem(BaseModel):
    loc: list[str | int] = Field(description="where: 'body', 'query' or 'path', then the key or index")
    msg: str
    type: str


class ValidationErrorBody(Error):
    """A 422: the request's shape is wrong (malformed JSON, a wrong type); the input is not echoed."""

    errors: list[ValidationProblem]
