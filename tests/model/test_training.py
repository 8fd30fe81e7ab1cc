"""The shared training loop fails closed: a NaN/inf loss or validation score stops training with a clear error."""

from __future__ import annotations

import pytest
import torch

from semid.models.training import NonFiniteTraining, fit


def _fit(model, loss_value=None, score=0.5, epochs=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.ones(4, 2)

    def loss(batch, gen):
        out = model(batch).sum()
        return out * float("nan") if loss_value == "nan" else out

    return fit(model, opt, epochs=epochs, patience=2, seed=0, batches=lambda gen: [x, x], loss=loss,
               validate=lambda: (score, {"valid": score}))


def test_nan_loss_stops_training():
    with pytest.raises(NonFiniteTraining, match="training loss is nan at epoch 0, batch 0"):
        _fit(torch.nn.Linear(2, 1), loss_value="nan")


def test_nan_validation_score_stops_training():
    with pytest.raises(NonFiniteTraining, match="validation score is nan at epoch 0"):
        _fit(torch.nn.Linear(2, 1), score=float("nan"))


def test_finite_training_runs_and_keeps_the_best_epoch():
    out = _fit(torch.nn.Linear(2, 1))
    assert out["epochs"] == 3 and out["best_epoch"] == 0 and [r["epoch"] for r in out["history"]] == [0, 1, 2]
