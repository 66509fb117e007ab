"""The ``lookalike`` command: the library's calls, one command each, for scripts and people.

Every command is a thin shell over one library call of the same name (the table is in
docs/cli.md and tests/test_cli.py): commands on one collection call the :class:`Collection`
method they are named after, the ``collections`` commands the :class:`Client` method
``<verb>_collection(s)``, ``export`` ``Collection.export``, ``import`` ``Client.import_collection``
and ``search`` (keywords and meaning from one string) ``Collection.similar``. Options take the
library's parameter names (``--filter-expr``, ``--output-fields``; the short ``--filter`` and
``--fields`` are aliases).

Every command prints a readable table, or JSON with ``--json``. A user error (any
:class:`~lookalike.errors.LookalikeError`) ends the command with one line on stderr and the
error's exit code (``error.exit_code``); nothing prints a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperArgument, TyperCommand, TyperGroup

from . import fileio
from .client import Client
from .config import Secret, Settings, password_variable
from .errors import LookalikeError
from .retrieval import SimilarRequest
from .schema import creation_options

out = Console(soft_wrap=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``Error: <message>`` as one line on stderr; the caller raises the returned Exit."""
    typer.echo(f"Error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(code)


class _PlainHelp:
    """Help that shows how a command is typed: a flag takes no value, arguments read NAME.

    typer labels every option with its Python type, flags included (``--json <bool>``, which
    reads as if ``--json true`` were expected), and writes required arguments as ``{name}``.
    """

    def get_params(self, ctx: typer.Context) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # an empty metavar: typer prints no type beside the flag
        return params

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces: list[str] = []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or param.name.upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        options = getattr(self, "options_metavar", None)
        return ([options] if options else []) + pieces


class _Command(_PlainHelp, TyperCommand):
    """A command with plain help (see :class:`_PlainHelp`)."""


class _Group(_PlainHelp, TyperGroup):
    """Turns library errors into one line on stderr and an exit code, never a traceback."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), self.subcommand_metavar]

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LookalikeError as error:
            raise _fail(str(error), error.exit_code) from None
        except OSError as error:  # a file the user named cannot be written or read
            raise _fail(str(error)) from None


app = typer.Typer(
    cls=_Group,
    help="Store embeddings with metadata and find similar items, on Milvus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
collections_app = typer.Typer(cls=_Group, help="Create, list, describe and drop collections.",
                              no_args_is_help=True)
app.add_typer(collections_app, name="collections")
admin_app = typer.Typer(cls=_Group, no_args_is_help=True,
                        help="Provision organisations on a Milvus server (needs "
                             "LOOKALIKE_MILVUS_ROOT_TOKEN).")
app.add_typer(admin_app, name="admin")


def _command(group: typer.Typer, name: str) -> Any:
    """``@group.command(name)`` with plain help."""
    return group.command(name, cls=_Command)


class _Session:
    """The organisation's Client, opened on first use (``--help`` and usage errors need none)."""

    def __init__(self, codops: str | None, uri: str | None, data_dir: Path | None) -> None:
        self.overrides = {"codops": codops, "uri": uri, "data_dir": data_dir}
        self._client: Client | None = None

    def settings(self) -> Settings:
        return Settings.from_env(**self.overrides)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.settings())
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@app.callback()
def _options(
    ctx: typer.Context,
    codops: Annotated[str | None, typer.Option(
        metavar="CODE", help="Organisation code (default: $CODOPS, else 'default').",
        show_default=False)] = None,
    uri: Annotated[str | None, typer.Option(
        metavar="URI", help="Milvus server URI; empty for the embedded engine (default: "
                            "$LOOKALIKE_MILVUS_URI).", show_default=False)] = None,
    data_dir: Annotated[Path | None, typer.Option(
        metavar="DIR", help="Embedded engine's data directory (default: $LOOKALIKE_DATA_DIR, "
                            "else ~/.local/share/lookalike).", show_default=False)] = None,
) -> None:
    """Store embeddings with metadata and find similar items, on Milvus.

    The organisation, its Milvus password (CODOPS_<CODE>_MILVUS_PASSWORD) and where Milvus lives
    come from the environment; the options override it.
    """
    # pymilvus and milvus_lite log failures with their traceback; the user gets one line.
    for engine_logger in ("pymilvus", "milvus_lite"):
        logging.getLogger(engine_logger).setLevel(logging.CRITICAL)
    session = _Session(codops, uri, data_dir)
    ctx.obj = session
    ctx.call_on_close(session.close)


def _client(ctx: typer.Context) -> Client:
    return ctx.ensure_object(_Session).client


# -- shared options ------------------------------------------------------------------------------

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Collection name.",
                                        show_default=False)]
OutputFieldsOption = Annotated[str | None, typer.Option(
    "--output-fields", "--fields", metavar="A,B",
    help="Comma-separated fields to return (default: all for get, none for similar).",
    show_default=False)]
BatchSizeOption = Annotated[int, typer.Option(metavar="N", help="Documents at a time.")]
TimeoutOption = Annotated[float | None, typer.Option(
    "--timeout", metavar="SECONDS", min=0, help="Wait at most this long for the index (default: as long "
                                                "as it takes).", show_default=False)]


