"""EarlyStopper (patience, minimum epochs, smoothing; best weights restored) and the training windows."""

from __future__ import annotations

import numpy as np
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


def test_every_window_uses_each_transition_once():
    from semid.models.seqrec import windows

    for length in (10, 11, 4, 2):
        seq = np.arange(length)
        pieces = windows(seq, max_len=3, every=True)
        assert all(2 <= len(w) <= 4 for w in pieces)
        pairs = sorted((int(a), int(b)) for w in pieces for a, b in zip(w[:-1], w[1:], strict=True))
        assert pairs == [(i, i + 1) for i in range(length - 1)]
    assert [w.tolist() for w in windows(np.arange(10), 3, every=False)] == [[6, 7, 8, 9]]
