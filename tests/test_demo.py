"""The demo generator: deterministic, and its ground truth is what the README says is planted."""

import numpy as np

from curation import demo, store


def test_same_seed_same_dataset_other_seed_differs(tmp_path):
    spec = demo.DemoSpec(n_rows=1500, dim=16, n_clusters=10)
    a = demo.build(tmp_path / "a.duckdb", spec, images=False)
    b = demo.build(tmp_path / "b.duckdb", spec, images=False)
    c = demo.build(tmp_path / "c.duckdb", demo.DemoSpec(n_rows=1500, dim=16, n_clusters=10, seed=1),
                   images=False)
    assert a == b != c


def test_cluster_sizes_are_zipf_with_a_long_tail():
    sizes = demo.cluster_sizes(19_400, 40, 1.5, 15)
    assert sizes.sum() == 19_400 and np.all(np.diff(sizes) <= 0)
    assert sizes[0] > 0.3 * sizes.sum()  # a head ("normal studies")
    assert sizes[-10:].sum() < 0.05 * sizes.sum()  # a tail: the 10 rarest hold under 5%


def test_ground_truth(demo_db):
    with store.open_store(demo_db) as s:
        truth = s.read_table("demo_truth")
        df = s.samples()
        v = s.vectors()
    n = len(df)
    assert n == 4000 and truth["id"].tolist() == df["id"].tolist()
    img, txt = v["image"], v["text"]
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    # near-duplicate groups: 3% copies, each in its source's group and case, nearly identical
    copies = truth[truth.is_dup_copy]
    assert len(copies) == 120
    for _, r in copies.iterrows():
        src = r.dup_group
        assert truth.dup_group[src] == src and df.case_id[r.row_idx] == df.case_id[src]
        assert img[r.row_idx] @ img[src] > 0.99 and df.caption[r.row_idx] == df.caption[src]
    # mismatched pairs: image-text cosine far below matched pairs
    fid = (img * txt).sum(1)
    mm = truth.is_mismatched.to_numpy()
    assert mm.sum() == 80 and fid[mm].max() < np.percentile(fid[~mm], 1)
    # site is tied to clusters (planted), sex is not
    ct = df.assign(c=truth.true_cluster).groupby("c")
    assert ct.site.agg(lambda s: s.value_counts(normalize=True).iloc[0]).mean() > 0.6
    assert ct.sex.agg(lambda s: s.value_counts(normalize=True).iloc[0]).mean() < 0.65
    assert df.sex.isna().sum() > 0  # missing values exist, as in real metadata
    # scanners belong to their site
    for site, scanners in df.groupby("site").scanner.unique().items():
        assert set(scanners) <= set(demo.SCANNERS[site])
    # splits are by case
    assert df.groupby("case_id").split.nunique().max() == 1


def test_images_exist_inside_the_image_root(demo_db):
    from PIL import Image

    with store.open_store(demo_db) as s:
        root = s.image_root()
        paths = s.samples(["image"])["image"]
    assert root.is_dir()
    im = Image.open(root / paths.iloc[0])
    assert im.size == (64, 64) and im.mode == "L"
    assert all((root / p).is_file() for p in paths.iloc[::97])


def test_cli_demo_refuses_to_overwrite(tmp_path, run_cli):
    db = tmp_path / "d.duckdb"
    assert run_cli("demo", "--db", db, "--rows", 1000, "--dim", 8, "--no-images")[0] == 0
    code, _, err = run_cli("demo", "--db", db, "--rows", 1000, "--dim", 8, "--no-images")
    assert code == 2 and "--replace" in err
