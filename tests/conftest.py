"""Shared fixtures: small demo datasets built once per test run.

`make test` runs two pytest-xdist workers. The expensive datasets (the analysed demo, analysed
MedPix) are built once for the whole run under a file lock, in a folder both workers see, and
each worker works on its own copy, so no two processes ever open one DuckDB file. Each worker
runs BLAS/OpenMP single-threaded: two workers with two threads each on two cores spin against
each other and made the suite slower than one worker.
"""

import os
import shutil
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # before numpy, faiss or torch is imported
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import pytest  # noqa: E402

from ray_cluster import cluster  # noqa: E402,F401  (the two-node Ray cluster fixture)

MEDPIX = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "medpix"


@pytest.fixture(scope="session", autouse=True)
def _ctrl_c_is_delivered():
    """The Ctrl-C tests need Ctrl-C: a suite started in the background (`make test &`, `nohup`)
    inherits an ignored SIGINT, which the code rightly leaves ignored (and passes on to the
    commands it starts), so those tests would see no interrupt. Python's default handler is put
    back for the run."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        yield
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        yield


@pytest.fixture(scope="session", autouse=True)
def _component_scan_once():
    """Streamlit's AppTest scans every installed distribution for v2 component manifests in each
    new AppTest (about 0.4 s here, 100+ times a run); the installed packages do not change during a
    run, so the scan runs once per process. (The real server scans once at start.)"""
    import functools
    import sys

    if "streamlit" not in sys.modules:  # no app test collected in this process
        yield
        return
    from streamlit.components.v2 import manifest_scanner as ms

    real = ms.scan_component_manifests
    once = functools.lru_cache(maxsize=1)(real)
    ms.scan_component_manifests = lambda max_workers=None: list(once())
    yield
    ms.scan_component_manifests = real


def pytest_configure(config):
    """``--dist loadgroup`` keeps the tests marked ``xdist_group`` on one worker (one Ray
    cluster, one app server at a time). With pytest 9.2 and pytest-xdist 3.8 it silently does
    nothing (pytest-xdist#1386: xdist tags the old node id field): stop instead of running them
    side by side."""
    if config.getoption("dist", None) != "loadgroup" or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import xdist
    from packaging.version import Version

    if Version(pytest.__version__) >= Version("9.2") and Version(xdist.__version__) <= Version("3.8.0"):
        raise pytest.UsageError(f"--dist loadgroup has no effect with pytest {pytest.__version__} and pytest-xdist "
                                f"{xdist.__version__} (pytest-xdist#1386). Fix: pip install -r requirements-dev.txt "
                                "(pytest 9.1.1).")


def pytest_collection_modifyitems(config, items):
    """CI always has ../shared beside the clone: there a missing MedPix is a failure, not a skip
    (a silent skip would hide that the real-data tests never ran)."""
    if os.environ.get("CI") and not MEDPIX.is_dir():
        raise pytest.UsageError(f"MedPix data not found at {MEDPIX}; CI must run the real-data tests. "
                                "Fix: clone the project beside shared/ (shared/datasets/medpix).")


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder made by ``build(folder)`` once per test run, shared by every xdist worker (the
    first builds it under a lock, the others wait), copied into this worker's temporary folder."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    src = shared / f"shared-{name}"
    with FileLock(str(shared / f"shared-{name}.lock")):
        if not (src / ".done").exists():
            shutil.rmtree(src, ignore_errors=True)
            src.mkdir(parents=True)
            build(src)
            (src / ".done").touch()
    if shared == base:
        return src
    mine = tmp_path_factory.mktemp(name)
    for f in src.iterdir():
        if f.name == ".done":
            continue
        if f.is_dir():
            (mine / f.name).symlink_to(f)  # images: read only
        else:
            shutil.copy(f, mine / f.name)
    return mine


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory) -> Path:
    """A 4,000-row demo (64-d, with images), the same for every test that reads it."""
    from curation import demo

    def build(d):
        demo.build(d / "demo.duckdb", demo.DemoSpec(n_rows=4000, dim=64, n_clusters=20, min_cluster=15))

    return built_once(tmp_path_factory, "demo", build) / "demo.duckdb"


@pytest.fixture
def run_cli(capsys):
    """Run `python -m curation ...` in-process; returns (exit code, stdout, stderr)."""
    from curation.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _private_copy(db: Path, tmp_path: Path) -> Path:
    """``db`` copied into this test's folder, its images linked (for tests that write to it)."""
    d = tmp_path / "ds"
    d.mkdir()
    shutil.copy(db, d / "demo.duckdb")
    (d / "demo_images").symlink_to(db.parent / "demo_images")
    return d / "demo.duckdb"


@pytest.fixture
def demo_copy(demo_db, tmp_path) -> Path:
    """A private copy of the 4,000-row demo, not analysed (images linked)."""
    return _private_copy(demo_db, tmp_path)


def stored_ratings(db):
    """The dataset's reward_ratings table, or None."""
    from curation import schema as S
    from curation import store

    with store.open_store(db) as s:
        return s.read_table(S.REWARD_RATINGS) if s.has_table(S.REWARD_RATINGS) else None


@pytest.fixture(scope="session")
def analyzed_db(demo_db, tmp_path_factory) -> Path:
    """A copy of the demo with one full default analysis (UMAP's numba compile makes this the
    slowest fixture: about a minute, once per session)."""
    from curation import analysis

    def build(d):
        shutil.copy(demo_db, d / "demo.duckdb")
        shutil.copytree(demo_db.parent / "demo_images", d / "demo_images")
        analysis.analyze(d / "demo.duckdb", analysis.AnalysisConfig())

    return built_once(tmp_path_factory, "analyzed", build) / "demo.duckdb"


@pytest.fixture
def analyzed_copy(analyzed_db, tmp_path) -> Path:
    """A private copy of the analysed demo (for tests that write to it); images are linked."""
    return _private_copy(analyzed_db, tmp_path)


@pytest.fixture(scope="module")
def _app_data_module(analyzed_db, tmp_path_factory):
    db = _private_copy(analyzed_db, tmp_path_factory.mktemp("app-data"))
    before = _sha256(db)
    yield db.parent
    assert _sha256(db) == before, ("a test given read_only_app_data changed the dataset: "
                                                  "give it data_dir (a private copy) instead")


@pytest.fixture
def read_only_app_data(_app_data_module, monkeypatch) -> Path:
    """The app's data folder with the analysed demo, shared by a module's tests that only read it
    (the app's caches then serve them all, as they serve every session of one server); checked
    unchanged at the end of the module. A test that writes takes ``data_dir``, its own copy."""
    monkeypatch.setenv("CURATION_DATA_DIR", str(_app_data_module))
    return _app_data_module


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- embedding inputs: a tiny random open_clip model and a few dozen generated pairs ------------
N_PAIRS = 36
BAD = {"corrupt": "not a readable image", "missing": "is missing", "escape": "leaves the dataset's image root",
       "nocap": "empty caption"}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A ``local-dir:`` open_clip model folder (32-d, random weights): the real loading path, no download."""
    from curation import embed

    return embed.save_model_dir(tmp_path_factory.mktemp("tiny_model"), embed.TINY_MODEL_CFG)


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory) -> Path:
    """``captions.csv`` + ``images/``: N_PAIRS good pairs (ids p000..) then four bad ones (ids in BAD)."""
    import csv

    import numpy as np
    from PIL import Image

    d = tmp_path_factory.mktemp("pairs")
    (d / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_PAIRS):
        img = (rng.random((48, 40, 3)) * 255).astype("uint8")
        ext = "jpg" if i % 2 else "png"
        Image.fromarray(img if i % 3 else img[..., 0]).save(d / "images" / f"{i}.{ext}")
        rows.append((f"p{i:03d}", f"{i}.{ext}", f"axial CT slice {i} showing finding {i % 5}", f"site{i % 3}"))
    (d / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    rows += [("corrupt", "corrupt.jpg", "a caption", "site0"), ("missing", "gone.png", "a caption", "site1"),
             ("escape", "../../../etc/hostname", "a caption", "site2"), ("nocap", "0.png", "", "site0")]
    with open(d / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "image", "caption", "site"])
        w.writerows(rows)
    return d


@pytest.fixture(scope="session")
def tar_dir(pairs_dir, tmp_path_factory) -> Path:
    """Two WebDataset shards of the good pairs (key.jpg/png + key.txt + key.json), with one
    corrupt image and one key without a caption in the second."""
    import csv
    import io
    import json
    import tarfile

    d = tmp_path_factory.mktemp("wds")
    rows = list(csv.DictReader(open(pairs_dir / "captions.csv", encoding="utf-8")))[:N_PAIRS]

    def add(tf, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    for s, chunk in enumerate((rows[:20], rows[20:])):
        with tarfile.open(d / f"shard-{s:04d}.tar", "w") as tf:
            for r in chunk:
                ext = r["image"].split(".")[-1]
                add(tf, f"{r['id']}.{ext}", (pairs_dir / "images" / r["image"]).read_bytes())
                add(tf, f"{r['id']}.txt", r["caption"].encode())
                add(tf, f"{r['id']}.json", json.dumps({"site": r["site"], "pmcid": f"PMC{r['id'][1:]}"}).encode())
            if s == 1:
                add(tf, "broken.jpg", b"\xff\xd8 truncated")
                add(tf, "broken.txt", b"caption of a broken image")
                add(tf, "nocaption.png", (pairs_dir / "images" / "0.png").read_bytes())
    return d


@pytest.fixture(scope="session")
def medpix_db(tmp_path_factory) -> Path:
    """MedPix (2,050 real CT/MR pairs, MobileNetV2 + MiniLM embeddings) ingested and analysed once
    (every step but the map, which the tests that read this do not need: about 15 s)."""
    from curation import analysis
    from curation.cli import main

    if not MEDPIX.is_dir():
        pytest.skip("MedPix sample not present (CI requires it: see pytest_collection_modifyitems)")
    def build(d):
        db = d / "medpix.duckdb"
        assert main(["ingest", str(db), "--metadata", str(MEDPIX / "metadata.csv"), "--image-emb",
                     str(MEDPIX / "image_mobilenetv2.npy"), "--text-emb", str(MEDPIX / "text_minilm.npy")]) == 0
        analysis.analyze(db, analysis.AnalysisConfig(), steps=["prototypes", "density", "quality", "confounders"])

    return built_once(tmp_path_factory, "medpix", build) / "medpix.duckdb"


def kill_analysis_after_first_step(args, work: Path, timeout: float = 180) -> None:
    """Run ``python -m curation analyze ARGS`` in a process of its own and ``kill -9`` it as soon
    as its first step is kept in ``work`` (the run's work folder)."""
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    p = subprocess.Popen([sys.executable, "-m", "curation", "analyze", *map(str, args)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not (work / "step-prototypes" / "step.json").exists():
        assert p.poll() is None and time.monotonic() < deadline, "the analysis ended before its first step was kept"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
