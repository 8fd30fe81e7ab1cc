"""EarlyStopper (patience, minimum epochs, smoothing; best weights restored) and the training windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semid.models.training import EarlyStopper


def test_stops_after_patience_and_restores_best():
    model = torch.nn.Linear(1, 1, bias=False)
    stopper = EarlyStopper(patience=2)
    stops = []
    for epoch, score in enumerate([0.1, 0.3, 0.2, 0.25]):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        stops.append(stopper.step(model, score, epoch))
    assert stops == [False, False, False, True]
    assert stopper.best == 0.3 and stopper.best_epoch == 1
    stopper.restore(model)
    assert model.weight.item() == 1.0


def test_min_epochs_keeps_training_past_patience():
    model = torch.nn.Linear(1, 1, bias=False)
    stopper = EarlyStopper(patience=1, min_epochs=4)
    stops = [stopper.step(model, score, epoch) for epoch, score in enumerate([0.3, 0.2, 0.1, 0.1, 0.1])]
    assert stops == [False, False, False, True, True]  # the miss at epoch 1 would stop it without min_epochs
    assert stopper.best_epoch == 0


def test_smoothing_compares_the_moving_average():
    # ema with s = 0.5: 0.2, 0.5*0.2 + 0.5*0.6 = 0.4, 0.5*0.4 + 0.5*0.1 = 0.25, 0.5*0.25 + 0.5*0.5 = 0.375
    model = torch.nn.Linear(1, 1, bias=False)
    stopper = EarlyStopper(patience=2, smoothing=0.5)
    stops = [stopper.step(model, score, epoch) for epoch, score in enumerate([0.2, 0.6, 0.1, 0.5])]
    assert stops == [False, False, False, True]
    assert stopper.best == 0.4 and stopper.best_epoch == 1
    plain = EarlyStopper(patience=2)  # unsmoothed, the spike at epoch 1 is the best score
    [plain.step(model, s, e) for e, s in enumerate([0.2, 0.6, 0.1, 0.5])]
    assert plain.best == 0.6


def test_batching_by_length_or_shuffled_covers_every_sequence_once():
    from semid.models.seqrec import train_batches

    rng = np.random.default_rng(0)
    train = [rng.integers(0, 50, size=int(n)) for n in rng.integers(2, 12, size=300)]
    for batching in ("length", "shuffled"):
        batches = list(train_batches(train, max_len=20, batch_size=16, gen=torch.Generator().manual_seed(1),
                                     batching=batching))
        seen = sorted(tuple((torch.cat([x[i, :1], y[i][y[i] > 0]]) - 1).tolist())
                      for xs, ys in batches for x, y in zip(xs, ys, strict=True) for i in range(len(x)))
        assert seen == sorted(tuple(s.tolist()) for s in train)
        lengths = [set(torch.cat([(y > 0).sum(1) for y in ys]).tolist()) for _, ys in batches]
        if batching == "length":  # sorted by length: at most two lengths meet in a batch, one padding group
            assert all(len(ls) <= 2 for ls in lengths)
            assert all(len(xs) == 1 for xs, _ in batches)
        else:  # a random permutation: batches of mixed lengths, in groups padded to their own longest
            assert sum(len(ls) > 2 for ls in lengths) > len(batches) // 2
            for xs, ys in batches:
                for x, y in zip(xs, ys, strict=True):
                    assert x.shape == y.shape and x.shape[1] == int((y > 0).sum(1).max())
    with pytest.raises(ValueError, match="batching"):
        next(train_batches(train, 20, 16, torch.Generator(), batching="sorted"))


def test_padding_groups_minimise_padded_slots_plus_a_cost_per_group():
    from itertools import combinations

    from semid.models.seqrec import padding_groups

    def cost(groups, lengths, c):
        return sum(len(g) * lengths[g].max() + c for g in groups)

    rng = np.random.default_rng(0)
    for c in (0, 3, 20, 1000):
        for _ in range(20):
            lengths = rng.integers(1, 12, size=int(rng.integers(1, 14)))
            groups = padding_groups(lengths, c)
            assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
            values = np.unique(lengths)  # brute force: every way to cut the sorted distinct lengths
            best = min(cost([np.flatnonzero((lengths > lo) & (lengths <= hi)) for lo, hi in
                             zip((0, *cuts), (*cuts, values[-1]), strict=True)], lengths, c)
                       for k in range(len(values)) for cuts in combinations(values[:-1].tolist(), k))
            assert cost(groups, lengths, c) == best
    assert len(padding_groups(np.array([2, 2, 9, 9]), 1000)) == 1  # a group costs more than its padding saves
    assert [g.tolist() for g in padding_groups(np.array([9, 2, 9, 2]), 0)] == [[1, 3], [0, 2]]


def test_every_window_uses_each_transition_once():
    from semid.models.seqrec import windows

    for length in (10, 11, 4, 2):
        seq = np.arange(length)
        pieces = windows(seq, max_len=3, every=True)
        assert all(2 <= len(w) <= 4 for w in pieces)
        pairs = sorted((int(a), int(b)) for w in pieces for a, b in zip(w[:-1], w[1:], strict=True))
        assert pairs == [(i, i + 1) for i in range(length - 1)]
    assert [w.tolist() for w in windows(np.arange(10), 3, every=False)] == [[6, 7, 8, 9]]
