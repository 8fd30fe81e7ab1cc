"""Sequential recommenders: the shared base (next-item loss, scoring), leave-one-out data, batches, evaluation.

A recommender subclasses `SequentialRecommender` and implements `encode` (item sequence -> hidden states); loss,
scoring and training are shared, so a new one is one file plus one line in models.registry. Evaluation protocols:
`full` (rank the target against every item), `full_masked` (the user's history masked out) and `sampled99`
(target + 99 uniform negatives the user never interacted with, fixed seed).
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from semid.models.items import ItemTable, JointRQ
from semid.models.metrics import rank_metrics, sample_negatives, target_ranks
from semid.models.params import RecommendParams
from semid.models.quantizer import Quantizer
from semid.models.registry import get_model
from semid.models.training import fit

PROTOCOLS = ("full", "full_masked", "sampled99")
PRODUCT_ROWS_PER_NEGATIVE = 100  # per-position negatives: whole-table product up to 100 table rows per negative
GROUP_COST = 256  # padding groups: the fixed cost of one more group, in padded slots (measured, see padding_groups)
Tensors = torch.Tensor | tuple[torch.Tensor, ...]


class NotEnoughHistory(ValueError):
    """No user has the 3 interactions leave-one-out needs (train, validation target, test target)."""


class SequentialRecommender(nn.Module):
    """Base class: `self.items` is the ItemTable; subclasses implement `encode(seq, table) -> hidden [B, T, d]`."""

    items: ItemTable

    @classmethod
    def from_params(cls, items: ItemTable, p: RecommendParams) -> SequentialRecommender:
        """The model over `items` with its own settings from `p` (each recommender reads the fields it has)."""
        raise NotImplementedError

    def encode(self, seq: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def last_hidden(self, seq: torch.Tensor, lengths: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        h = self.encode(seq, table)
        return h[torch.arange(len(seq)), lengths - 1]

    def loss(self, seq: Tensors, target: Tensors, kind: str = "ce",
             generator: torch.Generator | None = None, sampler: NegativeSampler | None = None) -> torch.Tensor:
        """Next-item loss over every real position. kind: 'ce' (full softmax), 'bce' (1 sampled negative) or
        'sampled' (softmax over the target and the sampler's shared negatives: no B x T x N logits).

        seq and target are [B, T], or tuples of them: one batch in padding groups, each padded to its own longest
        (train_batches, 'shuffled'). The loss is the batch's: the same as over one [B, T] padded to the longest,
        because attention is causal and pads only follow real items; only the padded slots are not computed."""
        seqs, targets = (tuple(seq), tuple(target)) if isinstance(seq, (tuple, list)) else ((seq,), (target,))
        tv = torch.cat([t[t > 0] for t in targets])
        if kind == "sampled":
            if sampler is None:
                raise ValueError("loss 'sampled' needs a NegativeSampler")
            return self._sampled_loss(seqs, targets, tv, sampler, generator)
        table, aux = self.items()
        hv = self._hidden_at_targets(seqs, targets, table)
        if kind == "ce":
            logits = hv @ table[1:].T
            return F.cross_entropy(logits, tv - 1) + aux
        if kind != "bce":
            raise ValueError(f"loss must be 'ce', 'bce' or 'sampled', got {kind!r}")
        n = self.items.n_items
        neg = torch.randint(1, n + 1, tv.shape, generator=generator)
        clash = neg == tv
        neg[clash] = neg[clash] % n + 1  # never the positive itself
        pos_logit = (hv * table[tv]).sum(-1)
        neg_logit = (hv * table[neg]).sum(-1)
        return (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
                + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit))) + aux

    def _hidden_at_targets(self, seqs: tuple[torch.Tensor, ...], targets: tuple[torch.Tensor, ...],
                           table: torch.Tensor) -> torch.Tensor:
        """Hidden states [P, d] at the real target positions of every padding group, in group order."""
        hs = [self.encode(s, table)[t > 0] for s, t in zip(seqs, targets, strict=True)]
        return hs[0] if len(hs) == 1 else torch.cat(hs)

    def _sampled_loss(self, seqs: tuple[torch.Tensor, ...], targets: tuple[torch.Tensor, ...], tv: torch.Tensor,
                      sampler: NegativeSampler, generator: torch.Generator | None) -> torch.Tensor:
        """Sampled softmax on the rows the batch touches (its sequences, targets and negatives, renumbered
        0..U-1 with padding kept at 0), so a step costs O(batch) whatever the catalogue size; the same loss as
        on the whole table. A joint RQ-VAE needs every item's encoder pass: the whole table."""
        neg = sampler.draw(generator, len(tv))
        if self.items.joint is not None:
            table, aux = self.items()
            local_seqs, local_tv, local_neg = seqs, tv, neg
        else:
            used, local = torch.unique(torch.cat([tv.new_zeros(1), *(s.flatten() for s in seqs), tv, neg.flatten()]),
                                       return_inverse=True)
            table, aux = self.items.rows(used), torch.zeros(())
            *parts, local_tv, local_neg = local[1:].split([s.numel() for s in seqs] + [tv.numel(), neg.numel()])
            local_seqs = tuple(x.view_as(s) for x, s in zip(parts, seqs, strict=True))
            local_neg = local_neg.view_as(neg)
        h = self._hidden_at_targets(local_seqs, targets, table)
        return sampler.loss(h, tv, neg, table[local_tv], table, rows=local_neg) + aux

    @torch.no_grad()
    def score(self, seq: torch.Tensor, lengths: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Scores [B, N] for items 1..N (column j = item j + 1)."""
        if table is None:
            table, _ = self.items()
        return self.last_hidden(seq, lengths, table) @ table[1:].T


class NegativeSampler:
    """Sampled softmax: K negatives per batch, shared by all its positions, or K of its own for every position
    (`per_position`, RecTools' SASRec+SS: [P, K] draws), drawn from q (uniform, or the items' training frequency).
    With logQ correction every logit s(i) becomes s(i) - log(K q(i)), which makes the sampled loss an unbiased
    stand-in for the full softmax under a non-uniform q; a negative that is the position's own target is masked
    out."""

    def __init__(self, q: torch.Tensor, k: int, logq: bool = True, per_position: bool = False):
        if q.ndim != 1 or not bool(torch.isfinite(q).all()) or float(q.min()) < 0 or float(q.sum()) <= 0:
            raise ValueError("q must be a finite, non-negative distribution over items")
        self.q, self.k, self.logq, self.per_position = q / q.sum(), k, logq, per_position

    @classmethod
    def from_params(cls, split: Split, p: RecommendParams) -> NegativeSampler:
        if p.negative_sampling == "uniform":
            q = torch.ones(split.n_items)
        else:  # training frequency, every item at least once so each can be drawn
            q = torch.from_numpy(np.bincount(np.concatenate(split.train), minlength=split.n_items + 1)[1:]).float()
            q = q + 1
        return cls(q, p.train_negatives, p.logq, per_position=p.negatives_per == "position")

    def draw(self, generator: torch.Generator | None = None, positions: int = 1) -> torch.Tensor:
        """The negatives (item ids, 1-based), drawn from q with replacement: the batch's K shared ones [K], or
        [positions, K] when every position draws its own."""
        if not self.per_position:
            return torch.multinomial(self.q, self.k, replacement=True, generator=generator) + 1
        flat = torch.multinomial(self.q, max(positions, 1) * self.k, replacement=True, generator=generator) + 1
        return flat.view(max(positions, 1), self.k)[:positions]

    def loss(self, h: torch.Tensor, target: torch.Tensor, neg: torch.Tensor, target_vecs: torch.Tensor,
             neg_vecs: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax over each position's target and its negatives; h [P, d], target [P] item ids with
        target_vecs [P, d] their vectors, neg [K] shared item ids with neg_vecs [K, d], or [P, K] with [P, K, d].
        rows: neg_vecs is then a table [U, d] and rows (the shape of neg) the negatives' rows in it."""
        pos = (h * target_vecs).sum(-1, keepdim=True)
        negs = self.neg_logits(h, neg_vecs, rows)
        if neg.ndim == 1:
            neg = neg[None, :]
        if self.logq:
            pos = pos - torch.log(self.k * self.q[target - 1])[:, None]
            negs = negs - torch.log(self.k * self.q[neg - 1])
        negs = negs.masked_fill(neg == target[:, None], float("-inf"))
        logits = torch.cat([pos, negs], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(target), dtype=torch.long))

    @staticmethod
    def neg_logits(h: torch.Tensor, neg_vecs: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """h [P, d] against the negatives, [P, K]: neg_vecs [K, d] shared or [P, K, d] per position; with rows
        ([K] or [P, K]) neg_vecs is a table [U, d] they index. Per position, the [P, K, d] gather moves P*K*d floats
        and its backward scatters P*K rows; one [P, U] product with the table and then picking each position's K
        columns gives the same logits, with U/K times the multiply-adds but at matmul speed. Loss + backward at
        K 256, d 256, P 1,000 on 2 threads (timed beside a CI run, so roughly): 2.7x faster at U 12k (RecTools'
        recipe on Beauty), 1.4x at 25k, slower from 50k on. So the product is used up to
        U = PRODUCT_ROWS_PER_NEGATIVE x K, where its [P, U] logits are also smaller than the gather."""
        if rows is not None:
            if rows.ndim == 2 and rows.numel() > neg_vecs.shape[0] and \
                    neg_vecs.shape[0] <= PRODUCT_ROWS_PER_NEGATIVE * rows.shape[1]:
                return (h @ neg_vecs.T).gather(1, rows)
            neg_vecs = neg_vecs[rows]
        if neg_vecs.ndim == 2:
            return h @ neg_vecs.T
        return torch.bmm(neg_vecs, h[:, :, None])[:, :, 0]


def build_recommender(n_items: int, p: RecommendParams, codes: np.ndarray | None = None,
                      quantizer: Quantizer | None = None, text: np.ndarray | None = None) -> SequentialRecommender:
    """The recommender `p.model` over the item representation `p.item_repr`, initialised under `p.seed`.
    codes [N, L(+1)]: the final semantic IDs; quantizer: their codebook; text: item embeddings (joint only)."""
    torch.manual_seed(p.seed)
    if p.item_repr != "id" and quantizer is None:
        raise ValueError(f"item_repr={p.item_repr} needs a codebook")
    joint = None
    if p.joint and p.item_repr != "id":
        if quantizer.method != "rqvae" or text is None:
            raise ValueError("joint training needs an rqvae codebook and the item embeddings")
        joint = JointRQ(deepcopy(quantizer.encoder), deepcopy(quantizer.decoder), quantizer.codebooks,
                        quantizer.distances, torch.from_numpy(text), quantizer.params.beta)
    id_dim = p.id_dim if p.item_repr == "id" else p.unified_id_dim
    items = ItemTable(n_items, p.item_repr, id_dim=id_dim,
                      codes=None if codes is None else torch.from_numpy(codes[:, : quantizer.levels].copy()),
                      codebooks=None if quantizer is None else quantizer.codebooks,
                      freeze_codebooks=p.freeze_codebooks, joint=joint,
                      id_scale=p.unified_id_scale if p.item_repr == "unified" else 1.0, dropout=p.table_dropout)
    return get_model("recommender", p.model).from_params(items, p)


def sequences(interactions: pd.DataFrame) -> list[np.ndarray]:
    """Per-user chronological item sequences (0-based item ids), users in id order."""
    inter = interactions.sort_values(["user_id", "position"])
    return [g.to_numpy(np.int64) for _, g in inter.groupby("user_id", sort=True)["item_id"]]


def pad(seqs: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, T] of item index + 1 (0 = pad), keeping the last max_len items; lengths [B]."""
    t = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = np.zeros((len(seqs), t), dtype=np.int64)
    lengths = np.zeros(len(seqs), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-max_len:]
        out[i, : len(s)] = s + 1
        lengths[i] = len(s)
    return torch.from_numpy(out), torch.from_numpy(lengths)


class Split:
    """Leave-one-out: last item = test target, second-to-last = validation target, the rest = training.
    eval_users: validate and test on a seeded sample of that many users (every user still trains), for
    catalogues where scoring every user against every item costs more than training."""

    def __init__(self, seqs: list[np.ndarray], n_items: int, negatives: int = 99, seed: int = 0,
                 eval_users: int | None = None):
        keep = [s for s in seqs if len(s) >= 3]
        if not keep:
            raise NotEnoughHistory("no user has 3 or more interactions")
        self.seqs, self.n_items = keep, n_items
        self.train = [s[:-2] for s in keep]
        ev = keep
        if eval_users is not None and eval_users < len(keep):
            ev = [keep[i] for i in np.sort(np.random.default_rng(seed).choice(len(keep), eval_users, replace=False))]
        self.eval_users = len(ev)
        self.eval_inputs = {"valid": [s[:-2] for s in ev], "test": [s[:-1] for s in ev]}
        self.targets = {"valid": np.array([s[-2] for s in ev]), "test": np.array([s[-1] for s in ev])}
        self.negatives = {}
        if n_items - 1 - max(len(np.unique(s)) for s in ev) >= negatives:
            self.negatives = {split: sample_negatives(ev, n_items, negatives, seed + i, first_item=0)
                              for i, split in enumerate(("valid", "test"))}


def windows(seq: np.ndarray, max_len: int, every: bool) -> list[np.ndarray]:
    """The training pieces of one sequence: its last max_len + 1 items, or (every=True) consecutive pieces of
    max_len + 1 items from the end backwards, overlapping by one item, so each transition is a target once."""
    if not every or len(seq) <= max_len + 1:
        return [seq[-(max_len + 1):]]
    ends = range(len(seq), 1, -max_len)
    return [seq[max(0, end - max_len - 1):end] for end in ends]


def padding_groups(lengths: np.ndarray, group_cost: int = GROUP_COST) -> list[np.ndarray]:
    """Split a batch into groups, each padded to its own longest, that minimise padded slots + group_cost per group
    (exact, by dynamic programming over the distinct lengths). Returns index arrays, shortest lengths first."""
    order = np.argsort(lengths, kind="stable")
    values, counts = np.unique(lengths[order], return_counts=True)
    cum = np.concatenate([[0], np.cumsum(counts)])
    best, cut = [0.0] + [np.inf] * len(values), [0] * (len(values) + 1)
    for j in range(1, len(values) + 1):
        for i in range(j):
            cost = best[i] + (cum[j] - cum[i]) * values[j - 1] + group_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bounds, j = [], len(values)
    while j > 0:
        bounds.append((cum[cut[j]], cum[j]))
        j = cut[j]
    return [order[a:b] for a, b in reversed(bounds)]


def train_batches(train: list[np.ndarray], max_len: int, batch_size: int, gen: torch.Generator,
                  every_window: bool = False, batching: str = "length"):
    """Shuffled batches of (inputs, targets), tuples of right-padded [B_g, T_g] tensors: input = items[:-1],
    target = items[1:].

    Sequences longer than max_len + 1 give their last window, or all of them (`every_window`). batching 'length'
    groups pieces by length (random order within equal lengths, batches shuffled), so a batch is padded to about
    its own length instead of max_len: most Amazon users have < 10 items; each batch is one group. 'shuffled' draws
    every batch from one random permutation of all pieces, as RecBole and RecTools do, and splits it into
    padding_groups: the same batch and loss, without computing the slots a single [B, max_len] would pad."""
    if batching not in ("length", "shuffled"):
        raise ValueError(f"batching must be 'length' or 'shuffled', not {batching!r}")
    usable = [w for s in train if len(s) >= 2 for w in windows(s, max_len, every_window) if len(w) >= 2]
    noise = torch.rand(len(usable), generator=gen).numpy()
    order = np.lexsort((noise, [len(s) for s in usable])) if batching == "length" else np.argsort(noise)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for b in torch.randperm(len(batches), generator=gen).tolist():
        chunk = [usable[i] for i in batches[b]]
        groups = [chunk] if batching == "length" else \
            [[chunk[i] for i in g] for g in padding_groups(np.array([len(s) - 1 for s in chunk]))]
        yield (tuple(pad([s[:-1] for s in g], max_len)[0] for g in groups),
               tuple(pad([s[1:] for s in g], max_len)[0] for g in groups))


class MostPopular:
    """The most-popular baseline: every user gets the items ranked by how often they occur in the training
    sequences (equal counts are ties, which count against the target like any tie)."""

    def __init__(self, split: Split):
        self.scores = torch.from_numpy(np.bincount(np.concatenate(split.train), minlength=split.n_items)).float()

    def score(self, seq: torch.Tensor, lengths: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        return self.scores.expand(len(seq), -1)


def history_mask(histories: list[np.ndarray], n_items: int) -> torch.Tensor:
    """[U, n_items] bool: True where the item (0-based) is in that user's history."""
    mask = torch.zeros(len(histories), n_items, dtype=torch.bool)
    for row, s in enumerate(histories):
        mask[row, torch.as_tensor(np.array(s))] = True
    return mask


def scored_batches(model: SequentialRecommender | MostPopular, split: Split, which: str, max_len: int,
                   batch_size: int = 1024):
    """(start, histories, scores [B, n_items], targets [B]) for each batch of the 'valid' or 'test' users, scored
    against every item; a batch holds at most 2^26 scores (256 MB: 64 users at 1M items), whatever batch_size says.
    Call it under torch.no_grad()."""
    batch_size = max(1, min(batch_size, (1 << 26) // max(1, split.n_items)))
    table = None
    if isinstance(model, nn.Module):
        model.eval()
        table, _ = model.items()
    inputs, targets = split.eval_inputs[which], torch.from_numpy(split.targets[which])
    for start in range(0, len(inputs), batch_size):
        rows = inputs[start:start + batch_size]
        seq, lengths = pad(rows, max_len)
        yield start, rows, model.score(seq, lengths, table), targets[start:start + batch_size]


@torch.no_grad()
def evaluate(model: SequentialRecommender | MostPopular, split: Split, which: str, max_len: int,
             batch_size: int = 1024, protocols: tuple[str, ...] = PROTOCOLS) -> dict[str, dict]:
    """Metrics per protocol (all, or the `protocols` asked for: validation needs one) for the 'valid' or 'test'
    targets, batched matrix scoring (scored_batches)."""
    if unknown := set(protocols) - set(PROTOCOLS):
        raise ValueError(f"unknown protocols {sorted(unknown)}; known: {PROTOCOLS}")
    ranks: dict[str, list[torch.Tensor]] = {p: [] for p in protocols}
    for start, rows, scores, tgt in scored_batches(model, split, which, max_len, batch_size):
        if "full" in protocols:
            ranks["full"].append(target_ranks(scores, tgt))
        if "full_masked" in protocols:
            ranks["full_masked"].append(target_ranks(scores, tgt, exclude=history_mask(rows, split.n_items)))
        if "sampled99" in protocols and split.negatives:
            neg = torch.from_numpy(split.negatives[which][start:start + len(tgt)])
            cand = torch.cat([tgt[:, None], neg], dim=1)
            ranks["sampled99"].append(target_ranks(scores.gather(1, cand), torch.zeros(len(tgt), dtype=torch.long)))
    return {p: rank_metrics(torch.cat(r)) for p, r in ranks.items() if r}


def evaluate_all(model: SequentialRecommender | MostPopular, split: Split,
                 p: RecommendParams) -> dict[str, dict[str, dict]]:
    """{'valid': {protocol: metrics}, 'test': {...}}."""
    return {which: evaluate(model, split, which, p.max_len, p.eval_batch_size) for which in ("valid", "test")}


def optimizer(model: nn.Module, p: RecommendParams) -> torch.optim.Adam:
    """Adam over all the recommender's parameters with the configured lr, betas and weight decay."""
    return torch.optim.Adam(model.parameters(), lr=p.lr, betas=tuple(p.betas), weight_decay=p.weight_decay)


def train(model: SequentialRecommender, split: Split, p: RecommendParams,
          on_epoch: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train with early stopping on the validation metric (masked or not, as configured); best weights restored."""
    protocol = "full_masked" if p.mask_history else "full"
    sampler = NegativeSampler.from_params(split, p) if p.loss == "sampled" else None

    def validate() -> tuple[float, dict[str, float]]:
        value = evaluate(model, split, "valid", p.max_len, p.eval_batch_size, (protocol,))[protocol][p.monitor]
        return value, {f"valid_{p.monitor}": value}

    summary = fit(model, optimizer(model, p),
                  epochs=p.epochs, patience=p.patience, seed=p.seed, min_epochs=p.min_epochs,
                  smoothing=p.smoothing,
                  batches=lambda gen: train_batches(split.train, p.max_len, p.batch_size, gen, p.every_window,
                                                    p.batching),
                  loss=lambda batch, gen: model.loss(batch[0], batch[1], p.loss, gen, sampler),
                  validate=validate, on_epoch=on_epoch)
    return {**summary, "monitor": f"valid {protocol} {p.monitor}"}


def flat_results(results: dict[str, dict[str, dict]]) -> dict[str, float]:
    """{'valid': {'full': {'ndcg@10': ..}}} -> {'valid_full_ndcg@10': ..} (hr@k is dropped: equals recall@k)."""
    return {f"{split}_{p}_{k}": v for split, protos in results.items() for p, ms in protos.items()
            for k, v in ms.items() if not k.startswith("hr@")}
