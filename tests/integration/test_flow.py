"""The retrain flow end to end on a tiny local dataset: pair promotion, failed gates that move nothing,
per-dataset champions, resume from cache, racing runs."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import mlflow
from tests.integration.conftest import shop_params

pytestmark = pytest.mark.usefixtures("prefect_harness")
CB, REC = "semid-codebook-shop", "semid-recommender-shop"  # the registry is scoped per dataset


def _client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def test_flow_promotes_then_worse_config_fails_gate(tmp_path, emb_cache):
    from semid.flows.retrain import GateFailed, retrain

    sets = shop_params(tmp_path, emb_cache)
    summary = retrain(config=str(tmp_path / "none.yaml"), overrides=sets)
    assert summary["codebook"]["promoted"] and summary["recommender"]["promoted"]
    client = _client(tmp_path)
    champ = client.get_model_version_by_alias(CB, "champion")
    assert str(champ.version) == "1" and champ.tags["gate"] == "passed"
    # every registered version traces to git sha, data hash and config
    for model in (CB, REC):
        mv = client.get_model_version(model, "1")
        assert mv.tags["git_sha"] and mv.tags["data_hash"] and mv.tags["config_hash"]
        assert mv.tags["prefect_flow_run_id"]
        run = client.get_run(mv.run_id)
        assert run.data.tags["mlflow.parentRunId"]
    assert "l0_k_eff" in client.get_run(champ.run_id).data.metrics
    parent = client.get_run(summary["mlflow_run_id"])  # one parent run, a nested run per step
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.info.run_name for r in children} >= {"ingest", "validate", "embed", "quantize", "diagnose",
                                                   "register-codebook", "recommend", "register-recommender"}
    assert parent.data.tags["git_sha"] and "quantizer.levels" in parent.data.params
    # the registered codebook answers embeddings -> semantic IDs
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{CB}@champion")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{CB}@champion"))
    assert "python_model.pkl" not in {p.name for p in local.rglob("*")}  # logged as code: nothing to unpickle
    code = local / "code"
    shipped = {str(p.relative_to(code)) for p in code.rglob("*.py")}
    assert "semid/tasks/serving.py" in shipped and "semid/models/quantizer.py" in shipped
    assert {f for f in shipped if not f.startswith("semid/models/")} == {"semid/tasks/__init__.py",
                                                                         "semid/tasks/serving.py"}
    import numpy as np
    import pandas as pd

    emb = np.load(tmp_path / "data" / "features" / "shop" / "embeddings.npy")
    ids = pd.read_parquet(tmp_path / "data" / "semantic" / "shop" / "ids.parquet").sort_values("item_id")
    items = pd.read_parquet(tmp_path / "data" / "processed" / "shop" / "items.parquet").sort_values("item_id")
    # every catalogue item gets the ID it was registered with (by source_id, or by its exact text) ...
    out = model.predict(pd.DataFrame({"source_id": ids["source_id"], "embedding": list(emb)}))
    assert out["semantic_id"].tolist() == ids["semantic_id"].tolist() and not out["is_new"].any()
    by_text = model.predict(pd.DataFrame({"text": items["text"].tolist()[:5]}))
    assert by_text["semantic_id"].tolist() == ids["semantic_id"].tolist()[:5]
    # ... and a new item the nearest ID no catalogue item holds, marked new
    new = model.predict(pd.DataFrame({"embedding": list(emb[:3] + 0.01)}))
    assert new["is_new"].all() and not set(new["semantic_id"]) & set(ids["semantic_id"])
    assert new["semantic_id"].is_unique
    # the registered recommender: top-k per row, history masked, unknown items reported, popularity fallback
    rec = mlflow.pyfunc.load_model(f"models:/{REC}@champion")
    top = rec.predict(pd.DataFrame({"history": [["i1", "i2", "i3"], ["i4", "nope"], [], ["gone"]],
                                    "k": [5, 3, 4, 2]}))
    assert [len(r) for r in top["recommendations"]] == [5, 3, 4, 2]
    assert not {"i1", "i2", "i3"} & set(top["recommendations"][0]) and "i4" not in top["recommendations"][1]
    assert top["unknown"].tolist() == [[], ["nope"], [], ["gone"]]
    assert top["fallback"].tolist() == ["", "", "most_popular", "most_popular"]
    assert top["recommendations"][2][:2] == top["recommendations"][3]  # both: the most popular items
    unmasked = rec.predict(pd.DataFrame({"history": [["i1", "i2", "i3"]], "k": [40], "mask_history": [False]}))
    assert {"i1", "i2", "i3"} <= set(unmasked["recommendations"][0])
    # `semid evaluate` rebuilds the saved model and gets the same test metrics as training did
    from semid.tasks.config import load_config
    from semid.tasks.recommend import reevaluate

    again = reevaluate("shop", load_config(None, sets))
    trained = summary["recommender"]["metrics"]
    assert again["results"]["test"]["full"]["ndcg@10"] == pytest.approx(trained["test_full_ndcg@10"])

    worse = sets + ["quantizer.levels=1", "quantizer.codebook_size=2", "quantizer.distances=[euclidean]"]
    with pytest.raises(GateFailed, match="duplicate_rate"):
        retrain(config=str(tmp_path / "none.yaml"), overrides=worse)
    failed = json.loads((tmp_path / "data" / "runs" / "shop.json").read_text())  # the failed run is on record
    assert "duplicate_rate" in failed["gate_failed"] and not failed["codebook"]["passed"]
    assert failed["recommender"] is None and "recommend" not in failed["steps"] and failed["seconds"]["quantize"] > 0
    assert str(client.get_model_version_by_alias(CB, "champion").version) == "1"
    v2 = client.get_model_version(CB, "2")
    assert v2.tags["gate"] == "failed" and "duplicate_rate" in v2.tags["gate_reasons"]
    # the recommender was not trained on the rejected codebook
    assert len(client.search_model_versions(f"name='{REC}'")) == 1
    assert (tmp_path / "data" / "semantic" / "shop" / "gate_codebook.md").read_text().count("FAIL") >= 1


def test_a_failing_recommender_leaves_both_champions_unchanged(tmp_path, emb_cache):
    """Pair promotion: the codebook candidate waits as the challenger; when the recommender trained on it fails
    its gate, neither champion moves (on e86156b the codebook alias had already moved)."""
    from semid.flows.retrain import GateFailed, retrain

    sets = shop_params(tmp_path, emb_cache)
    retrain(config=str(tmp_path / "none.yaml"), overrides=sets)
    client = _client(tmp_path)
    with pytest.raises(GateFailed, match="ndcg@10_vs_champion"):  # a barely trained recommender
        retrain(config=str(tmp_path / "none.yaml"),
                overrides=sets + ["quantizer.seed=1", "gate.k_eff_tolerance=1.0", "gate.duplicate_tolerance=1.0",
                                  "recommend.epochs=1", "recommend.lr=0.000001", "gate.ndcg_tolerance=0"])
    assert str(client.get_model_version_by_alias(CB, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(REC, "champion").version) == "1"
    v2 = client.get_model_version(CB, "2")
    assert v2.tags["gate"] == "passed" and v2.tags["pair"].startswith("rejected") and "champion" not in v2.aliases
    assert not client.get_registered_model(CB).aliases.get("challenger")
    assert client.get_model_version(REC, "2").tags["gate"] == "failed"
    failed = json.loads((tmp_path / "data" / "runs" / "shop.json").read_text())
    assert "ndcg@10_vs_champion" in failed["gate_failed"] and failed["recommender"]["metrics"]["epochs"] == 1
    assert failed["steps"]["recommend"] == "Completed" and failed["seconds"]["recommend"] > 0


def test_datasets_are_gated_against_their_own_champions(tmp_path, emb_cache):
    """Champions are per dataset: a second dataset is the first version of its own models, never compared with
    (or encoded by) another dataset's champion."""
    from semid.flows.retrain import retrain
    from semid.tasks.config import load_config
    from semid.tasks.errors import PipelineError
    from semid.tasks.tracking import client_for, load_champion

    store = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    retrain(config=str(tmp_path / "none.yaml"), overrides=shop_params(tmp_path / "a", emb_cache,
                                                                      **{"mlflow.tracking_uri": store}))
    other = shop_params(tmp_path / "b", emb_cache, n_items=48, **{"mlflow.tracking_uri": store,
                                                                  "data.dataset": "shop2"})
    summary = retrain(config=str(tmp_path / "none.yaml"), overrides=other)
    assert summary["codebook"]["champion_before"] is None and summary["codebook"]["promoted"]
    client = _client(tmp_path)
    assert str(client.get_model_version_by_alias("semid-codebook-shop2", "champion").version) == "1"
    assert str(client.get_model_version_by_alias(CB, "champion").version) == "1"
    # a champion registered for another dataset is refused by incremental mode
    cfg = load_config(None, other)
    mlflow_client, _ = client_for(cfg)
    mlflow_client.set_registered_model_alias("semid-codebook-shop2", "champion", "1")
    mlflow_client.set_model_version_tag("semid-codebook-shop2", "1", "dataset", "shop")
    with pytest.raises(PipelineError, match="registered for dataset 'shop', not 'shop2'"):
        load_champion(cfg, "semid-codebook-shop2", dataset="shop2")


