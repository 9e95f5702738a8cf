"""Issue 23, trust round 2: nothing lost (WAL-named exports, re-saved id sets, concurrent ingests,
export sets cut by kill or Ctrl-C, annotate without images), one meaning per value (budget 1,
--from with knobs, strata keys, manifest column names, exact ids), damaged or newer datasets, and
numbers out of range: each a clear error, a non-zero exit, nothing changed."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from curation import atomic, id_sets, images, manifest, store
from curation.errors import CurationError, InterruptedAfterWrite

ROOT = Path(__file__).resolve().parents[1]


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _one_line(err: str) -> bool:
    return "Traceback" not in err and "internal error" not in err and err.strip().startswith("error: ")


def _cli(*args, env=None, stdout=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "curation", *map(str, args)], cwd=ROOT, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, timeout=300)


# --- nothing lost -----------------------------------------------------------------------------------
def test_an_export_named_like_the_datasets_wal_is_refused_and_the_dataset_opens(analyzed_copy, run_cli, tmp_path):
    before = _sha(analyzed_copy)
    for out in (f"{analyzed_copy}.wal", f"{analyzed_copy}.tmp"):
        code, out_, err = run_cli("select", analyzed_copy, "--budget", "0.1", "--out", out, "--format", "parquet")
        assert code == 2 and "side files" in err and _one_line(err), err
        assert not Path(out).exists()
    assert _sha(analyzed_copy) == before
    assert run_cli("info", analyzed_copy)[0] == 0


def test_a_saved_id_set_saved_again_keeps_the_export_reproducible(analyzed_copy, run_cli, tmp_path):
    code, _, err = run_cli("search", analyzed_copy, "pneumonia", "--save", "hits")
    assert code == 0, err
    out = tmp_path / "a.parquet"
    assert run_cli("select", analyzed_copy, "--budget", "200", "--exclude-set", "hits", "--out", out)[0] == 0
    code, _, err = run_cli("search", analyzed_copy, "fracture", "--save", "hits")  # the name now means other rows
    assert code == 0, err
    with store.open_store(analyzed_copy) as s:
        latest = id_sets.refs(s)
        versions = [r for r in id_sets.rows(s) if r.startswith("hits@")]
    assert len(versions) == 2 and len([r for r in latest if r.startswith("hits@")]) == 1
    side = json.loads((tmp_path / "a.parquet.sidecar.json").read_text())
    assert side["config"]["exclude_sets"][0] in versions and side["config"]["exclude_sets"][0] not in latest
    code, stdout, err = run_cli("select", "--from", tmp_path / "a.parquet.sidecar.json", "--out", tmp_path / "b.parquet")
    assert code == 0 and "reproduced" in stdout and _sha(out) == _sha(tmp_path / "b.parquet"), err
    # saving the same content again stores no new version
    assert run_cli("search", analyzed_copy, "fracture", "--save", "hits")[0] == 0
    with store.open_store(analyzed_copy) as s:
        assert len([r for r in id_sets.rows(s) if r.startswith("hits@")]) == 2


def test_two_concurrent_ingests_to_one_new_path_one_fails_cleanly(tmp_path):
    rng = np.random.default_rng(0)
    procs = []
    for i in (0, 1):
        n = 30_000
        np.save(tmp_path / f"v{i}.npy", rng.normal(size=(n, 64)).astype(np.float32))
        pd.DataFrame({"id": [f"r{i}-{j}" for j in range(n)], "caption": ["c"] * n}).to_csv(tmp_path / f"m{i}.csv",
                                                                                          index=False)
    db = tmp_path / "same.duckdb"
    for i in (0, 1):
        procs.append(subprocess.Popen([sys.executable, "-m", "curation", "ingest", db, "--metadata",
                                       tmp_path / f"m{i}.csv", "--text-emb", tmp_path / f"v{i}.npy"], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    ok = [i for i, (code, _, _) in enumerate(results) if code == 0]
    assert len(ok) == 1, results
    loser = results[1 - ok[0]]
    assert loser[0] == 2 and ("already exists" in loser[2] or "created by another process" in loser[2]), loser
    with store.open_store(db) as s:
        assert s.samples(["id"])["id"].iat[0] == f"r{ok[0]}-0"
    assert not [f for f in tmp_path.iterdir() if ".tmp-" in f.name]


def _export_once(analyzed_copy, out, budget=0.1):
    from curation import runs, selection

    with store.open_store(analyzed_copy) as s:
        run_id = runs.require(s, None).run_id
        inp = selection.load_inputs(s, run_id)
        res = selection.select(inp, selection.SelectionConfig(budget=budget))
        return manifest.export(s, inp, res, selection.SelectionConfig(budget=budget), run_id, out, overwrite=True)


def test_an_export_cut_between_its_files_never_pairs_new_data_with_an_old_sidecar(analyzed_copy, tmp_path,
                                                                                 monkeypatch):
    out = tmp_path / "s.parquet"
    _export_once(analyzed_copy, out, 0.1)
    real = os.replace
    for cut_at in range(3):  # the process dies before the 1st, 2nd or 3rd rename
        calls = []

        def dying_replace(src, dst, _cut=cut_at):
            if len(calls) == _cut:
                raise SystemExit("killed")
            calls.append(dst)
            return real(src, dst)

        monkeypatch.setattr(atomic.os, "replace", dying_replace)
        with pytest.raises(SystemExit):
            _export_once(analyzed_copy, out, 0.2 if cut_at % 2 == 0 else 0.1)
        monkeypatch.setattr(atomic.os, "replace", real)
        side = manifest.paths_for(out)["sidecar"]
        # a reader's rule: an export is complete when its sidecar exists and names the manifest's hash
        if side.exists():
            assert json.loads(side.read_text())["manifest"]["sha256"] == _sha(out)
        _export_once(analyzed_copy, out, 0.1)  # the next export repairs the set
        assert json.loads(side.read_text())["manifest"]["sha256"] == _sha(out)
    assert not [f for f in tmp_path.iterdir() if ".tmp-" in f.name]


def test_ctrl_c_while_an_export_moves_into_place_is_held_and_reported_truthfully(analyzed_copy, tmp_path,
                                                                               monkeypatch, run_cli):
    real = os.replace
    sent = []

    def replace_and_interrupt(src, dst):
        if not sent:
            sent.append(dst)
            os.kill(os.getpid(), signal.SIGINT)  # arrives between two renames
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_and_interrupt)
    out = tmp_path / "i.parquet"
    code, stdout, err = run_cli("select", analyzed_copy, "--budget", "0.1", "--out", out)
    assert code == 130 and "written before the interrupt took effect (complete)" in err, err
    side = json.loads(manifest.paths_for(out)["sidecar"].read_text())
    assert side["manifest"]["sha256"] == _sha(out) and side["dropped"]["sha256"] == _sha(manifest.paths_for(out)["dropped"])
    with pytest.raises(InterruptedAfterWrite):  # the library says so too
        sent.clear()
        _export_once(analyzed_copy, out)


def test_atomic_exclusive_create_refuses_a_path_another_writer_took(tmp_path):
    target = tmp_path / "x.bin"

    def write(tmp):
        Path(tmp).write_text("mine")
        target.write_text("theirs")  # another process finished first

    with pytest.raises(FileExistsError):
        atomic.atomic_write(target, write, exclusive=True)
    assert target.read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_annotate_never_stores_pairs_it_did_not_send(demo_copy, tmp_path):
    from curation import reward
    from fake_mllm import FakeMLLM

    with store.open_store(demo_copy) as s:
        root = s.image_root()
    moved = tmp_path / "moved"
    shutil.move(str(root), moved)  # no image readable
    with FakeMLLM(lambda body, n: '{"fidelity": 4, "consistency": 5}') as srv:
        counts = reward.annotate(demo_copy, srv.url, "fake-vlm", 8, progress=False)
        assert counts["no_image"] == 8 and counts["rated"] == 0 and not srv.requests
        with store.open_store(demo_copy) as s:
            assert not s.has_table("reward_ratings") or len(s.read_table("reward_ratings")) == 0
        shutil.move(str(moved), root)
        counts = reward.annotate(demo_copy, srv.url, "fake-vlm", 8, progress=False)
        assert counts["rated"] == 8  # the rerun rates them: nothing was marked done
        for kw in ({"retries": -1}, {"timeout": -1}, {"timeout": float("nan")}, {"concurrency": 0}):
            with pytest.raises(CurationError, match="--retries|--timeout|--concurrency"):
                reward.annotate(demo_copy, srv.url, "fake-vlm", 8, progress=False, **kw)


# --- one meaning per value -------------------------------------------------------------------------
def test_budget_one_means_one_sample_and_one_point_zero_the_pool_in_every_face(analyzed_copy, run_cli, tmp_path):
    from curation import selection

    assert selection.parse_budget("1") == 1 and selection.parse_budget(1) == 1
    assert selection.parse_budget("1.0") == 1.0 and isinstance(selection.parse_budget("1.0"), float)
    assert selection.SelectionConfig.from_dict({"budget": 1}).budget_count(4000) == 1
    assert selection.SelectionConfig.from_dict({"budget": 1.0}).budget_count(4000) == 4000
    code, stdout, err = run_cli("select", analyzed_copy, "--budget", "1", "--out", tmp_path / "one.parquet")
    assert code == 0 and len(pd.read_parquet(tmp_path / "one.parquet")) == 1, err
    (tmp_path / "c.json").write_text(json.dumps({"budget": 1}))
    code, stdout, err = run_cli("select", analyzed_copy, "--config", tmp_path / "c.json", "--out", tmp_path / "c.parquet")
    assert code == 0 and len(pd.read_parquet(tmp_path / "c.parquet")) == 1, err


def test_from_refuses_knobs_and_config_takes_a_sidecar(analyzed_copy, run_cli, tmp_path):
    out = tmp_path / "a.parquet"
    assert run_cli("select", analyzed_copy, "--budget", "0.25", "--confounders", "site", "--out", out)[0] == 0
    side = tmp_path / "a.parquet.sidecar.json"
    code, _, err = run_cli("select", "--from", side, "--budget", "0.9", "--out", tmp_path / "b.parquet")
    assert code == 2 and "--budget would change it" in err and _one_line(err)
    assert not (tmp_path / "b.parquet").exists()
    code, stdout, err = run_cli("select", analyzed_copy, "--config", side, "--budget", "0.5", "--out", tmp_path / "c.parquet")
    assert code == 0, err
    c = json.loads((tmp_path / "c.parquet.sidecar.json").read_text())["config"]
    assert c["budget"] == 0.5 and c["confounders"] == ["site"]


def test_strata_keys_never_overflow():
    from curation.selection import strata

    rng = np.random.default_rng(0)
    n = 5000
    meta = pd.DataFrame({f"c{j}": rng.integers(0, 4000, n).astype(str) for j in range(6)})  # 4000^6 > 2^63
    codes, labels, sizes = strata(meta, list(meta.columns))
    own = meta.astype(str).agg(" | ".join, axis=1).to_numpy()
    assert (np.asarray(labels)[codes] == own).all()
    assert labels == sorted(labels, key=lambda t: t.split(" | "))  # strata in lexicographic level order
    assert sizes.sum() == n
    small = meta.iloc[:, :2]  # no renumbering needed: the same codes as one lexicographic factorisation
    codes2, labels2, _ = strata(small, list(small.columns))
    assert (np.asarray(labels2)[codes2] == small.agg(" | ".join, axis=1).to_numpy()).all()


def test_manifest_column_names_never_collide():
    from curation.manifest import metadata_names

    assert metadata_names(["meta_rank", "rank"], ["id", "rank", "reason"]) == {"meta_rank": "meta_rank",
                                                                                "rank": "meta_meta_rank"}
    assert metadata_names(["rank", "meta_rank"], ["id", "rank"]) == {"rank": "meta_meta_rank", "meta_rank": "meta_rank"}
    assert metadata_names(["site"], ["id"]) == {"site": "site"}


def test_ids_in_files_are_exact(analyzed_copy, run_cli, tmp_path):
    with store.open_store(analyzed_copy) as s:
        first = s.samples(["id"])["id"].iat[0]
    (tmp_path / "spaced.txt").write_text(f" {first}\n")
    code, _, err = run_cli("select", analyzed_copy, "--budget", "10", "--exclude-ids", tmp_path / "spaced.txt",
                           "--out", tmp_path / "x.parquet")
    assert code == 2 and f"' {first}'" in err
    (tmp_path / "crlf.txt").write_bytes(f"{first}\r\n".encode())
    code, _, err = run_cli("select", analyzed_copy, "--budget", "10", "--exclude-ids", tmp_path / "crlf.txt",
                           "--out", tmp_path / "y.parquet")
    assert code == 0 and first not in set(pd.read_parquet(tmp_path / "y.parquet").id), err


# --- damaged, newer or edited datasets ----------------------------------------------------------------
def test_damaged_newer_and_edited_datasets_are_refused_with_the_fix(analyzed_copy, run_cli, tmp_path):
    cut = tmp_path / "cut.duckdb"
    cut.write_bytes(analyzed_copy.read_bytes()[:100_000])
    code, _, err = run_cli("info", cut)
    assert code == 2 and "damaged" in err and _one_line(err)

    def edited(name, sql):
        p = tmp_path / f"{name}.duckdb"
        shutil.copy(analyzed_copy, p)
        con = duckdb.connect(str(p))
        con.execute(sql)
        con.close()
        return p

    newer = edited("newer", "UPDATE dataset_meta SET value = '99' WHERE key = 'schema_version'")
    before = _sha(newer)
    code, _, err = run_cli("select", newer, "--budget", "0.1", "--out", tmp_path / "n.parquet")
    assert code == 2 and "newer curation" in err and "99" in err and _sha(newer) == before
    noemb = edited("noemb", "DROP TABLE embeddings")
    code, _, err = run_cli("info", noemb)
    assert code == 2 and "lacks its embeddings table" in err
    with store.open_store(analyzed_copy) as s:
        atab = [t for t in s.tables() if t.startswith("analysis_")][0]
    bad_proto = edited("proto", f"UPDATE {atab} SET prototype = 999 WHERE row_idx = 3")
    code, _, err = run_cli("select", bad_proto, "--budget", "0.1", "--out", tmp_path / "p.parquet")
    assert code == 2 and "[999]" in err and "not in its prototypes table" in err and _one_line(err)
    gone = edited("gone", "DELETE FROM samples WHERE row_idx = 5")
    code, _, err = run_cli("select", gone, "--budget", "0.1", "--out", tmp_path / "g.parquet")
    assert code == 2 and "does not match its analysis run" in err and _one_line(err)


# --- numbers out of range, and the terminal --------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["analyze", "{db}", "--seed", "-1"], "seed -1"),
    (["analyze", "{db}", "--seed", str(2**64)], "seed"),
    (["analyze", "{db}", "--map-fit-max", "0"], "map_fit_max"),
    (["select", "{db}", "--budget", "0.1", "--seed", "-1", "--out", "{tmp}/s.parquet"], "seed -1"),
    (["demo", "--db", "{tmp}/d.duckdb", "--dim", "0", "--no-images"], "--dim 0"),
    (["demo", "--db", "{tmp}/d.duckdb", "--dim", "-1", "--no-images"], "--dim -1"),
    (["select", "{db}", "--budget", "0.1", "--out", "{tmp}/" + "a" * 240 + ".parquet"], "too long"),
])
def test_numbers_and_names_out_of_range_are_one_clear_error(analyzed_copy, run_cli, tmp_path, args, words):
    before = _sha(analyzed_copy)
    code, _, err = run_cli(*[a.format(db=analyzed_copy, tmp=tmp_path) for a in args])
    assert code == 2 and words in err and _one_line(err), err
    assert _sha(analyzed_copy) == before


def test_embed_config_bounds_workers():
    from curation.embed import EmbedConfig

    with pytest.raises(CurationError, match="--workers -1"):
        EmbedConfig(model="ViT-B-16", workers=-1).check()


def test_stdout_to_a_full_disk_and_an_ascii_terminal(analyzed_copy, tmp_path):
    with open("/dev/full", "w") as full:
        r = _cli("info", analyzed_copy, stdout=full)
    assert r.returncode == 2 and "No space left" in r.stderr and "Traceback" not in r.stderr
    con = duckdb.connect(str(analyzed_copy))
    con.execute("UPDATE samples SET caption = 'Pneumonía in the left lung' WHERE row_idx = 0")
    con.close()
    r = _cli("search", analyzed_copy, "Pneumon", env={"PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0 and "Pneumon\\xeda" in r.stdout, r.stderr


# --- inputs found bad before any work ------------------------------------------------------------
def test_float16_metadata_column_ingests_as_float32(run_cli, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 40
    pq.write_table(pa.table({"id": [f"x{i}" for i in range(n)], "caption": ["c"] * n,
                             "h": pa.array(np.linspace(0, 1, n).astype(np.float16))}), tmp_path / "m.parquet")
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32))
    code, _, err = run_cli("ingest", tmp_path / "f.duckdb", "--metadata", tmp_path / "m.parquet",
                           "--text-emb", tmp_path / "v.npy")
    assert code == 0, err
    with store.open_store(tmp_path / "f.duckdb") as s:
        assert dict(s.columns())["h"] == "FLOAT"
        assert s.samples(["h"])["h"].tolist() == np.linspace(0, 1, n).astype(np.float16).astype(np.float32).tolist()


def test_a_captions_table_with_a_duplicate_id_is_refused_before_embedding(run_cli, tmp_path):
    pd.DataFrame({"id": ["a", "b", "a"], "image": ["1.jpg", "2.jpg", "3.jpg"], "caption": list("xyz")}).to_csv(
        tmp_path / "c.csv", index=False)
    code, _, err = run_cli("embed", tmp_path / "out", "--captions", tmp_path / "c.csv", "--model", "ViT-B-32",
                           "--pretrained", "random", "--device", "cpu")
    assert code == 2 and "id 'a' appears more than once" in err and "row 2" in err and _one_line(err)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.npy"))


def test_a_junk_pretrained_file_is_one_clear_error(tmp_path):
    from curation.models import load_model

    junk = tmp_path / "weights.bin"
    junk.write_bytes(b"junk\n" * 10)
    with pytest.raises(CurationError, match="is not an open_clip checkpoint"):
        load_model("ViT-B-32", str(junk))


def test_a_symlink_loop_in_an_image_table_is_one_clear_error(tmp_path):
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    with pytest.raises(CurationError, match="cannot be resolved|is missing"):
        images.resolve_image(tmp_path, "a.jpg")


def test_missing_images_say_how_to_unpack_their_archive(tmp_path):
    (tmp_path / "images.tgz").write_bytes(b"")
    with pytest.raises(CurationError, match=r"images.tgz does: unpack it \(tar -xzf"):
        images.resolve_image(tmp_path, "images/x.jpg")


# --- found by a hostile-input pass over the new flags ------------------------------------------------
def test_seeds_above_int32_are_one_clear_error(analyzed_copy, run_cli):
    code, _, err = run_cli("analyze", analyzed_copy, "--seed", str(2**31), "--steps", "prototypes")
    assert code == 2 and "seed" in err and _one_line(err), err


def test_search_save_stores_every_match_not_only_those_shown(analyzed_copy, run_cli):
    code, _, err = run_cli("search", analyzed_copy, "normal", "--limit", "5", "--save", "normals")
    assert code == 0, err
    with store.open_store(analyzed_copy) as s:
        n = len(s.search_captions("normal", s.n_rows))
        saved = id_sets.rows(s)[id_sets.refs(s)[0]]
    assert n > 5 and len(saved) == n and f"saved {n:,} match(es)" in err
    code, _, err = run_cli("search", analyzed_copy, "normal", "--save", "")
    assert code == 2 and "--save needs a set name" in err


def test_column_types_conflicts_and_empty_items_are_refused():
    from curation.errors import InputError
    from curation.tables import parse_column_types

    assert parse_column_types("zip=text, age=number") == {"zip": "text", "age": "number"}
    for bad, words in (("flag=boolean,flag=text", "two types"), ("flag=boolean,,age=number", "empty item"),
                       ("", "is empty"), ("zip", "COLUMN=TYPE")):
        with pytest.raises(InputError, match=words):
            parse_column_types(bad)


def test_rules_that_cannot_match_warn_and_a_reproduction_says_why_it_differs(analyzed_copy, run_cli, tmp_path):
    code, _, err = run_cli("select", analyzed_copy, "--budget", "10", "--filter", "site in A,B",
                           "--out", tmp_path / "f.parquet")
    assert code == 0 and "warning: filter site in ['A', 'B'] matches no row of the pool" in err and "site_" in err
    assert run_cli("select", analyzed_copy, "--budget", "0.1", "--out", tmp_path / "a.parquet")[0] == 0
    side = tmp_path / "a.parquet.sidecar.json"
    code, _, err = run_cli("select", "--from", side, "--columns", "site", "--out", tmp_path / "b.parquet")
    assert code == 0 and "it carried the columns [], this one ['site']" in err, err
    code, _, err = run_cli("select", "--from", side, "--config", side, "--out", tmp_path / "c.parquet")
    assert code == 2 and "--config " + str(side) + " --budget" in err
    edited = json.loads(side.read_text())
    del edited["config"]["budget"]
    (tmp_path / "e.json").write_text(json.dumps(edited))
    code, _, err = run_cli("select", "--from", tmp_path / "e.json", "--out", tmp_path / "e.parquet")
    assert code == 2 and "its config lacks budget" in err
