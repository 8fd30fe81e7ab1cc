"""Gate checks and ID churn on hand-made diagnostics."""

from __future__ import annotations

import pandas as pd

from semid.tasks.config import GateConfig
from semid.tasks.gate import gate_codebook, gate_recommender, id_churn


def _diag(k_eff=(120.0, 100.0), active=(1.0, 0.95), dup=0.02, mse=0.001):
    return {"levels": [{"level": i, "k": 256, "k_eff": k, "active_share": a} for i, (k, a) in
                       enumerate(zip(k_eff, active, strict=True))],
            "ids": {"duplicate_rate": dup}, "recon_mse": mse}


def test_thresholds_pass_and_fail():
    g = GateConfig(min_k_eff_ratio=0.3, min_active_share=0.9, max_duplicate_rate=0.05, max_recon_mse=0.01)
    assert gate_codebook(_diag(), g).passed
    bad = gate_codebook(_diag(k_eff=(120.0, 50.0), dup=0.08), g)
    assert not bad.passed
    assert {c.name for c in bad.checks if not c.passed} == {"k_eff_ratio_l1", "duplicate_rate"}
    assert "duplicate_rate = 0.08" in bad.summary()
    md = bad.markdown()
    assert md.count("**FAIL**") == 2 and "| duplicate_rate | 0.08 | 0.05 |" in md


def test_no_regression_against_the_champion():
    g = GateConfig(k_eff_tolerance=0.1, duplicate_tolerance=0.01)
    champion = {"l0_k_eff": 130.0, "l1_k_eff": 100.0, "duplicate_rate": 0.005}
    rep = gate_codebook(_diag(k_eff=(118.0, 95.0), dup=0.02), g, champion)
    failed = {c.name for c in rep.checks if not c.passed}
    assert failed == {"duplicate_rate_vs_champion"}  # 118 >= 130 x 0.9 = 117: K_eff passes
    rep_ok = gate_codebook(_diag(k_eff=(117.5, 95.0), dup=0.015), g, champion)
    assert rep_ok.passed


def test_id_churn_by_hand():
    old = pd.DataFrame({"source_id": ["a", "b", "c", "d"], "semantic_id": ["1-1", "1-2", "2-1", "3-3"]})
    new = pd.DataFrame({"source_id": ["a", "b", "c", "e"], "semantic_id": ["1-1", "9-9", "2-1", "4-4"]})
    churn, common, added = id_churn(old, new)
    assert (churn, common, added) == (1 / 3, 3, 1)
    g = GateConfig(max_id_churn=0.2)
    assert not gate_codebook(_diag(), g, churn=churn).passed


def test_recommender_gate():
    g = GateConfig(ndcg_tolerance=0.005)
    assert gate_recommender(0.050, g, 0.054).passed
    assert not gate_recommender(0.048, g, 0.054).passed
    assert gate_recommender(0.01, g, None).passed


def test_k_eff_drop_below_the_champion_fails():
    champion = {"l0_k_eff": 130.0, "l1_k_eff": 100.0}
    rep = gate_codebook(_diag(k_eff=(116.0, 95.0)), GateConfig(k_eff_tolerance=0.1), champion)
    assert [c.name for c in rep.checks if not c.passed] == ["k_eff_l0_vs_champion"]
