"""RefineNet reward model: strict MLLM annotation against a fake OpenAI-compatible server, training
on planted ratings (held-out r >= 0.6 per axis), scoring, and the reward gates of selection."""

import json
import shutil
import socket

import numpy as np
import pytest

from conftest import stored_ratings
from curation import reward, store
from curation import schema as S
from curation.errors import CurationError, InputError, StateError
from fake_mllm import FakeMLLM, caption_of

GOOD = '{"fidelity": 4, "consistency": 5}'




_ratings = stored_ratings


@pytest.mark.parametrize("text,expected", [
    (GOOD, {"fidelity": 4, "consistency": 5}),
    ('  {"consistency": 1, "fidelity": 5}\n', {"fidelity": 5, "consistency": 1}),
    ('```json\n{"fidelity": 2, "consistency": 3}\n```', {"fidelity": 2, "consistency": 3}),
    ('Sure! {"fidelity": 4, "consistency": 5}', None),          # prose around the JSON
    ('{"fidelity": 4}', None),                                   # an axis missing
    ('{"fidelity": 4, "consistency": 5, "note": "ok"}', None),   # extra keys
    ('{"fidelity": 4.5, "consistency": 5}', None),               # not an integer
    ('{"fidelity": "4", "consistency": 5}', None),               # a string
    ('{"fidelity": 0, "consistency": 5}', None),                 # out of 1..5
    ('{"fidelity": true, "consistency": 5}', None),
    ("fidelity 4, consistency 5", None),
    ("", None),
])
def test_parse_rating_is_strict(text, expected):
    assert reward.parse_rating(text) == expected


def test_annotate_rates_stores_and_resumes(demo_copy):
    import signal

    before = signal.getsignal(signal.SIGINT)
    with FakeMLLM(lambda body, n: GOOD) as srv:
        counts = reward.annotate(demo_copy, srv.url, "fake-vlm", 12, progress=False)
        assert signal.getsignal(signal.SIGINT) is before  # its Ctrl-C handler is gone again
        assert counts == {"rated": 12, "malformed": 0, "no_image": 0, "transport_error": 0, "total": 12}
        req = srv.requests[0]
        assert req["path"] == "/v1/chat/completions" and req["body"]["model"] == "fake-vlm"
        assert req["body"]["temperature"] == 0
        msgs = req["body"]["messages"]
        assert msgs[0]["content"] == reward.SYSTEM_PROMPT
        assert msgs[1]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
        df = _ratings(demo_copy)
        with store.open_store(demo_copy) as s:
            caps = s.samples([S.CAPTION])[S.CAPTION]
        # the caption sent is the sample's caption, verbatim
        sent = sorted(caption_of(r["body"]) for r in srv.requests)
        assert sent == sorted(caps.iloc[df[S.ROW]].tolist())
        assert len(df) == 12 and (df["status"] == "ok").all() and (df["fidelity"] == 4).all()
        assert set(df["source"]) == {"mllm:fake-vlm"} and set(df["prompt_version"]) == {reward.PROMPT_VERSION}
        # a second run rates 12 *other* pairs
        counts = reward.annotate(demo_copy, srv.url, "fake-vlm", 12, progress=False)
        assert counts["rated"] == 12 and counts["total"] == 24
        df = _ratings(demo_copy)
        assert len(df) == 24 and df[S.ROW].is_unique


def test_malformed_answers_are_retried_then_recorded_not_guessed(demo_copy):
    def answer(body, n):
        cap = caption_of(body)
        if "showing" in cap:  # one template: always malformed
            return "The caption matches well; I'd say 4 out of 5."
        return GOOD if n % 2 == 0 else "Fidelity: 4"  # others: odd attempts malformed

    with FakeMLLM(answer) as srv:
        counts = reward.annotate(demo_copy, srv.url, "m", 20, concurrency=1, retries=2, progress=False)
    df = _ratings(demo_copy)
    bad = df["status"] == "malformed"
    assert counts["malformed"] == int(bad.sum()) > 0 and counts["rated"] == int((~bad).sum()) > 0
    assert (df.loc[bad, "attempts"] == 3).all() and df.loc[bad, "fidelity"].isna().all()
    assert df.loc[bad, "answer"].str.contains("4 out of 5").all()
    assert (df.loc[~bad, "fidelity"] == 4).all() and (df.loc[~bad, "attempts"] <= 2).all()
    assert len(srv.requests) == int(df["attempts"].sum())


