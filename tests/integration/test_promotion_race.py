"""Promotion is safe across hosts: two flow processes race against a real `mlflow server` backed by PostgreSQL,
excluded from each other by the advisory lock in that database (mlflow.lock_url)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import free_port, server_process, shop_params

pytestmark = pytest.mark.usefixtures("prefect_harness")
CB = "semid-codebook-shop"


def _semid_run(sets: list[str], cwd: Path) -> subprocess.Popen:
    from prefect.settings import get_current_settings

    args = [str(Path(sys.executable).parent / "semid"), "run", "--config", str(cwd / "none.yaml")]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_flows_racing_on_a_shared_server_promote_the_better_one(tmp_path, emb_cache, postgres):
    from sqlalchemy import create_engine, text

    engine = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("CREATE DATABASE mlflow"))
    engine.dispose()
    db = f"{postgres}/mlflow"
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with server_process([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", db,
                         "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--host", "127.0.0.1",
                         "--port", str(port), "--workers", "1"], tmp_path / "mlflow.log", f"{uri}/health"):
        common = {"mlflow.tracking_uri": uri, "mlflow.lock_url": db, "flow.train_recommender": "false",
                  "gate.k_eff_tolerance": 0.0, "gate.duplicate_tolerance": 1.0, "gate.min_active_share": 0.0,
                  "gate.max_duplicate_rate": 1.0,
                  "quantizer.levels": 1, "quantizer.distances": "[cosine]"}
        # the champion: 2 codes; candidates with 4 codes (better) and 8 codes (best): K_eff grows with the codes
        first = _semid_run(shop_params(tmp_path / "v1", emb_cache, **common, **{"quantizer.codebook_size": 2}),
                           tmp_path / "v1")
        assert first.wait(timeout=600) == 0, first.stdout.read()[-3000:]
        runs = {k: _semid_run(shop_params(tmp_path / f"k{k}", emb_cache, **common,
                                          **{"quantizer.codebook_size": k}), tmp_path / f"k{k}") for k in (4, 8)}
        outputs = {k: (p.wait(timeout=600), p.stdout.read()) for k, p in runs.items()}
        client = MlflowClient(uri, registry_uri=uri)
        versions = {mv.version: mv for mv in client.search_model_versions(f"name='{CB}'")}
        assert len(versions) == 3, outputs
        k_eff = {v: client.get_run(mv.run_id).data.metrics["l0_k_eff"] for v, mv in versions.items()}
        best = max(k_eff, key=k_eff.get)
        champion = client.get_model_version_by_alias(CB, "champion")
        assert champion.version == best, (k_eff, outputs)  # the better candidate is the champion
        # every decision was taken against the champion current at that moment, under the lock: the champion's
        # recorded baseline is the version it replaced (its `previous`), and a loser was gated against a version
        # whose K_eff it did not reach
        previous = client.get_model_version_by_alias(CB, "previous")
        assert versions[champion.version].tags["champion_at_gate"] == previous.version
        for v, mv in versions.items():
            if v not in (champion.version, "1"):
                against = mv.tags["champion_at_gate"]
                assert mv.tags["gate"] == ("passed" if k_eff[v] >= k_eff[against] else "failed"), (v, against, k_eff)


def test_a_shared_store_without_a_lock_promotes_nothing(tmp_path):
    from semid.tasks.config import load_config
    from semid.tasks.errors import PipelineError
    from semid.tasks.tracking import promotion_lock

    cfg = load_config(None, ["mlflow.tracking_uri=http://127.0.0.1:9"])
    with pytest.raises(PipelineError, match="no cross-host promotion lock"), promotion_lock(cfg, "shop"):
        pass
    down = load_config(None, ["mlflow.lock_url=postgresql+psycopg://postgres@127.0.0.1:9/mlflow"])
    with pytest.raises(PipelineError, match="promotion lock database .* is unreachable"), promotion_lock(down, "shop"):
        pass


HOLD = """
import sys, time
from semid.tasks.config import load_config
from semid.tasks.tracking import promotion_lock
cfg = load_config(None, ["mlflow.tracking_uri=http://127.0.0.1:9", f"mlflow.lock_url={sys.argv[1]}"])
start = time.time()
with promotion_lock(cfg, "shop"):
    got = time.time()
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    print(start, got, time.time(), flush=True)
"""


def test_the_lock_excludes_another_process_on_another_host(tmp_path, postgres):
    """Two processes in different working directories (as on two hosts) share only the database: the second
    gets the promotion lock only after the first released it (a per-host file lock would let both in)."""
    db = f"{postgres}/postgres"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = subprocess.Popen([sys.executable, "-c", HOLD, db, "8"], cwd=tmp_path / "a", stdout=subprocess.PIPE,
                             text=True)
    assert first.stdout.readline().strip() == "holding"  # the first holds the lock now: start the second
    second = subprocess.Popen([sys.executable, "-c", HOLD, db, "0"], cwd=tmp_path / "b", stdout=subprocess.PIPE,
                              text=True)
    (_, got1, released1), (start2, got2, _) = (map(float, p.communicate(timeout=120)[0].split()[-3:])
                                               for p in (first, second))
    assert start2 < released1, "the second process asked too late to test anything"
    disjoint = got2 >= released1 - 0.05
    assert disjoint, f"both held the lock: second got it at {got2}, first released at {released1}"
