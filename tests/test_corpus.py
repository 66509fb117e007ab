"""The DDTP corpus: the shipped sample, and building records from apt's lists."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest

from lookalike.errors import InvalidInputError, NotFoundError
from lookalike.quality import corpus
from lookalike.quality.corpus import (
    SAMPLE_LANGUAGES,
    SAMPLE_SIZE,
    build_records,
    description_text,
    documents,
    load_records,
    load_sample,
    write_records,
)


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    return load_sample()


def english_md5(text: dict) -> str:
    """Description-md5 as Debian computes it: the English description as apt lists it, plus
    a newline."""
    lines = [text["synopsis"]] + [f" {line}" if line else " ." for line in
                                  text["body"].split("\n") if text["body"]]
    return hashlib.md5(("\n".join(lines) + "\n").encode("utf-8")).hexdigest()


def test_sample_has_the_documented_shape(sample: list[dict]) -> None:
    assert len(sample) == SAMPLE_SIZE
    md5s = [r["md5"] for r in sample]
    assert md5s == sorted(set(md5s))  # the smallest md5s, each once, in order
    for record in sample:
        assert re.fullmatch(r"[0-9a-f]{32}", record["md5"])
        assert record["package"] and record["source"] and record["section"]
        assert set(record["texts"]) <= set(SAMPLE_LANGUAGES)
        assert record["texts"]["en"]["synopsis"]
        for text in record["texts"].values():
            assert set(text) == {"synopsis", "body"} and text["synopsis"].strip()
    languages = {lang for r in sample for lang in r["texts"]}
    assert languages == set(SAMPLE_LANGUAGES)


def test_sample_keys_are_the_md5_of_the_english_description(sample: list[dict]) -> None:
    # The join key is recomputable from the text: proof that parsing kept the description whole
    # (a handful of descriptions with odd whitespace are not reproduced byte for byte).
    matches = sum(english_md5(r["texts"]["en"]) == r["md5"] for r in sample)
    assert matches >= 0.99 * len(sample)


def test_load_sample_limit_and_languages() -> None:
    few = load_sample(limit=5, languages=["en", "fr"])
    assert len(few) == 5
    assert all(set(r["texts"]) <= {"en", "fr"} and "en" in r["texts"] for r in few)
    with pytest.raises(InvalidInputError, match="limit"):
        load_sample(limit=-1)


def test_documents_flatten_records_per_language(sample: list[dict]) -> None:
    records = sample[:50]
    docs = list(documents(records))
    assert len(docs) == sum(len(r["texts"]) for r in records)
    first = docs[0]
    assert first["id"] == f"{first['md5']}:{first['language']}"
    assert set(first) == {"id", "text", "md5", "language", "section", "package", "source"}
    french = list(documents(records, languages=["fr"], synopsis_only=True))
    assert all(d["language"] == "fr" and "\n" not in d["text"] for d in french)
    record = records[0]
    assert description_text(record, "en").startswith(record["texts"]["en"]["synopsis"])
    with pytest.raises(NotFoundError, match="has no 'xx' text"):
        description_text(record, "xx")


def stanza(**fields: str) -> str:
    # Description_md5 → Description-md5, Description_pt_BR → Description-pt_BR
    return "\n".join(f"{k.replace('_', '-', 1)}: {v}" for k, v in fields.items()) + "\n\n"


@pytest.fixture
def lists_dir(tmp_path: Path) -> Path:
    """apt lists in miniature: three descriptions, two translations, a Packages file."""
    prefix = "deb.example.org_debian_dists_bookworm_main_"
    en = (stanza(Package="zeta", Description_md5="b" * 32,
                 Description_en="Zeta tool\n First line.\n .\n Second paragraph.")
          + stanza(Package="alpha", Description_md5="a" * 32, Description_en="Alpha library")
          + stanza(Package="alpha-bis", Description_md5="a" * 32, Description_en="Alpha library")
          + stanza(Package="orphan", Description_md5="c" * 32, Description_en="Not in Packages"))
    (tmp_path / f"{prefix}i18n_Translation-en").write_text(en)
    fr = stanza(Package="zeta", Description_md5="b" * 32,
                Description_fr="Outil zêta\n Première ligne.")
    (tmp_path / f"{prefix}i18n_Translation-fr").write_bytes(gzip.compress(fr.encode()))
    (tmp_path / f"{prefix}i18n_Translation-fr").rename(tmp_path / f"{prefix}i18n_Translation-fr.gz")
    pt = stanza(Package="alpha", Description_md5="a" * 32, Description_pt_BR="Biblioteca alfa")
    (tmp_path / f"{prefix}i18n_Translation-pt%5fBR").write_text(pt)
    packages = (stanza(Package="alpha-bis", Section="libs", Description_md5="a" * 32)
                + stanza(Package="alpha", Source="alpha-src (1.0-1)", Section="libs",
                         Description_md5="a" * 32)
                + stanza(Package="zeta", Section="utils", Description_md5="b" * 32))
    (tmp_path / f"{prefix}binary-amd64_Packages").write_text(packages)
    return tmp_path


def test_build_records_joins_translations_and_packages(lists_dir: Path) -> None:
    records = build_records(lists_dir, ["en", "fr", "pt_BR"])
    assert [r["md5"] for r in records] == ["a" * 32, "b" * 32]  # 'c' has no Packages entry
    alpha, zeta = records
    assert (alpha["package"], alpha["source"], alpha["section"]) == ("alpha", "alpha-src", "libs")
    assert alpha["texts"] == {"en": {"synopsis": "Alpha library", "body": ""},
                              "pt_BR": {"synopsis": "Biblioteca alfa", "body": ""}}
    assert (zeta["source"], zeta["section"]) == ("zeta", "utils")
    assert zeta["texts"]["en"] == {"synopsis": "Zeta tool",
                                   "body": "First line.\n\nSecond paragraph."}
    assert zeta["texts"]["fr"]["synopsis"] == "Outil zêta"

    assert [r["md5"] for r in build_records(lists_dir, ["en", "fr"], ["en", "fr"])] == ["b" * 32]
    assert len(build_records(lists_dir, ["en"], limit=1)) == 1
    with pytest.raises(NotFoundError, match="no translations for de"):
        build_records(lists_dir, ["en", "de"], ["en", "de"])


def test_written_records_are_byte_identical_and_load_back(lists_dir: Path, tmp_path: Path) -> None:
    records = build_records(lists_dir, ["en", "fr", "pt_BR"])
    first, second = tmp_path / "one.jsonl.gz", tmp_path / "two.jsonl.gz"
    assert write_records(records, first) == write_records(records, second) == 2
    assert first.read_bytes() == second.read_bytes()
    assert load_records(first) == records


def test_build_command_writes_the_corpus(lists_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "full.jsonl.gz"
    assert corpus.main(["build", "--full", "--lists-dir", str(lists_dir), "--out", str(out)]) == 0
    assert [r["package"] for r in load_records(out)] == ["alpha", "zeta"]


@pytest.mark.skipif(not list(corpus.APT_LISTS.glob("*_i18n_Translation-fr*")),
                    reason="apt has no French translations here (python -m lookalike.quality.corpus fetch)")
def test_apt_lists_give_records_like_the_sample() -> None:
    # Translations change upstream over time, so compare the shape and the join, not the bytes.
    records = build_records(corpus.APT_LISTS, SAMPLE_LANGUAGES, limit=200)
    assert len(records) == 200
    assert sum(english_md5(r["texts"]["en"]) == r["md5"] for r in records) >= 0.98 * 200
    assert any("fr" in r["texts"] for r in records)
