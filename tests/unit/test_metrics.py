"""Ranking metrics, AUC and the negative sampler against hand-computed values and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semid.models.metrics import auc, rank_metrics, sample_negatives, target_ranks


def test_ranks_ties_count_against_the_target():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.5]])
    assert target_ranks(scores, torch.tensor([1])).tolist() == [1]  # item 3 ties with the target
    assert target_ranks(scores, torch.tensor([2])).tolist() == [2]
    assert target_ranks(scores, torch.tensor([0])).tolist() == [3]
    constant = torch.zeros(1, 5)  # a model that scores everything equal gets the worst rank
    assert target_ranks(constant, torch.tensor([2])).tolist() == [4]


def test_masked_history_is_not_ranked_but_the_target_never_is_masked():
    scores = torch.tensor([[0.9, 0.5, 0.3, 0.8]])
    exclude = torch.tensor([[True, False, False, True]])
    assert target_ranks(scores, torch.tensor([1]), exclude).tolist() == [0]
    assert target_ranks(scores, torch.tensor([0]), exclude).tolist() == [0]  # target 0 itself is in the mask


def test_rank_metrics_by_hand():
    m = rank_metrics(np.array([0, 2, 30]), ks=(1, 5, 20))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["hr@20"] == pytest.approx(2 / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 31) / 3)


def test_k_larger_than_the_list():
    m = rank_metrics(np.array([0, 1, 2]), ks=(20,))  # a 3-item list: every target is in the top 20
    assert m["hr@20"] == 1.0
    assert m["ndcg@20"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4)) / 3)


def test_ranks_match_brute_force_on_random_scores():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(40, 30)).astype(np.float32)  # many ties
    targets = rng.integers(0, 30, size=40)
    exclude = rng.random((40, 30)) < 0.2
    got = target_ranks(torch.from_numpy(scores), torch.from_numpy(targets), torch.from_numpy(exclude)).numpy()
    for row in range(40):
        t = targets[row]
        ahead = [j for j in range(30) if j != t and not exclude[row, j] and scores[row, j] >= scores[row, t]]
        assert got[row] == len(ahead)
    m = rank_metrics(got, ks=(10,))
    assert m["ndcg@10"] == pytest.approx(np.mean([1 / np.log2(r + 2) if r < 10 else 0 for r in got]))


def test_auc_by_hand_and_brute_force():
    assert auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.4, 0.4])) == pytest.approx(3.5 / 4)
    rng = np.random.default_rng(1)
    y, s = rng.integers(0, 2, 200), rng.integers(0, 10, 200).astype(float)
    pos, neg = s[y == 1], s[y == 0]
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert auc(y, s) == pytest.approx(brute)
    with pytest.raises(ValueError, match="both positive and negative"):
        auc(np.ones(3), np.arange(3.0))


def test_negative_sampler_never_draws_history_and_is_reproducible():
    rng = np.random.default_rng(2)
    histories = [rng.choice(200, size=rng.integers(5, 90), replace=False) for _ in range(50)]
    a = sample_negatives(histories, 200, n=99, seed=7, first_item=0)
    b = sample_negatives(histories, 200, n=99, seed=7, first_item=0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, sample_negatives(histories, 200, n=99, seed=8, first_item=0))
    for hist, row in zip(histories, a, strict=True):
        assert not set(row) & set(hist)
        assert len(set(row)) == 99 and row.min() >= 0 and row.max() < 200
    with pytest.raises(ValueError, match="cannot draw 99"):
        sample_negatives([np.arange(150)], 200, n=99, first_item=0)


def test_nan_scores_rank_the_target_last():
    """A NaN target score used to rank first (`x >= NaN` is False): NDCG@10 = 1.0 for a broken model."""
    nan = float("nan")
    scores = torch.tensor([[0.1, nan, 0.3, 0.2], [nan, nan, nan, nan], [0.9, 0.1, nan, 0.5]])
    ranks = target_ranks(scores, torch.tensor([1, 0, 0]))
    assert ranks.tolist() == [3, 3, 1]  # NaN target: last; all NaN: last; a NaN rival counts against the target
    assert rank_metrics(target_ranks(torch.full((4, 20), nan), torch.tensor([0, 1, 2, 3])))["ndcg@10"] == 0.0
    exclude = torch.tensor([[False, False, True, False]])  # a masked NaN item is not ranked
    assert target_ranks(torch.tensor([[0.5, 0.1, nan, 0.2]]), torch.tensor([0]), exclude).tolist() == [0]


def test_nan_scores_are_the_worst_place_for_auc():
    nan = float("nan")
    # positives 0.9 and NaN, negatives 0.1 and NaN: NaN positive ranks lowest, NaN negative highest
    # pairs (pos, neg): (0.9, 0.1) won, (0.9, NaN) lost, (NaN, 0.1) lost, (NaN, NaN) lost -> 1 / 4
    assert auc(np.array([1, 1, 0, 0]), np.array([0.9, nan, 0.1, nan])) == pytest.approx(0.25)
    assert auc(np.array([1, 0, 1, 0]), np.full(4, nan)) == 0.0
