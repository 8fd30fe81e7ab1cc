"""Integration fixtures: one Prefect test harness per session (temporary PREFECT_HOME), a tiny shop dataset."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.conftest import local_params, tiny_tables


@pytest.fixture(scope="session")
def prefect_harness():
    home = tempfile.mkdtemp(prefix="prefect-home-")
    os.environ["PREFECT_HOME"] = home
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield home


@pytest.fixture(scope="session")
def emb_cache(tmp_path_factory) -> Path:
    """One embedding cache for the session: each tiny catalogue is encoded once."""
    return tmp_path_factory.mktemp("emb-cache")


def shop_params(root: Path, emb_cache: Path, n_users: int = 30, n_items: int = 40, **extra: object) -> list[str]:
    """A small local dataset + a fast quantizer/recommender, loose absolute gates, MLflow under root."""
    items, inter = tiny_tables(n_users=n_users, n_items=n_items, per_user=6)
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    items.to_parquet(src / "items.parquet")
    inter.to_parquet(src / "events.parquet")
    defaults = {
        "embed.cache_dir": str(emb_cache),
        "quantizer.method": "rqkmeans", "quantizer.levels": 2, "quantizer.codebook_size": 8,
        "quantizer.distances": "[cosine, euclidean]", "quantizer.kmeans_iters": 10,
        "diagnose.mc_samples": 8,
        "gate.min_k_eff_ratio": 0.0, "gate.min_active_share": 0.0, "gate.max_duplicate_rate": 0.5,
        "gate.max_recon_ratio": 10.0, "gate.min_lift_over_popularity": -1.0,
        "recommend.epochs": 2, "recommend.patience": 1, "recommend.layers": 1, "recommend.negatives": 5,
        "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
    }
    defaults.update(extra)
    return local_params(root / "data", str(src / "items.parquet"), str(src / "events.parquet"), **defaults)
