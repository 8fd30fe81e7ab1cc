"""The item-text encoder on onnxruntime: a sentence-transformers model's transformer exported to ONNX (fp32, and
dynamically quantized to int8), run with the model's own tokenizer, mean pooling and L2 normalisation.

Only the transformer is exported (token embeddings out); tokenizing (`SentenceTransformer.preprocess`: its
tokenizer, max_seq_length, truncation), pooling and normalising stay outside the graph and follow the model's
modules (modules.json: Transformer -> Pooling(mean) -> Normalize), as sentence-transformers computes them. Texts
are sorted by length into batches like `SentenceTransformer.encode` (little padding) and vectors come back in input
order. Where the export is kept and checked is the embed step's business (semid.tasks.embed)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semid.models.encoder import EncoderBackendError

FP32, INT8 = "model.onnx", "model.int8.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the transformer inputs the graph may take
# Dynamic int8: QInt8 weights, one scale per output channel, MatMul (linear layers) only. Per-tensor scales give
# cosine ~0.95 to the fp32 vectors on Amazon item texts, per-channel ~0.993 at the same speed.
QUANTIZE = {"weight_type": "QInt8", "per_channel": True, "op_types_to_quantize": ["MatMul"]}
# Checked once after the export, against the torch model on a few item texts: the lowest cosine each file may give.
MIN_COSINE = {FP32: 1 - 1e-5, INT8: 0.97}
SAMPLE = ["Stanley TRA708T Sharpshooter 1/2-Inch Leg Length Staples, Steel (1000 Count).;Stanley;Industrial & "
          "Scientific,Fasteners", "Toy Story (1995); Animation, Children's, Comedy", "red lipstick;9.99;Brand",
          "a", "Nitrile exam gloves, powder free, large, box of 100;Medline;Lab & Scientific Products,Gloves"]


def check_supported(st: Any) -> bool:
    """Whether the model is Transformer -> mean Pooling [-> Normalize], the pipeline this encoder reproduces;
    returns whether it normalises. Anything else (CLS pooling, a Dense layer, ...) is refused, never guessed."""
    kinds = [type(m).__name__ for m in st]
    pooling = st[1].get_config_dict().get("pooling_mode") if len(kinds) > 1 and kinds[1] == "Pooling" else None
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]) or pooling != "mean":
        raise EncoderBackendError(
            f"The ONNX backend runs Transformer -> mean Pooling [-> Normalize] models; this one is "
            f"{' -> '.join(kinds)} (pooling {pooling}).", "set embed.backend=torch for this model.")
    return kinds[2:] == ["Normalize"]


def input_names(st: Any) -> list[str]:
    return [k for k in INPUTS if k in st.preprocess(["a"])]


class TokenEmbeddings(torch.nn.Module):
    """The graph that is exported: the model's transformer, inputs -> last hidden state (token embeddings)."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state


def export(st: Any, folder: Path) -> dict[str, Any]:
    """Write FP32 (torch.onnx.export, dynamic batch and sequence axes) and INT8 (quantize_dynamic) into folder;
    returns what was exported. Raises EncoderBackendError if a step fails."""
    check_supported(st)
    names = input_names(st)
    example = st.preprocess(["a short item text", "a somewhat longer item text; brand; category, subcategory"])
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    try:  # the exporter's progress lines, warnings and log records are noise here: it either works or raises
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet_logger("torch.onnx"), \
                torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(TokenEmbeddings(st[0].auto_model).eval(), tuple(example[k] for k in names),
                              str(folder / FP32), input_names=names, output_names=["token_embeddings"],
                              dynamic_shapes={k: {0: batch, 1: seq} for k in names}, dynamo=True,
                              external_data=False, verbose=False)
    except Exception as err:  # noqa: BLE001 - any exporter failure is one message with the way out
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise EncoderBackendError(f"Exporting the embedding model to ONNX failed: {type(err).__name__}: {first_line}",
                                  "set embed.backend=torch (or check the torch/onnx/onnxscript versions "
                                  "pinned in pyproject.toml).") from err
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with _quiet_logger(""):  # the root logger: "consider pre-processing before quantization"
            quantize_dynamic(folder / FP32, folder / INT8, weight_type=QuantType[QUANTIZE["weight_type"]],
                             per_channel=QUANTIZE["per_channel"],
                             op_types_to_quantize=QUANTIZE["op_types_to_quantize"])
    except ImportError as err:
        raise _missing_onnxruntime() from err
    except Exception as err:  # noqa: BLE001
        raise EncoderBackendError(f"Quantizing the ONNX embedding model to int8 failed: {type(err).__name__}: {err}",
                                  "set embed.backend=torch or onnx.") from err
    return {"inputs": names, "output": "token_embeddings", "exporter": "torch.onnx.export(dynamo=True)",
            "quantize_dynamic": QUANTIZE, "sample_min_cosine": check_against_torch(st, folder)}


