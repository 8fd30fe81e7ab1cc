"""Embedding step with the packaged all-MiniLM-L6-v2: cache by text hash, bad vectors named."""

import numpy as np
import pytest

from semid.tasks.config import load_config
from semid.tasks.embed import check_vectors, encode_texts
from semid.tasks.errors import PipelineError


def test_cache_skips_unchanged_texts(tmp_path):
    cfg = load_config(None, [f"embed.cache_dir={tmp_path}"])
    texts = ["red lipstick;9.99;Brand", "staples 1/2 inch", "red lipstick;9.99;Brand"]
    first, encoded, hits = encode_texts(texts, cfg)
    assert first.shape == (3, 384) and first.dtype == np.float32
    assert (encoded, hits) == (2, 0)  # duplicate text encoded once
    np.testing.assert_array_equal(first[0], first[2])
    again, encoded2, hits2 = encode_texts(texts + ["a new item"], cfg)
    assert (encoded2, hits2) == (1, 3)
    np.testing.assert_array_equal(again[:3], first)
    assert np.allclose(np.linalg.norm(again, axis=1), 1.0, atol=1e-4)


def test_bad_vectors_are_named():
    v = np.ones((4, 3), dtype=np.float32)
    v[1] = np.nan
    v[3] = 0
    with pytest.raises(PipelineError, match=r"2 item embeddings are NaN/inf or zero \(items b, d\)"):
        check_vectors(v, ["a", "b", "c", "d"])


def test_cache_lookup_reads_only_the_keys_asked_for_and_old_entries(tmp_path):
    from semid.tasks.embed import EmbeddingCache

    cache = EmbeddingCache(tmp_path)
    keys = [f"{i:064x}" for i in range(6)]
    vectors = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)
    cache.add(keys[:3], vectors[:3])
    cache.add(keys[3:5], vectors[3:5])
    np.savez(tmp_path / "shard-1.npz", keys=np.array(keys[5:]), vectors=vectors[5:])  # the earlier format
    got = cache.get([keys[4], keys[1], keys[5], "f" * 64])
    assert sorted(got) == sorted([keys[1], keys[4], keys[5]])
    for k in (1, 4, 5):
        np.testing.assert_array_equal(got[keys[k]], vectors[k])
    assert not list(tmp_path.glob(".*tmp*"))  # no staging files left


def _shop(tmp_path, texts):
    """A processed catalogue of the given texts (items 0..n-1), as the validate step leaves it."""
    import pandas as pd

    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", f"embed.cache_dir={tmp_path / 'cache'}",
                             "data.dataset=shop", "embed.shard_size=2", "flow.threads_per_task=1"])
    folder = tmp_path / "data" / "processed" / "shop"
    folder.mkdir(parents=True)
    pd.DataFrame({"item_id": range(len(texts)), "source_id": [f"s{i}" for i in range(len(texts))],
                  "text": texts}).to_parquet(folder / "items.parquet")
    return cfg


def test_sharded_embed_encodes_each_text_once_and_joins_in_item_order(tmp_path):
    from semid.tasks import embed as step

    texts = ["blue pen", "red pen", "blue pen", "stapler", "red pen"]
    cfg = _shop(tmp_path, texts)
    manifest = step.embed("shop", cfg)
    assert (manifest["items"], manifest["shards"], manifest["encoded"]) == (5, 3, 3)
    vectors = np.load(tmp_path / "data" / "features" / "shop" / "embeddings.npy")
    alone, _, _ = step.encode_texts(texts, cfg)  # from the cache the shards filled
    np.testing.assert_array_equal(vectors, alone)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not any((tmp_path / "data" / "shards" / "embed" / "shop").iterdir())  # removed after the join


def test_join_refuses_a_changed_or_missing_shard(tmp_path):
    from semid.tasks import embed as step

    cfg = _shop(tmp_path, ["blue pen", "red pen", "stapler"])
    shards = [step.embed_shard("shop", cfg, s) for s in step.plan("shop", cfg)]
    np.save(shards[1]["path"], np.zeros((1, 384), dtype=np.float32))
    with pytest.raises(PipelineError, match="not the file its task wrote"):
        step.join("shop", cfg, shards)
    with pytest.raises(PipelineError, match="not the plan"):
        step.join("shop", cfg, shards[:1])
    shards = [step.embed_shard("shop", cfg, s) for s in step.plan("shop", cfg)]
    for other in ({**shards[0], "encoder": "all-MiniLM-L6-v2+onnx-int8+avx2"}, {
            k: v for k, v in shards[0].items() if k != "encoder"}):  # another worker's int8 kernels; unrecorded
        with pytest.raises(PipelineError, match="not one encoder identity") as err:
            step.join("shop", cfg, [other, *shards[1:]])
        assert "one CPU class" in err.value.fix
    assert not (tmp_path / "data" / "features" / "shop").exists()  # nothing half-written
    step.join("shop", cfg, shards)  # the same shards from one encoder join


def test_new_texts_are_batched_by_token_count_and_come_back_in_input_order(tmp_path):
    """The embed step cuts its batches from the texts sorted by token count (not characters, as
    SentenceTransformer.encode sorts them), one encode call a batch, and puts every vector back at its text."""
    from semid.models.encoder import token_order
    from semid.tasks.embed import load_encoder

    st = load_encoder("all-MiniLM-L6-v2")
    # "1/2-3/4 5/6-7/8" is short in characters but long in tokens; "cat" ties "dog" (input order kept)
    texts = ["nitrile gloves", "1/2-3/4 5/6-7/8 9/10", "cat", "a longer item title with several plain words",
             "dog", "Stanley TRA708T staples, steel (1000 count)", "red lipstick;9.99;Brand"]
    counts = [len(st.tokenizer(t, truncation=True, max_length=st.max_seq_length)["input_ids"]) for t in texts]
    assert counts[1] > counts[3] and len(texts[1]) < len(texts[3])  # the case that sorting by characters gets wrong
    assert counts[2] == counts[4]
    order = token_order(st, texts, chunk=3)  # counted in chunks, as for a large shard
    assert [counts[i] for i in order] == sorted(counts, reverse=True)
    assert order.tolist().index(2) < order.tolist().index(4)

    class Recording:  # the real encoder; records which texts each encode call got
        def __init__(self):
            self.st, self.batches = st, []

        def encode(self, batch, **kwargs):
            self.batches.append(list(batch))
            return st.encode(batch, **kwargs)

    spy = Recording()
    cfg = load_config(None, [f"embed.cache_dir={tmp_path}", "embed.batch_size=3"])
    vectors, encoded, _ = encode_texts(texts, cfg, encoder=spy)
    assert encoded == len(texts)
    assert spy.batches == [[texts[i] for i in order[s:s + 3]] for s in range(0, len(texts), 3)]
    reference = st.encode(texts, batch_size=3, convert_to_numpy=True)
    cos = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() > 1 - 1e-6  # each vector at its own text (a misplaced one would be far off)
