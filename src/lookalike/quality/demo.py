"""The main job: index real multilingual package descriptions and show similar items.

``python -m lookalike.quality.demo`` embeds the shipped Debian description sample with the default
model, indexes it on the embedded engine (a re-run reuses what is stored), and prints "more
like this" for a package (one hit per package), the same restricted by language and section,
and free-text queries that find descriptions in other languages, with the time each step took.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from ..client import Client
from .corpus import documents, load_sample

COLLECTION = "ddtp_demo"
FIELDS = [
    {"name": "md5", "type": "varchar", "max_length": 32},
    {"name": "language", "type": "varchar", "max_length": 8},
    {"name": "section", "type": "varchar", "max_length": 64},
    {"name": "package", "type": "varchar", "max_length": 128},
    {"name": "synopsis", "type": "varchar", "max_length": 512},
]
INDEXES = {"vec": {"index_type": "HNSW", "metric_type": "IP", "M": 32, "efConstruction": 128},
           "language": None, "section": None}
SHOWN = ["package", "language", "section", "synopsis"]
# Free-text queries, each in a language other than most of the corpus.
QUERIES = [
    ("fr", "outil pour compresser et archiver des fichiers"),
    ("de", "Schriftarten für asiatische Sprachen"),
    ("es", "juego de estrategia en tiempo real"),
]

T = TypeVar("T")


def demo_documents(records: Sequence[dict]) -> Iterator[dict[str, Any]]:
    """The corpus's documents, with the synopsis kept for display."""
    for doc in documents(records):
        doc["synopsis"] = doc["text"].split("\n", 1)[0][:512]
        del doc["source"]
        yield doc


def pick_package(records: Sequence[dict], wanted: str | None) -> dict:
    """The package to show "more like this" for: the one asked, or the first with en/fr/de texts."""
    for record in records:
        if record["package"] == wanted or (wanted is None and {"en", "fr", "de"} <= set(record["texts"])):
            return record
    raise SystemExit(f"package {wanted!r} is not among the indexed records")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lookalike.quality.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=0,
                        help="index only the first N records of the 10,000-record sample (default: all)")
    parser.add_argument("--package", help="the package to show similar items for (default: the first with en/fr/de)")
    parser.add_argument("--codops", default=None, help="organisation (default: $CODOPS, else 'demo')")
    parser.add_argument("--data-dir", default=None, help="embedded data directory (default: $LOOKALIKE_DATA_DIR)")
    args = parser.parse_args(argv)
    console = Console()
    timings: list[tuple[str, float]] = []

    def timed(step: str, work: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = work()
        timings.append((step, time.perf_counter() - start))
        return result

    overrides = {"codops": args.codops or os.environ.get("CODOPS") or "demo"}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    client = timed("connect", lambda: Client(**overrides))
    console.print(f"[bold]lookalike demo[/] on {client!r}")
    records = timed("load the corpus sample", lambda: load_sample(limit=args.limit or None))
    col = timed("create the collection", lambda: client.create_collection(
        COLLECTION, FIELDS, INDEXES, embedder="default"))
    expected = sum(len(r["texts"]) for r in records)
    stored = col.count()
    if stored >= expected:
        console.print(f"{stored} descriptions already indexed: reusing them")
    else:
        console.print(f"embedding and indexing {expected} descriptions of {len(records)} packages "
                      f"with {col.spec.embedder['name']} ...")
        timed(f"embed + index {expected} descriptions", lambda: col.index(demo_documents(records)))

    record = pick_package(records, args.package)
    ids = [f"{record['md5']}:{lang}" for lang in record["texts"]]
    languages = ", ".join(record["texts"])
    # One hit per package: without it, a package described in several languages fills several
    # places with its translations (README, "Recommendations": group_by).
    more_like = {"ids": ids, "limit": 8, "exclude_ids": True, "group_by": "package", "output_fields": SHOWN}
    show(console, f"More like {record['package']!r} (the mean of its {len(ids)} descriptions: {languages}; "
                  "one per package)",
         timed("more like this", lambda: col.similar(**more_like)))
    expr = f'language == "fr" and section == "{record["section"]}"'
    show(console, f"The same, restricted to {expr}",
         timed("more like this, filtered", lambda: col.similar(**more_like, filter_expr=expr)))
    for language, text in QUERIES:
        show(console, f"Free text ({language}): {text!r}",
             timed(f"free-text query ({language})",
                   lambda text=text: col.similar(texts=[text], limit=6, output_fields=SHOWN)))
    table = Table(title="Time per step")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for step, seconds in timings:
        table.add_row(step, f"{seconds:.3f}")
    console.print(table)
    client.close()
    return 0


def show(console: Console, title: str, results: list[dict[str, Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("distance", *SHOWN):
        table.add_column(column, overflow="fold", max_width=60 if column == "synopsis" else None)
    for row in results:
        table.add_row(f"{row['distance']:.3f}", *(str(row[c]) for c in SHOWN))
    console.print(table)


if __name__ == "__main__":
    raise SystemExit(main())
