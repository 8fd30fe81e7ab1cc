"""The history-rank diagnostic (benchmarks/history_ranks.py) against values computed by hand, with a tie."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.history_ranks import history_stats
from semid.models.seqrec import Split


class FixedScores:
    """A recommender whose scores are a given [users, items] matrix (one evaluation batch)."""

    def __init__(self, scores: list[list[float]]):
        self.scores = torch.tensor(scores)

    def score(self, seq, lengths, table):
        return self.scores[: len(seq)]


def test_history_stats_by_hand():
    # test inputs / targets: [0, 1] -> 2; [3, 1, 4] -> 5; [1, 2] -> 1 (a repeat of a history item)
    split = Split([np.array([0, 1, 2]), np.array([3, 1, 4, 5]), np.array([1, 2, 1])], n_items=6, negatives=0)
    model = FixedScores([[0.9, 0.1, 0.5, 0.2, 0.3, 0.0],     # history item 0 on top: the hit is lost unmasked
                         [0.0, 0.2, 0.0, 0.1, 0.3, 0.8],     # target on top, no history item there
                         [0.7, 0.6, 0.75, 0.0, 0.0, 0.6]])   # tie of target 1 with item 5 counts against it
    s = history_stats(model, split, max_len=50, k=1)
    assert s["users"] == 3
    assert s["repeat_share"] == pytest.approx(1 / 3)
    assert s["history_in_top1"] == pytest.approx(2 / 3)
    assert s["users_with_history_in_top1"] == pytest.approx(2 / 3)
    assert s["recall@1"] == pytest.approx(1 / 3) and s["ndcg@1"] == pytest.approx(1 / 3)
    assert s["recall@1_masked"] == pytest.approx(2 / 3) and s["ndcg@1_masked"] == pytest.approx(2 / 3)
    assert s["displaced_share"] == pytest.approx(1 / 3)
    assert s["ndcg@1_new_targets"] == pytest.approx(1 / 2)   # users 0 (missed) and 1 (hit)
    assert s["mean_places_lost"] == pytest.approx(1 / 2)     # user 0 drops from rank 0 to 1, user 1 stays
