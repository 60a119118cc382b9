"""faster-whisper's CTranslate2 Whisper model → a Hugging Face ``WhisperForConditionalGeneration`` folder.

The packaged Whisper is a CTranslate2 ``model.bin`` (fp16) split in two halves. No library reads that
format except ctranslate2 itself (a native inference runtime, not a dependency here), so the file is
parsed with ``struct`` + numpy below. Layout, all little-endian::

    uint32 version, string spec name, uint32 spec revision, uint32 variable count,
    per variable: string name, uint8 rank, uint32 dims[rank], uint8 dtype, uint32 byte count, data,
    uint32 alias count, per alias: string alias, string variable
    (string = uint16 length including a trailing NUL, then the bytes;
     dtype 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16)

The halves are read in sequence as one stream, one variable at a time (no joined copy). The mapping into
transformers' names is strict: every CTranslate2 variable and alias must be used, and every parameter of
the Hugging Face model must be set, or the conversion fails naming what is left over.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omnifuse.errors import OmnifuseError

SUPPORTED_VERSIONS = (6,)  # the binary version whose layout (above) was checked on the packaged file
_DTYPES: dict[int, str] = {0: "<f4", 1: "<i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "bf16"}
_GELU = 3  # CTranslate2's ActivationType enum: RELU 0, GELUTanh 1, SWISH 2, GELU 3, ...
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


# ------------------------------------------------------------------ reading the binary format
class _ConcatenatedFiles(io.RawIOBase):
    """Several files read as one stream, in order (the halves of a split file)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__()
        self._files = [open(p, "rb") for p in paths]  # closed in close()
        self._index = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._index < len(self._files):
            n = self._files[self._index].readinto(buffer)
            if n:
                return n
            self._index += 1
        return 0

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


@dataclass
class CT2Model:
    """The content of a CTranslate2 model file: float variables as fp32 tensors, scalars as ints."""

    spec: str
    revision: int
    variables: dict[str, torch.Tensor | int]
    aliases: dict[str, str]  # alias name → variable name