def test_endpoint_down_is_one_clear_error_and_keeps_nothing_half_done(demo_copy, run_cli):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(CurationError, match="not answering.*Fix: start the server"):
        reward.annotate(demo_copy, f"http://127.0.0.1:{port}/v1", "m", 5, down_retries=0, progress=False)
    assert _ratings(demo_copy) is None
    # transient server errors are retried with backoff
    with FakeMLLM(lambda body, n: 503 if n <= 2 else GOOD) as srv:
        counts = reward.annotate(demo_copy, srv.url, "m", 1, concurrency=1, backoff=0.01, progress=False)
    assert counts["rated"] == 1 and len(srv.requests) == 3
    with FakeMLLM(lambda body, n: 404) as srv:
        code, _, err = run_cli("reward", "annotate", demo_copy, "--endpoint", srv.url, "--model", "m",
                               "--sample", 3, "--quiet")
    assert code == 2 and "HTTP 404" in err and "--endpoint" in err


@pytest.fixture(scope="module")
def trained(demo_db, tmp_path_factory):
    """The demo with 2,000 planted ratings, a trained reward model and scores."""
    from curation import demo

    d = tmp_path_factory.mktemp("reward")
    db = d / "demo.duckdb"
    shutil.copy(demo_db, db)
    demo.planted_ratings(db, 2000, seed=0).to_csv(d / "ratings.csv", index=False)
    res = reward.train(db, d / "ratings.csv", progress=False)
    sc = reward.score(db, progress=False)
    return db, d / "ratings.csv", res, sc


def test_planted_ratings_are_learned(trained):
    db, _, res, _ = trained
    assert res["axes"] == ["fidelity", "consistency"] and res["grouped_by_case"]
    for axis in res["axes"]:
        m = res["metrics"][axis]
        assert m["r"] >= 0.6, (axis, m)  # RefineNet reports r = 0.67 against experts
        assert m["n_train"] + m["n_test"] == 2000 and m["n_test"] >= 300
    with store.open_store(db) as s:
        # held-out cases are disjoint from training cases: checked on the rows each side used
        cases = s.samples(["case_id"])["case_id"].to_numpy()
        assert not set(cases[res["train_rows"]]) & set(cases[res["heldout_rows"]])
        assert len(res["train_rows"]) + len(res["heldout_rows"]) == 2000
        rec = reward.models(s).iloc[-1]
        # no early stopping by default: every training rating trained the model (no inner slice)
        assert json.loads(rec["arch"])["n_fit"] == len(res["train_rows"])
        assert json.loads(rec["metrics"]) == res["metrics"] and json.loads(rec["arch"])["grouped_by_case"]
        assert s.runs("reward-train")["run_id"].iloc[-1] == res["model_id"]


def test_mismatched_pairs_get_low_reward(trained):
    db, *_ = trained
    with store.open_store(db) as s:
        truth = s.read_table(S.TRUTH)
        scores = reward.load_scores(s)
    mm = truth["is_mismatched"].to_numpy()
    assert len(scores) == len(truth) and mm.sum() == 80
    for axis in ("fidelity", "consistency"):
        sc = scores[f"reward_{axis}_score"].to_numpy()
        assert (sc[mm] < 0.05).all(), axis   # every planted mismatch in the bottom 5%
        assert scores[f"reward_{axis}"][mm].mean() < scores[f"reward_{axis}"][~mm].mean() - 1.5


def test_split_is_grouped_by_case(demo_db):
    import pandas as pd

    with store.open_store(demo_db) as s:
        cases = pd.factorize(s.samples(["case_id"])["case_id"])[0]
    rows = np.arange(0, 4000, 2)
    tr, te = reward._split(rows, cases, 0.2, 0)
    assert len(tr) + len(te) == len(rows) and not set(cases[rows[tr]]) & set(cases[rows[te]])
    assert 0.15 < len(te) / len(rows) < 0.25


def test_reward_gate_in_selection(trained, analyzed_db, tmp_path):
    """Reward scores join the analysis frame; a gate on reward_fidelity drops every mismatched pair."""
    from curation import analysis, selection

    d = tmp_path / "ds"
    d.mkdir()
    shutil.copy(analyzed_db, d / "demo.duckdb")
    db = d / "demo.duckdb"
    with store.open_store(trained[0]) as src:
        t = {S.REWARD_SCORES: src.read_table(S.REWARD_SCORES)}
    with store.open_store(db, read_only=False) as s:
        s.write_tables(t)
    with store.open_store(db) as s:
        df, _ = analysis.load(s)
        inp = selection.load_inputs(s)
        truth = s.read_table(S.TRUTH)
    assert {"reward_fidelity_score", "reward_consistency_score"} <= set(df.columns)
    assert {"reward_fidelity", "reward_consistency"} <= set(inp.scores)
    cfg = selection.SelectionConfig(budget=0.5, gates=(selection.Gate("reward_fidelity", top_q=0.9),))
    res = selection.select(inp, cfg)
    picked = np.zeros(len(truth), bool)
    picked[res.selected] = True
    mm = truth["is_mismatched"].to_numpy()
    assert picked.sum() == 2000 and not picked[mm].any()
    assert (res.reason[mm] == selection.DROP_GATE).mean() > 0.9  # the gate, not dedup or outliers


