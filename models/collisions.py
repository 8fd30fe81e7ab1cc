"""Make semantic IDs unique: `dedup_level` (TIGER-style extra level) or `reassign` (move colliding items
to the nearest free last-level codeword, optimal assignment inside each colliding prefix group), and the costs
those moves are chosen by (an item's distance to each candidate codeword)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from semid.models.kmeans import pairwise_sq_dist
from semid.models.quantizer import Quantizer


def duplicate_rate(codes: np.ndarray) -> float:
    """1 - unique IDs / items."""
    n = len(codes)
    return 0.0 if n == 0 else 1.0 - len(np.unique(codes, axis=0)) / n


def dedup_level(codes: np.ndarray) -> np.ndarray:
    """Append a level numbering the items that share a full code (0, 1, 2, ... in item order)."""
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    extra = np.zeros(len(codes), dtype=np.int64)
    seen: dict[int, int] = defaultdict(int)
    for i, g in enumerate(inverse.ravel()):
        extra[i] = seen[g]
        seen[g] += 1
    return np.concatenate([codes, extra[:, None]], axis=1)


def reassign(codes: np.ndarray, last_cost: np.ndarray | LastLevelCost, fixed: np.ndarray | None = None
             ) -> tuple[np.ndarray, int]:
    """Resolve collisions on the last level.

    last_cost [N, K]: cost of giving item i last-level code k (its distance to that codeword); or a
    LastLevelCost, which computes the rows of the colliding items only.
    Inside each prefix group (same first L-1 codes) the items that collide, together with the
    codes they collide on and every code free in that group, form an assignment problem solved
    optimally (Hungarian); items alone on their code keep it. Groups with more items than codes
    cannot be made unique on this level: the caller falls back to `dedup_level` for the rest.
    `fixed` [N] bool marks items that must keep their code (e.g. the champion's items in incremental mode):
    their codes are taken, and only the others move.
    Returns (new codes, number of items moved).
    """
    out = codes.copy()
    k = last_cost.shape[1]
    rows_of = last_cost.rows if isinstance(last_cost, LastLevelCost) else (lambda idx: last_cost[idx])
    fixed = np.zeros(len(codes), dtype=bool) if fixed is None else fixed
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, row in enumerate(codes[:, :-1]):
        groups[tuple(row)].append(i)
    moved = 0
    for members in groups.values():
        last = codes[members, -1]
        values, counts = np.unique(last, return_counts=True)
        if (counts == 1).all():
            continue
        clashing = set(values[counts > 1].tolist())
        movers = [i for i in members if codes[i, -1] in clashing and not fixed[i]]
        taken = set(values[counts == 1].tolist()) | {int(codes[i, -1]) for i in members if fixed[i]}
        options = [c for c in range(k) if c not in taken]
        if len(movers) > len(options):
            continue  # overfull prefix: left for the dedup fallback
        cost = rows_of(movers)[:, options]
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols, strict=True):
            new = options[c]
            if out[movers[r], -1] != new:
                moved += 1
            out[movers[r], -1] = new
    return out, moved


def resolve(codes: np.ndarray, mode: str, last_cost: np.ndarray | None = None,
            fixed: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Unique final IDs. Returns (ids, info) with the mode actually applied and items moved."""
    info = {"mode": mode, "moved": 0, "fallback_dedup": False}
    if mode == "dedup_level":
        return dedup_level(codes), info
    if last_cost is None:
        raise ValueError("reassign needs the last-level cost matrix")
    ids, info["moved"] = reassign(codes, last_cost, fixed)
    if duplicate_rate(ids) > 0:
        ids, info["fallback_dedup"] = dedup_level(ids), True
    return ids, info


def extend_ids(codes: np.ndarray, known: np.ndarray, fixed: np.ndarray, last_cost: np.ndarray,
               mode: str, search: Callable[[int, set], tuple | None] | None = None) -> tuple[np.ndarray, dict]:
    """Unique IDs for a grown catalogue that keep the known items' IDs.

    codes [N, L]: the codebook's codes for every item; known [N, W] (W = L, or L + 1 with a counter level):
    the registered IDs, valid where `fixed`. New items are first moved to free last-level codes (reassign
    mode); if the known IDs carry a counter level, new items that still collide get the next free counter of
    their prefix, otherwise `search(i, used)` proposes the nearest free ID. Only when that fails too is a
    counter level appended to all (which changes every ID; the churn check reports it)."""
    n, levels = codes.shape
    width = known.shape[1]
    start = codes.copy()
    start[fixed] = known[fixed, :levels]
    info = {"mode": mode, "moved": 0, "fallback_dedup": False}
    if mode == "reassign":
        start, info["moved"] = reassign(start, last_cost, fixed)
    if width == levels:
        if duplicate_rate(start) > 0 and search is not None:
            used = {tuple(row) for row in start[fixed].tolist()}
            for i in np.flatnonzero(~fixed):
                if tuple(start[i].tolist()) in used:
                    alt = search(int(i), used)
                    if alt is not None:
                        start[i] = alt
                        info["moved"] += 1
                used.add(tuple(start[i].tolist()))
        if duplicate_rate(start) > 0:
            info["fallback_dedup"] = True
            order = np.argsort(~fixed, kind="stable")  # known items number first within each group
            counted = dedup_level(start[order])
            out = np.empty_like(counted)
            out[order] = counted
            return out, info
        return start, info
    out = np.zeros((n, width), dtype=np.int64)
    out[:, :levels] = start
    out[fixed] = known[fixed]
    used: dict[tuple[int, ...], set[int]] = defaultdict(set)
    for i in np.flatnonzero(fixed):
        used[tuple(out[i, :levels])].add(int(out[i, levels]))
    for i in np.flatnonzero(~fixed):
        taken = used[tuple(out[i, :levels])]
        counter = next(c for c in range(len(taken) + 1) if c not in taken)
        out[i, levels] = counter
        taken.add(counter)
    return out, info


def last_level_cost(quantizer: Quantizer, residual_last: torch.Tensor) -> np.ndarray:
    """Cost [N, K] of giving each item each last-level codeword, in that level's distance."""
    cb = quantizer.codebooks[-1]
    if quantizer.distances[-1] == "cosine":
        return (1 - F.normalize(residual_last, dim=1) @ F.normalize(cb, dim=1).T).numpy()
    return pairwise_sq_dist(residual_last, cb).numpy()


class LastLevelCost:
    """`last_level_cost` row by row on demand: only the colliding items' rows are ever computed (by encoding
    those items again), so collision resolution needs no N x K matrix (1 GB at 1M items and K = 256)."""

    def __init__(self, quantizer: Quantizer, x: np.ndarray):
        self.quantizer, self.x = quantizer, x
        self.shape = (len(x), quantizer.codebook_size)

    def rows(self, idx: list[int]) -> np.ndarray:
        _, residuals = self.quantizer.encode_with_residuals(np.asarray(self.x[np.asarray(idx)]))
        return last_level_cost(self.quantizer, residuals[-1])


def _costs(r: torch.Tensor, cb: torch.Tensor, distance: str) -> torch.Tensor:
    if distance == "cosine":
        return 1 - F.normalize(cb, dim=1) @ F.normalize(r, dim=0)
    return (cb - r).pow(2).sum(1)


def nearest_free_id(quantizer: Quantizer, residuals: list[torch.Tensor], code: np.ndarray, i: int, used: set,
                    width: int = 16) -> tuple[int, ...] | None:
    """The cheapest ID not in `used` that keeps item i's first L-2 codes: search the last two levels
    (the `width` nearest codewords of the second-to-last level, then the last level in cost order)."""
    levels = quantizer.levels
    if levels < 2:
        return None
    prefix = tuple(int(c) for c in code[: levels - 2])
    r = residuals[levels - 2][i]
    cost_a = _costs(r, quantizer.codebooks[levels - 2], quantizer.distances[levels - 2])
    best, best_cost = None, float("inf")
    for a in torch.argsort(cost_a)[:width].tolist():
        cost_b = _costs(r - quantizer.codebooks[levels - 2][a], quantizer.codebooks[-1], quantizer.distances[-1])
        for b in torch.argsort(cost_b).tolist():
            cand = (*prefix, a, b)
            if cand not in used:
                total = float(cost_a[a] + cost_b[b])
                if total < best_cost:
                    best, best_cost = cand, total
                break
    return best