def _read(f: io.BufferedReader, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise OmnifuseError(
            f"the CTranslate2 model file ends early (while reading {what}): the file or one of its parts is "
            "truncated; reinstall the package that ships it."
        )
    return data


def _unpack(f: io.BufferedReader, fmt: str, what: str) -> int:
    return struct.unpack(fmt, _read(f, struct.calcsize(fmt), what))[0]


def _string(f: io.BufferedReader, what: str) -> str:
    n = _unpack(f, "<H", what)
    return _read(f, n, what).rstrip(b"\0").decode("utf-8")


def _decode(data: bytes, dtype: int, dims: list[int], name: str) -> torch.Tensor | int:
    code = _DTYPES.get(dtype)
    if code is None:
        raise OmnifuseError(f"CTranslate2 variable {name!r} has unknown dtype code {dtype}")
    itemsize = 2 if code == "bf16" else np.dtype(code).itemsize
    if len(data) != int(np.prod(dims, dtype=np.int64)) * itemsize:
        raise OmnifuseError(f"CTranslate2 variable {name!r}: {len(data)} bytes do not fit shape {dims}")
    if code == "bf16":  # numpy has no bfloat16: its bits are the upper half of a float32
        arr = (np.frombuffer(data, "<u2").astype("<u4") << 16).view("<f4")
    else:
        arr = np.frombuffer(data, code)
    if not dims:
        return arr.item() if arr.dtype.kind == "f" else int(arr[0])
    if arr.dtype.kind != "f":
        raise OmnifuseError(
            f"CTranslate2 variable {name!r} is an integer tensor of shape {dims}, not weights"
        )
    return torch.from_numpy(arr.astype(np.float32).reshape(dims))  # astype copies: fp16 → fp32


def read_ct2(paths: Sequence[Path]) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` given as one or more consecutive parts."""
    with io.BufferedReader(_ConcatenatedFiles(paths), buffer_size=1 << 20) as f:
        version = _unpack(f, "<I", "the version")
        if version not in SUPPORTED_VERSIONS:
            raise OmnifuseError(
                f"CTranslate2 binary version {version} is not supported (this reader knows version(s) "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))}); convert the model with a matching ctranslate2."
            )
        spec = _string(f, "the spec name")
        revision = _unpack(f, "<I", "the spec revision")
        variables: dict[str, torch.Tensor | int] = {}
        for _ in range(_unpack(f, "<I", "the variable count")):
            name = _string(f, "a variable name")
            rank = _unpack(f, "<B", name)
            dims = [_unpack(f, "<I", name) for _ in range(rank)]
            dtype = _unpack(f, "<B", name)
            nbytes = _unpack(f, "<I", name)
            variables[name] = _decode(_read(f, nbytes, name), dtype, dims, name)
        aliases = {}
        for _ in range(_unpack(f, "<I", "the alias count")):
            alias = _string(f, "an alias")
            aliases[alias] = _string(f, "an alias target")
        if f.read(1):
            raise OmnifuseError(
                "the CTranslate2 model file has bytes after its last alias; it is not one model"
            )
    return CT2Model(spec, revision, variables, aliases)


# ------------------------------------------------------------------ mapping into transformers' names
class _Taken:
    """The CTranslate2 variables, with a record of which ones the mapping used."""

    def __init__(self, model: CT2Model) -> None:
        self.model = model
        self.used: set[str] = set()
        self.used_aliases: set[str] = set()

    def tensor(self, name: str) -> torch.Tensor:
        value = self._get(name)
        if not isinstance(value, torch.Tensor):
            raise OmnifuseError(f"CTranslate2 variable {name!r} is a scalar where weights were expected")
        return value

    def scalar(self, name: str) -> int:
        value = self._get(name)
        if isinstance(value, torch.Tensor):
            raise OmnifuseError(f"CTranslate2 variable {name!r} is a tensor where a scalar was expected")
        return int(value)

    def expect(self, name: str, value: int, meaning: str) -> None:
        """A setting that has a single Hugging Face equivalent: anything else cannot be converted."""
        got = self.scalar(name)
        if got != value:
            raise OmnifuseError(f"CTranslate2 {name} = {got}: only {value} ({meaning}) maps onto HF Whisper")

    def _get(self, name: str) -> torch.Tensor | int:
        if name not in self.model.variables:
            raise OmnifuseError(f"the CTranslate2 Whisper model lacks the variable {name!r}")
        self.used.add(name)
        return self.model.variables[name]

    def unused(self) -> list[str]:
        left = sorted(set(self.model.variables) - self.used)
        return left + [f"{a} (alias)" for a in sorted(set(self.model.aliases) - self.used_aliases)]


def _layer_count(model: CT2Model, stack: str) -> int:
    found = {int(m.group(2)) for n in model.variables if (m := _LAYER.match(n)) and m.group(1) == stack}
    if found != set(range(len(found))):
        raise OmnifuseError(f"CTranslate2 {stack} layers are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def _fused(taken: _Taken, prefix: str, hf: str, names: Sequence[str], out: dict[str, torch.Tensor]) -> None:
    """A fused linear layer (q,k,v or k,v stacked on the output axis) → separate HF projections. Whisper's
    k_proj has no bias: CTranslate2 stores zeros there, which are checked and dropped."""
    weights = taken.tensor(f"{prefix}/weight").chunk(len(names), dim=0)
    biases = taken.tensor(f"{prefix}/bias").chunk(len(names), dim=0)
    for proj, w, b in zip(names, weights, biases, strict=True):
        out[f"{hf}.{proj}.weight"] = w.contiguous()
        if proj == "k_proj":
            if torch.count_nonzero(b):
                raise OmnifuseError(f"CTranslate2 {prefix}/bias has a non-zero key bias; HF Whisper has none")
        else:
            out[f"{hf}.{proj}.bias"] = b.contiguous()


def _linear(taken: _Taken, prefix: str, hf: str, out: dict[str, torch.Tensor]) -> None:
    out[f"{hf}.weight"] = taken.tensor(f"{prefix}/weight")
    out[f"{hf}.bias"] = taken.tensor(f"{prefix}/bias")


def _norm(taken: _Taken, prefix: str, hf: str, out: dict[str, torch.Tensor]) -> None:
    out[f"{hf}.weight"] = taken.tensor(f"{prefix}/gamma")
    out[f"{hf}.bias"] = taken.tensor(f"{prefix}/beta")


def _layer(taken: _Taken, ct: str, hf: str, cross: bool, out: dict[str, torch.Tensor]) -> None:
    _fused(taken, f"{ct}/self_attention/linear_0", f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"), out)
    _linear(taken, f"{ct}/self_attention/linear_1", f"{hf}.self_attn.out_proj", out)
    _norm(taken, f"{ct}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm", out)
    if cross:
        _linear(taken, f"{ct}/attention/linear_0", f"{hf}.encoder_attn.q_proj", out)
        _fused(taken, f"{ct}/attention/linear_1", f"{hf}.encoder_attn", ("k_proj", "v_proj"), out)
        _linear(taken, f"{ct}/attention/linear_2", f"{hf}.encoder_attn.out_proj", out)
        _norm(taken, f"{ct}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm", out)
    _linear(taken, f"{ct}/ffn/linear_0", f"{hf}.fc1", out)
    _linear(taken, f"{ct}/ffn/linear_1", f"{hf}.fc2", out)
    _norm(taken, f"{ct}/ffn/layer_norm", f"{hf}.final_layer_norm", out)


def ct2_to_hf(model: CT2Model, token_ids: dict[str, int]):
    """CTranslate2 ``WhisperSpec`` → (``WhisperConfig``, state dict for ``WhisperForConditionalGeneration``).

    ``token_ids``: the tokenizer's ids of ``<|endoftext|>`` and ``<|startoftranscript|>``. Sizes come
    from the tensors themselves."""
    if model.spec != "WhisperSpec":
        raise OmnifuseError(f"the CTranslate2 model is a {model.spec!r}, not a WhisperSpec")
    taken = _Taken(model)
    _expect_fixed_settings(taken)
    state: dict[str, torch.Tensor] = {}
    n_enc, n_dec = _layer_count(model, "encoder"), _layer_count(model, "decoder")
    _encoder_state(taken, n_enc, state)
    tied = _decoder_state(taken, model, n_dec, state)
    config = _whisper_config(taken, state, n_enc, n_dec, tied, token_ids)
    unused = taken.unused()
    if unused:
        raise OmnifuseError(
            f"{len(unused)} CTranslate2 variable(s) have no place in HF Whisper: {', '.join(unused[:8])}"
            f"{' …' if len(unused) > 8 else ''}"
        )
    _check_filled(config, state, tied)
    return config, state


def _expect_fixed_settings(taken: _Taken) -> None:
    """Settings of CTranslate2's decoder that HF Whisper has fixed: checked, they carry no weights."""
    taken.expect("decoder/activation", _GELU, "GELU")
    taken.expect("decoder/pre_norm", 1, "pre-norm layers")
    taken.expect("decoder/alibi", 0, "no ALiBi")
    taken.expect("decoder/scale_embeddings", 0, "unscaled embeddings")
    taken.expect("decoder/start_from_zero_embedding", 0, "no zero start embedding")
    # Attention-output options for CTranslate2's alignment API, at their defaults (no heads chosen);
    # Whisper's alignment heads come from config.json instead.
    taken.expect("decoder/alignment_heads", 1, "default")
    taken.expect("decoder/alignment_layer", -1, "default, last layer")


def _encoder_state(taken: _Taken, n_enc: int, state: dict[str, torch.Tensor]) -> None:
    state["model.encoder.conv1.weight"] = taken.tensor("encoder/conv1/weight")
    state["model.encoder.conv1.bias"] = taken.tensor("encoder/conv1/bias")
    _linear(taken, "encoder/conv2", "model.encoder.conv2", state)
    state["model.encoder.embed_positions.weight"] = taken.tensor("encoder/position_encodings/encodings")
    for i in range(n_enc):
        _layer(taken, f"encoder/layer_{i}", f"model.encoder.layers.{i}", False, state)
    _norm(taken, "encoder/layer_norm", "model.encoder.layer_norm", state)


def _decoder_state(taken: _Taken, model: CT2Model, n_dec: int, state: dict[str, torch.Tensor]) -> bool:
    """The decoder's weights into ``state``; returns whether the output projection is tied to the
    embeddings (an alias in CTranslate2) rather than a variable of its own."""
    state["model.decoder.embed_tokens.weight"] = taken.tensor("decoder/embeddings/weight")
    state["model.decoder.embed_positions.weight"] = taken.tensor("decoder/position_encodings/encodings")
    for i in range(n_dec):
        _layer(taken, f"decoder/layer_{i}", f"model.decoder.layers.{i}", True, state)
    _norm(taken, "decoder/layer_norm", "model.decoder.layer_norm", state)
    projection = "decoder/projection/weight"
    tied = projection not in model.variables
    if tied:
        if model.aliases.get(projection) != "decoder/embeddings/weight":
            raise OmnifuseError(
                f"the CTranslate2 model has no {projection}, nor an alias of it to the embeddings"
            )
        taken.used_aliases.add(projection)
    else:
        state["proj_out.weight"] = taken.tensor(projection)
    return tied


def _whisper_config(taken: _Taken, state, n_enc: int, n_dec: int, tied: bool, token_ids: dict[str, int]):
    from transformers import WhisperConfig

    embed = state["model.decoder.embed_tokens.weight"]
    ffn = "layer_0/ffn/linear_0/weight"
    return WhisperConfig(
        vocab_size=embed.shape[0],
        num_mel_bins=state["model.encoder.conv1.weight"].shape[1],
        d_model=embed.shape[1],
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=taken.scalar("encoder/num_heads"),
        decoder_attention_heads=taken.scalar("decoder/num_heads"),
        encoder_ffn_dim=taken.tensor(f"encoder/{ffn}").shape[0],
        decoder_ffn_dim=taken.tensor(f"decoder/{ffn}").shape[0],
        max_source_positions=state["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=state["model.decoder.embed_positions.weight"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=tied,
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=token_ids["<|endoftext|>"],
        pad_token_id=token_ids["<|endoftext|>"],
        decoder_start_token_id=token_ids["<|startoftranscript|>"],
    )


def _check_filled(config, state: dict[str, torch.Tensor], tied: bool) -> None:
    """Every parameter of HF Whisper set, none unknown, each of its shape."""
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):  # names and shapes only, no memory
        expected = {k: v.shape for k, v in WhisperForConditionalGeneration(config).state_dict().items()}
    if tied:
        expected.pop("proj_out.weight")
    unset = sorted(set(expected) - set(state))
    extra_keys = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    if unset or extra_keys or wrong:
        details = "; ".join(
            f"{label}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
            for label, keys in (("left unset", unset), ("unknown", extra_keys), ("wrong shape", wrong))
            if keys
        )
        raise OmnifuseError(
            f"the CTranslate2 Whisper model does not fill HF Whisper's parameters ({details})"
        )


# ------------------------------------------------------------------ the Hugging Face folder
def _generation_config(config, tokenizer, settings: dict):
    """Whisper's generation settings as in the openai/whisper-* folders on the Hugging Face hub: the
    language and task tokens that ``generate(language=..., task=...)`` needs, suppressed tokens and
    alignment heads (from CTranslate2's ``config.json``)."""
    from transformers import GenerationConfig

    def tid(token: str) -> int:
        index = tokenizer.convert_tokens_to_ids(token)
        if index is None or index == tokenizer.unk_token_id:
            raise OmnifuseError(f"the Whisper tokenizer lacks the special token {token}")
        return int(index)

    lang_ids = settings.get("lang_ids", [])
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        suppress_tokens=settings.get("suppress_ids"),
        begin_suppress_tokens=settings.get("suppress_ids_begin"),
        alignment_heads=settings.get("alignment_heads"),
        is_multilingual=len(lang_ids) > 0,
        lang_to_id={tokenizer.convert_ids_to_tokens(int(i)): int(i) for i in lang_ids},
        task_to_id={"transcribe": tid("<|transcribe|>"), "translate": tid("<|translate|>")},
        no_timestamps_token_id=tid("<|notimestamps|>"),
        prev_sot_token_id=tid("<|startofprev|>"),
        return_timestamps=False,
    )


def write_hf_whisper(
    parts: Sequence[Path],
    tokenizer_file: Path,
    ct2_config: Path | None,
    folder: Path,
    step: Callable[[str], None] = lambda label: None,
) -> None:
    """Convert a CTranslate2 Whisper into ``folder``: fp32 ``model.safetensors``, ``config.json``,
    ``generation_config.json``, tokenizer files and ``preprocessor_config.json``. ``step(label)`` reports
    progress (four steps)."""
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    step("reading CTranslate2 model")
    model = read_ct2(parts)
    step("mapping tensors")
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_file), pad_token="<|endoftext|>")
    settings = json.loads(Path(ct2_config).read_text()) if ct2_config is not None else {}
    specials = ("<|endoftext|>", "<|startoftranscript|>")
    token_ids = dict(zip(specials, tokenizer.convert_tokens_to_ids(list(specials)), strict=True))
    config, state = ct2_to_hf(model, token_ids)
    del model
    # transformers' Whisper configs repeat these generation settings (its defaults are another vocabulary's)
    config.suppress_tokens = settings.get("suppress_ids")
    config.begin_suppress_tokens = settings.get("suppress_ids_begin")
    if len(tokenizer) > config.vocab_size:
        raise OmnifuseError(f"the tokenizer has {len(tokenizer)} tokens, the model only {config.vocab_size}")
    step("writing safetensors")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del state
    step("writing config and tokenizer")
    config.save_pretrained(folder)
    _generation_config(config, tokenizer, settings).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(folder)