# The library's ``filter_expr``; ``--filter`` is the short alias the CLI has always had.
FilterOption = Annotated[str | None, typer.Option(
    "--filter-expr", "--filter", metavar="EXPR",
    help="Milvus boolean expression on metadata, e.g. \"language == 'fr'\".", show_default=False)]


# Keyword and hybrid search (``similar`` and ``search``): the library's fusion parameters.
FusionOption = Annotated[str | None, typer.Option(
    metavar="rrf|weighted", help="How the meaning and keyword rankings are fused (default: rrf, "
                                 "reciprocal rank fusion).", show_default=False)]
FusionKOption = Annotated[int | None, typer.Option(
    metavar="N", help="RRF's constant: each route adds 1/(N + rank) (default: 60).",
    show_default=False)]
FusionWeightsOption = Annotated[str | None, typer.Option(
    metavar="W,W", help="With --fusion weighted: the weights of meaning and keywords, e.g. 0.7,0.3.",
    show_default=False)]
KeywordsFieldOption = Annotated[str | None, typer.Option(
    metavar="FIELD", help="The full-text field the keywords are matched in (needed only when the "
                          "collection has several).", show_default=False)]


def _fusion(fusion: str | None, fusion_k: int | None, fusion_weights: str | None,
            keywords_field: str | None) -> dict[str, Any]:
    """The fusion options given, by the library's parameter names (the library checks them)."""
    return {key: value for key, value in {
        "fusion": fusion, "fusion_k": fusion_k,
        "fusion_weights": _numbers(fusion_weights, "--fusion-weights"),
        "keywords_field": keywords_field}.items() if value is not None}


def _split(fields: str | None) -> list[str] | None:
    return None if fields is None else [f.strip() for f in fields.split(",") if f.strip()]


# -- collections ---------------------------------------------------------------------------------

