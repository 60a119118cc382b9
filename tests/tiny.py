"""Tiny random models, tokenizers and data for tests (fast, deterministic, no assets needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (  # SmolLM2-135M-Instruct's template, verbatim
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (  # Llama-3 style (header tokens, <|eot_id|>, content trimmed)
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "none": None}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]  # fmt: skip

CORPUS = [
    "what color is the shape? what shape is in the image? is there a red circle? does the image contain a triangle?",
    "red green blue black gray teal brown yellow circle rectangle triangle yes no",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face. User: Assistant: system user assistant",
    "the quick brown fox jumps over the lazy dog 0123456789 , . ! ? : ; ' \" ( ) [ ] hello world",
]


def make_tokenizer(template: str | None) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    if template == LLAMA3:
        eos, bos = "<|eot_id|>", "<|begin_of_text|>"
    elif template == CHATML:
        eos, bos = "<|im_end|>", None
    else:
        eos, bos = "<|endoftext|>", None
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, bos_token=bos, pad_token="<|endoftext|>"
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIALS})
    fast.chat_template = template
    return fast


def make_llm(vocab: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


class TinyVisionEncoder(nn.Module):
    """A 2-layer CNN with the encoder interface: 32×32 image → 4×4 grid of 16-d tokens
    (in general image_size/8 × image_size/8 tokens of ``output_dim``)."""

    def __init__(self, image_size: int = 32, output_dim: int = 16) -> None:
        super().__init__()
        self.image_size, self.output_dim = image_size, output_dim
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.Conv2d(8, output_dim, 2, stride=2)
        )

    def num_tokens(self) -> int:
        return (self.image_size // 8) ** 2

    def token_grid(self) -> tuple[int, int]:
        return self.image_size // 8, self.image_size // 8

    def input_region(self, width: int, height: int) -> tuple[float, float, float, float]:
        return 0.0, 0.0, float(width), float(height)  # the whole image, resized

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        arr = np.asarray(image.convert("RGB").resize(size), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values).flatten(2).transpose(1, 2)


COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def write_color_dataset(folder: Path, n: int = 24) -> Path:
    """A tiny VQA set: solid-colour images, 'what color is the shape?' → colour."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    lines = []
    names = sorted(COLORS)
    for i in range(n):
        color = names[i % len(names)]
        Image.new("RGB", (32, 32), COLORS[color]).save(folder / "img" / f"{i}.png")
        lines.append(
            {
                "id": f"s{i}",
                "messages": [
                    {"role": "user", "content": [{"type": "image", "image": f"img/{i}.png"},
                                                 {"type": "text", "text": "what color is the shape?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": color}]},
                ],
                "meta": {"question_type": "color"},
            }
        )  # fmt: skip
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def make_parts(tokenizer=None) -> dict:
    """Fresh, identical tiny parts for build_model/train/load_model (same seed → same weights)."""
    tokenizer = tokenizer or make_tokenizer(CHATML)
    torch.manual_seed(0)
    return {
        "llm": make_llm(len(tokenizer)),
        "tokenizer": tokenizer,
        "encoders": {"image": TinyVisionEncoder()},
    }


def tiny_recipe_dict(data: Path) -> dict:
    return {
        "name": "tiny",
        "seed": 0,
        "model": {
            "encoders": {"image": {"type": "mobilenet_v2", "weights": None}},
            "connectors": {"image": {"type": "mlp"}},
            "llm": {"name": "injected-by-tests", "system_prompt": ""},
        },
        "data": {"train": str(data), "eval": str(data), "eval_limit": None},
        "stages": [
            {"name": "align", "trainable": {"connectors": "full"}, "lr": {"connectors": 3e-3},
             "steps": 4, "batch_size": 4, "save_every": 2},
            {"name": "instruct", "trainable": {"connectors": "full", "llm": "lora"},
             "lr": {"connectors": 1e-3, "llm": 3e-3}, "steps": 4, "batch_size": 4, "grad_accum": 2, "warmup": 1,
             "save_every": 2},
        ],
        "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        "generation": {"max_new_tokens": 4},
        "eval": {"batch_size": 8},
        # A fixed thread count: `auto` follows the machine's load, and a count changed between two runs a
        # test compares bit for bit (resume = uninterrupted) changes float32 reduction order.
        "runtime": {"threads": 2},
    }  # fmt: skip


# ---------------------------------------------------------------------- tiny BERT for the Q-Former
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_bert_tokenizer():
    """A WordPiece tokenizer over the words of CORPUS (plus single characters as a fallback)."""
    from transformers import BertTokenizerFast

    words = sorted({w.strip(",.!?:;'\"()[]") for line in CORPUS for w in line.lower().split()} - {""})
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789,.!?:;'\"()[]"))
    vocab = (
        BERT_SPECIALS
        + chars
        + [f"##{c}" for c in chars if c.isalnum()]
        + [w for w in words if w not in chars]
    )
    return BertTokenizerFast(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True)