def check_against_torch(st: Any, folder: Path) -> dict[str, float]:
    """The lowest cosine of each exported file's vectors to the torch model's on SAMPLE; raises below MIN_COSINE."""
    reference = st.encode(SAMPLE, convert_to_numpy=True)
    lowest = {}
    for file, floor in MIN_COSINE.items():
        lowest[file] = float(cosine(OnnxEncoder(st, folder / file, torch.get_num_threads()).encode(SAMPLE),
                                    reference).min())
        if not lowest[file] >= floor:
            raise EncoderBackendError(f"The exported {file} disagrees with the torch model: cosine "
                                      f"{lowest[file]:.6f} < {floor} on a sample text.",
                                      "set embed.backend=torch, and report the torch/onnx versions.")
    return lowest


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _missing_onnxruntime() -> EncoderBackendError:
    return EncoderBackendError("embed.backend onnx / onnx-int8 needs onnxruntime, which is not installed.",
                               "pip install -e . (it is a dependency), or set embed.backend=torch.")


MEMORY = ("arena", "plain", "arena-shrink")  # OnnxEncoder's memory modes (embed.onnx_memory)


class OnnxEncoder:
    """`encode(texts, batch_size) -> float32 [N, dim]` like SentenceTransformer.encode, on an ONNX session."""

    def __init__(self, st: Any, path: Path, threads: int, memory: str = "arena"):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise _missing_onnxruntime() from err
        self.st, self.normalize = st, check_supported(st)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # memory: onnxruntime's CPU memory arena (its default; grows with each new input shape and keeps it), plain
        # (no arena: memory flat, slower), or arena-shrink (the arena's free chunks returned after every run)
        if memory not in MEMORY:
            raise ValueError(f"memory must be one of {', '.join(MEMORY)}, not {memory!r}")
        options.enable_cpu_mem_arena = memory != "plain"
        self.run_options = ort.RunOptions()
        if memory == "arena-shrink":
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        # idle intra-op threads sleep rather than spin: on a shared CPU spinning took cycles from the other jobs and
        # cost this encoder ~10 % throughput (2 cores, load ~5)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise EncoderBackendError(f"onnxruntime cannot load the exported model {path}: "
                                      f"{type(err).__name__}: {str(err).strip()[:300]}",
                                      f"delete {path.parent} (it is exported again on the next run) or set "
                                      "embed.backend=torch.") from err
        self.inputs = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str], batch_size: int = 32, **_: Any) -> np.ndarray:
        """Vectors in input order; batches of similar length (longest first), as SentenceTransformer.encode."""
        out = np.empty((len(texts), self.st.get_embedding_dimension()), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            features = self.st.preprocess([texts[i] for i in rows])
            feed = {k: features[k].numpy() for k in self.inputs}
            tokens = self.session.run(None, feed, self.run_options)[0]
            out[rows] = mean_pool(tokens, feed["attention_mask"], self.normalize)
        return out


def mean_pool(tokens: np.ndarray, mask: np.ndarray, normalize: bool) -> np.ndarray:
    """sentence-transformers' Pooling(mean) and Normalize: the mask-weighted mean of the token embeddings
    (count clamped at 1e-9), then x / max(||x||, 1e-12)."""
    weights = mask[..., None].astype(np.float32)
    pooled = (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    if normalize:
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled.astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-24)
