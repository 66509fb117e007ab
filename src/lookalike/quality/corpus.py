"""The Debian package descriptions and their translations (DDTP): real multilingual text.

Each record is one English package description (keyed by its ``Description-md5``) with its
translations, the package's section and its source package::

    {"md5": "00a1...", "package": "foo", "source": "foo-src", "section": "utils",
     "texts": {"en": {"synopsis": "...", "body": "..."}, "fr": {...}, "de": {...}}}

A sample of 10,000 records ships with the package (:func:`load_sample`); ``python -m
lookalike.quality.corpus build`` rebuilds it, or the whole corpus, from apt's lists on a Debian machine.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path

from ..errors import InvalidInputError, LookalikeError, NotFoundError

# The languages apt is asked for; the Debian 12 main archive has translations in all of them.
LANGUAGES = ("en", "fr", "de", "it", "es", "pt_BR", "da", "ja", "ru", "uk", "pl", "cs", "zh_CN",
             "ko", "sk")
# The sample: the 10,000 smallest md5s among English descriptions, with their translations in
# the languages below, chosen to stay within ~4 MB: French and German (the largest translated
# sets the default model reads) and four scripts' worth more that it reads (es ja pl ru zh_CN).
SAMPLE_REQUIRED = ("en",)
SAMPLE_LANGUAGES = ("en", "fr", "de", "es", "ja", "pl", "ru", "zh_CN")
SAMPLE_SIZE = 10_000
SAMPLE_RESOURCE = "ddtp-sample.jsonl.gz"
APT_LISTS = Path("/var/lib/apt/lists")
APT_HELPER = Path("/usr/lib/apt/apt-helper")


def load_sample(
    limit: int | None = None, languages: Sequence[str] | None = None
) -> list[dict]:
    """The shipped sample, smallest md5 first; ``limit`` records, ``languages`` texts only."""
    data = resources.files("lookalike").joinpath("data", SAMPLE_RESOURCE).read_bytes()
    return load_records(io.BytesIO(data), limit=limit, languages=languages)


def load_records(
    source: str | Path | io.BufferedIOBase,
    limit: int | None = None,
    languages: Sequence[str] | None = None,
) -> list[dict]:
    """Records from a ``.jsonl.gz`` file written by :func:`write_records`."""
    if limit is not None and limit < 0:
        raise InvalidInputError(f"limit must be >= 0, got {limit}")
    wanted = set(languages) if languages is not None else None
    records: list[dict] = []
    with gzip.open(source, "rt", encoding="utf-8") as lines:
        for line in lines:
            if limit is not None and len(records) >= limit:
                break
            record = json.loads(line)
            if wanted is not None:
                record["texts"] = {k: v for k, v in record["texts"].items() if k in wanted}
            records.append(record)
    return records


def description_text(record: dict, language: str, synopsis_only: bool = False) -> str:
    """The text to embed for one language of a record: synopsis, then the body."""
    try:
        text = record["texts"][language]
    except KeyError:
        raise NotFoundError(f"record {record.get('md5')!r} has no {language!r} text") from None
    if synopsis_only or not text["body"]:
        return text["synopsis"]
    return f"{text['synopsis']}\n{text['body']}"


def documents(
    records: Iterable[dict],
    languages: Sequence[str] | None = None,
    synopsis_only: bool = False,
) -> Iterator[dict]:
    """One document per record and language, ready to index with an embedder.

    ``id`` is ``<md5>:<language>``, ``text`` the description; ``md5`` links the translations of
    one description; ``language``, ``section``, ``package`` and ``source`` are metadata.
    """
    for record in records:
        for language in record["texts"]:
            if languages is not None and language not in languages:
                continue
            yield {
                "id": f"{record['md5']}:{language}",
                "text": description_text(record, language, synopsis_only),
                "md5": record["md5"],
                "language": language,
                "section": record["section"],
                "package": record["package"],
                "source": record["source"],
            }


# --- building from apt's lists ------------------------------------------------------------


def fetch_translations(languages: Sequence[str] = LANGUAGES) -> None:
    """Run ``apt-get update`` asking for the translation files (needs root and a network).

    The command-line options win over ``/etc/apt/apt.conf.d/docker-no-languages``, which sets
    ``Acquire::Languages "none"`` in Debian container images (a config file would lose to it).
    """
    command = ["apt-get", "update", "-o", f"Acquire::Languages={','.join(languages)}",
               "-o", "Acquire::GzipIndexes=false"]
    if shutil.which("apt-get") is None:
        raise LookalikeError("apt-get is not installed: build the corpus on a Debian machine")
    subprocess.run(command, check=True)


def read_list(path: Path) -> str:
    """The text of one of apt's list files, decompressing it the way apt does."""
    if APT_HELPER.exists():
        done = subprocess.run([str(APT_HELPER), "cat-file", str(path)], check=True,
                              capture_output=True)
        return done.stdout.decode("utf-8", errors="replace")
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    if path.suffix in {".lz4", ".xz", ".bz2", ".zst"}:
        raise LookalikeError(f"{path} is compressed and {APT_HELPER} is missing to read it")
    return path.read_text(encoding="utf-8", errors="replace")