def test_cli_train_and_score(trained, run_cli, tmp_path):
    db, csv, *_ = trained
    code, out, err = run_cli("reward", "train", db, "--ratings", csv, "--quiet")
    assert code == 0, err
    assert "Pearson r" in out and "held out by case" in out
    code, out, err = run_cli("reward", "score", db, "--quiet")
    assert code == 0 and "reward_fidelity_score" in out


def test_bad_ratings_inputs(trained, tmp_path, run_cli):
    db, csv, *_ = trained
    import pandas as pd

    r = pd.read_csv(csv)
    cases = {
        "few.csv": (r.head(30), "too few ratings"),
        "unknown.csv": (pd.concat([r.head(100), pd.DataFrame({"id": ["nope"], "fidelity": [3.0],
                                                              "consistency": [3.0]})]), "not samples of this dataset"),
        "text.csv": (r.head(100).assign(fidelity=["good"] + [4.0] * 99), "not a number"),
        "dup.csv": (pd.concat([r.head(100), r.head(1)]), "rated twice"),
        "flat.csv": (r.head(200).assign(consistency=3.0), "one value only"),
    }
    with store.open_store(db) as s:
        before = len(reward.models(s))
    for name, (frame, words) in cases.items():
        frame.to_csv(tmp_path / name, index=False)
        code, _, err = run_cli("reward", "train", db, "--ratings", tmp_path / name, "--quiet")
        assert code == 2 and words in err, (name, err)
    code, _, err = run_cli("reward", "train", db, "--ratings", csv, "--axes", "fidelity,quality", "--quiet")
    assert code == 2 and "quality" in err and "rating column not found" in err
    with store.open_store(db) as s:
        assert len(reward.models(s)) == before  # nothing stored by a failed run


def test_state_errors(demo_copy, run_cli):
    code, _, err = run_cli("reward", "train", demo_copy, "--quiet")
    assert code == 2 and "no ratings" in err and "reward annotate" in err
    code, _, err = run_cli("reward", "score", demo_copy, "--quiet")
    assert code == 2 and "no reward model" in err and "reward train" in err
    with pytest.raises(StateError):
        with store.open_store(demo_copy) as s:
            reward.stored_ratings(s)


def test_train_on_annotated_ratings(demo_copy):
    """The whole loop through the fake MLLM: the ratings it gives (planted: a normal study rates 5,
    any finding 2) are stored, trained on, and the pool's scores follow the planted rule."""
    def planted(caption):
        return 5 if "normal" in caption else 2

    def answer(body, n):
        f = planted(caption_of(body))
        return json.dumps({"fidelity": f, "consistency": 6 - f})

    with FakeMLLM(answer) as srv:
        reward.annotate(demo_copy, srv.url, "m", 400, concurrency=8, progress=False)
    res = reward.train(demo_copy, progress=False)
    assert res["source"] == "mllm:m" and res["n_ratings"] == 400
    assert set(res["metrics"]) == {"fidelity", "consistency"}
    sc = reward.score(demo_copy, progress=False)
    assert sc["n"] == 4000
    with store.open_store(demo_copy) as s:
        captions = s.samples(["caption"])["caption"]
        scores = reward.load_scores(s)
    truth = captions.map(planted).to_numpy(float)
    for axis, sign in (("fidelity", 1), ("consistency", -1)):
        r = np.corrcoef(scores[f"reward_{axis}"].to_numpy(), truth)[0, 1]
        assert sign * r > 0.7, (axis, r)  # learned on 400 ratings, checked on all 4,000 (measured 0.80)


def test_ratings_csv_column_errors_name_file(trained, tmp_path):
    db, csv, *_ = trained
    (tmp_path / "noid.csv").write_text("sample,fidelity\na,1\n")
    with store.open_store(db) as s:
        ids = s.samples([S.ID])[S.ID].to_numpy()
    with pytest.raises(InputError, match="noid.csv.*no id column"):
        reward.read_ratings_csv(tmp_path / "noid.csv", ids)


def test_epochs_zero_is_refused(trained, run_cli):
    db, csv, _, _ = trained
    code, _, err = run_cli("reward", "train", db, "--ratings", csv, "--epochs", "0", "--quiet")
    assert code == 2 and "--epochs 0: train for at least one epoch" in err


def test_early_stopping_holds_out_an_inner_slice(trained, tmp_path):
    import shutil as sh

    db, csv, _, _ = trained
    copy = tmp_path / "d.duckdb"
    sh.copy(db, copy)
    res = reward.train(copy, csv, config=reward.RewardConfig(patience=3, epochs=20), progress=False)
    with store.open_store(copy) as s:
        arch = json.loads(reward.models(s).iloc[-1]["arch"])
    assert arch["n_fit"] == len(res["train_rows"]) - len(res["train_rows"]) // 10