@_command(collections_app, "create")
def create_collection(
    ctx: typer.Context,
    name: NameArg,
    dim: Annotated[int | None, typer.Option(
        metavar="N", help="Vector dimension (default: 768, or the embedder's).",
        show_default=False)] = None,
    field: Annotated[list[str] | None, typer.Option(
        "--field", metavar="NAME:TYPE[:MAX_LENGTH]",
        help="A metadata field, repeatable; TYPE is bool, int8..int64, float, double, varchar "
             "(needs MAX_LENGTH) or json.", show_default=False)] = None,
    index: Annotated[list[str] | None, typer.Option(
        "--index", metavar="FIELD:TYPE[:METRIC]",
        help="vec:INDEX_TYPE[:METRIC] (e.g. vec:HNSW:IP) or FIELD:SCALAR_INDEX_TYPE, "
             "repeatable.", show_default=False)] = None,
    index_param: Annotated[list[str] | None, typer.Option(
        "--index-param", metavar="KEY=VALUE",
        help="A build parameter of the vec index (e.g. M=32), repeatable.",
        show_default=False)] = None,
    scalar_index: Annotated[list[str] | None, typer.Option(
        "--scalar-index", metavar="FIELD",
        help="A field to index with the engine's default scalar index, repeatable.",
        show_default=False)] = None,
    embedder: Annotated[str | None, typer.Option(
        metavar="MODEL",
        help="Bind a text embedding model (e.g. 'default'), so documents may carry text.",
        show_default=False)] = None,
    schema: Annotated[Path | None, typer.Option(
        metavar="FILE",
        help="JSON file with the whole schema (the shape `collections describe --json` prints); "
             "replaces the options above.", show_default=False)] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a collection (idempotent: the same schema again is fine)."""
    if schema is not None:
        options = creation_options(_load_json(schema))
    else:
        options = {"fields": [_parse_field(f) for f in field or []],
                   "indexes": _parse_indexes(index or [], index_param or [], scalar_index or []),
                   "dim": dim, "embedder": embedder}
    client = _client(ctx)
    existed = client.has_collection(name)  # only to word the answer
    description = client.create_collection(name, **options).describe()
    if as_json:
        _print_json(description)
        return
    verb = "exists with this schema" if existed else "created"
    out.print(f"Collection {name!r} {verb}.")
    _print_description(description)


@_command(collections_app, "list")
def list_collections(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the organisation's collections."""
    names = _client(ctx).list_collections()
    if as_json:
        _print_json(names)
    elif names:
        out.print("\n".join(names), highlight=False)
    else:
        out.print("No collections.", style="dim")


@_command(collections_app, "describe")
def describe(ctx: typer.Context, name: NameArg, as_json: JsonFlag = False) -> None:
    """Show a collection's schema, indexes and document count."""
    description = _client(ctx).collection(name).describe()
    if as_json:
        _print_json(description)
    else:
        _print_description(description)


@_command(collections_app, "drop")
def drop_collection(
    ctx: typer.Context,
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Drop a collection and all its documents (asks first unless --yes)."""
    if not yes:
        typer.confirm(f"Drop collection {name!r} and all its documents?", abort=True, err=True)
    dropped = _client(ctx).drop_collection(name)
    _report(as_json, {"dropped": dropped},
            f"Dropped {name!r}." if dropped else f"No collection {name!r}; nothing dropped.")


# -- documents -----------------------------------------------------------------------------------

@_command(app, "index")
def index(
    ctx: typer.Context,
    name: NameArg,
    file: Annotated[Path, typer.Argument(
        metavar="FILE", help="JSON Lines, CSV or Parquet file of documents (an export too).",
        show_default=False)],
    format: Annotated[str | None, typer.Option(
        "--format", metavar="jsonl|csv|parquet", help="The file's format (default: from its "
                                                      "extension).", show_default=False)] = None,
    normalize: Annotated[bool, typer.Option(help="L2-normalise vectors (for IP/COSINE).")] = True,
    upsert: Annotated[bool, typer.Option(
        help="Replace documents with the same id; --no-upsert refuses stored ids.")] = True,
    text_field: Annotated[str | None, typer.Option(
        metavar="COLUMN",
        help="Column holding the text to embed when a document has no vec (needs an embedder).",
        show_default=False)] = None,
    batch_size: BatchSizeOption = 1000,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Then wait until the vector index covers them (see wait-for-index).")] = False,
    timeout: TimeoutOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Index documents from a file, streaming it (upsert by id)."""
    collection = _client(ctx).collection(name)
    types = {f.name: f.type for f in collection.spec.fields}
    rename = {text_field: "text"} if text_field and text_field != "text" else None
    batches = fileio.read_batches(file, format, batch_size=batch_size, field_types=types,
                                  rename=rename)
    with _Progress(f"indexing {file.name}", fileio.count_rows(file, format)) as on_batch:
        written = collection.index(_counted(batches, on_batch), normalize=normalize,
                                   upsert=upsert, progress=False)
    if not wait:
        _report(as_json, {"indexed": written}, f"Indexed {_documents(written)} into {name!r}.")
        return
    state = collection.wait_for_index(timeout)
    _report(as_json, {"indexed": written, "index": state},
            f"Indexed {_documents(written)} into {name!r}; {_index_line(state)}.")


@_command(app, "wait-for-index")
def wait_for_index(ctx: typer.Context, name: NameArg, timeout: TimeoutOption = None,
                   as_json: JsonFlag = False) -> None:
    """Wait until the vector index covers every document indexed before (exit 7 on --timeout)."""
    state = _client(ctx).collection(name).wait_for_index(timeout)
    _report(as_json, state, f"{name!r}: {_index_line(state)}.")


def _index_line(state: dict[str, Any]) -> str:
    """The index state for people."""
    return f"index over {state['indexed_rows']} rows, {state['pending_rows']} pending"


@_command(app, "get")
def get(
    ctx: typer.Context,
    name: NameArg,
    ids: Annotated[list[str], typer.Argument(metavar="ID", help="Document ids.",
                                             show_default=False)],
    output_fields: OutputFieldsOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Print documents by id, in the order given (ids not stored are left out)."""
    documents = _client(ctx).collection(name).get(ids, _split(output_fields))
    _print_documents(documents, as_json)


@_command(app, "similar")
def similar(
    ctx: typer.Context,
    name: NameArg,
    id: Annotated[list[str] | None, typer.Option(
        "--id", metavar="ID", help="A stored id to start from, repeatable (several: their mean).",
        show_default=False)] = None,
    vector_file: Annotated[Path | None, typer.Option(
        metavar="FILE", help="JSON, JSON Lines or .npy file with the query vector(s).",
        show_default=False)] = None,
    text: Annotated[list[str] | None, typer.Option(
        "--text", metavar="TEXT", help="A query text, repeatable (needs an embedder).",
        show_default=False)] = None,
    negative_id: Annotated[list[str] | None, typer.Option(
        "--negative-id", metavar="ID", help="A stored id to steer away from, repeatable.",
        show_default=False)] = None,
    strategy: Annotated[str | None, typer.Option(
        metavar="average_vector|best_score",
        help="How examples make the query (default: average_vector).",
        show_default=False)] = None,
    weights: Annotated[str | None, typer.Option(
        metavar="W,W", help="Comma-separated weights, one per id or vector (a weighted mean).",
        show_default=False)] = None,
    filter_expr: FilterOption = None,
    limit: Annotated[int, typer.Option(metavar="N", help="How many results.")] = 10,
    offset: Annotated[int | None, typer.Option(
        metavar="N", help="Results to skip first, for paging (groups with --group-by).",
        show_default=False)] = None,
    exclude_ids: Annotated[bool, typer.Option(
        "--exclude-ids", help="Leave the query ids (and negative ids) out of the results.")] = False,
    exclude_id: Annotated[list[str] | None, typer.Option(
        "--exclude-id", metavar="ID", help="An id to leave out of the results, repeatable.",
        show_default=False)] = None,
    exclude_ids_file: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Ids to leave out of the results: one a line, or a JSON array.",
        show_default=False)] = None,
    group_by: Annotated[str | None, typer.Option(
        metavar="FIELD", help="At most --group-size hits per value of this field; --limit "
                              "counts groups.", show_default=False)] = None,
    group_size: Annotated[int | None, typer.Option(
        metavar="N", help="Hits per group with --group-by (default: 1).",
        show_default=False)] = None,
    diversity: Annotated[float | None, typer.Option(
        metavar="X", help="Maximal marginal relevance in [0, 1]: 0 the plain ranking, higher "
                          "more varied.", show_default=False)] = None,
    candidates: Annotated[int | None, typer.Option(
        metavar="N", help="How many nearest items rescoring, grouping and diversity choose "
                          "from (default: a few times --offset + --limit).", show_default=False)] = None,
    recency_field: Annotated[str | None, typer.Option(
        metavar="FIELD", help="A numeric field (e.g. a date) whose distance from "
                              "--recency-origin decays the score.", show_default=False)] = None,
    recency_scale: Annotated[float | None, typer.Option(
        metavar="S", help="The distance from the origin at which the score is multiplied by "
                          "--recency-decay.", show_default=False)] = None,
    recency_decay: Annotated[float | None, typer.Option(
        metavar="D", help="The factor at --recency-scale (default: 0.5).",
        show_default=False)] = None,
    recency_function: Annotated[str | None, typer.Option(
        metavar="exp|gauss|linear", help="The decay's shape (default: exp).",
        show_default=False)] = None,
    recency_origin: Annotated[float | None, typer.Option(
        metavar="X", help="Where the decay starts (default: now, in Unix seconds).", show_default=False)] = None,
    recency_offset: Annotated[float | None, typer.Option(
        metavar="X", help="A distance from the origin with no decay (default: 0).",
        show_default=False)] = None,
    min_score: Annotated[float | None, typer.Option(
        metavar="X", help="Leave out hits scoring below X (above it for L2).",
        show_default=False)] = None,
    output_fields: OutputFieldsOption = None,
    ef: Annotated[int | None, typer.Option(
        metavar="N", help="HNSW search breadth: raise it (e.g. 256) for selective filters "
                          "(default: 64; 128 with a filter or several ids).",
        show_default=False)] = None,
    search_param: Annotated[list[str] | None, typer.Option(
        "--search-param", metavar="KEY=VALUE",
        help="A parameter of the index's search (e.g. nprobe=32 for IVF), repeatable; VALUE "
             "is read as JSON when it parses.", show_default=False)] = None,
    keywords: Annotated[str | None, typer.Option(
        metavar="TEXT", help="Words to match in the full-text field (BM25); beside --id, "
                             "--vector-file or --text: a hybrid search of both, fused.",
        show_default=False)] = None,
    fusion: FusionOption = None,
    fusion_k: FusionKOption = None,
    fusion_weights: FusionWeightsOption = None,
    keywords_field: KeywordsFieldOption = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Show how each hit's score was made.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Print the documents most similar to ids, vectors or texts, or matching keywords, best first."""
    vectors = fileio.read_vectors(vector_file) if vector_file is not None else None
    # Only the options given travel: the library's defaults stay the library's.
    given = {key: value for key, value in {
        "negative_ids": negative_id or None, "strategy": strategy,
        "weights": _numbers(weights, "--weights"), "offset": offset, "group_by": group_by,
        "group_size": group_size, "diversity": diversity, "candidates": candidates,
        "recency": _recency(recency_field, recency_scale, recency_decay, recency_function,
                            recency_origin, recency_offset),
        "min_score": min_score, "explain": explain or None,
        "exclude_ids": _exclusions(exclude_ids, exclude_id or [], exclude_ids_file,
                                   [*(id or []), *(negative_id or [])]),
        "keywords": keywords,
        **_fusion(fusion, fusion_k, fusion_weights, keywords_field),
    }.items() if value is not None}
    hits = _client(ctx).collection(name).similar(SimilarRequest(
        ids=id or None, vectors=vectors, texts=text or None, filter_expr=filter_expr,
        limit=limit, output_fields=_split(output_fields),
        search_params=_search_params(ef, search_param or []), **given))
    _print_documents(hits, as_json)


@_command(app, "similar-batch")
def similar_batch(
    ctx: typer.Context,
    name: NameArg,
    file: Annotated[Path, typer.Argument(
        metavar="FILE", help="JSON Lines: one request a line, a JSON object of similar's "
                             "parameters (ids, keywords, limit, exclude_ids, group_by, ...); - for stdin.",
        show_default=False)],
    as_json: JsonFlag = False,
) -> None:
    """Run many similar requests in one call; --json prints one result list a line."""
    requests = _read_requests(file)
    results = _client(ctx).collection(name).similar_batch(requests)
    if as_json:
        for hits in results:
            print(json.dumps(hits, ensure_ascii=False, separators=(",", ":"),
                             default=lambda v: v.tolist()))
        return
    for number, hits in enumerate(results, start=1):
        out.print(f"Request {number}:", style="bold")
        _print_documents(hits, False)


@_command(app, "search")
def search(
    ctx: typer.Context,
    name: NameArg,
    text: Annotated[str, typer.Argument(
        metavar="TEXT", help="Free text: its words are matched in the full-text field and, with "
                             "an embedder, its meaning is searched too.", show_default=False)],
    fusion: FusionOption = None,
    fusion_k: FusionKOption = None,
    fusion_weights: FusionWeightsOption = None,
    keywords_field: KeywordsFieldOption = None,
    filter_expr: FilterOption = None,
    limit: Annotated[int, typer.Option(metavar="N", help="How many results.")] = 10,
    output_fields: OutputFieldsOption = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Show each route's rank and score beside the fused score.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Search by keywords and meaning from one string (a hybrid search, fused), best first.

    The text is the query's ``keywords``; on a collection with an embedder it is also its one
    ``texts`` entry, so both routes run and their rankings are fused (--fusion). Without an
    embedder it is a keyword search alone.
    """
    collection = _client(ctx).collection(name)
    given = {key: value for key, value in {
        "texts": [text] if collection.spec.embedder else None,
        "explain": explain or None,
        **_fusion(fusion, fusion_k, fusion_weights, keywords_field),
    }.items() if value is not None}
    hits = collection.similar(SimilarRequest(
        keywords=text, filter_expr=filter_expr, limit=limit,
        output_fields=_split(output_fields), **given))
    _print_documents(hits, as_json)


@_command(app, "delete")
def delete(
    ctx: typer.Context,
    name: NameArg,
    id: Annotated[list[str] | None, typer.Option(
        "--id", metavar="ID", help="An id to delete, repeatable.", show_default=False)] = None,
    filter_expr: FilterOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Delete documents by id and/or filter (both: the documents matching both)."""
    deleted = _client(ctx).collection(name).delete(ids=id or None, filter_expr=filter_expr)
    _report(as_json, {"deleted": deleted}, f"Deleted {_documents(deleted)} from {name!r}.")


@_command(app, "count")
def count(
    ctx: typer.Context,
    name: NameArg,
    filter_expr: FilterOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Print how many documents a collection holds (or how many match a filter)."""
    number = _client(ctx).collection(name).count(filter_expr)
    _report(as_json, {"count": number}, str(number))


@_command(app, "map")
def map_(
    ctx: typer.Context,
    name: NameArg,
    sample: Annotated[int, typer.Option(metavar="N", help="Documents to sample, in [2, 20000].")] = 2000,
    seed: Annotated[int, typer.Option(metavar="N", help="Picks the sample (the same seed draws "
                                                        "the same map).")] = 0,
    color_field: Annotated[str | None, typer.Option(
        metavar="FIELD", help="A scalar field each point carries as its colour value.",
        show_default=False)] = None,
    ids: Annotated[list[str] | None, typer.Option(
        "--id", metavar="ID", help="A stored id to place on the map, repeatable.",
        show_default=False)] = None,
    texts: Annotated[list[str] | None, typer.Option(
        "--text", metavar="TEXT", help="A text to place on the map, repeatable (needs an embedder).",
        show_default=False)] = None,
    out_file: Annotated[Path | None, typer.Option(
        "--out", metavar="FILE", help="Write the map's JSON here (default: print it).",
        show_default=False)] = None,
    as_json: JsonFlag = False,
) -> None:
    """Draw a 2-D map (PCA) of a sample of a collection, as JSON: points, placed ids and texts,
    and the projection's basis."""
    result = _client(ctx).collection(name).map(sample=sample, seed=seed, color_field=color_field,
                                               ids=ids, texts=texts)
    if out_file is None:
        _print_json(result)
        return
    out_file.write_text(json.dumps(result, ensure_ascii=False) + "\n", encoding="utf-8")
    _report(as_json, {"file": str(out_file), "sample": result["sample"], "count": result["count"]},
            f"Mapped {result['sample']} of {_documents(result['count'])} of {name!r} to {out_file}.")


@_command(app, "cluster")
def cluster(
    ctx: typer.Context,
    name: NameArg,
    k: Annotated[int | None, typer.Option(
        "--k", metavar="N", help="Clusters of k-means (spherical for IP/COSINE).", show_default=False)] = None,
    threshold: Annotated[float | None, typer.Option(
        metavar="X", help="Leader clustering instead: a document joins the nearest cluster at least X "
                          "similar (L2: within X), else starts one.", show_default=False)] = None,
    filter_expr: FilterOption = None,
    field: Annotated[str | None, typer.Option(
        "--field", metavar="FIELD", help="An integer field to write each document's cluster label into.",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="k-means' start (the same seed gives the "
                                                        "same clusters).")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Group the documents into clusters: size, medoid, members and distinguishing words of each."""
    found = _client(ctx).collection(name).cluster(k=k, threshold=threshold, filter_expr=filter_expr,
                                                  field=field, seed=seed)
    if as_json:
        _print_json(found)
        return
    if not found:
        out.print("No documents.", style="dim")
        return
    table = Table("label", "size", "medoid", "terms", "ids")
    for group in found:
        ids = group["ids"]
        table.add_row(str(group["label"]), str(group["size"]), group["medoid"], ", ".join(group["terms"][:5]),
                      ", ".join(ids[:3]) + (", …" if len(ids) > 3 else ""))
    out.print(table)
    if field:
        out.print(f"Wrote each document's label into {field!r}.")


@_command(app, "near-duplicates")
def near_duplicates(
    ctx: typer.Context,
    name: NameArg,
    threshold: Annotated[float, typer.Option(
        metavar="X", help="Pairs at least this similar (L2: at most this squared distance apart).")] = 0.95,
    filter_expr: FilterOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Find pairs of near-duplicate documents with the index, and the groups they link."""
    found = _client(ctx).collection(name).near_duplicates(threshold=threshold, filter_expr=filter_expr)
    if as_json:
        _print_json(found)
        return
    pairs, groups = found["pairs"], found["groups"]
    if groups:
        table = Table("group", "size", "ids")
        for number, ids in enumerate(groups):
            table.add_row(str(number), str(len(ids)), ", ".join(ids))
        out.print(table)
    out.print(f"{len(pairs)} pair{'' if len(pairs) == 1 else 's'} in {len(groups)} "
              f"group{'' if len(groups) == 1 else 's'}.")


# -- export and import ---------------------------------------------------------------------------

ExportFormatOption = Annotated[str | None, typer.Option(
    "--format", metavar="jsonl|parquet", help="The file's format (default: from its extension).",
    show_default=False)]


@_command(app, "export")
def export(
    ctx: typer.Context,
    name: NameArg,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Output .jsonl or .parquet file.",
                                         show_default=False)],
    format: ExportFormatOption = None,
    batch_size: BatchSizeOption = 1000,
    as_json: JsonFlag = False,
) -> None:
    """Write every document (vectors included) and the collection's schema to one file."""
    collection = _client(ctx).collection(name)
    with _Progress(f"exporting {name}") as on_batch:
        written = collection.export(file, format, batch_size=batch_size, on_batch=on_batch)
    _report(as_json, {"exported": written, "file": str(file)},
            f"Exported {_documents(written)} of {name!r} to {file}.")


@_command(app, "import")
def import_(
    ctx: typer.Context,
    name: NameArg,
    file: Annotated[Path, typer.Argument(
        metavar="FILE", help="A file `lookalike export` wrote: JSON Lines (.jsonl) or Parquet "
                             "(.parquet), with its schema header.", show_default=False)],
    format: ExportFormatOption = None,
    batch_size: BatchSizeOption = 1000,
    as_json: JsonFlag = False,
) -> None:
    """Recreate a collection from an export: its schema and indexes, then its documents."""
    with _Progress(f"importing {file.name}") as on_batch:
        _, written = _client(ctx).import_collection(file, name, format=format, batch_size=batch_size,
                                                    on_batch=on_batch)
    _report(as_json, {"imported": written, "collection": name},
            f"Imported {_documents(written)} into {name!r}.")


# -- service -------------------------------------------------------------------------------------

@_command(app, "serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="Port to listen on.")] = 8000,
) -> None:
    """Run the HTTP service (see docs/http.md); it owns the embedded data directory."""
    import uvicorn

    from .http.app import create_app

    uvicorn.run(create_app(settings=ctx.ensure_object(_Session).settings()), host=host, port=port)


# -- evaluation ----------------------------------------------------------------------------------

@_command(app, "eval")
def evaluate(
    ctx: typer.Context,
    models: Annotated[str | None, typer.Option(
        metavar="A,B", help="Comma-separated built-in model names or model paths (default: every installed built-in).",
        show_default=False)] = None,
    limit: Annotated[int | None, typer.Option(
        metavar="N", help="Use the first N records of the sample.", show_default=False)] = None,
    ann_queries: Annotated[int, typer.Option(
        metavar="N", help="Queries for the ANN recall@10 check (0: skip it).")] = 100,
    beyond_queries: Annotated[int, typer.Option(
        metavar="N", help="Query packages for the beyond-accuracy figures of \"more like this\" "
                          "(0: skip them).")] = 500,
    cache_dir: Annotated[Path | None, typer.Option(
        metavar="DIR", help="Keep the embeddings here between runs (default: the data directory's "
                            "cache).", show_default=False)] = None,
    out_dir: Annotated[Path, typer.Option(
        "--out", metavar="DIR", help="Directory for the JSON result.")] = Path("bench/results"),
    as_json: JsonFlag = False,
) -> None:
    """Measure retrieval quality on the shipped corpus (cross-lingual R@1, R@10, MRR; ANN recall).

    Per model: cross-lingual R@1, R@10 and MRR on the full text and on the synopsis, the TF-IDF
    baseline beside them, and the recall@10 of the default model's ANN index.
    """
    from datetime import datetime, timezone

    from .quality import evaluation
    from .quality.corpus import load_sample

    names = models.split(",") if models else evaluation.available_models()
    cache_dir = cache_dir or ctx.ensure_object(_Session).settings().cache_dir
    result = evaluation.evaluate(names, load_sample(limit=limit),
                                 ann_models=["default"] if ann_queries else [], ann_queries=ann_queries,
                                 beyond_queries=beyond_queries, cache_dir=cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"eval-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if as_json:
        _print_json(result)
        return
    out.print(evaluation.format_table(result["crosslingual"]), highlight=False)
    for row in result["ann"]:
        out.print(f"ANN recall@{row['k']} ({row['model']}, {row['queries']} queries over "
                  f"{row['documents']} documents): {row['recall']:.3f}")
    if result["beyond_accuracy"]:
        out.print(evaluation.format_beyond_table(result["beyond_accuracy"]), highlight=False)
    out.print(f"Wrote {path}.")


# -- admin ---------------------------------------------------------------------------------------

def _root(ctx: typer.Context) -> tuple[str, Secret]:
    """The server URI and root token the admin commands act with."""
    settings = ctx.ensure_object(_Session).settings()
    token = os.environ.get("LOOKALIKE_MILVUS_ROOT_TOKEN", "")
    if settings.embedded:
        raise _fail("admin commands act on a Milvus server: set LOOKALIKE_MILVUS_URI (or --uri)")
    if not token:
        raise _fail("set LOOKALIKE_MILVUS_ROOT_TOKEN to the server's root:<password>")
    return settings.uri, Secret(token)


@_command(admin_app, "provision")
def admin_provision(
    ctx: typer.Context,
    code: Annotated[str, typer.Argument(metavar="CODE", help="Organisation code, e.g. ltlrt.",
                                        show_default=False)],
    as_json: JsonFlag = False,
) -> None:
    """Create (or repair) an organisation: its database, its user and a role limited to it.

    The secret is read from CODOPS_<CODE>_MILVUS_PASSWORD, the variable the organisation's own
    processes use. Idempotent; a new secret replaces the old one.
    """
    from .ops import admin

    variable = password_variable(code)
    secret = os.environ.get(variable, "")
    if not secret:
        raise _fail(f"set {variable} to the organisation's secret first")
    org = admin.provision(code, Secret(secret), *_root(ctx))
    _report(as_json, {"code": org.code, "database": org.database, "user": org.user, "role": org.role},
            f"Organisation {org.code!r} provisioned: database {org.database}, user {org.user}, role {org.role}.")


@_command(admin_app, "list")
def admin_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the organisations provisioned on the server."""
    from .ops import admin

    codes = admin.list_organisations(*_root(ctx))
    _report(as_json, codes, "\n".join(codes) if codes else "No organisations.")


@_command(admin_app, "revoke")
def admin_revoke(
    ctx: typer.Context,
    code: Annotated[str, typer.Argument(metavar="CODE", help="Organisation code.",
                                        show_default=False)],
    drop_data: Annotated[bool, typer.Option(help="Also drop the organisation's database and data.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Remove an organisation's user and role (and, with --drop-data, its data)."""
    from .ops import admin

    if drop_data and not yes:
        typer.confirm(f"Drop every collection of organisation {code!r}?", abort=True)
    removed = admin.revoke(code, *_root(ctx), drop_data=drop_data)
    _report(as_json, {"code": code, "revoked": removed},
            f"Organisation {code!r} revoked." if removed else f"Organisation {code!r} was not provisioned.")


def main() -> None:
    """Entry point of the ``lookalike`` command."""
    app()


# -- helpers -------------------------------------------------------------------------------------

def _parse_field(text: str) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise typer.BadParameter(f"{text!r}: expected NAME:TYPE or NAME:varchar:MAX_LENGTH",
                                 param_hint="--field")
    field: dict[str, Any] = {"name": parts[0], "type": parts[1].lower()}
    if len(parts) == 3:
        field["max_length"] = _integer(parts[2], "--field")
    return field


def _parse_indexes(specs: list[str], params: list[str], scalar: list[str]) -> dict[str, Any]:
    indexes: dict[str, Any] = {name: None for name in scalar}
    for text in specs:
        parts = text.split(":")
        if len(parts) < 2 or not all(parts) or (parts[0] != "vec" and len(parts) != 2):
            raise typer.BadParameter(
                f"{text!r}: expected vec:INDEX_TYPE[:METRIC] or FIELD:INDEX_TYPE",
                param_hint="--index")
        if parts[0] == "vec":
            indexes["vec"] = {"index_type": parts[1], **({"metric_type": parts[2]}
                                                          if len(parts) > 2 else {})}
        else:
            indexes[parts[0]] = {"index_type": parts[1]}
    for text in params:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{text!r}: expected KEY=VALUE", param_hint="--index-param")
        indexes.setdefault("vec", {})[key] = _integer(value, "--index-param")
    return indexes


def _integer(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an integer", param_hint=option) from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise _fail(f"{path} is not valid JSON: {error}") from None


def _search_params(ef: int | None, pairs: list[str]) -> dict[str, Any] | None:
    """``--ef`` and ``--search-param KEY=VALUE`` as the library's ``search_params``; the values
    pass through unchecked (the library validates them)."""
    params: dict[str, Any] = {}
    for text in pairs:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{text!r}: expected KEY=VALUE", param_hint="--search-param")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value  # a bare word, e.g. a level name
    if ef is not None:
        if "ef" in params:
            raise typer.BadParameter("give ef once: --ef N or --search-param ef=N",
                                     param_hint="--ef")
        params["ef"] = ef
    return params or None


def _numbers(text: str | None, option: str) -> list[float] | None:
    """``1,0.5`` as ``[1.0, 0.5]``; the library checks the values."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated numbers",
                                 param_hint=option) from None


def _recency(field: str | None, scale: float | None, decay: float | None, function: str | None,
             origin: float | None, offset: float | None) -> dict[str, Any] | None:
    """The ``--recency-*`` options as the library's ``recency`` dict (only the keys given)."""
    recency = {key: value for key, value in {
        "field": field, "scale": scale, "decay": decay, "function": function, "origin": origin,
        "offset": offset}.items() if value is not None}
    return recency or None


def _exclusions(flag: bool, ids: list[str], file: Path | None,
                examples: list[str]) -> bool | list[str] | None:
    """The library's ``exclude_ids``: ``True`` for the flag alone, else the list of ids named
    by ``--exclude-id`` and ``--exclude-ids-file`` (with the flag: and the query's own ids)."""
    listed = [*ids, *(_read_ids(file) if file is not None else [])]
    if not listed:
        return True if flag else None
    return list(dict.fromkeys([*(examples if flag else []), *listed]))


def _read_ids(path: Path) -> list[str]:
    """Ids from a file: a JSON array of strings, or one id a line (blank lines skipped)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            ids = json.loads(text)
        except json.JSONDecodeError as error:
            raise _fail(f"{path} is not a valid JSON array of ids: {error}") from None
        if not isinstance(ids, list):
            raise _fail(f"{path}: expected a JSON array of ids")
        for at, value in enumerate(ids):
            if not isinstance(value, str):
                shown_value = json.dumps(value)[:40]
                raise _fail(f"{path}: item {at} is {type(value).__name__} {shown_value}, not an id (a string)")
        return ids
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_requests(path: Path) -> list[dict[str, Any]]:
    """The requests of ``similar-batch``: one JSON object a line (``-``: stdin)."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    requests = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            raise _fail(f"{path}, line {number}: not valid JSON ({error})") from None
        if not isinstance(request, dict):
            raise _fail(f"{path}, line {number}: expected a JSON object of similar's parameters, "
                        f"not {type(request).__name__}")
        requests.append(request)
    if not requests:
        raise _fail(f"{path} holds no request (one JSON object a line)")
    return requests


def _counted(batches: Iterable[list[dict]], on_batch: Any) -> Iterator[dict]:
    """The documents of ``batches``, one at a time, moving the progress bar per batch."""
    done = 0
    for batch in batches:
        yield from batch
        done += len(batch)
        on_batch(done)


class _Progress:
    """A progress bar on stderr when it is a terminal; a no-op otherwise.

    Entering gives ``on_batch(done, total=None)``, the callback export and import take.
    """

    def __init__(self, description: str, total: int | None = None) -> None:
        console = Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=True,
                            disable=not console.is_terminal)
        self.task = self.bar.add_task(description, total=total)

    def __enter__(self) -> Any:
        self.bar.start()
        return self.update

    def update(self, done: int, total: int | None = None) -> None:
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def _documents(n: int) -> str:
    return f"{n} document{'' if n == 1 else 's'}"


def _report(as_json: bool, data: Any, message: str) -> None:
    """JSON for scripts, or a sentence for people."""
    if as_json:
        _print_json(data)
    else:
        out.print(message)


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=lambda v: v.tolist()))


def _print_documents(documents: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        _print_json(documents)
        return
    if not documents:
        out.print("No documents.", style="dim")
        return
    columns = list(dict.fromkeys(key for doc in documents for key in doc))
    table = Table(*columns)
    for doc in documents:
        table.add_row(*(_explained(doc.get(column)) if column == "explain"
                        else _cell(doc.get(column)) for column in columns))
    out.print(table)


def _explained(explain: Any) -> str:
    """A hit's ``explain``, one part a line: a search route as ``dense: #2, 0.8123`` (its rank
    and its own score, before fusion), any other part as ``similarity: 0.8123``."""
    if not isinstance(explain, dict):
        return _cell(explain)
    lines = []
    for key, value in explain.items():
        if isinstance(value, dict) and "rank" in value:
            lines.append(f"{key}: #{value['rank']}, {_cell(value.get('score'))}")
        else:
            lines.append(f"{key}: {_cell(value)}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list) and value and all(isinstance(x, float) for x in value):
        head = ", ".join(f"{x:.3f}" for x in value[:3])
        return f"[{head}{', …' if len(value) > 3 else ''}] ({len(value)})"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


def _print_description(description: dict[str, Any]) -> None:
    vec = description["indexes"].get("vec", {})
    params = ", ".join(f"{k}={v}" for k, v in vec.items() if k not in ("index_type", "metric_type"))
    out.print(f"[bold]{description['name']}[/bold]: {_documents(description['count'])}, "
              f"dim {description['dim']}, {vec.get('index_type')}/{description['metric']}"
              + (f" ({params})" if params else "")
              + (f", embedder {description['embedder']['name']}" if description.get("embedder")
                 else "")
              + (f"; {_index_line(index)}" if (index := description.get("index"))
                 and index["indexed_rows"] + index["pending_rows"] else ""))
    table = Table("field", "type", "index")
    table.add_row("id", "varchar(512)", "primary key")
    table.add_row("vec", f"float_vector({description['dim']})", str(vec.get("index_type")))
    for field in description["fields"]:
        kind = field["type"] + (f"({field['max_length']})" if "max_length" in field else "")
        indexed = description["indexes"].get(field["name"], "")
        label = "default" if field["name"] in description["indexes"] and indexed is None else (
            indexed.get("index_type", "") if isinstance(indexed, dict) else "")
        if field.get("enable_analyzer"):  # the BM25 index lookalike keeps behind the field
            label = ", ".join(filter(None, [label, "full-text"]))
        table.add_row(field["name"], kind, label)
    out.print(table)


if __name__ == "__main__":
    main()
