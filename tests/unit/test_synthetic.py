"""The synthetic large-catalogue generator (benchmarks/synthetic.py) at a small size: 2,000 items, 20,000 events."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks.synthetic import MIN_LEN, generate, load_real_items, main, zipf_cdf
from tests.conftest import SHARED

pytestmark = pytest.mark.needs_shared
N_ITEMS, N_INTER = 2_000, 20_000


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    if not (SHARED / "amazon-beauty").exists():
        pytest.skip(f"public dataset mirror not found at {SHARED} (set SEMID_DATA_MIRROR)")
    return load_real_items(SHARED)


@pytest.fixture(scope="module")
def out(real, tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    generate(folder, N_ITEMS, N_INTER, seed=0, data_dir=SHARED, items_per_file=700, events_per_file=5_000)
    return folder


def _items(folder) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("items-*.parquet"))], ignore_index=True)


def _events(folder) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p).assign(file=p.name) for p in sorted(folder.glob("events-*.parquet"))],
                     ignore_index=True)


def test_same_seed_same_bytes_other_seed_other_bytes(out, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    main(["--items", str(N_ITEMS), "--interactions", str(N_INTER), "--out", str(again), "--seed", "0",
          "--data-dir", str(SHARED), "--items-per-file", "700", "--events-per-file", "5000"])
    generate(other, N_ITEMS, N_INTER, seed=1, data_dir=SHARED, items_per_file=700, events_per_file=5_000)
    first, second = (json.loads((f / "manifest.json").read_text()) for f in (out, again))
    assert first["files"] == second["files"] and len(first["files"]) >= 2
    third = json.loads((other / "manifest.json").read_text())
    assert all(third["files"][name] != sha for name, sha in first["files"].items())


def test_manifest_says_synthetic_and_records_the_run(out, real):
    m = json.loads((out / "manifest.json").read_text())
    assert m["synthetic"] is True and "SYNTHETIC" in m["note"]
    assert m["seed"] == 0 and m["parameters"]["items"] == N_ITEMS and m["counts"]["interactions"] == N_INTER
    assert set(m["sources"]) == {"amazon-scientific", "amazon-office", "amazon-beauty"}
    assert all(len(s["sha256"]) == 64 for s in m["sources"].values())
    assert sorted(m["files"]) == sorted(p.name for p in out.glob("*.parquet"))
    assert m["counts"]["real_items"] == len(real)


def test_every_item_text_is_distinct_and_made_of_real_parts(out, real):
    items = _items(out)
    assert len(items) == N_ITEMS and items["item_id"].is_unique
    text = items["title"] + ";" + items["brand"] + ";" + items["category"]  # as the pipeline joins them
    assert text.is_unique
    assert (items[["title", "brand", "category"]].apply(lambda c: c.str.strip().str.len()) > 0).all().all()
    donor = real.assign(origin=real["source"] + "/" + real["src_id"]).set_index("origin")
    assert (items["title"].to_numpy() == donor.loc[items["title_from"], "title"].to_numpy()).all()
    source = items["title_from"].str.split("/").str[0]
    for ds, group in items.groupby(source):  # brand and category come from real items of the title's dataset
        assert group["brand"].isin(set(real.loc[real["source"] == ds, "brand"])).all()
        assert group["category"].isin(set(real.loc[real["source"] == ds, "category"])).all()
    # recombined: most items do not repeat their title donor's own brand or category
    assert (items["brand"].to_numpy() != donor.loc[items["title_from"], "brand"].to_numpy()).mean() > 0.5
    assert (items["category"].to_numpy() != donor.loc[items["title_from"], "category"].to_numpy()).mean() > 0.5


def test_sessions_have_five_or_more_events_increasing_time_no_repeats(out):
    ev = _events(out)
    items = set(_items(out)["item_id"])
    assert len(ev) == N_INTER and ev["item_id"].isin(items).all()
    per_user = ev.groupby("user_id").size()
    assert per_user.min() >= MIN_LEN
    assert 7.5 < per_user.mean() < 10.5  # Beauty's mean length 8.88
    assert (ev.groupby("user_id", sort=False)["ts"].diff().dropna() > 0).all()
    assert not ev.duplicated(["user_id", "item_id"]).any()
    assert (ev.groupby("user_id")["file"].nunique() == 1).all()  # a user's session is never split across files


def test_popularity_is_zipf_top_one_percent_share_in_band(out):
    m = json.loads((out / "manifest.json").read_text())
    counts = _events(out)["item_id"].value_counts()
    top = counts.iloc[: N_ITEMS // 100].sum() / N_INTER
    expected = zipf_cdf(N_ITEMS, m["parameters"]["zipf_exponent"])[N_ITEMS // 100 - 1]
    assert 0.8 * expected < top < 1.15 * expected, (top, expected)
    assert top == pytest.approx(m["counts"]["top1pct_items_share"])
    flat = counts.iloc[N_ITEMS // 2:].sum() / N_INTER
    assert flat < 0.5 * (1 - expected)  # the tail holds far less than a uniform popularity would give it


def test_output_is_chunked(out):
    assert len(list(out.glob("events-*.parquet"))) > 1
    assert len(list(out.glob("items-*.parquet"))) == 3  # 700 per file
    assert all(len(pd.read_parquet(p)) <= 5_000 + 1_000 for p in out.glob("events-*.parquet"))


def test_vectors_are_noisy_unit_copies_of_their_source(real, tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((300, 384))
    fake = centres[rng.integers(0, 300, len(real))] + 0.3 * rng.standard_normal((len(real), 384))
    fake = (fake / np.linalg.norm(fake, axis=1, keepdims=True)).astype(np.float32)
    np.save(tmp_path / "real.npy", fake)
    folder = tmp_path / "out"
    m = generate(folder, N_ITEMS, N_INTER, seed=0, data_dir=SHARED, vectors=True,
                 real_vectors_path=str(tmp_path / "real.npy"))
    vec = np.load(folder / "vectors.npy")
    assert vec.shape == (N_ITEMS, 384) and vec.dtype == np.float32 and "vectors.npy" in m["files"]
    assert np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    items = _items(folder)
    pos = pd.Series(np.arange(len(real)), index=real["source"] + "/" + real["src_id"])
    src = fake[pos[items["title_from"]].to_numpy()]
    cos = (vec * src).sum(axis=1)
    assert 0.95 < cos.mean() < 0.999 and cos.max() < 1 - 1e-6
    assert cos.mean() == pytest.approx(m["vectors"]["mean_cosine_to_source"], abs=1e-4)
    # nearer their own source than any other real item
    nearest = np.argmax(vec @ fake.T, axis=1)
    assert (fake[nearest] == src).all(axis=1).mean() > 0.95


def test_output_passes_the_pipelines_ingest_and_validate(out, tmp_path):
    from semid.tasks import ingest, validate
    from semid.tasks.config import load_config

    cfg = load_config(None, [
        f"data.root={tmp_path / 'data'}", "data.dataset=synthetic-2k",
        f"data.local={{items: '{out}/items-*.parquet', interactions: '{out}/events-*.parquet', user_col: user_id, "
        "item_col: item_id, timestamp_col: ts, text_cols: [title, brand, category]}"])
    ingest.fetch("synthetic-2k", cfg)  # ~5 s on 2 cores
    stats = validate.validate("synthetic-2k", cfg)
    m = json.loads((out / "manifest.json").read_text())
    assert (stats["items"], stats["interactions"], stats["users"]) == (N_ITEMS, N_INTER, m["counts"]["users"])
    assert stats["text_coverage"] == 1.0 and not stats["warnings"]
