"""Retraining on new data: amazon-office (a slice) split by time into three snapshots, delivered as new export
files of a local source. New items get IDs, churn is reported, incremental mode keeps existing IDs until a
refit is triggered."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from tests.conftest import local_params

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _office_snapshots(mirror, n_users: int = 150) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Per user, snapshot k holds the first k/3 of the chronological sequence (users with >= 5 events so far);
    each snapshot is returned as a delta: the new events and the items first seen in it."""
    seqs = json.loads((mirror / "amazon-office" / "Office.inter.json").read_text())
    meta = json.loads((mirror / "amazon-office" / "Office.item.json").read_text())
    users = sorted(seqs, key=int)[:n_users]
    seen_events: set[tuple[str, int]] = set()
    seen_items: set[int] = set()
    deltas = []
    for k in (1, 2, 3):
        events = []
        for u in users:
            prefix = seqs[u][: math.ceil(len(seqs[u]) * k / 3)]
            if len(prefix) >= 5:
                events += [(u, item, pos) for pos, item in enumerate(prefix)]
        new_events = [e for e in events if (e[0], e[1]) not in seen_events]
        seen_events |= {(e[0], e[1]) for e in events}
        new_items = sorted({e[1] for e in new_events} - seen_items)
        seen_items |= set(new_items)
        inter = pd.DataFrame(new_events, columns=["customer", "sku", "ts"])
        items = pd.DataFrame({"sku": new_items, "title": [meta[str(i)]["title"] for i in new_items],
                              "brand": [meta[str(i)]["brand"] for i in new_items],
                              "categories": [meta[str(i)]["categories"] for i in new_items]})
        inter["sku"], items["sku"] = inter["sku"].astype(str), items["sku"].astype(str)
        deltas.append((items, inter))
    return deltas


def test_three_snapshots_incremental_then_refit(tmp_path, emb_cache, shared_mirror):
    from semid.flows.retrain import GateFailed, retrain

    src = tmp_path / "exports"
    src.mkdir()
    deltas = _office_snapshots(shared_mirror)
    sets = local_params(tmp_path / "data", str(src / "items-*.parquet"), str(src / "events-*.parquet"), **{
        "data.local.text_cols": "[title, brand, categories]",
        "embed.cache_dir": str(emb_cache),
        "quantizer.method": "rqkmeans", "quantizer.levels": 3, "quantizer.codebook_size": 16,
        "quantizer.distances": "[cosine, cosine, euclidean]", "quantizer.kmeans_iters": 10, "diagnose.mc_samples": 8,
        "gate.min_k_eff_ratio": 0.0, "gate.min_active_share": 0.0, "gate.max_duplicate_rate": 0.95,
        "gate.max_recon_ratio": 10.0, "gate.duplicate_tolerance": 0.5, "gate.k_eff_tolerance": 0.9,
        "flow.train_recommender": "false",
        "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
    })
    cfg_path = str(tmp_path / "none.yaml")
    ids_path = tmp_path / "data" / "semantic" / "shop" / "ids.parquet"

    def deliver(k: int) -> None:
        items, inter = deltas[k]
        items.to_parquet(src / f"items-{k}.parquet")
        inter.to_parquet(src / f"events-{k}.parquet")

    deliver(0)
    first = retrain(config=cfg_path, overrides=sets + ["flow.mode=retrain"])
    assert first["codebook"]["promoted"] and first["codebook"]["churn"] is None
    ids1 = pd.read_parquet(ids_path).set_index("source_id")["semantic_id"]

    deliver(1)
    second = retrain(config=cfg_path, overrides=sets + ["flow.mode=incremental"])
    cb = second["codebook"]
    assert cb["promoted"] and "extend" in second["steps"] and "quantize" not in second["steps"]
    ids2 = pd.read_parquet(ids_path).set_index("source_id")["semantic_id"]
    assert ids2.is_unique
    diff = ids2.loc[ids1.index] != ids1
    assert not diff.any(), pd.concat([ids1[diff], ids2.loc[ids1.index][diff]], axis=1).head()  # kept IDs
    assert cb["churn"] == 0.0 and cb["items_known"] == len(ids1)
    assert cb["items_new"] == len(ids2) - len(ids1) == len(deltas[1][0]) > 0

    deliver(2)
    # thresholds the grown catalogue cannot meet: incremental triggers a refit, which fails the gate too
    with pytest.raises(GateFailed, match="k_eff_ratio"):
        retrain(config=cfg_path, overrides=sets + ["flow.mode=incremental", "gate.min_k_eff_ratio=0.99"])
    quantize_info = json.loads((tmp_path / "data" / "semantic" / "shop" / "quantize.json").read_text())
    assert quantize_info["mode"] == "fit"  # the refit happened
    # retrain mode on the third snapshot: a new codebook, churn against the champion is reported
    third = retrain(config=cfg_path, overrides=sets + ["flow.mode=retrain"])
    cb3 = third["codebook"]
    assert cb3["promoted"] and cb3["items_known"] == len(ids2) and cb3["items_new"] == len(deltas[2][0])
    assert 0.0 <= cb3["churn"] <= 1.0
    ids3 = pd.read_parquet(ids_path).set_index("source_id")["semantic_id"]
    assert cb3["churn"] == pytest.approx(float((ids3.loc[ids2.index] != ids2).mean()))
