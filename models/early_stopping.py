"""Early stopping: keep the best validation score and a copy of its weights; stop after `patience` misses."""

from __future__ import annotations

import copy

from torch import nn


class EarlyStopper:
    def __init__(self, patience: int):
        self.patience, self.best, self.best_epoch, self.waited, self.state = patience, float("-inf"), -1, 0, None

    def step(self, model: nn.Module, score: float, epoch: int) -> bool:
        """Record this epoch's validation score; True when training should stop."""
        if score > self.best:
            self.best, self.best_epoch, self.waited = score, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
            return False
        self.waited += 1
        return self.waited >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best weights back into the model (no-op if no epoch ran)."""
        if self.state is not None:
            model.load_state_dict(self.state)
