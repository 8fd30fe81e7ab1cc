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
                      for x, y in batches for i in range(len(x)))
        assert seen == sorted(tuple(s.tolist()) for s in train)
        lengths = [set((y > 0).sum(1).tolist()) for _, y in batches]
        if batching == "length":  # sorted by length: at most two lengths meet in a batch
            assert all(len(ls) <= 2 for ls in lengths)
        else:  # a random permutation: batches of mixed lengths
            assert sum(len(ls) > 2 for ls in lengths) > len(batches) // 2
    with pytest.raises(ValueError, match="batching"):
        next(train_batches(train, 20, 16, torch.Generator(), batching="sorted"))


def test_every_window_uses_each_transition_once():
    from semid.models.seqrec import windows

    for length in (10, 11, 4, 2):
        seq = np.arange(length)
        pieces = windows(seq, max_len=3, every=True)
        assert all(2 <= len(w) <= 4 for w in pieces)
        pairs = sorted((int(a), int(b)) for w in pieces for a, b in zip(w[:-1], w[1:], strict=True))
        assert pairs == [(i, i + 1) for i in range(length - 1)]
    assert [w.tolist() for w in windows(np.arange(10), 3, every=False)] == [[6, 7, 8, 9]]
