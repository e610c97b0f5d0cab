"""CTranslate2 Whisper -> transformers ``WhisperForConditionalGeneration``, offline.

The packaged Whisper weights (``ml.whisper.PRETRAINED``) are CTranslate2 ``model.bin`` files;
fine-tuning needs a transformers checkpoint.  ``model.bin`` stores the same tensors by name
(``WhisperSpec``), with three differences from transformers' layout, undone here:

- self-attention Q, K and V are one fused ``linear_0`` ([3 d, d]; K's bias is zeros, as
  Whisper's ``k_proj`` has none), cross-attention K and V one fused ``linear_1`` ([2 d, d]);
- the output projection is an alias of the token embeddings (tied, as in transformers);
- tensors are float16 (widened to float32 here: a float16 -> float32 -> float16 trip is
  lossless, so converting back with ``TransformersConverter`` gives the same file's tensors).

No scale is folded into any weight (CTranslate2's converter copies q_proj as it is and
scales queries at run time, as transformers does).  The tokenizer is the folder's
``tokenizer.json`` (transformers' ``WhisperTokenizer`` reads it as it is) and the feature
extractor is Whisper's standard one with the model's number of mel bins, so nothing is
fetched from a model hub.

    >>> from ml.whisper_convert import read_ct2, to_transformers
    >>> model, tokenizer, extractor = to_transformers(ct2_folder)          # in memory
    >>> save_transformers(ct2_folder, "/tmp/whisper-tiny-en-hf")           # or on disk
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence

import numpy as np

from .errors import BadOptions

#: CTranslate2's DataType codes (include/ctranslate2/types.h) -> numpy.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
BFLOAT16 = 5

#: Whisper's fixed geometry: 30 s windows of 1500 encoder positions, 448 decoder positions.
MAX_SOURCE_POSITIONS = 1500
MAX_TARGET_POSITIONS = 448


def read_ct2(parts: str | Sequence[str]) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` (or of its parts, concatenated in order),
    aliases resolved, by name.  Only a Whisper spec is accepted."""
    paths = [parts] if isinstance(parts, (str, os.PathLike)) else list(parts)
    chunks = []
    for path in paths:
        with open(path, "rb") as f:
            chunks.append(f.read())
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    del chunks
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    def name() -> str:
        nonlocal pos
        (length,) = take("<H")
        text = data[pos:pos + length].rstrip(b"\0").decode("utf-8")
        pos += length
        return text

    try:
        (version,) = take("<I")
        spec = name() if version >= 2 else ""
        if spec != "WhisperSpec":
            raise BadOptions(f"{paths[0]} is not a CTranslate2 Whisper model (spec {spec or 'unknown'!r})")
        take("<I")  # spec revision
        (count,) = take("<I")
        out: dict[str, np.ndarray] = {}
        for _ in range(count):
            key = name()
            (rank,) = take("<B")
            dims = take("<" + "I" * rank) if rank else ()
            (dtype,) = take("<B")
            (nbytes,) = take("<I")
            raw = data[pos:pos + nbytes]
            pos += nbytes
            if dtype == BFLOAT16:  # the top half of a float32
                bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
                array = bits.view(np.float32)
            elif dtype in _DTYPES:
                array = np.frombuffer(raw, _DTYPES[dtype])
            else:
                raise BadOptions(f"{paths[0]}: variable {key} has an unsupported type code {dtype} "
                                 "(int8-quantised models cannot be fine-tuned; use a float16/float32 one)")
            out[key] = array.reshape(dims) if dims else array
        if pos < len(data):
            (aliases,) = take("<I")
            for _ in range(aliases):
                alias, target = name(), name()
                out[alias] = out[target]
    except struct.error:
        raise BadOptions(f"{paths[0]}: truncated CTranslate2 model file") from None
    return out


def _layers(variables: dict, side: str) -> int:
    return len({k.split("/")[1] for k in variables
                if k.startswith(f"{side}/layer_") and k.split("/")[1][len("layer_"):].isdigit()})


def _scalar(variables: dict, key: str, default: int) -> int:
    value = variables.get(key)
    return int(np.asarray(value).reshape(-1)[0]) if value is not None else default


