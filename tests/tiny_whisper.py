"""A tiny random Whisper for tests: config, tokenizer, and a CTranslate2 ``model.bin`` written from it.

The CTranslate2 writer here is an independent implementation of the format (names, fused q/k/v, fp16
data, aliases) that :mod:`omnifuse.assets.whisper` reads, so a round trip checks the reader and the
mapping against each other.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import WhisperConfig, WhisperForConditionalGeneration

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]  # fmt: skip
CORPUS = ["what color is the shape", "is there a red circle in the image", "he was not an ill disposed man"]
DTYPE_CODES = {np.float32: 0, np.int8: 1, np.int16: 2, np.int32: 3, np.float16: 4}


def _make_tokenizer() -> Tokenizer:
    """Byte-level BPE over a few words, then Whisper's special tokens after the text tokens, as in
    Whisper's vocabulary. ``<|notimestamps|>`` is the last token: transformers takes every id above it for a
    timestamp, and the tiny model has none."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=290, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 5, trainer)
    tok.add_special_tokens(SPECIALS)
    return tok


TOKENIZER = _make_tokenizer()
IDS = {t: TOKENIZER.token_to_id(t) for t in SPECIALS}  # special token → id


def write_tokenizer(path: Path) -> Path:
    TOKENIZER.save(str(path))
    return path


def tiny_config(num_mel_bins: int = 80) -> WhisperConfig:
    """Whisper's layout at toy width; 1500 source positions keep the 30 s / 3000-frame limit."""
    return WhisperConfig(
        vocab_size=TOKENIZER.get_vocab_size(),
        num_mel_bins=num_mel_bins,
        d_model=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=1500,
        max_target_positions=24,
        bos_token_id=IDS["<|endoftext|>"],
        eos_token_id=IDS["<|endoftext|>"],
        pad_token_id=IDS["<|endoftext|>"],
        decoder_start_token_id=IDS["<|startoftranscript|>"],
        tie_word_embeddings=True,
    )


def tiny_model(seed: int = 0) -> WhisperForConditionalGeneration:
    """Random weights, rounded to fp16 (what a CTranslate2 fp16 file can hold)."""
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(tiny_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def ct2_variables(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray | int]:
    """HF Whisper → CTranslate2 WhisperSpec variables (fp16 weights, int scalars)."""
    s = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    out: dict[str, np.ndarray | int] = {}

    def half(a):
        return np.ascontiguousarray(a, dtype=np.float16)

    def linear(ct, hf):
        out[f"{ct}/weight"], out[f"{ct}/bias"] = half(s[f"{hf}.weight"]), half(s[f"{hf}.bias"])

    def norm(ct, hf):
        out[f"{ct}/gamma"], out[f"{ct}/beta"] = half(s[f"{hf}.weight"]), half(s[f"{hf}.bias"])

    def fused(ct, hf, names):
        out[f"{ct}/weight"] = half(np.concatenate([s[f"{hf}.{n}.weight"] for n in names]))
        zero = np.zeros(cfg.d_model, np.float32)
        out[f"{ct}/bias"] = half(np.concatenate([s.get(f"{hf}.{n}.bias", zero) for n in names]))

    def layer(ct, hf, cross):
        fused(f"{ct}/self_attention/linear_0", f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"))
        linear(f"{ct}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
        norm(f"{ct}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        if cross:
            linear(f"{ct}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
            fused(f"{ct}/attention/linear_1", f"{hf}.encoder_attn", ("k_proj", "v_proj"))
            linear(f"{ct}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
            norm(f"{ct}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
        linear(f"{ct}/ffn/linear_0", f"{hf}.fc1")
        linear(f"{ct}/ffn/linear_1", f"{hf}.fc2")
        norm(f"{ct}/ffn/layer_norm", f"{hf}.final_layer_norm")

    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    out["encoder/position_encodings/encodings"] = half(s["model.encoder.embed_positions.weight"])
    for i in range(cfg.encoder_layers):
        layer(f"encoder/layer_{i}", f"model.encoder.layers.{i}", False)
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    out["encoder/num_heads"] = np.int16(cfg.encoder_attention_heads)
    out["decoder/embeddings/weight"] = half(s["model.decoder.embed_tokens.weight"])
    out["decoder/position_encodings/encodings"] = half(s["model.decoder.embed_positions.weight"])
    for i in range(cfg.decoder_layers):
        layer(f"decoder/layer_{i}", f"model.decoder.layers.{i}", True)
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    out["decoder/num_heads"] = np.int16(cfg.decoder_attention_heads)
    for name, value in (("activation", 3), ("alibi", 0), ("pre_norm", 1), ("scale_embeddings", 0),
                        ("start_from_zero_embedding", 0)):  # fmt: skip
        out[f"decoder/{name}"] = np.int8(value)
    out["decoder/alignment_heads"] = np.int16(1)
    out["decoder/alignment_layer"] = np.int16(-1)
    return out


def _string(text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def ct2_bytes(
    variables: dict, aliases: dict[str, str] | None = None, version: int = 6, spec: str = "WhisperSpec"
) -> bytes:
    """A CTranslate2 model file holding ``variables`` (name-sorted, as CTranslate2 writes them)."""
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"} if aliases is None else aliases
    chunks = [
        struct.pack("<I", version),
        _string(spec),
        struct.pack("<I", 3),
        struct.pack("<I", len(variables)),
    ]
    for name in sorted(variables):
        value = np.asarray(variables[name])
        chunks += [_string(name), struct.pack("<B", value.ndim)]
        chunks += [struct.pack("<I", d) for d in value.shape]
        data = value.tobytes()
        chunks += [struct.pack("<B", DTYPE_CODES[value.dtype.type]), struct.pack("<I", len(data)), data]
    chunks.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        chunks += [_string(alias), _string(target)]
    return b"".join(chunks)


def write_ct2_parts(data: bytes, folder: Path) -> list[Path]:
    """The file split into two halves, as the packaged model ships."""
    folder.mkdir(parents=True, exist_ok=True)
    cut = len(data) // 2 + 7  # not on a variable boundary
    paths = [folder / "model.bin.part1", folder / "model.bin.part2"]
    paths[0].write_bytes(data[:cut])
    paths[1].write_bytes(data[cut:])
    return paths


def write_ct2_config(path: Path) -> Path:
    """CTranslate2's ``config.json`` for the tiny model."""
    settings = {
        "alignment_heads": [[1, 0]],
        "lang_ids": [IDS["<|en|>"], IDS["<|de|>"]],
        "suppress_ids": [IDS["<|startoflm|>"]],
        "suppress_ids_begin": [IDS["<|endoftext|>"]],
    }
    path.write_text(json.dumps(settings))
    return path


def write_tiny_ct2(
    folder: Path, seed: int = 0
) -> tuple[WhisperForConditionalGeneration, list[Path], Path, Path]:
    """(model, model.bin parts, tokenizer.json, config.json) of a tiny packaged-style Whisper."""
    model = tiny_model(seed)
    parts = write_ct2_parts(ct2_bytes(ct2_variables(model)), folder)
    return model, parts, write_tokenizer(folder / "tokenizer.json"), write_ct2_config(folder / "config.json")
