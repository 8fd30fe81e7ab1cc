"""Gate checks on hand-made numbers: each check passes on a healthy candidate and fails in its own case,
including NaN, a missing trivial baseline and a champion that lacks the compared metric."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from semid.tasks.config import GateConfig
from semid.tasks.gate import Baseline, gate_codebook, gate_recommender, id_churn

KEY = "valid_full_masked_ndcg@10"


def _diag(k_eff=(120.0, 100.0), active=(1.0, 0.95), dup=0.02, mse=0.0015, base=0.0018):
    return {"levels": [{"level": i, "k": 256, "k_eff": k, "active_share": a} for i, (k, a) in
                       enumerate(zip(k_eff, active, strict=True))],
            "ids": {"duplicate_rate": dup}, "recon_mse": mse, "recon_mse_baseline": base}


def _failed(rep) -> set[str]:
    return {c.name for c in rep.checks if not c.passed}


G = GateConfig(min_k_eff_ratio=0.3, min_active_share=0.9, max_duplicate_rate=0.05, max_recon_ratio=0.95)


def test_healthy_codebook_passes_every_check():
    rep = gate_codebook(_diag(), G)
    assert rep.passed and len(rep.checks) == 6


@pytest.mark.parametrize("diag, failing", [
    (_diag(k_eff=(120.0, 50.0)), {"k_eff_ratio_l1"}),
    (_diag(active=(0.5, 0.95)), {"active_share_l0"}),
    (_diag(dup=0.08), {"duplicate_rate"}),
    (_diag(mse=0.0026), {"recon_ratio"}),  # an all-zeros decoder on unit-norm 384-d embeddings: 1/384
    (_diag(base=None), {"recon_ratio"}),  # no trivial baseline to compare with: fail, never skip
    (_diag(k_eff=(math.nan, 100.0)), {"k_eff_ratio_l0"}),
    (_diag(dup=math.nan, mse=math.nan), {"duplicate_rate", "recon_ratio"}),
])
def test_each_codebook_threshold_fails_in_its_case(diag, failing):
    rep = gate_codebook(diag, G)
    assert _failed(rep) == failing
    assert all(r for r in rep.reasons)


def test_reasons_and_report():
    bad = gate_codebook(_diag(k_eff=(120.0, 50.0), dup=0.08), G)
    assert "duplicate_rate = 0.08" in bad.summary()
    md = bad.markdown()
    assert md.count("**FAIL**") == 2 and "| duplicate_rate | 0.08 | 0.05 |" in md
    nan = gate_codebook(_diag(dup=math.nan), G)
    assert "missing or NaN" in nan.summary()


def test_no_regression_against_the_champion():
    g = GateConfig(k_eff_tolerance=0.1, duplicate_tolerance=0.01, min_active_share=0.9)
    champion = Baseline("3", {"l0_k_eff": 130.0, "l1_k_eff": 100.0, "duplicate_rate": 0.005})
    rep = gate_codebook(_diag(k_eff=(118.0, 95.0), dup=0.02), g, champion)
    assert _failed(rep) == {"duplicate_rate_vs_champion"}  # 118 >= 130 x 0.9 = 117: K_eff passes
    assert rep.against == "3"
    assert gate_codebook(_diag(k_eff=(117.5, 95.0), dup=0.015), g, champion).passed
    drop = gate_codebook(_diag(k_eff=(116.0, 95.0), dup=0.01), g, champion)
    assert _failed(drop) == {"k_eff_l0_vs_champion"}


def test_a_champion_without_the_metric_fails_unless_allowed():
    champion = Baseline("2", {"l0_k_eff": 130.0, "duplicate_rate": 0.01})  # no l1_k_eff, e.g. fewer levels
    rep = gate_codebook(_diag(), G, champion)
    assert _failed(rep) == {"k_eff_l1_vs_champion"}
    assert "champion v2 has no 'l1_k_eff'" in rep.summary()
    assert gate_codebook(_diag(), G, Baseline("2", {"l0_k_eff": 130.0, "l1_k_eff": math.nan,
                                                   "duplicate_rate": 0.01})).passed is False
    allowed = gate_codebook(_diag(), G.model_copy(update={"allow_missing_baseline": True}), champion)
    assert allowed.passed and any("allowed by gate.allow_missing_baseline" in c.rule for c in allowed.checks)


def test_first_version_is_said_in_the_report():
    rep = gate_codebook(_diag(), G, Baseline())
    assert rep.passed and any(c.name == "champion" and "first version" in c.rule for c in rep.checks)


def test_id_churn_by_hand_and_its_check():
    old = pd.DataFrame({"source_id": ["a", "b", "c", "d"], "semantic_id": ["1-1", "1-2", "2-1", "3-3"]})
    new = pd.DataFrame({"source_id": ["a", "b", "c", "e"], "semantic_id": ["1-1", "9-9", "2-1", "4-4"]})
    churn, common, added = id_churn(old, new)
    assert (churn, common, added) == (1 / 3, 3, 1)
    assert _failed(gate_codebook(_diag(), G.model_copy(update={"max_id_churn": 0.2}), churn=churn)) == {"id_churn"}
    assert gate_codebook(_diag(), G.model_copy(update={"max_id_churn": 0.5}), churn=churn).passed


def _rec(valid=0.050, popular=0.040):
    return {KEY: valid, f"baseline_{KEY}": popular}


def test_recommender_must_beat_most_popular():
    g = GateConfig(min_lift_over_popularity=0.1)
    assert gate_recommender(_rec(0.050, 0.040), KEY, g).passed  # 0.050 >= 0.044
    assert _failed(gate_recommender(_rec(0.043, 0.040), KEY, g)) == {f"{KEY}_vs_most_popular"}
    assert not gate_recommender({KEY: 0.05}, KEY, g).passed  # no baseline logged: fail
    assert not gate_recommender(_rec(math.nan, 0.040), KEY, g).passed  # a NaN model
    assert not gate_recommender(_rec(0.05, math.nan), KEY, g).passed


def test_recommender_against_its_champion():
    g = GateConfig(ndcg_tolerance=0.005, min_lift_over_popularity=0.1)
    champ = Baseline("4", {"valid_full_masked_ndcg_at_10": 0.054})
    assert gate_recommender(_rec(0.050), KEY, g, champ).passed
    assert _failed(gate_recommender(_rec(0.048), KEY, g, champ)) == {f"{KEY}_vs_champion"}
    # the gated metric changed (e.g. recommend.mask_history flipped): the champion has no such key -> fail
    other = Baseline("4", {"valid_full_ndcg_at_10": 0.03})
    rep = gate_recommender(_rec(0.050), KEY, g, other)
    assert _failed(rep) == {f"{KEY}_vs_champion"} and "champion v4 has no" in rep.summary()