def whisper_config(variables: dict, tokenizer_file: str, ct2_config: dict | None = None):
    """A ``WhisperConfig`` matching the tensors, with the special tokens of ``tokenizer_file``."""
    import tokenizers
    from transformers import WhisperConfig

    tok = tokenizers.Tokenizer.from_file(tokenizer_file)
    eot, sot = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|startoftranscript|>")
    if eot is None or sot is None:
        raise BadOptions(f"{tokenizer_file} is not a Whisper tokenizer (no <|endoftext|> / <|startoftranscript|>)")
    vocab, d_model = variables["decoder/embeddings/weight"].shape
    ct2_config = ct2_config or {}
    return WhisperConfig(
        vocab_size=int(vocab), num_mel_bins=int(variables["encoder/conv1/weight"].shape[1]), d_model=int(d_model),
        encoder_layers=_layers(variables, "encoder"), decoder_layers=_layers(variables, "decoder"),
        encoder_attention_heads=_scalar(variables, "encoder/num_heads", max(1, d_model // 64)),
        decoder_attention_heads=_scalar(variables, "decoder/num_heads", max(1, d_model // 64)),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or [220, eot]),
        tie_word_embeddings=True, use_cache=True,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )


def state_dict(variables: dict) -> dict:
    """transformers' ``WhisperForConditionalGeneration`` state dict from the CTranslate2 variables."""
    import torch

    sd: dict[str, torch.Tensor] = {}

    def put(key: str, array) -> None:
        sd[key] = torch.from_numpy(np.array(array, dtype=np.float32))

    def linear(prefix: str, src: str, bias: bool = True) -> None:
        put(f"{prefix}.weight", variables[f"{src}/weight"])
        if bias:
            put(f"{prefix}.bias", variables[f"{src}/bias"])

    def norm(prefix: str, src: str) -> None:
        put(f"{prefix}.weight", variables[f"{src}/gamma"])
        put(f"{prefix}.bias", variables[f"{src}/beta"])

    def fused(prefixes: Sequence[str | None], src: str) -> None:
        """Split a fused projection; a None prefix is dropped (a zero bias nobody has)."""
        weight, bias = variables[f"{src}/weight"], variables[f"{src}/bias"]
        parts = len(prefixes)
        for k, (w, b) in enumerate(zip(np.split(weight, parts, axis=0), np.split(bias, parts))):
            prefix = prefixes[k]
            put(f"{prefix}.weight", w)
            if not prefix.endswith("k_proj"):
                put(f"{prefix}.bias", b)

    enc, dec = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        linear(f"{enc}.{conv}", f"encoder/{conv}")
    put(f"{enc}.embed_positions.weight", variables["encoder/position_encodings/encodings"])
    for i in range(_layers(variables, "encoder")):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        fused([f"{dst}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")], f"{src}/self_attention/linear_0")
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
    norm(f"{enc}.layer_norm", "encoder/layer_norm")

    put(f"{dec}.embed_tokens.weight", variables["decoder/embeddings/weight"])
    put(f"{dec}.embed_positions.weight", variables["decoder/position_encodings/encodings"])
    for i in range(_layers(variables, "decoder")):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        fused([f"{dst}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")], f"{src}/self_attention/linear_0")
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        fused([f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"], f"{src}/attention/linear_1")
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
    norm(f"{dec}.layer_norm", "decoder/layer_norm")
    projection = variables.get("decoder/projection/weight")
    if projection is not None and projection is not variables["decoder/embeddings/weight"] \
            and not np.array_equal(projection, variables["decoder/embeddings/weight"]):
        raise BadOptions("this CTranslate2 Whisper model's output projection is not tied to its embeddings; "
                         "transformers' Whisper ties them")
    return sd


def tokenizer_from_file(tokenizer_file: str):
    """transformers' ``WhisperTokenizer`` over a Whisper ``tokenizer.json`` (no hub, no vocab.json)."""
    from transformers import WhisperTokenizer

    return WhisperTokenizer(tokenizer_file=tokenizer_file, pad_token="<|endoftext|>")  # as openai/whisper-*


def feature_extractor(num_mel_bins: int):
    """Whisper's standard log-mel extractor (16 kHz, 25 ms windows, 10 ms hop, 30 s chunks)."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=int(num_mel_bins), sampling_rate=16000, hop_length=160,
                                   chunk_length=30, n_fft=400, padding_value=0.0)


def generation_config(config, tokenizer, ct2_config: dict | None = None):
    """Whisper's generation settings (what ``generate`` and CTranslate2's converter read)."""
    from transformers import GenerationConfig

    ct2_config = ct2_config or {}
    vocab = tokenizer.get_vocab()
    lang_ids = [int(i) for i in (ct2_config.get("lang_ids") or [])]
    id_to_token = {i: t for t, i in vocab.items()}
    multilingual = config.vocab_size >= 51865
    gen = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id, max_length=MAX_TARGET_POSITIONS,
        suppress_tokens=list(config.suppress_tokens or []),
        begin_suppress_tokens=list(config.begin_suppress_tokens or []),
        no_timestamps_token_id=vocab.get("<|notimestamps|>"),
        prev_sot_token_id=vocab.get("<|startofprev|>"),
        max_initial_timestamp_index=50, return_timestamps=False, is_multilingual=multilingual,
    )
    if ct2_config.get("alignment_heads"):
        gen.alignment_heads = [list(map(int, h)) for h in ct2_config["alignment_heads"]]
    if lang_ids:
        gen.lang_to_id = {id_to_token[i]: i for i in lang_ids if i in id_to_token}
    if multilingual:
        gen.task_to_id = {"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]}
    return gen


def to_transformers(folder: str, model_bin: str | Sequence[str] | None = None):
    """(model, tokenizer, feature extractor) from a CTranslate2 Whisper folder.

    ``model_bin``: the weights when they are not ``folder/model.bin`` (the parts of a split
    file).  The model is float32, in eval mode.
    """
    import torch
    from transformers import WhisperForConditionalGeneration

    tokenizer_file = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(tokenizer_file):
        raise BadOptions(f"{folder}: a CTranslate2 Whisper folder needs tokenizer.json")
    ct2_config = {}
    if os.path.isfile(os.path.join(folder, "config.json")):
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            ct2_config = json.load(f)
    variables = read_ct2(model_bin or os.path.join(folder, "model.bin"))
    config = whisper_config(variables, tokenizer_file, ct2_config)
    weights = state_dict(variables)
    del variables
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        raise BadOptions(f"{folder}: the CTranslate2 tensors do not match transformers' Whisper "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    model.eval()
    tokenizer = tokenizer_from_file(tokenizer_file)
    model.generation_config = generation_config(config, tokenizer, ct2_config)
    return model, tokenizer, feature_extractor(config.num_mel_bins)


def save_transformers(folder: str, out_dir: str, model_bin: str | Sequence[str] | None = None) -> str:
    """Convert the CTranslate2 Whisper folder to a transformers checkpoint in ``out_dir``."""
    model, tokenizer, extractor = to_transformers(folder, model_bin)
    save_checkpoint(model, tokenizer, extractor, out_dir)
    return out_dir


def save_checkpoint(model, tokenizer, extractor, out_dir: str) -> None:
    """``save_pretrained`` of model, tokenizer (with tokenizer.json) and feature extractor."""
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    extractor.save_pretrained(out_dir)