def test_rerun_after_recommender_crash_resumes_from_cache(tmp_path, emb_cache, monkeypatch):
    import semid.tasks.recommend
    from semid.flows.retrain import retrain

    sets = shop_params(tmp_path, emb_cache)
    real = semid.tasks.recommend.recommend

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash in the recommender step")

    monkeypatch.setattr(semid.tasks.recommend, "recommend", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        retrain(config=str(tmp_path / "none.yaml"), overrides=sets)
    monkeypatch.setattr(semid.tasks.recommend, "recommend", real)
    summary = retrain(config=str(tmp_path / "none.yaml"), overrides=sets)
    earlier = ("ingest", "validate", "embed", "quantize", "diagnose", "register-codebook", "gate-codebook")
    executed = [s for s in earlier if summary["steps"][s] != "Cached"]
    assert executed == [], f"steps re-executed after the crash: {summary['steps']}"
    assert summary["recommender"]["promoted"]
    # only one codebook version: the rerun reused the registration from the crashed run
    assert len(_client(tmp_path).search_model_versions(f"name='{CB}'")) == 1


def test_two_flow_runs_racing_end_with_one_champion(tmp_path, emb_cache):
    from semid.flows.retrain import GateFailed, retrain

    store = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    runs = [shop_params(tmp_path / f"run{i}", emb_cache, **{"quantizer.seed": i, "mlflow.tracking_uri": store,
                                                            "flow.train_recommender": "false"}) for i in range(2)]
    retrain(config=str(tmp_path / "none.yaml"), overrides=runs[0])  # both candidates see one champion (v1)
    barrier, outcomes = threading.Barrier(2), {}

    def race(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = retrain(config=str(tmp_path / "none.yaml"), overrides=runs[i] + ["diagnose.seed=1"])
        except GateFailed as err:
            outcomes[i] = err

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    client = _client(tmp_path)
    versions = sorted(str(mv.version) for mv in client.search_model_versions(f"name='{CB}'"))
    assert versions == ["1", "2", "3"]
    holders = [v for v in versions if "champion" in client.get_model_version(CB, v).aliases]
    assert len(holders) == 1
    # each decision was taken against the champion current under the lock: the later one saw the earlier winner
    against = {v: client.get_model_version(CB, v).tags["champion_at_gate"] for v in ("2", "3")}
    assert sorted(against.values()) in (["1", "1"], ["1", "2"], ["1", "3"]), against
    assert all(client.get_model_version(CB, v).tags["gate"] in ("passed", "failed") for v in versions)
