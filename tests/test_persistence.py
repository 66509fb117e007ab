"""Data outlives the process, for every index type; one process at a time opens a data dir."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from lookalike import Client
from lookalike.schema import VECTOR_INDEXES

WRITE = """
import json, sys
from lookalike import Client
from conftest import SEED_FIELDS, make_docs
with Client(codops="ltlrt", data_dir=sys.argv[1]) as client:
    for index_type in json.loads(sys.argv[2]):
        indexes = {"vec": {"index_type": index_type, "metric_type": "IP"}, "language": None}
        col = client.create_collection("p_" + index_type.lower(), SEED_FIELDS, indexes, dim=16)
        col.index(make_docs(300, seed=2))
"""

READ = """
import json, sys
from lookalike import Client
out = {}
with Client(codops="ltlrt", data_dir=sys.argv[1]) as client:
    for index_type in json.loads(sys.argv[2]):
        col = client.collection("p_" + index_type.lower())
        out[index_type] = {"count": col.count(), "top": col.similar(ids=["doc7"], limit=1)[0]["id"],
                           "fr": col.count('language == "fr"'), "index": col.spec.vector_index.index_type,
                           "got": col.get(["doc9"], ["language"])}
print(json.dumps(out))
"""


def run_python(code: str, *args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_data_persists_across_processes_for_every_index_type(tmp_path, request):
    tests_dir = str(request.path.parent)
    types = json.dumps(sorted(VECTOR_INDEXES))
    written = run_python(WRITE, str(tmp_path), types, cwd=tests_dir)
    assert written.returncode == 0, written.stderr[-2000:]
    read = run_python(READ, str(tmp_path), types, cwd=tests_dir)
    assert read.returncode == 0, read.stderr[-2000:]
    result = json.loads(read.stdout.strip().splitlines()[-1])
    for index_type in VECTOR_INDEXES:
        assert result[index_type] == {"count": 300, "top": "doc7", "fr": 100, "index": index_type,
                                      "got": [{"id": "doc9", "language": "fr"}]}, index_type


def test_a_second_process_gets_a_clear_error_and_nothing_else(tmp_path, request):
    with Client(codops="ltlrt", data_dir=tmp_path) as client:
        client.create_collection("held", dim=4)
        other = run_python(
            "import sys\nfrom lookalike import Client, EngineUnavailableError\n"
            "try:\n    Client(codops='ltlrt', data_dir=sys.argv[1])\n"
            "except EngineUnavailableError as e:\n    print('REFUSED', e)\n",
            str(tmp_path), cwd=str(request.path.parent))
    assert "REFUSED" in other.stdout, other.stderr[-2000:]
    assert str(tmp_path) in other.stdout and "one process at a time" in other.stdout
    assert "Traceback" not in other.stdout
    assert other.stderr == ""  # no engine traceback, no gRPC log line



def test_closing_the_last_client_frees_the_directory_for_another_process(tmp_path, request):
    first = Client(codops="ltlrt", data_dir=tmp_path)
    second = Client(codops="chrts", data_dir=tmp_path)  # the same engine, shared in this process
    first.create_collection("freed", dim=4).index([{"id": "a", "vec": [1, 0, 0, 0]}])
    first.close()
    assert second.list_collections() == []  # still open for the other organisation
    second.close()
    other = run_python(
        "import sys\nfrom lookalike import Client\n"
        "with Client(codops='ltlrt', data_dir=sys.argv[1]) as c:\n    print('COUNT', c.collection('freed').count())\n",
        str(tmp_path), cwd=str(request.path.parent))
    assert "COUNT 1" in other.stdout, other.stderr[-2000:]
