"""ml.checkpoints: random checkpoints built offline, loadable like hub ones."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ml.checkpoints import ENGLISH_VOCAB, load_base, locate, make_random_checkpoint
from ml.errors import CheckpointUnavailable
from ml_fixtures import tiny_checkpoint  # noqa: F401


def test_tiny_checkpoint_round_trips(tiny_checkpoint):
    assert {"config.json", "model.safetensors", "vocab.json", "tokenizer_config.json",
            "processor_config.json"} <= set(os.listdir(tiny_checkpoint))
    model, processor = load_base(tiny_checkpoint)
    assert 1_500_000 < sum(p.numel() for p in model.parameters()) < 2_500_000
    cfg = model.config
    assert cfg.feat_extract_norm == "layer" and cfg.do_stable_layer_norm and cfg.ctc_zero_infinity
    assert cfg.vocab_size == len(ENGLISH_VOCAB) and cfg.pad_token_id == 0
    assert processor.feature_extractor.return_attention_mask is True
    assert json.load(open(os.path.join(tiny_checkpoint, "vocab.json"))) == {t: i for i, t in enumerate(ENGLISH_VOCAB)}
    model.eval()
    again, _ = load_base(tiny_checkpoint)
    again.eval()
    x = torch.randn(1, 16_000)
    with torch.inference_mode():
        assert torch.equal(model(x).logits, again(x).logits)


def test_same_seed_same_weights(tmp_path):
    a = make_random_checkpoint(tmp_path / "a", seed=3)
    b = make_random_checkpoint(tmp_path / "b", seed=3)
    assert open(os.path.join(a, "model.safetensors"), "rb").read() == open(os.path.join(b, "model.safetensors"), "rb").read()


def test_base_is_the_wav2vec2_base_architecture(tmp_path):
    path = make_random_checkpoint(tmp_path / "base", size="base")
    cfg = json.load(open(os.path.join(path, "config.json")))
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["feat_extract_norm"], cfg["conv_bias"]) == (768, 12, "group", False)
    model, processor = load_base(path)
    assert 90_000_000 < sum(p.numel() for p in model.parameters()) < 100_000_000
    assert processor.feature_extractor.return_attention_mask is False


def test_locate(tmp_path, tiny_checkpoint, monkeypatch):
    assert locate(tiny_checkpoint) == (tiny_checkpoint, True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointUnavailable, match="HF_HUB_OFFLINE"):
        locate("facebook/wav2vec2-base-960h")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointUnavailable, match="no config.json"):
        locate(str(tmp_path / "empty"))
    with pytest.raises(ValueError):
        make_random_checkpoint(tmp_path / "x", size="huge")
