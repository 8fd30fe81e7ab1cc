"""One parser test per source format, on tiny hand-made files."""

import json
import sqlite3

import pandas as pd
import pytest

from semid.tasks import ingest, layout, validate
from semid.tasks.config import load_config
from tests.conftest import local_params, tiny_tables


def _cfg(tmp_path, *sets):
    return load_config(None, [f"data.root={tmp_path / 'data'}", *sets])


def test_atomic_movielens_layout(tmp_path):
    cfg = _cfg(tmp_path)
    raw = layout.raw_dir(cfg, "ml-100k")
    raw.mkdir(parents=True)
    (raw / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t2\t4\t300\n7\t1\t5\t100\n9\t1\t3\t200\n"
    )
    (raw / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Comedy\n2\tHeat\t\tAction\n"
    )
    (raw / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n7\t24\tM\twriter\t1\n9\t30\tF\tother\t2\n"
    )
    t = validate.parse("ml-100k", cfg)
    assert t.items["text"].tolist() == ["Toy Story (1995); Animation, Comedy", "Heat; Action"]
    # a user's events come out in time order, users in order of first appearance
    assert t.interactions[["user_id", "item_id"]].values.tolist() == [["7", "1"], ["7", "2"], ["9", "1"]]
    assert str(t.interactions["user_id"].dtype) == "string"
    assert t.users is not None and t.users["occupation"].tolist() == ["writer", "other"]


def test_lcrec_json(tmp_path):
    cfg = _cfg(tmp_path)
    raw = layout.raw_dir(cfg, "amazon-office")
    raw.mkdir(parents=True)
    (raw / "Office.inter.json").write_text(json.dumps({"0": [1, 0], "1": [0]}))
    (raw / "Office.item.json").write_text(
        json.dumps(
            {
                "0": {"title": "Pen", "description": "blue", "brand": "Bic", "categories": "Office,Pens"},
                "1": {"title": "", "description": "", "brand": "X", "categories": ""},
            }
        )
    )
    t = validate.parse("amazon-office", cfg)
    assert t.items["text"].tolist() == ["Pen;Bic;Office,Pens", ""]  # no title -> no usable text
    assert t.interactions.values.tolist() == [["0", "1", 0], ["0", "0", 1], ["1", "0", 0]]


def test_sequence_with_text(tmp_path):
    cfg = _cfg(tmp_path)
    raw = layout.raw_dir(cfg, "amazon-beauty")
    raw.mkdir(parents=True)
    (raw / "user_sequence.txt").write_text("U1 B1 0123456789\nU2 0123456789 B3\n")
    (raw / "item_text.json").write_text(json.dumps({"1": "Lipstick;9.0;Brand", "2": "Book", "3": "Soap"}))
    t = validate.parse("amazon-beauty", cfg)
    # P5 numbering = first appearance from 1; numeric ASINs stay strings
    assert t.items[["item_id", "p5_id", "text"]].values.tolist() == [
        ["B1", 1, "Lipstick;9.0;Brand"], ["0123456789", 2, "Book"], ["B3", 3, "Soap"]]
    assert t.interactions["timestamp"].tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_local_files(tmp_path, fmt):
    items, inter = tiny_tables()
    src = tmp_path / "src"
    src.mkdir()
    write = {"parquet": lambda df, p: df.to_parquet(p), "csv": lambda df, p: df.to_csv(p, index=False),
             "jsonl": lambda df, p: df.to_json(p, orient="records", lines=True)}[fmt]
    write(items, src / f"items.{fmt}")
    # interactions split over two files matched by a glob, given out of time order
    write(inter.iloc[::-1].iloc[:10], src / f"events-1.{fmt}")
    write(inter.iloc[::-1].iloc[10:], src / f"events-2.{fmt}")
    cfg = load_config(None, local_params(tmp_path / "data", str(src / f"items.{fmt}"), str(src / f"events-*.{fmt}")))
    ingest.fetch("shop", cfg)
    t = validate.parse("shop", cfg)
    assert len(t.interactions) == len(inter) and len(t.items) == len(items)
    assert t.items["text"].iloc[0] == "item number 0;b0"
    u0 = t.interactions[t.interactions["user_id"] == "u0"]
    assert u0["timestamp"].is_monotonic_increasing
    manifest = json.loads((tmp_path / "data" / "snapshots" / "shop.json").read_text())
    assert len(manifest["files"]) == 3


@pytest.mark.parametrize("db", ["sqlite", "duckdb"])
def test_local_sql(tmp_path, db):
    items, inter = tiny_tables()
    path = tmp_path / f"shop.{db}"
    if db == "sqlite":
        with sqlite3.connect(path) as conn:
            items.to_sql("items", conn, index=False)
            inter.to_sql("events", conn, index=False)
    else:
        import duckdb

        with duckdb.connect(str(path)) as conn:
            conn.register("i", items)
            conn.register("e", inter)
            conn.execute("create table items as select * from i; create table events as select * from e")
    sets = [
        f"data.root={tmp_path / 'data'}", "data.dataset=shop",
        f"data.local={{database_url: '{db}:///{path}', items_query: 'select * from items', "
        "interactions_query: 'select * from events', user_col: customer, item_col: sku, timestamp_col: ts, "
        "text_cols: [title]}",
    ]
    cfg = load_config(None, sets)
    ingest.fetch("shop", cfg)
    t = validate.parse("shop", cfg)
    assert len(t.interactions) == len(inter)
    assert sorted(t.items["item_id"]) == sorted(items["sku"])


def test_canonical_ids_are_stable(tmp_path):
    from semid.tasks.validate import canonicalize

    items, inter = tiny_tables()
    src = tmp_path / "src"
    src.mkdir()
    items.to_parquet(src / "items.parquet")
    inter.to_parquet(src / "events.parquet")
    cfg = load_config(None, local_params(tmp_path / "data", str(src / "items.parquet"), str(src / "events.parquet")))
    ingest.fetch("shop", cfg)
    a = canonicalize(validate.parse("shop", cfg))
    b = canonicalize(validate.parse("shop", cfg))
    for key in a:
        pd.testing.assert_frame_equal(a[key], b[key])
    assert a["item_map"]["source_id"].tolist() == items["sku"].tolist()
    assert (a["interactions"].groupby("user_id")["position"].apply(lambda p: p.tolist() == list(range(len(p))))).all()
