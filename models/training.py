"""The one training loop: epochs of optimizer steps, early stopping on a validation score, best weights restored.

SASRec-family recommenders and the multi-task rankers both train through `fit`; each supplies its batches, its
loss and its validation score. Training runs under torch's deterministic algorithms (bit-exact under a seed).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from semid.models.determinism import deterministic


class NonFiniteTraining(ValueError):
    """The loss or the validation score became NaN or infinite: the run is broken and is stopped."""


class EarlyStopper:
    """Keep the best validation score and a copy of its weights; stop after `patience` misses, never before
    `min_epochs`. With `smoothing` s > 0 the score compared is an exponential moving average,
    ema = s * ema + (1 - s) * score, so one lucky or unlucky epoch on a small validation set neither stops
    training nor picks the weights."""

    def __init__(self, patience: int, min_epochs: int = 0, smoothing: float = 0.0):
        self.patience, self.best, self.best_epoch, self.waited, self.state = patience, float("-inf"), -1, 0, None
        self.min_epochs, self.smoothing, self.ema = min_epochs, smoothing, None

    def step(self, model: nn.Module, score: float, epoch: int) -> bool:
        """Record this epoch's validation score; True when training should stop."""
        self.ema = score if self.ema is None else self.smoothing * self.ema + (1 - self.smoothing) * score
        score = self.ema
        if score > self.best:
            self.best, self.best_epoch, self.waited = score, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
            return False
        self.waited += 1
        return self.waited >= self.patience and epoch + 1 >= self.min_epochs

    def restore(self, model: nn.Module) -> None:
        """Load the best weights back into the model (no-op if no epoch ran)."""
        if self.state is not None:
            model.load_state_dict(self.state)


@deterministic()
def fit(model: nn.Module, optimizer: torch.optim.Optimizer, *, epochs: int, patience: int, seed: int,
        min_epochs: int = 0, smoothing: float = 0.0,
        batches: Callable[[torch.Generator], Iterable[Any]],
        loss: Callable[[Any, torch.Generator], torch.Tensor],
        validate: Callable[[], tuple[float, dict[str, Any]]],
        on_epoch: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train `model` until the (smoothed) validation score has not improved for `patience` epochs, after at least
    `min_epochs` and at most `epochs`.

    batches(gen) yields one epoch of batches, loss(batch, gen) is a batch's loss, validate() returns
    (score to maximise, numbers for the history row). One generator seeded with `seed` drives every random draw.
    Returns best epoch, epochs run, best score, mean training seconds per epoch and the per-epoch history.
    Raises NonFiniteTraining as soon as a batch loss or a validation score is NaN or infinite."""
    gen = torch.Generator().manual_seed(seed)
    stopper, history, train_seconds = EarlyStopper(patience, min_epochs, smoothing), [], 0.0
    for epoch in range(epochs):
        model.train()
        start, total, count = time.perf_counter(), 0.0, 0
        for batch in batches(gen):
            value = loss(batch, gen)
            if not torch.isfinite(value.detach()):
                raise NonFiniteTraining(f"the training loss is {float(value.detach())} at epoch {epoch}, batch {count}")
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            total, count = total + float(value.detach()), count + 1
        seconds = time.perf_counter() - start
        train_seconds += seconds
        score, numbers = validate()
        if not math.isfinite(score):
            raise NonFiniteTraining(f"the validation score is {score} at epoch {epoch}")
        row = {"epoch": epoch, "loss": total / max(count, 1), "seconds": seconds, **numbers}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if stopper.step(model, score, epoch):
            break
    stopper.restore(model)
    return {"best_epoch": stopper.best_epoch, "epochs": len(history), "best_valid": stopper.best,
            "seconds_per_epoch": train_seconds / max(len(history), 1), "history": history}