def parse_stanzas(text: str) -> Iterator[dict[str, str]]:
    """deb822 stanzas as dicts; a multi-line value keeps its continuation lines after a newline."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif line[0] in " \t" and key is not None:
            fields[key] += "\n" + line
        else:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    if fields:
        yield fields


def split_description(value: str) -> dict[str, str]:
    """A ``Description-<lang>`` value as synopsis and body (``.`` lines become blank lines)."""
    synopsis, _, rest = value.partition("\n")
    lines = []
    for line in rest.splitlines():
        line = line[1:] if line[:1] == " " else line
        lines.append("" if line.strip() == "." else line.rstrip())
    return {"synopsis": synopsis.strip(), "body": "\n".join(lines).strip("\n")}


def language_files(lists_dir: Path, language: str) -> list[Path]:
    """apt's translation files for one language (apt writes ``_`` as ``%5f`` in file names)."""
    name = language.replace("_", "%5f")
    files = sorted(lists_dir.glob(f"*_i18n_Translation-{name}*"))
    return [f for f in files if f.name.split(f"Translation-{name}")[1] in ("", ".gz", ".xz",
                                                                           ".lz4", ".zst")]


def read_translations(lists_dir: Path, language: str) -> dict[str, dict[str, str]]:
    """md5 → {'package', 'synopsis', 'body'} for one language, from every suite's file."""
    out: dict[str, dict[str, str]] = {}
    for path in language_files(lists_dir, language):
        for stanza in parse_stanzas(read_list(path)):
            md5, value = stanza.get("Description-md5"), stanza.get(f"Description-{language}")
            if not md5 or value is None:
                continue
            text = split_description(value)
            if not text["synopsis"]:
                continue
            # One description can serve several packages: keep the first name in sort order.
            if md5 not in out or stanza["Package"] < out[md5]["package"]:
                out[md5] = {"package": stanza["Package"], **text}
    return out


def read_packages(lists_dir: Path) -> dict[str, dict[str, str]]:
    """md5 → {'package', 'section', 'source'} from the Packages lists (no Source: the package)."""
    out: dict[str, dict[str, str]] = {}
    for path in sorted(lists_dir.glob("*_binary-*_Packages*")):
        for stanza in parse_stanzas(read_list(path)):
            md5, package = stanza.get("Description-md5"), stanza.get("Package")
            if not md5 or not package:
                continue
            if md5 in out and out[md5]["package"] <= package:
                continue
            source = stanza.get("Source", "").split(" ")[0] or package
            out[md5] = {"package": package, "section": stanza.get("Section", ""), "source": source}
    return out


def build_records(
    lists_dir: Path = APT_LISTS,
    languages: Sequence[str] = LANGUAGES,
    required: Sequence[str] = ("en",),
    limit: int | None = None,
) -> list[dict]:
    """Join translations to their English original and the Packages list, smallest md5 first.

    Keeps the descriptions that have every ``required`` language and a Packages entry (for the
    section); md5 is a hash, so the first ``limit`` are an unbiased, reproducible sample.
    """
    if "en" not in required:
        raise InvalidInputError("required languages must include 'en', the key of a record")
    texts = {language: read_translations(lists_dir, language) for language in languages}
    missing = [language for language in required if not texts.get(language)]
    if missing:
        raise NotFoundError(
            f"no translations for {', '.join(missing)} under {lists_dir}: run "
            "`python -m lookalike.quality.corpus fetch` (apt-get update with Acquire::Languages)"
        )
    packages = read_packages(lists_dir)
    keys = set(texts["en"]).intersection(packages, *(texts[lang] for lang in required))
    records = []
    for md5 in sorted(keys)[:limit]:
        info = packages[md5]
        records.append({
            "md5": md5,
            "package": info["package"],
            "source": info["source"],
            "section": info["section"],
            "texts": {lang: {k: texts[lang][md5][k] for k in ("synopsis", "body")}
                      for lang in languages if md5 in texts[lang]},
        })
    return records


def write_records(records: Iterable[dict], path: Path) -> int:
    """Write records as gzipped JSON lines, byte for byte the same for the same records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", filename="",
                                                mtime=0, compresslevel=9) as out:
        for record in records:
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
            out.write(line.encode("utf-8") + b"\n")
            count += 1
    return count


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lookalike.quality.corpus fetch|build``: get apt's translations, write the corpus."""
    parser = argparse.ArgumentParser(prog="python -m lookalike.quality.corpus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="apt-get update with the translation files")
    fetch.add_argument("--languages", default=",".join(LANGUAGES))
    build = commands.add_parser("build", help="write the sample (default) or the full corpus")
    build.add_argument("--full", action="store_true",
                       help="every English description in every language (no limit)")
    build.add_argument("--out", type=Path, help="output .jsonl.gz (default: the shipped sample)")
    build.add_argument("--limit", type=int, default=SAMPLE_SIZE)
    build.add_argument("--lists-dir", type=Path, default=APT_LISTS)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        fetch_translations(args.languages.split(","))
        return 0
    if args.full:
        records = build_records(args.lists_dir, LANGUAGES, ("en",))
        out = args.out or Path("ddtp-full.jsonl.gz")
    else:
        records = build_records(args.lists_dir, SAMPLE_LANGUAGES, SAMPLE_REQUIRED, args.limit)
        out = args.out or Path(str(resources.files("lookalike").joinpath("data", SAMPLE_RESOURCE)))
    count = write_records(records, out)
    print(f"wrote {count} records to {out} ({out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
