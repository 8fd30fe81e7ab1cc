"""One test per corruption, fed through the local-source path with hand-made files, under each validate engine:
pandas on CSV, DuckDB on CSV (parsed by pandas, checked and written by DuckDB) and DuckDB on parquet (read in place).

Each corruption writes its bad file and names the texts its message must contain; every case asserts that
message, a new quarantine folder with the raw batch, and that data/processed is byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from semid.tasks import ingest, validate
from semid.tasks.config import load_config
from semid.tasks.errors import PipelineError
from tests.conftest import local_params, tiny_tables


def _tree_bytes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


ENGINES = [("pandas", "csv"), ("duckdb", "csv"), ("duckdb", "parquet")]


def _write(frame: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


@pytest.fixture(params=ENGINES, ids=[f"{e}-{x}" for e, x in ENGINES])
def shop(tmp_path, request):
    """A validated local dataset 'shop'; returns (src dir, data root, engine, file extension) for corrupting."""
    engine, ext = request.param
    items, inter = tiny_tables()
    src = tmp_path / "src"
    src.mkdir()
    _write(items, src / f"items.{ext}")
    _write(inter, src / f"events.{ext}")
    root = tmp_path / "data"
    cfg = load_config(None, local_params(root, str(src / f"items.{ext}"), str(src / f"events.{ext}"),
                                         **{"data.engine": engine}))
    ingest.fetch("shop", cfg)
    stats = validate.validate("shop", cfg)
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 8, 30)
    return src, root, engine, ext


def _run_corrupted(src: Path, root: Path, engine: str, ext: str, items: str = "items", events: str = "events",
                   **extra) -> str:
    processed = root / "processed"
    before = _tree_bytes(processed)
    quarantined = set((root / "quarantine" / "shop").glob("*")) if (root / "quarantine").exists() else set()
    items, events = (n if "." in n else f"{n}.{ext}" for n in (items, events))
    cfg = load_config(None, local_params(root, str(src / items), str(src / events), **{"data.engine": engine},
                                         **extra))
    with pytest.raises(PipelineError) as info:
        ingest.fetch("shop", cfg)
        validate.validate("shop", cfg)
    assert _tree_bytes(processed) == before, "data/processed changed on a failed run"
    new = set((root / "quarantine" / "shop").glob("*")) - quarantined
    assert len(new) == 1, "expected exactly one new quarantine folder"
    qdir = new.pop()
    assert (qdir / "gx_result.json").exists() and (qdir / "report.txt").exists()
    assert any(p.is_file() for p in (qdir / "raw").rglob("*")), "raw batch not quarantined"
    return str(info.value)


def _items(src: Path, items: pd.DataFrame) -> None:
    for ext in ("csv", "parquet"):
        _write(items, src / f"items.{ext}")


def _events(src: Path, inter: pd.DataFrame) -> None:
    for ext in ("csv", "parquet"):
        _write(inter, src / f"events.{ext}")


def missing_column(src: Path, ext: str) -> tuple[dict, list[str]]:
    items, _ = tiny_tables()
    _items(src, items.drop(columns=["title"]))
    return {}, ["missing column(s) ['title'] in the items table", "column mapping under data.local"]


def duplicate_item_id(src: Path, ext: str) -> tuple[dict, list[str]]:
    items, _ = tiny_tables()
    _items(src, pd.concat([items, items.iloc[[2]]]))
    return {}, ["items.item_id: expect_column_values_to_be_unique (2 rows)", "'item_id': 'i2'"]


def dangling_item_reference(src: Path, ext: str) -> tuple[dict, list[str]]:
    _, inter = tiny_tables()
    inter.loc[3, "sku"] = "ghost"
    _events(src, inter)
    return {}, ["interactions.item_id: expect_column_values_to_be_in_set (1 rows)", "ghost"]


def empty_texts(src: Path, ext: str) -> tuple[dict, list[str]]:
    items, _ = tiny_tables()
    items.loc[:4, ["title", "brand"]] = ""
    _items(src, items)
    return {}, ["items.text: expect_column_value_lengths_to_be_between (5 rows)", "min_text_coverage"]


def truncated_file(src: Path, ext: str) -> tuple[dict, list[str]]:
    items, _ = tiny_tables()
    if ext == "parquet":  # read in place by DuckDB
        items.to_parquet(src / "cut.parquet", index=False)
        data = (src / "cut.parquet").read_bytes()
        (src / "cut.parquet").write_bytes(data[: len(data) - 40])
        return {"items": "cut.parquet"}, ["DuckDB could not read the snapshot of 'shop'", "truncated or corrupt"]
    items.to_json(src / "items.jsonl", orient="records", lines=True)
    text = (src / "items.jsonl").read_text()
    (src / "items.jsonl").write_text(text[: len(text) - 25])
    return {"items": "items.jsonl"}, ["could not be parsed as jsonl", "truncated"]


def wrong_checksum(src: Path, ext: str) -> tuple[dict, list[str]]:
    expected = "0" * 64
    actual = hashlib.sha256((src / f"items.{ext}").read_bytes()).hexdigest()
    return {"data.local.checksums": f"{{items.{ext}: '{expected}'}}"}, [f"expected sha256 {expected}, got {actual}"]


def too_short_user(src: Path, ext: str) -> tuple[dict, list[str]]:
    _, inter = tiny_tables()
    _events(src, inter[~((inter["customer"] == "u4") & (inter["ts"] >= 4002))])
    return {}, ["users.n_interactions: expect_column_values_to_be_between (1 rows)",
                "'user_id': 'u4', 'n_interactions': 2"]


def nan_id(src: Path, ext: str) -> tuple[dict, list[str]]:
    _, inter = tiny_tables()
    inter["customer"] = inter["customer"].astype(object)
    inter.loc[7, "customer"] = None
    _events(src, inter)
    return {}, ["interactions.user_id: expect_column_values_to_not_be_null (1 rows)"]


def no_interactions(src: Path, ext: str) -> tuple[dict, list[str]]:
    """An export with a header and no rows used to validate (0 users) and replace the processed data."""
    _, inter = tiny_tables()
    _events(src, inter.iloc[:0])
    return {}, ["interactions: expect_table_row_count_to_be_between (observed 0)", "the table has no rows"]


def unparseable_timestamp(src: Path, ext: str) -> tuple[dict, list[str]]:
    """Used to be reported as 'missing ids' (the value was coerced to NaN)."""
    _, inter = tiny_tables()
    inter["ts"] = inter["ts"].astype(str)
    inter.loc[5, "ts"] = "yesterday"
    _events(src, inter)
    return {}, ["timestamp column 'ts' has 1 value(s) that are neither numbers nor dates, e.g. 'yesterday'"]


def missing_timestamp(src: Path, ext: str) -> tuple[dict, list[str]]:
    _, inter = tiny_tables()
    inter["ts"] = inter["ts"].astype(object)
    inter.loc[5, "ts"] = None
    _events(src, inter)
    return {}, ["interactions.timestamp: expect_column_values_to_not_be_null (1 rows)",
                "fill in or drop the events that have no timestamp"]


CORRUPTIONS = [missing_column, duplicate_item_id, dangling_item_reference, empty_texts, truncated_file,
               wrong_checksum, too_short_user, nan_id, no_interactions, unparseable_timestamp, missing_timestamp]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=[c.__name__ for c in CORRUPTIONS])
def test_corruption_is_named_and_quarantined(shop, corrupt):
    src, root, engine, ext = shop
    extra, expected = corrupt(src, ext)
    msg = _run_corrupted(src, root, engine, ext, **extra)
    for text in expected:
        assert text in msg


def _cfg(src: Path, root: Path, engine: str, ext: str):
    return load_config(None, local_params(root, str(src / f"items.{ext}"), str(src / f"events.{ext}"),
                                          **{"data.engine": engine}))


def test_dates_are_timestamps(shop):
    src, root, engine, ext = shop
    _, inter = tiny_tables()
    inter["ts"] = pd.to_datetime(inter["ts"], unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S")
    _events(src, inter)
    cfg = _cfg(src, root, engine, ext)
    ingest.fetch("shop", cfg)
    assert validate.validate("shop", cfg)["interactions"] == 30
    ts = pd.read_parquet(root / "processed" / "shop" / "interactions.parquet")["timestamp"]
    assert ts.min() == 0 and ts.max() == 5004  # epoch seconds again


def test_a_mostly_empty_text_column_is_a_warning_with_its_share(shop):
    src, root, engine, ext = shop
    items, _ = tiny_tables()
    items.loc[:2, "brand"] = ""  # 3 of 8 items: the joined text still has the title
    _items(src, items)
    cfg = _cfg(src, root, engine, ext)
    ingest.fetch("shop", cfg)
    stats = validate.validate("shop", cfg)
    assert stats["text_column_coverage"] == {"title": 1.0, "brand": 5 / 8}
    assert stats["warnings"] == ["text column 'brand' is empty for 37.5% of the items (3 of 8); "
                                 "data.min_text_coverage is 95%"]


@pytest.mark.parametrize("name", ["../etc", "shop/x", "-rf", "", "a" * 70, "s p a c e"])
def test_a_dataset_name_must_be_safe(name):
    from semid.tasks.config import ConfigError

    with pytest.raises(ConfigError, match="data.dataset"):
        load_config(None, [f"data.dataset={name}"])
