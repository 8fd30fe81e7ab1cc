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
