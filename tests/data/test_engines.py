"""The two validate engines agree: data.engine=duckdb (out of core) writes the same processed tables and stats as
pandas, on a public dataset (parsed by pandas, registered in DuckDB) and on parquet logs read in place."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from semid.tasks import ingest, validate
from semid.tasks.config import load_config
from semid.tasks.errors import PipelineError
from tests.conftest import local_params, tiny_tables


def _processed(root: Path, name: str) -> tuple[dict[str, pd.DataFrame], dict]:
    folder = root / "processed" / name
    return ({p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))},
            json.loads((folder / "stats.json").read_text()))


def _both(tmp_path: Path, sets: list[str]) -> dict[str, tuple[dict[str, pd.DataFrame], dict]]:
    out = {}
    for engine in ("pandas", "duckdb"):
        root = tmp_path / engine
        cfg = load_config(None, [f"data.root={root}", *sets, f"data.engine={engine}"])
        ingest.fetch(cfg.data.dataset, cfg)
        validate.validate(cfg.data.dataset, cfg)
        out[engine] = _processed(root, cfg.data.dataset)
    return out


def _assert_same(out: dict) -> None:
    (pt, ps), (dt, ds) = out["pandas"], out["duckdb"]
    assert sorted(pt) == sorted(dt)
    for table in pt:
        assert list(pt[table].columns) == list(dt[table].columns), table
        pd.testing.assert_frame_equal(pt[table], dt[table], check_dtype=False, obj=table)
        assert [str(t) for t in pt[table].dtypes if str(t) not in ("str", "string")] == \
            [str(t) for t in dt[table].dtypes if str(t) not in ("str", "string")], table
    assert ps == ds


def test_ml100k_same_tables_under_both_engines(tmp_path):
    _assert_same(_both(tmp_path, ["data.dataset=ml-100k"]))


def test_amazon_scientific_same_tables_under_both_engines(tmp_path, shared_mirror):
    _assert_same(_both(tmp_path, ["data.dataset=amazon-scientific", f"data.mirror={shared_mirror}"]))


def _shop_files(src: Path, shuffled: bool = True) -> None:
    """Two event files, out of time order, a tie in time, and item ids as floats (1.0 -> '1')."""
    items, inter = tiny_tables(n_users=9, n_items=12, per_user=6)
    items["sku"] = items["sku"].str[1:].astype(float)
    inter["sku"] = inter["sku"].str[1:].astype(float)
    inter.loc[7, "ts"] = inter.loc[8, "ts"]  # two events of a user at the same second: file order breaks the tie
    if shuffled:
        inter = inter.sample(frac=1.0, random_state=0)
    items.iloc[:7].to_parquet(src / "items-0.parquet", index=False)
    items.iloc[7:].to_parquet(src / "items-1.parquet", index=False)
    inter.iloc[:25].to_parquet(src / "events-0.parquet", index=False)
    inter.iloc[25:].to_parquet(src / "events-1.parquet", index=False)


@pytest.mark.parametrize("timestamp_col", ["ts", None], ids=["by-time", "file-order"])
def test_parquet_logs_same_tables_under_both_engines(tmp_path, timestamp_col):
    src = tmp_path / "src"
    src.mkdir()
    _shop_files(src)
    sets = local_params(tmp_path, str(src / "items-*.parquet"), str(src / "events-*.parquet"))
    if timestamp_col is None:
        sets[-1] = sets[-1].replace("timestamp_col: ts", "timestamp_col: null")
    out = _both(tmp_path, sets[1:])
    _assert_same(out)
    tables, stats = out["duckdb"]
    assert (stats["users"], stats["items"], stats["interactions"]) == (9, 12, 54)
    assert tables["item_map"]["source_id"].tolist()[:3] == ["0", "1", "2"]


def test_a_date_time_column_is_epoch_seconds_under_both_engines(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    items, inter = tiny_tables()
    inter["ts"] = pd.to_datetime(inter["ts"] + 1_700_000_000, unit="s")  # parquet TIMESTAMP
    items.to_parquet(src / "items.parquet", index=False)
    inter.to_parquet(src / "events.parquet", index=False)
    out = _both(tmp_path, local_params(tmp_path, str(src / "items.parquet"), str(src / "events.parquet"))[1:])
    _assert_same(out)
    ts = out["duckdb"][0]["interactions"]["timestamp"]
    assert (ts.min(), ts.max()) == (1_700_000_000, 1_700_005_004)


def test_duckdb_checks_each_file_as_a_batch(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _shop_files(src)
    cfg = load_config(None, [*local_params(tmp_path / "data", str(src / "items-*.parquet"),
                                           str(src / "events-*.parquet")), "data.engine=duckdb"])
    ingest.fetch("shop", cfg)
    validate.validate("shop", cfg)
    gx = json.loads((tmp_path / "data" / "processed" / "shop" / "gx_result.json").read_text())
    assert sorted(gx) == ["interaction_batches", "interaction_totals", "item_totals", "users_by_count"]
    checked = {r["expectation_config"]["kwargs"]["column"]: r["result"]["element_count"]
               for r in gx["interaction_batches"]["results"]}
    assert checked == {"user_id_nulls": 2, "item_id_nulls": 2, "timestamp_nulls": 2, "unknown_items": 2}


def test_duckdb_out_of_memory_names_the_limit_and_changes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _shop_files(src)
    root = tmp_path / "data"
    cfg = load_config(None, [*local_params(root, str(src / "items-*.parquet"), str(src / "events-*.parquet")),
                             "data.engine=duckdb", "data.duckdb_memory_limit=1KB", "data.duckdb_threads=1"])
    ingest.fetch("shop", cfg)
    with pytest.raises(PipelineError) as info:
        validate.validate("shop", cfg)
    assert "DuckDB ran out of memory" in str(info.value) and "data.duckdb_memory_limit (now 1KB)" in str(info.value)
    assert not (root / "processed" / "shop").exists()
    assert not (root / "quarantine").exists()  # the data are not at fault
    assert list((root / "tmp").iterdir()) == []  # the spill directory is removed
