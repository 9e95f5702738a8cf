"""Nothing lost: every row of the hostile-input table of issue 12 and every input that used to end
in a traceback gets one clear line, exit 2 (1 for internal errors), and no change to what was stored."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import stored_ratings
from curation import manifest, reward, store

ROOT = Path(__file__).resolve().parents[1]


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _one_line(err: str) -> bool:
    return "Traceback" not in err and err.strip().count("\n") == 0 and err.startswith("error: ")


@pytest.fixture
def db(analyzed_copy):
    return analyzed_copy


# --- exports -------------------------------------------------------------------------------------
def test_1_out_onto_the_dataset_is_refused(db, run_cli):
    before = _sha(db)
    code, _, err = run_cli("select", db, "--budget", "0.25", "--out", db, "--format", "parquet")
    assert code == 2 and "is the dataset itself" in err and _one_line(err)
    assert _sha(db) == before
    # another dataset (any DuckDB file) is refused too, even with --overwrite
    other = db.parent / "other.duckdb"
    shutil.copy(db, other)
    code, _, err = run_cli("select", db, "--budget", "0.25", "--out", other, "--format", "parquet", "--overwrite")
    assert code == 2 and "DuckDB database" in err and _sha(other) == before


def test_2_out_onto_a_device_is_refused():
    from curation.errors import CurationError

    with pytest.raises(CurationError, match="not a regular file"):
        manifest.check_out("/dev/null", overwrite=True)
    assert Path("/dev/null").is_char_device()
    assert not Path("/dev/null.sidecar.json").exists() and not Path("/dev/null.dropped.parquet").exists()


def test_2_out_onto_a_device_via_cli(db, run_cli):
    code, _, err = run_cli("select", db, "--budget", "0.25", "--out", "/dev/null", "--format", "csv", "--overwrite")
    assert code == 2 and "not a regular file" in err
    assert Path("/dev/null").is_char_device() and not Path("/dev/null.sidecar.json").exists()


@pytest.mark.parametrize("name", ["y.sidecar.json", "z.dropped.parquet"])
def test_3_out_named_as_a_side_file_is_refused(db, run_cli, tmp_path, name):
    code, _, err = run_cli("select", db, "--budget", "0.25", "--out", tmp_path / "o" / name, "--format", "parquet")
    assert code == 2 and "side file" in err and not (tmp_path / "o" / name).exists()


def test_4_dotted_names_get_their_own_side_files(db, run_cli, tmp_path):
    for v, b in (("v1.2", "0.2"), ("v1.3", "0.3")):
        assert run_cli("select", db, "--budget", b, "--out", tmp_path / f"{v}.parquet")[0] == 0
    for v, rows in (("v1.2", 800), ("v1.3", 1200)):
        side = json.loads((tmp_path / f"{v}.parquet.sidecar.json").read_text())
        assert side["manifest"]["rows"] == rows and side["manifest"]["sha256"] == _sha(tmp_path / f"{v}.parquet")
        assert len(pq.read_table(tmp_path / f"{v}.parquet.dropped.parquet")) == 4000 - rows
    assert not (tmp_path / "v1.sidecar.json").exists()


def test_5_one_name_two_formats_and_from_writes_what_out_says(db, run_cli, tmp_path):
    assert run_cli("select", db, "--budget", "0.25", "--out", tmp_path / "x.parquet")[0] == 0
    assert run_cli("select", db, "--budget", "0.1", "--out", tmp_path / "x.csv")[0] == 0
    sp, sc = (json.loads((tmp_path / f"x.{e}.sidecar.json").read_text()) for e in ("parquet", "csv"))
    assert (sp["format"], sp["manifest"]["rows"]) == ("parquet", 1000)
    assert (sc["format"], sc["manifest"]["rows"]) == ("csv", 400)
    # the csv export's sidecar reproduced into a .parquet file: Parquet, and said to differ
    code, out, err = run_cli("select", "--from", tmp_path / "x.csv.sidecar.json", "--out", tmp_path / "again.parquet")
    assert code == 0, err
    assert len(pq.read_table(tmp_path / "again.parquet")) == 400
    assert "does not match" in err and "written as csv" in err
    code, out, err = run_cli("select", "--from", tmp_path / "x.csv.sidecar.json", "--out", tmp_path / "again.csv")
    assert code == 0 and "reproduced" in out and _sha(tmp_path / "again.csv") == _sha(tmp_path / "x.csv")


def test_5_existing_export_needs_overwrite(db, run_cli, tmp_path):
    out = tmp_path / "m.parquet"
    assert run_cli("select", db, "--budget", "0.25", "--out", out)[0] == 0
    before = _sha(out)
    code, _, err = run_cli("select", db, "--budget", "0.1", "--out", out)
    assert code == 2 and "already exists" in err and "--overwrite" in err and _sha(out) == before
    assert run_cli("select", db, "--budget", "0.1", "--out", out, "--overwrite")[0] == 0
    assert len(pq.read_table(out)) == 400


def test_5_the_apps_default_export_name_names_dataset_and_run():
    from curation.selection import SelectionConfig

    assert manifest.default_name("medpix", "analysis-3f2a9c1b07de", SelectionConfig(budget=0.25)) == \
        "medpix-3f2a9c1b07de-b0.25"


@pytest.mark.parametrize("name", ["x.txt", "x", "x.yaml"])  # (.npy: DataComp uids; .json: webdataset keys)
def test_6_unknown_suffix_needs_format(db, run_cli, tmp_path, name):
    code, _, err = run_cli("select", db, "--budget", "0.25", "--out", tmp_path / name)
    assert code == 2 and "names no manifest format" in err and not (tmp_path / name).exists()
    assert run_cli("select", db, "--budget", "0.25", "--out", tmp_path / name, "--format", "csv")[0] == 0
    assert len(pd.read_csv(tmp_path / name)) == 1000


# --- ingest --------------------------------------------------------------------------------------
def _clip_folder(d: Path, meta_nums, img_nums, rows=5, dim=4):
    for sub in ("metadata", "img_emb"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for k in meta_nums:
        pq.write_table(pa.table({"image_path": [f"s{k}_{i}.jpg" for i in range(rows)],
                                 "caption": [f"c{k}" for _ in range(rows)]}), d / "metadata" / f"metadata_{k}.parquet")
    for k in img_nums:
        v = np.full((rows, dim), float(k) + 1, np.float32)
        v[:, 0] = np.arange(rows)  # distinct rows, value k+1 elsewhere marks the shard
        np.save(d / "img_emb" / f"img_emb_{k}.npy", v)


def test_7_clip_retrieval_shards_are_paired_by_number(tmp_path, run_cli):
    ok = tmp_path / "ok"
    _clip_folder(ok, [0, 2, 10], [0, 2, 10])  # "10" sorts before "2" as text
    assert run_cli("ingest", tmp_path / "ok.duckdb", "--clip-retrieval", ok)[0] == 0
    with store.open_store(tmp_path / "ok.duckdb") as s:
        ids = s.samples(["id"])["id"].tolist()
        v = s.embeddings("image")
    for i, ident in enumerate(ids):
        assert v[i, 1] == float(ident.split("_")[0][1:]) + 1, (ident, v[i])


@pytest.mark.parametrize("meta, img, extra, message", [
    ([0, 1, 2], [0, 1, 3], None, "shard numbers do not match"),
    ([0, 1], [0, 1], "img_emb_final.npy", "unexpected file img_emb_final.npy"),
])
def test_7_misnumbered_shards_are_refused(tmp_path, run_cli, meta, img, extra, message):
    d = tmp_path / "cr"
    _clip_folder(d, meta, img)
    if extra:
        np.save(d / "img_emb" / extra, np.ones((5, 4), np.float32))
    code, _, err = run_cli("ingest", tmp_path / "x.duckdb", "--clip-retrieval", d)
    assert code == 2 and message in err and not (tmp_path / "x.duckdb").exists()


def _meta_npy(d: Path, csv_text: str, vecs: np.ndarray, encoding_bom=False):
    raw = csv_text.encode()
    (d / "m.csv").write_bytes((b"\xef\xbb\xbf" if encoding_bom else b"") + raw)
    np.save(d / "e.npy", vecs)


def test_8_ids_are_read_as_text_byte_for_byte_with_a_bom(tmp_path, run_cli):
    _meta_npy(tmp_path, "id,site\n00010,A\n0020,B\n30,A\n", np.eye(3, 4, dtype=np.float32), encoding_bom=True)
    assert run_cli("ingest", tmp_path / "x.duckdb", "--metadata", tmp_path / "m.csv", "--image-emb", tmp_path / "e.npy")[0] == 0
    with store.open_store(tmp_path / "x.duckdb") as s:
        assert s.samples(["id"])["id"].tolist() == ["00010", "0020", "30"]


@pytest.mark.parametrize("value, message", [(1e39, "beyond float32's range"), (1e-50, "too small to normalise")])
def test_9_values_outside_float32_are_refused_with_the_row(tmp_path, run_cli, value, message):
    v = np.random.default_rng(0).normal(size=(4, 3))
    if value > 1:
        v[2, 1] = value
    else:
        v[2] = value
    _meta_npy(tmp_path, "id\na\nb\nc\nd\n", v.astype(np.float64))
    code, _, err = run_cli("ingest", tmp_path / "x.duckdb", "--metadata", tmp_path / "m.csv", "--image-emb", tmp_path / "e.npy")
    assert code == 2 and message in err and "row 2" in err and "id 'c'" in err and not (tmp_path / "x.duckdb").exists()


def test_9_parquet_double_lists_outside_float32_are_refused(tmp_path, run_cli):
    pq.write_table(pa.table({"id": ["a", "b"], "emb": pa.array([[1.0, 2.0], [1e39, 0.0]], pa.list_(pa.float64()))}),
                   tmp_path / "p.parquet")
    code, _, err = run_cli("ingest", tmp_path / "x.duckdb", "--parquet", tmp_path / "p.parquet", "--image-column", "emb")
    assert code == 2 and "beyond float32's range" in err and "row 1" in err


def test_10_replace_never_destroys_an_input_or_a_foreign_database(tmp_path, run_cli):
    import duckdb

    _meta_npy(tmp_path, "id\na\nb\n", np.eye(2, 3, dtype=np.float32))
    before = _sha(tmp_path / "m.csv")
    code, _, err = run_cli("ingest", tmp_path / "m.csv", "--metadata", tmp_path / "m.csv", "--image-emb",
                           tmp_path / "e.npy", "--replace")
    assert code == 2 and "one of the input files" in err and _sha(tmp_path / "m.csv") == before
    con = duckdb.connect(str(tmp_path / "foreign.duckdb"))
    con.execute("CREATE TABLE precious AS SELECT 42 AS answer")
    con.close()
    before = _sha(tmp_path / "foreign.duckdb")
    code, _, err = run_cli("ingest", tmp_path / "foreign.duckdb", "--metadata", tmp_path / "m.csv", "--image-emb",
                           tmp_path / "e.npy", "--replace")
    assert code == 2 and "not a curation dataset" in err and _sha(tmp_path / "foreign.duckdb") == before
    (tmp_path / "notes.txt").write_text("keep me")
    code, _, err = run_cli("ingest", tmp_path / "notes.txt", "--metadata", tmp_path / "m.csv", "--image-emb",
                           tmp_path / "e.npy", "--replace")
    assert code == 2 and (tmp_path / "notes.txt").read_text() == "keep me"


def test_11_stale_temp_files_are_removed_by_the_next_write(tmp_path, run_cli):
    _meta_npy(tmp_path, "id\na\nb\n", np.eye(2, 3, dtype=np.float32))
    args = ("--metadata", tmp_path / "m.csv", "--image-emb", tmp_path / "e.npy")
    target = tmp_path / "d.duckdb"
    assert run_cli("ingest", target, *args)[0] == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has exited
    stale = [tmp_path / f".d.duckdb.tmp-{dead}-0badc0de", tmp_path / f".d.duckdb.tmp-{dead}-0badc0de.wal",
             tmp_path / ".d.duckdb.tmp-1a2b3c4d"]  # the last: an older version's name, no pid
    live = tmp_path / f".d.duckdb.tmp-{os.getpid()}-feedf00d"  # a writer still running: left alone
    for f in stale + [live]:
        f.write_bytes(b"x" * 1000)
    assert run_cli("ingest", target, *args, "--replace")[0] == 0
    assert not any(f.exists() for f in stale) and live.exists()


# --- ratings -------------------------------------------------------------------------------------
class RawServer:
    """Answers every POST with raw bytes: for responses no well-behaved server sends."""

    def __init__(self, raw: bytes, delay: float = 0.0):
        self.raw, self.delay, self.count = raw, delay, 0
        self.times = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            self.count += 1
            self.times.append(time.monotonic())
            if self.delay:
                time.sleep(self.delay)
            conn.sendall(self.raw)

    def close(self):
        self.stop.set()
        self.sock.close()


def _http(body: bytes, status=b"HTTP/1.1 200 OK", length=None) -> bytes:
    n = len(body) if length is None else length
    return status + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(n).encode() + \
        b"\r\nConnection: close\r\n\r\n" + body


def _chat(content) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()




_ratings = stored_ratings


@pytest.mark.parametrize("raw, shown", [
    (_http(_chat(None)), '"content": null'),
    (_http(_chat(5)), '"content": 5'),
    (_http(b'{"choices": [{"message": {"content": "\xff\xfe not utf-8"}}]}'), "not utf-8"),
])
def test_12_answers_of_any_shape_are_stored_as_malformed(demo_copy, raw, shown):
    srv = RawServer(raw)
    try:
        counts = reward.annotate(demo_copy, srv.url, "m", 3, concurrency=1, retries=0, progress=False)
    finally:
        srv.close()
    assert counts["malformed"] == 3 and counts["rated"] == 0
    r = _ratings(demo_copy)
    assert (r["status"] == "malformed").sum() == 3 and r["answer"].str.contains(shown, regex=False).all()


@pytest.mark.parametrize("raw", [_http(_chat('{"fidelity": 5, "consistency": 5}'), length=4000),  # truncated
                                 b"HTTP/1.1 abc\r\n\r\n"])  # a bad status line
def test_12_broken_responses_keep_what_was_gathered(demo_copy, raw):
    from curation import CurationError

    good = RawServer(_http(_chat('{"fidelity": 4, "consistency": 3}')))
    try:
        assert reward.annotate(demo_copy, good.url, "m", 4, concurrency=1, progress=False)["rated"] == 4
    finally:
        good.close()
    bad = RawServer(raw)
    try:
        with pytest.raises(CurationError, match="not answering"):
            reward.annotate(demo_copy, bad.url, "m", 3, concurrency=1, down_retries=0, progress=False)
    finally:
        bad.close()
    r = _ratings(demo_copy)
    assert (r["status"] == "ok").sum() == 4  # the first run's ratings are intact
    assert (r["status"] == "transport_error").sum() == 1 and r["answer"].iloc[-1]


def test_13_sigint_stops_within_a_second_and_keeps_the_ratings(demo_copy):
    srv = RawServer(_http(_chat('{"fidelity": 4, "consistency": 3}')), delay=0.3)
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        p = subprocess.Popen([sys.executable, "-m", "curation", "reward", "annotate", str(demo_copy), "--endpoint",
                              srv.url, "--model", "m", "--sample", "400", "--concurrency", "2", "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while srv.count < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        t_int = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        took = time.monotonic() - t_int
    finally:
        srv.close()
    assert p.returncode == 130, err
    assert "interrupted; ratings received before the interrupt are stored" in err and "Traceback" not in err
    late = [t for t in srv.times if t > t_int + 1.0]
    assert not late, f"{len(late)} requests sent more than 1 s after Ctrl-C"
    assert took < 5
    r = _ratings(demo_copy)
    assert r is not None and (r["status"] == "ok").sum() >= 4


@pytest.mark.parametrize("csv, message", [
    ("id,fidelity\ndemo-000001,1e308\ndemo-000002,3\n", "not a usable number"),
    ("id,fidelity\ndemo-000001,inf\ndemo-000002,3\n", "not a usable number"),
    ("id,fidelity\ndemo-000001,-1e308\ndemo-000002,3\n", "not a usable number"),
    ("id,fidelity,fidelity\ndemo-000001,1,2\n", "appear more than once"),
])
def test_14_bad_ratings_files_are_refused(demo_copy, tmp_path, run_cli, csv, message):
    (tmp_path / "r.csv").write_text(csv)
    code, _, err = run_cli("reward", "train", demo_copy, "--ratings", tmp_path / "r.csv", "--quiet")
    assert code == 2 and message in err and _one_line(err)
    with store.open_store(demo_copy) as s:
        assert not s.has_table("reward_models")


def test_15_an_edited_sidecar_does_not_pass_silently(db, run_cli, tmp_path):
    assert run_cli("select", db, "--budget", "0.25", "--out", tmp_path / "a.parquet")[0] == 0
    side = json.loads((tmp_path / "a.parquet.sidecar.json").read_text())
    side["config"]["budget"] = 0.3
    (tmp_path / "edited.json").write_text(json.dumps(side))
    code, _, err = run_cli("select", "--from", tmp_path / "edited.json", "--out", tmp_path / "b.parquet")
    assert code == 0 and "does not match" in err and "edited" in err
    side = json.loads((tmp_path / "a.parquet.sidecar.json").read_text())
    side["manifest"]["sha256"] = "0" * 64
    (tmp_path / "hash.json").write_text(json.dumps(side))
    code, _, err = run_cli("select", "--from", tmp_path / "hash.json", "--out", tmp_path / "c.parquet")
    assert code == 0 and "does not match" in err


# --- the inputs that used to end in a traceback ----------------------------------------------------
def test_npz_under_an_npy_name(tmp_path, run_cli):
    (tmp_path / "m.csv").write_text("id\na\nb\n")
    np.savez(tmp_path / "e.npz", weights=np.eye(2, 3))
    (tmp_path / "e.npz").rename(tmp_path / "e.npy")
    code, _, err = run_cli("ingest", tmp_path / "x.duckdb", "--metadata", tmp_path / "m.csv", "--image-emb", tmp_path / "e.npy")
    assert code == 2 and ".npz archive (arrays weights)" in err and "e.npy:weights" in err and _one_line(err)
    code, _, err = run_cli("ingest", tmp_path / "x.duckdb", "--metadata", tmp_path / "m.csv", "--image-emb",
                           f"{tmp_path / 'e.npy'}:weights")
    assert code == 0, err  # naming the array reads it, whatever the file is called


def test_csv_with_duplicate_column_names(tmp_path, run_cli):
    _meta_npy(tmp_path, "id,site,site\na,A,B\nb,A,B\n", np.eye(2, 3, dtype=np.float32))
    code, _, err = run_cli("ingest", tmp_path / "x.duckdb", "--metadata", tmp_path / "m.csv", "--image-emb", tmp_path / "e.npy")
    assert code == 2 and "'site' appear more than once" in err and _one_line(err)


def test_parquet_folder_disagreeing_on_a_column_type(tmp_path, run_cli):
    d = tmp_path / "pq"
    d.mkdir()
    emb = pa.array([[1.0, 0.0], [0.0, 1.0]], pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": ["a", "b"], "age": [30, 40], "emb": emb}), d / "a.parquet")
    pq.write_table(pa.table({"id": ["c", "d"], "age": ["x", "y"], "emb": emb}), d / "b.parquet")
    code, _, err = run_cli("ingest", tmp_path / "x.duckdb", "--parquet", d, "--image-column", "emb")
    assert code == 2 and "column 'age'" in err and "disagree" in err and _one_line(err)


@pytest.mark.parametrize("content, message", [("{not json", "not valid UTF-8 JSON"), ("[1, 2]", "found a list"),
                                              ('{"complete": true}', "names no model")])
def test_bad_embed_info(tmp_path, run_cli, content, message):
    d = tmp_path / "cr"
    _clip_folder(d, [0], [0])
    (d / "embed_info.json").write_text(content)
    code, _, err = run_cli("ingest", tmp_path / "x.duckdb", "--clip-retrieval", d)
    assert code == 2 and message in err and _one_line(err)


def test_dataset_meta_without_n_rows(db, run_cli):
    with store.open_store(db, read_only=False) as s:
        s.con.execute("DELETE FROM dataset_meta WHERE key = 'n_rows'")
    code, _, err = run_cli("info", db)
    assert code == 2 and "lacks n_rows" in err and _one_line(err)


def test_ingest_where_the_folder_cannot_be_made(tmp_path, run_cli):
    _meta_npy(tmp_path, "id\na\nb\n", np.eye(2, 3, dtype=np.float32))
    (tmp_path / "afile").write_text("x")
    for target in (tmp_path / "afile" / "sub" / "x.duckdb", Path("/proc/curation-test/x.duckdb")):
        code, _, err = run_cli("ingest", target, "--metadata", tmp_path / "m.csv", "--image-emb", tmp_path / "e.npy")
        assert code == 2 and "Fix:" in err and _one_line(err), err


def test_ingest_onto_an_existing_folder(tmp_path, run_cli):
    _meta_npy(tmp_path, "id\na\nb\n", np.eye(2, 3, dtype=np.float32))
    (tmp_path / "dir.duckdb").mkdir()
    code, _, err = run_cli("ingest", tmp_path / "dir.duckdb", "--metadata", tmp_path / "m.csv", "--image-emb",
                           tmp_path / "e.npy", "--replace")
    assert code == 2 and "is a folder" in err and (tmp_path / "dir.duckdb").is_dir()


def test_ctrl_c_inside_a_duckdb_query_during_ingest(tmp_path, run_cli, monkeypatch):
    import duckdb

    _meta_npy(tmp_path, "id\na\nb\n", np.eye(2, 3, dtype=np.float32))
    real = duckdb.connect

    class Interrupting:
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *a):
            if sql.startswith("CREATE TABLE"):
                raise duckdb.InterruptException("INTERRUPT Error: Interrupted!")
            return self.con.execute(sql, *a)

        def __getattr__(self, name):
            return getattr(self.con, name)

    monkeypatch.setattr(duckdb, "connect", lambda *a, **k: Interrupting(real(*a, **k)))
    code, _, err = run_cli("ingest", tmp_path / "x.duckdb", "--metadata", tmp_path / "m.csv", "--image-emb", tmp_path / "e.npy")
    assert code == 130 and "interrupted; nothing was written" in err
    assert not (tmp_path / "x.duckdb").exists() and not list(tmp_path.glob(".x.duckdb.tmp-*"))


def test_a_failed_write_reports_the_real_error(db, monkeypatch):
    """A statement failing inside a write transaction: the real error, not "cannot rollback"."""
    from curation.errors import CurationError

    real = store.quote_ident
    monkeypatch.setattr(store, "quote_ident", lambda n: "(not sql" if n == "u" else real(n))
    with store.open_store(db, read_only=False) as s, pytest.raises(CurationError) as e:
        s.write_tables({"t": pd.DataFrame({"a": [1]}), "u": pd.DataFrame({"a": [1]})})
    assert "rollback" not in str(e.value) and "Nothing was changed" in str(e.value)
    with store.open_store(db) as s:
        assert not s.has_table("t")


@pytest.mark.parametrize("args, message", [
    (("--budget", "inf"), "positive count"),
    (("--budget", "0.0001"), "rounds to 0 samples"),
    (("--budget", "10", "--filter", 'site == ["A"]'), "JSON list"),
    (("--budget", "10", "--out-dir"), None),
])
def test_select_bad_values(db, run_cli, tmp_path, args, message):
    if message is None:  # an existing directory, and an empty name
        (tmp_path / "adir").mkdir()
        for out, msg in ((tmp_path / "adir", "is a directory"), ("", "--out is empty")):
            code, _, err = run_cli("select", db, "--budget", "10", "--out", out, "--format", "csv")
            assert code == 2 and msg in err and _one_line(err)
        return
    code, _, err = run_cli("select", db, *args, "--out", tmp_path / "m.parquet")
    assert code == 2 and message in err and _one_line(err) and not (tmp_path / "m.parquet").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda s: [s], "is a JSON list"),
    (lambda s: {**s, "dataset": "data/demo.duckdb"}, "'dataset' must be an object"),
    (lambda s: {**s, "analysis_run": "bogus"}, "no analysis run 'bogus'"),
    (lambda s: {**s, "config": {**s["config"], "gates": [{"axis": "fidelity", "top_q": "abc"}]}}, "'top_q' is a number"),
    (lambda s: {**s, "config": {**s["config"], "seed": "x"}}, "'seed' is 'x'"),
    (lambda s: {**s, "config": {**s["config"], "dedup_eps": "0.05"}}, "'dedup_eps' is '0.05'"),
    (None, "not UTF-8"),
])
def test_from_a_damaged_sidecar(db, run_cli, tmp_path, edit, message):
    assert run_cli("select", db, "--budget", "0.25", "--out", tmp_path / "a.parquet")[0] == 0
    side = json.loads((tmp_path / "a.parquet.sidecar.json").read_text())
    if edit is None:
        (tmp_path / "s.json").write_bytes(b"\xff\xfe" + json.dumps(side).encode())
    else:
        (tmp_path / "s.json").write_text(json.dumps(edit(side)))
    code, _, err = run_cli("select", "--from", tmp_path / "s.json", "--out", tmp_path / "b.parquet")
    assert code == 2 and message in err and _one_line(err), err
    assert not (tmp_path / "b.parquet").exists()


@pytest.mark.parametrize("args, message", [(("--random", "0"), "--random 0"),
                                           (("--split-column", "nosuch"), "--split-column 'nosuch'")])
def test_evaluate_bad_values(db, run_cli, args, message):
    code, _, err = run_cli("evaluate", db, "--label", "finding", *args)
    assert code == 2 and message in err and _one_line(err)


@pytest.mark.parametrize("n", [1, 2])
def test_map_on_a_tiny_dataset(tmp_path, run_cli, n):
    _meta_npy(tmp_path, "id\n" + "".join(f"s{i}\n" for i in range(n)), np.eye(n, 3, dtype=np.float32) + 0.1)
    assert run_cli("ingest", tmp_path / "x.duckdb", "--metadata", tmp_path / "m.csv", "--image-emb", tmp_path / "e.npy")[0] == 0
    code, _, err = run_cli("analyze", tmp_path / "x.duckdb", "--steps", "map")
    assert code == 2 and "at least 20 samples" in err and _one_line(err)


def test_select_into_a_closed_pipe(db, tmp_path):
    cmd = (f"{sys.executable} -m curation select {db} --budget 0.25 --out {tmp_path / 'm.parquet'} | head -1")
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert p.returncode == 0 and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def test_a_10mb_caption_is_ingested(tmp_path, run_cli):
    big = "x" * (10 * 2**20)
    _meta_npy(tmp_path, f"id,caption\na,short\nb,{big}\nc,short\n", np.eye(3, 4, dtype=np.float32))
    code, _, err = run_cli("ingest", tmp_path / "x.duckdb", "--metadata", tmp_path / "m.csv", "--text-emb", tmp_path / "e.npy")
    assert code == 0, err
    with store.open_store(tmp_path / "x.duckdb") as s:
        assert s.samples(["caption"])["caption"].str.len().tolist() == [5, len(big), 5]


def test_a_ragged_csv_row_is_named(tmp_path, run_cli):
    _meta_npy(tmp_path, "id,site,sex\na,A,F\nb,B\nc,A,M\n", np.eye(3, 4, dtype=np.float32))
    code, _, err = run_cli("ingest", tmp_path / "x.duckdb", "--metadata", tmp_path / "m.csv", "--image-emb", tmp_path / "e.npy")
    assert code == 2 and "line 3 of the file" in err and _one_line(err)


def test_an_empty_first_parquet_list_is_blamed_on_its_row(tmp_path, run_cli):
    pq.write_table(pa.table({"id": ["a", "b", "c"], "emb": pa.array([[], [1.0, 2.0], [3.0, 4.0]],
                                                                     pa.list_(pa.float32()))}), tmp_path / "p.parquet")
    code, _, err = run_cli("ingest", tmp_path / "x.duckdb", "--parquet", tmp_path / "p.parquet", "--image-column", "emb")
    assert code == 2 and "empty embedding" in err and "row 0" in err


def test_an_internal_error_exits_1_with_a_hint(db, run_cli, monkeypatch):
    from curation import cli

    monkeypatch.setitem(cli.HANDLERS, "info", lambda a: 1 / 0)  # a bug inside a command
    code, _, err = run_cli("info", db)
    assert code == 1 and "internal error: ZeroDivisionError" in err and "Please report it" in err
    assert "Traceback" not in err
