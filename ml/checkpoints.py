"""Base checkpoints: random ones built offline, real ones found locally or on the hub.

No package ships wav2vec2 CTC weights, and tests must never touch the network, so tests
and benchmarks build checkpoints from a config on the fly (``make_random_checkpoint``).
Real training starts from ``load_base``: a local ``save_pretrained`` folder, the Hugging Face
cache, or the hub when it is reachable; otherwise a CheckpointUnavailable that tells the
user how to provide one, instead of a long network timeout and a stack trace.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from urllib.parse import urlparse

from .errors import CheckpointUnavailable

# facebook/wav2vec2-base-960h's vocabulary, in its order (ids 0..31).
ENGLISH_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]

# About 1.8M parameters: trains on a CPU in seconds per epoch (see asr-facts.md).  No dropout
# and no SpecAugment: its job is to show, in seconds, that a model learns a handful of utterances.
TINY_CONFIG = dict(
    hidden_size=192, num_hidden_layers=3, num_attention_heads=4, intermediate_size=768,
    conv_dim=(128,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
    conv_bias=True, num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16,
    feat_extract_norm="layer", do_stable_layer_norm=True,
    hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
    final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, mask_time_length=5,
)
# The wav2vec2-base architecture as in facebook/wav2vec2-base-960h's config.json (95M params).
BASE_CONFIG = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
    conv_bias=False, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
    feat_extract_norm="group", do_stable_layer_norm=False,
    hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, feat_proj_dropout=0.1,
    final_dropout=0.1, layerdrop=0.1, mask_time_prob=0.05, mask_time_length=10,
)
SIZES = {"tiny": TINY_CONFIG, "base": BASE_CONFIG}


def make_processor(vocab=None, return_attention_mask: bool = True):
    """A Wav2Vec2Processor (character CTC tokenizer + feature extractor) built offline."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    vocab = list(vocab) if vocab is not None else list(ENGLISH_VOCAB)
    for special in ("<pad>", "<unk>", "|"):
        if special not in vocab:
            raise ValueError(f"vocab must contain {special!r}")
    letters = [t for t in vocab if len(t) == 1 and t.isalpha()]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = os.path.join(tmp, "vocab.json")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump({tok: i for i, tok in enumerate(vocab)}, f)
        tokenizer = Wav2Vec2CTCTokenizer(
            vocab_file, unk_token="<unk>", pad_token="<pad>",
            bos_token="<s>" if "<s>" in vocab else None, eos_token="</s>" if "</s>" in vocab else None,
            word_delimiter_token="|",
            do_lower_case=bool(letters) and all(c.isupper() for c in letters),
        )
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=return_attention_mask)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def make_random_checkpoint(path, size: str = "tiny", vocab=None, seed: int = 0, **config_overrides) -> str:
    """Write a randomly initialised Wav2Vec2ForCTC + Wav2Vec2Processor to ``path``.

    ``size='tiny'``: ~2M parameters, layer-norm feature encoder (takes an attention mask),
    for tests that train.  ``size='base'``: the wav2vec2-base architecture (group-norm
    encoder, no attention mask), for timing.  ``config_overrides`` go to Wav2Vec2Config
    (e.g. ``feat_extract_norm='group', do_stable_layer_norm=False`` for a tiny group-norm
    model); the feature extractor returns attention masks exactly for layer-norm encoders.
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    processor = make_processor(vocab, return_attention_mask=True)
    tok = processor.tokenizer
    settings = dict(SIZES[size], vocab_size=len(tok.get_vocab()), pad_token_id=tok.pad_token_id,
                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                    ctc_loss_reduction="mean", ctc_zero_infinity=True)
    settings.update(config_overrides)
    config = Wav2Vec2Config(**settings)
    processor.feature_extractor.return_attention_mask = config.feat_extract_norm == "layer"
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Wav2Vec2ForCTC(config)
    finally:
        torch.random.set_rng_state(state)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.sep == "\\" and ":" in name[:3]


def _unavailable(name: str, why: str) -> CheckpointUnavailable:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except Exception:  # pragma: no cover
        HF_HUB_CACHE = "~/.cache/huggingface/hub"
    hub_id = name if name and not _looks_like_path(name) and not os.path.exists(name) else "<hub id>"
    return CheckpointUnavailable(
        f"base checkpoint {name!r} is not available: {why}. Provide one of: "
        f"a local save_pretrained folder (config.json, weights, tokenizer/processor files) via "
        f"OPTIONS (base_model='/path/to/folder'); the model in the Hugging Face cache "
        f"({HF_HUB_CACHE}; e.g. run `hf download {hub_id}` where there is network, or point "
        f"HF_HOME at a copied cache); or the environment variable THANOSQL_BASE_MODEL="
        f"/path/to/folder to change the server's default base model")


def locate(base_model: str) -> tuple[str, bool]:
    """(source for from_pretrained, local_files_only) for a folder or hub id.

    Folders are returned as absolute paths, so a loader never reads a relative name against
    the working folder.  Hub ids are taken from the HF cache when present; the hub is only
    tried when not offline and reachable.  A name with a '..' part is a path, never a hub
    id.  Raises CheckpointUnavailable.  (Names from SQL are confined to the server's
    allowed folders by the planner's PathPolicy before they reach this function.)
    """
    if not isinstance(base_model, str) or not base_model.strip():
        raise _unavailable(str(base_model), "no base model named")
    name = os.path.expanduser(base_model.strip())
    if os.path.isdir(name):
        folder = os.path.abspath(name)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise _unavailable(base_model, f"folder {folder} has no config.json")
        return folder, True
    if _looks_like_path(base_model) or os.path.lexists(name) or ".." in name.split("/"):
        raise _unavailable(base_model, f"folder {os.path.abspath(name)} does not exist")
    try:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(name, "config.json")
    except Exception:
        cached = None
    if isinstance(cached, str) and os.path.isfile(cached):
        return name, True
    if _is_offline():
        raise _unavailable(base_model, "it is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        raise _unavailable(base_model, "it is not in the Hugging Face cache and the hub cannot be reached")
    return name, False


def load_base(base_model: str, **config_overrides):
    """(model, processor) for a folder or hub id; config_overrides go to from_pretrained."""
    from transformers import AutoModelForCTC, Wav2Vec2Processor

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a server's log is no place for tqdm bars
    source, local_only = locate(base_model)
    try:
        processor = Wav2Vec2Processor.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCTC.from_pretrained(source, local_files_only=local_only, **config_overrides)
    except (OSError, ValueError) as exc:
        raise _unavailable(base_model, f"loading failed ({exc})") from None
    return model, processor
