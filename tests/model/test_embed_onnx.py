"""embed.backend onnx / onnx-int8: the exported MiniLM against the torch model, the cache identity, and every
way the backend refuses to run (a PipelineError naming the fix, never a fallback). One export per session."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from semid.models.encoder import EncoderBackendError, encoder_id, int8_kernels
from semid.models.onnx_encoder import FP32, INT8, MIN_COSINE, OnnxEncoder, check_against_torch, check_supported, cosine
from semid.tasks import embed as step
from semid.tasks.config import ConfigError, load_config
from semid.tasks.errors import PipelineError

MODEL = "all-MiniLM-L6-v2"
# Item-like texts of very different lengths (batches are length-sorted: order must come back), an empty text,
# a duplicate, and one past max_seq_length (truncated the same way on both backends).
TEXTS = ["Toy Story (1995); Animation, Children's, Comedy", "",
         "Stanley TRA708T Sharpshooter 1/2-Inch Leg Length Staples, Steel (1000 Count).;Stanley;Industrial & "
         "Scientific,Industrial Hardware,Fasteners,Staples", "red lipstick;9.99;Brand", "pipette tips " * 200,
         "Toy Story (1995); Animation, Children's, Comedy", "nitrile gloves;Medline;Lab Supplies"]


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory):
    """A session's export folder root with the model exported into it."""
    root = tmp_path_factory.mktemp("onnx")
    step.load_encoder(MODEL, "onnx", str(root))
    return root


@pytest.fixture(scope="session")
def torch_vectors():
    return step.load_encoder(MODEL).encode(TEXTS, batch_size=3, convert_to_numpy=True)


def test_fp32_gives_torchs_vectors_in_input_order(onnx_dir, torch_vectors):
    vectors = step.load_encoder(MODEL, "onnx", str(onnx_dir)).encode(TEXTS, batch_size=3)
    assert vectors.shape == torch_vectors.shape and vectors.dtype == np.float32
    cos = cosine(vectors, torch_vectors)
    assert cos.min() >= 1 - 1e-5, cos  # the tolerance behind fp32 sharing torch's cache identity (encoder_id)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[5])
    # the check is not vacuous: the same vectors in length-sorted order (not input order) fail it
    by_length = vectors[np.argsort([-len(t) for t in TEXTS], kind="stable")]
    assert cosine(by_length, torch_vectors).min() < 0.9


def test_onnx_memory_reaches_the_session_and_keeps_the_vectors(onnx_dir, torch_vectors, tmp_path):
    """embed.onnx_memory (default plain: no arena, flat memory) is what the embed step's encoders run with."""
    cfg = load_config(tmp_path / "none.yaml", [f"embed.onnx_dir={onnx_dir}", "embed.backend=onnx"])
    assert cfg.embed.onnx_memory == "plain"
    plain = step._worker_encoder(cfg)
    assert plain.session.get_session_options().enable_cpu_mem_arena is False
    arena = step._worker_encoder(load_config(tmp_path / "none.yaml", [f"embed.onnx_dir={onnx_dir}",
                                                                      "embed.backend=onnx", "embed.onnx_memory=arena"]))
    assert arena is not plain and arena.session.get_session_options().enable_cpu_mem_arena is True
    np.testing.assert_array_equal(plain.encode(TEXTS, batch_size=3), arena.encode(TEXTS, batch_size=3))
    assert cosine(plain.encode(TEXTS, batch_size=3), torch_vectors).min() >= 1 - 1e-5
    shrink = OnnxEncoder(plain.st, step.onnx_folder(MODEL, str(onnx_dir)) / FP32, 1, "arena-shrink")
    np.testing.assert_array_equal(shrink.encode(TEXTS, batch_size=3), arena.encode(TEXTS, batch_size=3))
    with pytest.raises(ConfigError, match="onnx_memory"):
        load_config(tmp_path / "none.yaml", ["embed.onnx_memory=off"])
    with pytest.raises(ValueError, match="memory must be"):
        OnnxEncoder(plain.st, Path("unused.onnx"), 1, "off")


