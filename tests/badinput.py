"""Generated bad inputs for the table-driven CLI test (tests/cli/test_bad_input.py).

Everything here writes small files: a tiny trained run's parts (a random Llama saved as an LLM folder, a
random Whisper folder, a spoken colour data set), and the ways a user's file can be wrong — images whose
header promises 900 M pixels, truncated PNG and WAV files, clips of one sample or at 1 Hz, text in UTF-16
without its byte-order mark or in Latin-1, JSON nested 100,000 levels deep, damaged run-directory files.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from transformers import WhisperFeatureExtractor, WhisperModel

from tiny import CHATML, make_llm, make_tokenizer, write_spoken_dataset
from tiny_whisper import tiny_config

DEEP = 100_000  # nesting that overflows any recursive parser


# ------------------------------------------------------------------ the tiny model's parts
def write_llm_folder(folder: Path) -> Path:
    tokenizer = make_tokenizer(CHATML)
    make_llm(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_whisper_folder(folder: Path) -> Path:
    torch.manual_seed(0)
    WhisperModel(tiny_config()).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def recipe_dict(llm: Path, whisper: Path, data: Path) -> dict:
    """Image (random MobileNetV2 at 32 px) and spoken question (tiny Whisper) into a tiny Llama."""
    return {
        "name": "tiny-bad-input",
        "seed": 0,
        "model": {
            "encoders": {
                "image": {"type": "mobilenet_v2", "weights": None, "image_size": 32, "crop": False},
                "audio": {"type": "whisper", "weights": str(whisper)},
            },
            "connectors": {
                "image": {"type": "pool", "grid": 1, "projector": "mlp"},
                "audio": {"type": "stack", "factor": 8},
            },
            "llm": {"name": str(llm), "system_prompt": ""},
        },
        "data": {"train": str(data), "eval": str(data), "eval_limit": 4},
        "stages": [
            {"name": "align", "trainable": {"connectors": "full", "llm": "lora"},
             "lr": {"connectors": 1e-3, "llm": 1e-3}, "steps": 2, "batch_size": 2, "save_every": 1},
        ],
        "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
        "generation": {"max_new_tokens": 2},
        "eval": {"batch_size": 4, "blind": False},
    }  # fmt: skip


def write_parts(root: Path) -> dict[str, Path]:
    """LLM folder, Whisper folder, data set and a valid recipe under ``root``."""
    parts = {
        "llm": write_llm_folder(root / "llm"),
        "whisper": write_whisper_folder(root / "whisper"),
        "data": write_spoken_dataset(root / "data", n=6),
    }
    parts["recipe"] = write_yaml(
        root / "recipe.yaml", recipe_dict(parts["llm"], parts["whisper"], parts["data"])
    )
    parts["image"] = parts["data"].parent / "img" / "0.png"
    parts["audio"] = parts["data"].parent / "audio" / "0.wav"
    return parts


def write_yaml(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


# ------------------------------------------------------------------ images
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A PNG of a few hundred bytes whose header declares ``width`` × ``height`` pixels (the data is one
    compressed row: decoding would need gigabytes before finding out it is short)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * (width + 1), 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )
    return path


def png_bytes(size: tuple[int, int] = (32, 32), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def truncated_png(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


IMAGE_CASES = {  # name → (file written by bad_images, a phrase the error must contain)
    "bomb-30000": ("bomb.png", "pixels"),
    "bomb-8000": ("bomb8k.png", "over the limit"),
    "bomb-wide": ("wide.png", "over the limit"),
    "truncated": ("truncated.png", "truncated.png"),
    "header-only": ("header-only.png", "header-only.png"),
    "text-file": ("text.png", "not a readable image"),
    "empty-file": ("empty.png", "empty.png"),
    "garbage-jpeg": ("garbage.jpg", "garbage.jpg"),
    "folder": ("folder.png", "is a folder"),
    "missing": ("nope.png", "does not exist"),
}


def bad_images(folder: Path) -> dict[str, tuple[Path, str]]:
    """Every file of IMAGE_CASES under ``folder``: name → (path, phrase)."""
    folder.mkdir(parents=True, exist_ok=True)
    bomb_png(folder / "bomb.png")
    bomb_png(folder / "bomb8k.png", 8000, 8000)
    bomb_png(folder / "wide.png", 2_000_000, 30)
    truncated_png(folder / "truncated.png")
    (folder / "header-only.png").write_bytes(png_bytes()[:40])
    (folder / "text.png").write_text("this is not an image\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (folder / "folder.png").mkdir(exist_ok=True)
    return {name: (folder / file, says) for name, (file, says) in IMAGE_CASES.items()}


# ------------------------------------------------------------------ audio
def _tone(n: int, rate: int) -> np.ndarray:
    """A cosine (its first sample is not zero: a one-sample clip is not silent)."""
    return (0.3 * np.cos(2 * np.pi * 440 * np.arange(n) / max(rate, 1))).astype(np.float32)


def truncated_wav(path: Path) -> Path:
    buf = io.BytesIO()
    sf.write(buf, _tone(16000, 16000), 16000, format="WAV", subtype="PCM_16")
    path.write_bytes(buf.getvalue()[:2000])  # the header still promises a second of samples
    return path


def header_only_wav(path: Path) -> Path:
    buf = io.BytesIO()
    sf.write(buf, _tone(16000, 16000), 16000, format="WAV", subtype="PCM_16")
    path.write_bytes(buf.getvalue()[:44])
    return path


CLIP_CASES = {  # name → (file written by bad_clips, a phrase the error must contain)
    "one-sample": ("one-sample.wav", "one-sample.wav"),
    "ten-samples": ("ten-samples.wav", "ten-samples.wav"),
    "rate-1hz": ("rate-1hz.wav", "rate-1hz.wav"),
    "rate-7hz": ("rate-7hz.wav", "rate-7hz.wav"),
    "truncated": ("truncated.wav", "truncated.wav"),
    "header-only": ("header-only.wav", "header-only.wav"),
    "silent": ("silent.wav", "silent"),
    "nan": ("nan.wav", "NaN"),
    "too-long": ("long.wav", "longer than"),
    "text-file": ("text.wav", "text.wav"),
    "empty-file": ("empty.wav", "empty"),
    "png-as-wav": ("image.wav", "image.wav"),
    "folder": ("folder.wav", "is a folder"),
    "missing": ("nope.wav", "does not exist"),
}


def bad_clips(folder: Path) -> dict[str, tuple[Path, str]]:
    """Every file of CLIP_CASES under ``folder``: name → (path, phrase)."""
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / "one-sample.wav", _tone(1, 16000), 16000)
    sf.write(folder / "ten-samples.wav", _tone(10, 16000), 16000)
    sf.write(folder / "rate-1hz.wav", _tone(8, 1), 1)
    sf.write(folder / "rate-7hz.wav", _tone(30, 7), 7)
    sf.write(folder / "silent.wav", np.zeros(16000, np.float32), 16000)
    sf.write(folder / "nan.wav", np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(folder / "long.wav", _tone(16000 * 31, 16000), 16000)
    truncated_wav(folder / "truncated.wav")
    header_only_wav(folder / "header-only.wav")
    (folder / "text.wav").write_text("RIFF? no, just text\n")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "image.wav").write_bytes(png_bytes())
    (folder / "folder.wav").mkdir(exist_ok=True)
    return {name: (folder / file, says) for name, (file, says) in CLIP_CASES.items()}


# ------------------------------------------------------------------ text encodings and nesting
def utf16_no_bom(text: str) -> bytes:
    return text.encode("utf-16-le")


def latin1(text: str) -> bytes:
    return text.encode("latin-1")


def deep_json(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def deep_yaml_flow(depth: int = 5000) -> str:
    return "[" * depth + "]" * depth


def deep_yaml_block(depth: int = 200) -> str:
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + f"{'  ' * depth}leaf\n"


# ------------------------------------------------------------------ weights
def nan_weights_like(good: Path, out: Path) -> Path:
    from safetensors.torch import load_file

    state = {k: torch.full_like(v, float("nan")) for k, v in load_file(str(good)).items()}
    save_file(state, str(out))
    return out


def half_file(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def json_line(obj) -> str:
    return json.dumps(obj)
