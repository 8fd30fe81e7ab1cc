"""EarlyStopper: stops after `patience` epochs without improvement and restores the best weights."""

from __future__ import annotations

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