def make_bert_config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def write_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random tiny BertModel + tokenizer saved as an HF folder (stands in for MiniLM in tests)."""
    from transformers import BertModel

    tokenizer = make_bert_tokenizer()
    torch.manual_seed(seed)
    BertModel(make_bert_config(len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_qformer(in_dim: int = 16, out_dim: int = 32, num_queries: int = 4, seed: int = 0, **kwargs):
    """A randomly initialised tiny Q-Former connector (no files)."""
    from omnifuse.connectors.qformer import QFormerConnector

    tokenizer = make_bert_tokenizer()
    torch.manual_seed(seed)
    return QFormerConnector.from_bert_config(
        make_bert_config(len(tokenizer)), tokenizer, in_dim, out_dim, num_queries=num_queries, **kwargs
    )


# ---------------------------------------------------------------------- tiny Whisper encoder, spoken data
def make_whisper_encoder(seed: int = 0):
    """A random 2-layer Whisper encoder (80 mel bins, width 16) with the real front end's feature extractor."""
    from transformers import WhisperConfig

    from omnifuse.encoders.audio.whisper import random_whisper_encoder

    cfg = WhisperConfig(
        num_mel_bins=80,
        d_model=16,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=32,
        max_source_positions=1500,
        dropout=0.0,
    )
    return random_whisper_encoder(cfg, seed=seed)


def write_spoken_dataset(folder: Path, n: int = 12) -> Path:
    """A tiny spoken VQA set: colour images, and the question as a clip whose pitch names the answer
    (a tone at 300/600/900 Hz of 0.3–0.9 s, so clips differ in length); meta.transcript is the question."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    (folder / "audio").mkdir(exist_ok=True)
    names = sorted(COLORS)
    lines = []
    for i in range(n):
        color = names[i % len(names)]
        Image.new("RGB", (32, 32), COLORS[color]).save(folder / "img" / f"{i}.png")
        seconds = 0.3 + 0.1 * (i % 7)
        t = np.arange(int(16000 * seconds)) / 16000
        sf.write(folder / "audio" / f"{i}.wav", 0.3 * np.sin(2 * np.pi * 300 * (1 + i % 3) * t), 16000)
        lines.append(
            {
                "id": f"a{i}",
                "messages": [
                    {"role": "user", "content": [{"type": "image", "image": f"img/{i}.png"},
                                                 {"type": "audio", "audio": f"audio/{i}.wav"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": color}]},
                ],
                "meta": {"question_type": "color", "transcript": "what color is the shape?"},
            }
        )  # fmt: skip
    path = folder / "spoken.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


# ---------------------------------------------------------------------- tiny video parts and clips
DIRECTIONS = {"left": -1, "right": 1}


def write_video_dataset(folder: Path, n: int = 8, frames: int = 6, audio: bool = False) -> Path:
    """Tiny clips (32×32, 4 fps): a coloured square moving left or right, 'which way does it move?' →
    direction. Clip i has ``frames + i % 3`` frames (so fps sampling gives clips of different lengths);
    with ``audio`` every clip carries a tone."""
    from omnifuse.video import write_video

    (folder / "clips").mkdir(parents=True, exist_ok=True)
    names, lines = sorted(DIRECTIONS), []
    for i in range(n):
        way, color = names[i % 2], sorted(COLORS)[i % 3]
        count = frames + i % 3
        clip = np.full((count, 32, 32, 3), 230, dtype=np.uint8)
        for f in range(count):
            x = 4 + 3 * f if way == "right" else 24 - 3 * f
            clip[f, 12:20, max(x, 0) : max(x, 0) + 6] = COLORS[color]
        tone = None
        if audio:
            t = np.arange(int(16000 * count / 4)) / 16000
            tone = (0.3 * np.sin(2 * np.pi * 300 * (1 + i % 3) * t)).astype(np.float32)
        write_video(folder / "clips" / f"{i}.mp4", clip, 4, audio=tone)
        lines.append(
            {
                "id": f"v{i}",
                "messages": [
                    {"role": "user", "content": [{"type": "video", "video": f"clips/{i}.mp4"},
                                                 {"type": "text", "text": "which way does it move?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": way}]},
                ],
                "meta": {"question_type": "direction"},
            }
        )  # fmt: skip
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def video_recipe_dict(data: Path, connector: dict, sampling: dict | None = None, audio: bool = False) -> dict:
    raw = tiny_recipe_dict(data)
    raw["model"]["encoders"] = {
        "video": {"type": "frames", "image": {"type": "mobilenet_v2", "weights": None},
                  "sampling": sampling or {"uniform": 4}, "audio": audio},
    }  # fmt: skip
    raw["model"]["connectors"] = {"video": connector}
    if audio:
        raw["model"]["encoders"]["audio"] = {"type": "whisper", "weights": "injected-by-tests"}
        raw["model"]["connectors"]["audio"] = {"type": "stack", "factor": 4}
    return raw


def make_video_parts(tokenizer, max_frames: int = 4, audio: bool = False) -> dict:
    """Tiny parts for a video recipe: the tiny image encoder on every frame (+ a tiny Whisper encoder)."""
    from omnifuse.encoders.video import FrameEncoder

    parts = make_parts(tokenizer)
    parts["encoders"] = {"video": FrameEncoder(TinyVisionEncoder(), max_frames)}
    if audio:
        parts["encoders"]["audio"] = make_whisper_encoder()
    return parts
