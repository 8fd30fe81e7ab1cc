"""Ranking and classification metrics: target ranks from score matrices, HR/Recall, NDCG, MRR, AUC, negatives.

Ties are broken pessimistically: the target is ranked after every other item with the same score, so a
model that scores everything equal gets the worst rank, never a lucky one. NaN is pessimistic too: a NaN score
ranks a target last and an AUC positive lowest (a negative highest), so a broken model scores worst, never
best. Ranks are 0-based.
"""

from __future__ import annotations

import numpy as np
import torch

KS = (1, 5, 10, 20)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each row's target among the row's scores.

    scores [B, N]; targets [B] column index; exclude [B, N] bool of columns to drop from the ranking
    (history masking, padding). The target itself is never excluded.
    """
    scores = scores.float()
    target_score = scores.gather(1, targets[:, None])
    beats = (scores >= target_score) | scores.isnan() | target_score.isnan()  # ties and NaN count against it
    beats.scatter_(1, targets[:, None], False)
    if exclude is not None:
        beats &= ~exclude
    return beats.sum(1, dtype=torch.int32)  # int32: half the pass of the default int64 sum over B x N


def rank_metrics(ranks: np.ndarray | torch.Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Mean HR@k (= Recall@k with one target), NDCG@k and MRR over users, from 0-based target ranks."""
    r = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no ranks to average")
    out: dict[str, float] = {}
    for k in ks:
        hit = r < k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"recall@{k}"] = out[f"hr@{k}"]
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(r + 2.0), 0.0).mean())
    out["mrr"] = float((1.0 / (r + 1.0)).mean())
    return out


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney statistic with average ranks for ties (0.5 for a tied pair)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    scores = np.where(np.isnan(scores), np.where(labels, -np.inf, np.inf), scores)  # NaN: the worst place
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0  # 1-based average rank of each tie block
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def sample_negatives(histories: list[np.ndarray], n_items: int, n: int = 99, seed: int = 0,
                     first_item: int = 1) -> np.ndarray:
    """[U, n] items drawn uniformly (without replacement) from [first_item, n_items) minus each user's history.

    Reproducible for a seed. Raises if a user has fewer than n items left to draw from.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((len(histories), n), dtype=np.int64)
    pool = n_items - first_item
    for u, hist in enumerate(histories):
        seen = np.unique(np.asarray(hist, dtype=np.int64))
        if pool - len(seen) < n:
            raise ValueError(f"user {u} has only {pool - len(seen)} unseen items, cannot draw {n} negatives")
        picked: np.ndarray = np.empty(0, dtype=np.int64)
        while len(picked) < n:
            draw = rng.integers(first_item, n_items, size=2 * n)
            draw = draw[~np.isin(draw, seen)]
            picked = np.concatenate([picked, draw])
            _, first = np.unique(picked, return_index=True)
            picked = picked[np.sort(first)]
        out[u] = picked[:n]
    return out
