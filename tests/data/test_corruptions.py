"""One test per corruption, fed through the local-source path with hand-made files.

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


def _items(src: Path, items: pd.DataFrame) -> None:
    items.to_csv(src / "items.csv", index=False)


def _events(src: Path, inter: pd.DataFrame) -> None:
    inter.to_csv(src / "events.csv", index=False)


def missing_column(src: Path) -> tuple[dict, list[str]]:
    items, _ = tiny_tables()
    _items(src, items.drop(columns=["title"]))
    return {}, ["missing column(s) ['title'] in the items table", "column mapping under data.local"]


def duplicate_item_id(src: Path) -> tuple[dict, list[str]]:
    items, _ = tiny_tables()
    _items(src, pd.concat([items, items.iloc[[2]]]))
    return {}, ["items.item_id: expect_column_values_to_be_unique (2 rows)", "'item_id': 'i2'"]


def dangling_item_reference(src: Path) -> tuple[dict, list[str]]:
    _, inter = tiny_tables()
    inter.loc[3, "sku"] = "ghost"
    _events(src, inter)
    return {}, ["interactions.item_id: expect_column_values_to_be_in_set (1 rows)", "ghost"]


def empty_texts(src: Path) -> tuple[dict, list[str]]:
    items, _ = tiny_tables()
    items.loc[:4, ["title", "brand"]] = ""
    _items(src, items)
    return {}, ["items.text: expect_column_value_lengths_to_be_between (5 rows)", "min_text_coverage"]


def truncated_json(src: Path) -> tuple[dict, list[str]]:
    items, _ = tiny_tables()
    items.to_json(src / "items.jsonl", orient="records", lines=True)
    text = (src / "items.jsonl").read_text()
    (src / "items.jsonl").write_text(text[: len(text) - 25])
    return {"items": "items.jsonl"}, ["could not be parsed as jsonl", "truncated"]


def wrong_checksum(src: Path) -> tuple[dict, list[str]]:
    expected = "0" * 64
    actual = hashlib.sha256((src / "items.csv").read_bytes()).hexdigest()
    return {"data.local.checksums": f"{{items.csv: '{expected}'}}"}, [f"expected sha256 {expected}, got {actual}"]


def too_short_user(src: Path) -> tuple[dict, list[str]]:
    _, inter = tiny_tables()
    _events(src, inter[~((inter["customer"] == "u4") & (inter["ts"] >= 4002))])
    return {}, ["users.n_interactions: expect_column_values_to_be_between (1 rows)",
                "'user_id': 'u4', 'n_interactions': 2"]


def nan_id(src: Path) -> tuple[dict, list[str]]:
    _, inter = tiny_tables()
    inter["customer"] = inter["customer"].astype(object)
    inter.loc[7, "customer"] = None
    _events(src, inter)
    return {}, ["interactions.user_id: expect_column_values_to_not_be_null (1 rows)"]


CORRUPTIONS = [missing_column, duplicate_item_id, dangling_item_reference, empty_texts, truncated_json,
               wrong_checksum, too_short_user, nan_id]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=[c.__name__ for c in CORRUPTIONS])
def test_corruption_is_named_and_quarantined(shop, corrupt):
    src, root = shop
    extra, expected = corrupt(src)
    msg = _run_corrupted(src, root, **extra)
    for text in expected:
        assert text in msg
