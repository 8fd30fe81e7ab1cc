"""One test per corruption, fed through the local-source path with hand-made files.

Each asserts the specific message, a new quarantine folder with the raw batch, and that
data/processed is byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from tasks import ingest, validate
from tasks.config import load_config
from tasks.errors import PipelineError
from tests.conftest import local_params, tiny_tables


def _tree_bytes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def shop(tmp_path):
    """A validated local dataset 'shop'; returns (src dir, data root) for corrupting and re-running."""
    items, inter = tiny_tables()
    src = tmp_path / "src"
    src.mkdir()
    items.to_csv(src / "items.csv", index=False)
    inter.to_csv(src / "events.csv", index=False)
    root = tmp_path / "data"
    cfg = load_config(None, local_params(root, str(src / "items.csv"), str(src / "events.csv")))
    ingest.fetch("shop", cfg)
    stats = validate.validate("shop", cfg)
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 8, 30)
    return src, root


def _run_corrupted(src: Path, root: Path, items: str = "items.csv", events: str = "events.csv", **extra) -> str:
    processed = root / "processed"
    before = _tree_bytes(processed)
    quarantined = set((root / "quarantine" / "shop").glob("*")) if (root / "quarantine").exists() else set()
    cfg = load_config(None, local_params(root, str(src / items), str(src / events), **extra))
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


def test_missing_column(shop):
    src, root = shop
    items, _ = tiny_tables()
    items.drop(columns=["title"]).to_csv(src / "items.csv", index=False)
    msg = _run_corrupted(src, root)
    assert "missing column(s) ['title'] in the items table" in msg
    assert "column mapping under data.local" in msg


def test_duplicate_item_id(shop):
    src, root = shop
    items, _ = tiny_tables()
    pd.concat([items, items.iloc[[2]]]).to_csv(src / "items.csv", index=False)
    msg = _run_corrupted(src, root)
    assert "items.item_id: expect_column_values_to_be_unique (2 rows)" in msg
    assert "'item_id': 'i2'" in msg


def test_dangling_item_reference(shop):
    src, root = shop
    _, inter = tiny_tables()
    inter.loc[3, "sku"] = "ghost"
    inter.to_csv(src / "events.csv", index=False)
    msg = _run_corrupted(src, root)
    assert "interactions.item_id: expect_column_values_to_be_in_set (1 rows)" in msg
    assert "ghost" in msg


def test_empty_texts(shop):
    src, root = shop
    items, _ = tiny_tables()
    items.loc[:4, ["title", "brand"]] = ""
    items.to_csv(src / "items.csv", index=False)
    msg = _run_corrupted(src, root)
    assert "items.text: expect_column_value_lengths_to_be_between (5 rows)" in msg
    assert "min_text_coverage" in msg


def test_truncated_json(shop):
    src, root = shop
    items, inter = tiny_tables()
    items.to_json(src / "items.jsonl", orient="records", lines=True)
    text = (src / "items.jsonl").read_text()
    (src / "items.jsonl").write_text(text[: len(text) - 25])
    msg = _run_corrupted(src, root, items="items.jsonl")
    assert "could not be parsed as jsonl" in msg and "truncated" in msg


def test_wrong_checksum(shop):
    src, root = shop
    expected = "0" * 64
    msg = _run_corrupted(src, root, **{"data.local.checksums": f"{{items.csv: '{expected}'}}"})
    actual = hashlib.sha256((src / "items.csv").read_bytes()).hexdigest()
    assert f"expected sha256 {expected}, got {actual}" in msg


def test_too_short_user(shop):
    src, root = shop
    _, inter = tiny_tables()
    inter = inter[~((inter["customer"] == "u4") & (inter["ts"] >= 4002))]
    inter.to_csv(src / "events.csv", index=False)
    msg = _run_corrupted(src, root)
    assert "users.n_interactions: expect_column_values_to_be_between (1 rows)" in msg
    assert "'user_id': 'u4', 'n_interactions': 2" in msg


def test_nan_id(shop):
    src, root = shop
    _, inter = tiny_tables()
    inter["customer"] = inter["customer"].astype(object)
    inter.loc[7, "customer"] = None
    inter.to_csv(src / "events.csv", index=False)
    msg = _run_corrupted(src, root)
    assert "interactions.user_id: expect_column_values_to_not_be_null (1 rows)" in msg
