"""Models by name: quantizers, sequential recommenders and multi-task rankers (RecBole's `get_model`).

A new model is one file in models/ plus one line here. Names map to "module:Class" strings so that reading the
names (the config does, to validate `quantizer.method`, `recommend.model`, `ranker.model`) imports no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

QUANTIZERS = {"rqkmeans": "rqkmeans:RQKMeans", "rqvae": "rqvae:RQVAE", "drq": "drq:DRQ"}
RECOMMENDERS = {"sasrec": "sasrec:SASRec"}
RANKERS = {"dtn": "dtn:DTN", "mmoe": "dtn:MMoE", "shared-bottom": "dtn:SharedBottom"}
KINDS = {"quantizer": QUANTIZERS, "recommender": RECOMMENDERS, "ranker": RANKERS}


def names(kind: str) -> list[str]:
    return list(KINDS[kind])


def get_model(kind: str, name: str) -> Any:
    """The class registered as `name` for `kind` (quantizer | recommender | ranker)."""
    table = KINDS[kind]
    if name not in table:
        raise ValueError(f"unknown {kind} '{name}': use one of {', '.join(table)}")
    module, cls = table[name].split(":")
    return getattr(import_module(f"semid.models.{module}"), cls)
