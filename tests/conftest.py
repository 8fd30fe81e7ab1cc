"""Shared fixtures: quiet, offline-safe environment; tiny local datasets; the ../shared mirror."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("SEMID_NO_DVC", "1")  # tests never touch the project's own data.dvc

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEMID_DATA_MIRROR") or REPO.parent / "shared" / "datasets")


@pytest.fixture
def shared_mirror() -> Path:
    if not (SHARED / "amazon-scientific").exists():
        pytest.skip(f"public dataset mirror not found at {SHARED} (set SEMID_DATA_MIRROR)")
    return SHARED


def tiny_tables(n_users: int = 6, n_items: int = 8, per_user: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A small valid catalogue + chronological interactions (every user has `per_user` events)."""
    items = pd.DataFrame(
        {"sku": [f"i{j}" for j in range(n_items)], "title": [f"item number {j}" for j in range(n_items)],
         "brand": [f"b{j % 3}" for j in range(n_items)]}
    )
    rows = []
    for u in range(n_users):
        for k in range(per_user):
            rows.append({"customer": f"u{u}", "sku": f"i{(u + k) % n_items}", "ts": 1000 * u + k})
    return items, pd.DataFrame(rows)


def local_params(root: Path, items: str, inter: str, **extra: object) -> list[str]:
    sets = [
        f"data.root={root}",
        "data.dataset=shop",
        f"data.local={{items: '{items}', interactions: '{inter}', user_col: customer, item_col: sku, "
        "timestamp_col: ts, text_cols: [title, brand]}",
    ]
    sets += [f"{k}={v}" for k, v in extra.items()]
    return sets