def test_two_threads_exporting_at_once_both_get_the_export(tmp_path):
    """The embed step's shard threads each load their encoder; on an empty onnx_dir both export. torch.export is not
    thread-safe: unserialised, one thread failed with TorchExportError (seen in benchmarks/embed_memory.py)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: step.onnx_export(MODEL, None, str(tmp_path)), range(2)))
    assert folders[0] == folders[1] and (folders[0] / FP32).exists() and (folders[0] / INT8).exists()
    assert [p.name for p in tmp_path.iterdir()] == [folders[0].name]  # no staging folder left behind


def test_int8_is_close_but_another_encoder(onnx_dir, torch_vectors, tmp_path):
    vectors = step.load_encoder(MODEL, "onnx-int8", str(onnx_dir)).encode(TEXTS, batch_size=3)
    cos = cosine(vectors, torch_vectors)
    # int8 GEMM kernels differ by CPU: 0.988 was the lowest here on one machine, 0.971 (the empty text) on an
    # AVX2 EPYC without VNNI; the export's own check floor holds on both
    assert cos.min() >= MIN_COSINE[INT8] and cos.mean() >= 0.98, cos
    assert cos.min() < 1 - 1e-5  # int8 vectors do differ: they must not be served from the torch/fp32 cache
    assert encoder_id(MODEL, "onnx-int8") != encoder_id(MODEL, "torch") == encoder_id(MODEL, "onnx") == MODEL
    sets = [f"embed.cache_dir={tmp_path}", f"embed.onnx_dir={onnx_dir}"]
    torch_cfg, fp32_cfg, int8_cfg = (load_config(None, [*sets, f"embed.backend={b}"])
                                     for b in ("torch", "onnx", "onnx-int8"))
    assert step.cache_folder(torch_cfg) == step.cache_folder(fp32_cfg) != step.cache_folder(int8_cfg)
    step.encode_texts(TEXTS[:2], torch_cfg)
    _, encoded, hits = step.encode_texts(TEXTS[:2], int8_cfg)
    assert (encoded, hits) == (2, 0)  # nothing served from the torch entries
    _, encoded, hits = step.encode_texts(TEXTS[:2], fp32_cfg)
    assert (encoded, hits) == (0, 2)  # fp32 shares them


def test_manifest_records_the_backend(onnx_dir, tmp_path):
    items = pd.DataFrame({"item_id": [0, 1], "source_id": ["a", "b"], "text": TEXTS[2:4]})
    (tmp_path / "data" / "processed" / "shop").mkdir(parents=True)
    items.to_parquet(tmp_path / "data" / "processed" / "shop" / "items.parquet")
    for backend in ("torch", "onnx-int8"):
        cfg = load_config(None, [f"data.root={tmp_path / 'data'}", f"embed.cache_dir={tmp_path / 'cache'}",
                                 f"embed.onnx_dir={onnx_dir}", f"embed.backend={backend}"])
        manifest = step.embed("shop", cfg)
        on_disk = json.loads((step.layout.features_dir(cfg, "shop") / "manifest.json").read_text())
        assert on_disk["backend"] == manifest["backend"] == backend
        assert on_disk["encoder"] == encoder_id(MODEL, backend) and on_disk["model"] == MODEL
        assert "text_sha256" not in on_disk  # the per-item hashes live beside it: register reads only the small file
        hashes = json.loads((step.layout.features_dir(cfg, "shop") / "text_sha256.json").read_text())
        assert hashes == [step.text_sha(t) for t in TEXTS[2:4]]


def test_corrupted_export_is_refused_by_name(onnx_dir, tmp_path):
    copy = tmp_path / "onnx"
    shutil.copytree(onnx_dir, copy)
    folder = step.onnx_folder(MODEL, str(copy))
    with open(folder / INT8, "r+b") as fh:  # one flipped byte in the weights
        fh.seek(1 << 20)
        byte = fh.read(1)
        fh.seek(1 << 20)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(PipelineError, match=r"model\.int8\.onnx does not match the sha256 recorded at export") as err:
        step.load_encoder(MODEL, "onnx-int8", str(copy))
    assert f"delete {folder}" in err.value.fix and "embed.backend=torch" in err.value.fix
    step.load_encoder(MODEL, "onnx", str(copy))  # the intact fp32 file still loads
    (folder / FP32).unlink()
    with pytest.raises(PipelineError, match=r"model\.onnx is missing"):
        step.load_encoder(MODEL, "onnx", str(copy))
    (folder / "export.json").unlink()
    with pytest.raises(PipelineError, match="has no export.json"):
        step.load_encoder(MODEL, "onnx", str(copy))


def test_unreadable_model_file_is_one_message(onnx_dir, tmp_path):
    garbage = tmp_path / "export" / FP32
    garbage.parent.mkdir()
    garbage.write_bytes(b"not an onnx model")
    st = step.load_encoder(MODEL)
    with pytest.raises(EncoderBackendError, match="onnxruntime cannot load the exported model") as err:
        OnnxEncoder(st, garbage, 1)
    assert f"delete {garbage.parent}" in err.value.fix


def test_failed_export_raises_and_leaves_nothing(tmp_path, monkeypatch):
    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate\nlong traceback text")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(PipelineError) as err:
        step.load_encoder(MODEL, "onnx", str(tmp_path))
    assert err.value.problem == ("Exporting the embedding model to ONNX failed: RuntimeError: unsupported operator "
                                 "aten::frobnicate")  # one line, the traceback text left out
    assert "embed.backend=torch" in err.value.fix
    assert list(tmp_path.iterdir()) == []  # the staging folder is gone, no half export to trip over


def test_export_that_disagrees_with_torch_is_refused(onnx_dir, monkeypatch):
    folder = step.onnx_folder(MODEL, str(onnx_dir))
    st = step.load_encoder(MODEL)
    assert check_against_torch(st, folder)[INT8] >= 0.97
    monkeypatch.setitem(sys.modules["semid.models.onnx_encoder"].MIN_COSINE, INT8, 0.99999)
    with pytest.raises(EncoderBackendError, match=r"exported model\.int8\.onnx disagrees with the torch model"):
        check_against_torch(st, folder)


@pytest.mark.parametrize("missing", ["module", "distribution"])
def test_missing_onnxruntime_names_the_fix(onnx_dir, monkeypatch, missing):
    if missing == "module":  # installed metadata, but the import fails
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
    else:
        import importlib.metadata as md

        def version(dist, real=md.version):
            if dist == "onnxruntime":
                raise md.PackageNotFoundError(dist)
            return real(dist)

        monkeypatch.setattr(md, "version", version)
    with pytest.raises(PipelineError, match="needs onnxruntime, which is not installed") as err:
        step.load_encoder(MODEL, "onnx", str(onnx_dir))
    assert "embed.backend=torch" in err.value.fix


def test_only_mean_pooling_models_run_on_onnx():
    class Transformer:
        pass

    class Pooling:
        def __init__(self, mode):
            self.mode = mode

        def get_config_dict(self):
            return {"pooling_mode": self.mode}

    class Normalize:
        pass

    assert check_supported([Transformer(), Pooling("mean"), Normalize()]) is True
    assert check_supported([Transformer(), Pooling("mean")]) is False
    with pytest.raises(EncoderBackendError, match=r"Transformer -> Pooling \(pooling cls\)"):
        check_supported([Transformer(), Pooling("cls")])


def test_backend_is_validated():
    with pytest.raises(ConfigError, match="embed.backend"):
        load_config(None, ["embed.backend=tensorrt"])


def _int8_codebook(onnx_dir, tmp_path):
    """A tiny catalogue embedded with onnx-int8 and quantized: (cfg, the embed manifest)."""
    from semid.tasks import quantize

    texts = [t for t in TEXTS if t]
    items = pd.DataFrame({"item_id": range(len(texts)), "source_id": [f"s{i}" for i in range(len(texts))],
                          "text": texts})
    (tmp_path / "data" / "processed" / "shop").mkdir(parents=True)
    items.to_parquet(tmp_path / "data" / "processed" / "shop" / "items.parquet")
    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", f"embed.cache_dir={tmp_path / 'cache'}",
                             f"embed.onnx_dir={onnx_dir}", "embed.backend=onnx-int8", "quantizer.method=rqkmeans",
                             "quantizer.levels=2", "quantizer.codebook_size=2", "quantizer.kmeans_iters=5",
                             "quantizer.distances=[cosine, euclidean]"])
    manifest = step.embed("shop", cfg)
    quantize.quantize("shop", cfg)
    return cfg, manifest


def _served(cfg, manifest, tmp_path, onnx: str | None, texts: Path | None = None, identity: str | None = None):
    from types import SimpleNamespace

    from semid.tasks.serving import CodebookModel

    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"encoder": MODEL, "embed_backend": "onnx-int8", "onnx_sha256": manifest["onnx_sha256"],
                                "encoder_identity": identity or manifest["encoder"]}))
    artifacts = {"codebook": str(step.layout.semantic_dir(cfg, "shop")), "meta": str(meta),
                 "texts": str(texts or step.layout.features_dir(cfg, "shop") / "text_sha256.json")}
    if onnx is not None:
        artifacts["onnx"] = onnx
    model = CodebookModel()
    model.load_context(SimpleNamespace(artifacts=artifacts))
    return model


def test_an_int8_codebook_encodes_new_texts_with_its_int8_file(onnx_dir, tmp_path, torch_vectors):
    cfg, manifest = _int8_codebook(onnx_dir, tmp_path)
    assert manifest["onnx_model"].endswith(INT8) and manifest["onnx_sha256"]
    model = _served(cfg, manifest, tmp_path, manifest["onnx_model"])
    new = pd.DataFrame({"text": [TEXTS[2] + " v2", TEXTS[3] + " refill"]})
    served = model._vectors(new)
    int8 = step.load_encoder(MODEL, "onnx-int8", str(onnx_dir)).encode(new["text"].tolist())
    torch_ = step.load_encoder(MODEL).encode(new["text"].tolist(), convert_to_numpy=True)
    np.testing.assert_allclose(served, int8, atol=1e-6)
    assert cosine(served, torch_).min() < 1 - 1e-5  # the torch encoder would have given other vectors
    assert model.predict(None, new)["is_new"].all()


def test_int8_identity_names_the_cpus_int8_kernels():
    """The int8 identity carries the class of int8 kernels read from /proc/cpuinfo's flags (the best one present);
    torch and fp32 ignore it."""
    assert int8_kernels("processor : 0\nflags : fpu sse avx2 avx512bw avx512_vnni\n") == "avx512vnni"
    assert int8_kernels("flags\t\t: fpu avx avx2\n") == "avx2"
    assert int8_kernels("Features : fp asimd asimddp\n") == "dotprod"
    assert int8_kernels("flags : amx_int8 avx512_vnni avx2\n") == "amx"
    assert encoder_id(MODEL, "onnx-int8", "avx2") == f"{MODEL}+onnx-int8+avx2" != encoder_id(MODEL, "onnx-int8", "amx")
    assert encoder_id(MODEL, "onnx-int8") == f"{MODEL}+onnx-int8+{int8_kernels()}"
    assert encoder_id(MODEL, "onnx", "avx2") == encoder_id(MODEL, "torch") == MODEL


def test_an_int8_codebook_from_another_cpu_class_refuses_new_texts(onnx_dir, tmp_path):
    """Served where the int8 kernels differ from the recorded ones (or none were recorded), a new text is refused
    with the reason and the fixes; known texts, which need no encoding, are still served."""
    cfg, manifest = _int8_codebook(onnx_dir, tmp_path)
    other = "amx" if int8_kernels() != "amx" else "avx2"
    for identity in (f"{MODEL}+onnx-int8+{other}", f"{MODEL}+onnx-int8"):
        model = _served(cfg, manifest, tmp_path, manifest["onnx_model"], identity=identity)
        assert not model.predict(None, pd.DataFrame({"text": TEXTS[2:4]}))["is_new"].any()
        with pytest.raises(ValueError, match=r"int8 kernels make it .*embed\.backend=onnx"):
            model.predict(None, pd.DataFrame({"text": [TEXTS[2] + " v2"]}))


def test_a_codebook_registered_with_the_whole_embed_manifest_still_finds_known_texts(onnx_dir, tmp_path):
    cfg, manifest = _int8_codebook(onnx_dir, tmp_path)
    hashes = json.loads((step.layout.features_dir(cfg, "shop") / "text_sha256.json").read_text())
    old = tmp_path / "manifest.json"  # what register logged as 'texts' before the hashes moved to their own file
    old.write_text(json.dumps({**manifest, "text_sha256": hashes}))
    known = pd.DataFrame({"text": TEXTS[2:4]})
    for texts in (None, old):
        served = _served(cfg, manifest, tmp_path, manifest["onnx_model"], texts).predict(None, known)
        assert not served["is_new"].any()


def test_an_int8_codebook_without_its_model_file_is_refused(onnx_dir, tmp_path):
    cfg, manifest = _int8_codebook(onnx_dir, tmp_path)
    with pytest.raises(ValueError, match="'onnx' artefact is missing"):
        _served(cfg, manifest, tmp_path, None)
    tampered = tmp_path / "tampered.onnx"
    tampered.write_bytes(Path(manifest["onnx_model"]).read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="not the file recorded at registration"):
        _served(cfg, manifest, tmp_path, str(tampered))
