"""Typed config: defaults, params.yaml, --set overrides, clear errors."""

from pathlib import Path

import pytest

from semid.tasks.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def test_project_params_yaml_loads():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.data.dataset == "ml-100k"
    assert cfg.quantizer.levels == 3 and cfg.quantizer.codebook_size == 256
    assert cfg.quantizer.distances == ["cosine", "cosine", "euclidean"]


def test_override_changes_one_key(tmp_path):
    cfg = load_config(REPO / "params.yaml", ["quantizer.levels=4", "data.min_text_coverage=0.5"])
    assert cfg.quantizer.levels == 4
    assert cfg.quantizer.distances == ["cosine", "cosine", "euclidean", "euclidean"]
    assert cfg.data.min_text_coverage == 0.5
    assert cfg.digest() != load_config(REPO / "params.yaml").digest()


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'quantizer.levelz'"):
        load_config(None, ["quantizer.levelz=3"])


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"quantizer.levels: .*integer"):
        load_config(None, ["quantizer.levels=many"])
    with pytest.raises(ConfigError, match=r"data.min_text_coverage"):
        load_config(None, ["data.min_text_coverage=2"])
    with pytest.raises(ConfigError, match=r"distances"):
        load_config(None, ["quantizer.distances=[manhattan, cosine, cosine]"])


def test_malformed_override_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["quantizer.levels"])
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_mirror_from_environment(monkeypatch):
    monkeypatch.setenv("SEMID_DATA_MIRROR", "/some/mirror")
    assert load_config(None).data.mirror == "/some/mirror"
    assert load_config(None, ["data.mirror=/explicit"]).data.mirror == "/explicit"


def test_rqvae_batch_shrinks_for_small_catalogues():
    """At least quantizer.min_batches optimizer steps an epoch: ml-100k's 1,682 items at batch 1024 were 2."""
    q = load_config(None, []).quantizer
    assert (q.batch_size, q.min_batches) == (1024, 8)
    assert q.fit_batch(1682) == 211  # ceil(1682 / 8)
    assert q.fit_batch(8192) == 1024 and q.fit_batch(12101) == 1024  # large enough: batch_size unchanged
    assert q.fit_batch(3) == 1
    one = load_config(None, ["quantizer.min_batches=1"]).quantizer
    assert one.fit_batch(1682) == 1024  # min_batches 1: the old rule (batch_size, capped by nothing)
