"""omnifuse vs a plain transformers ``LlavaForConditionalGeneration``: training and generation tokens/s.

Both sides are the same model, built twice:

* **LLM**: the SmolLM2-135M-Instruct *config* (LlamaForCausalLM, hidden 576, 30 layers, vocab 49152),
  read from the converted asset folder, with **random weights** (``from_config`` under a fixed seed).
  Random rather than pretrained weights because a pretrained instruct model emits EOS when its (short)
  answer is done: omnifuse stops there, while the reference is forced on by ``min_new_tokens``, so the
  two could generate different numbers of tokens. With random weights EOS is
  (almost) never the argmax; the script checks that both generate the same number of tokens, and
  reports how many of the generated tokens agree.
  The one LLM is built once and its state dict is copied into LLaVA's ``model.language_model`` (the LM
  head is tied to the embeddings, as in SmolLM2), so the weights are identical.
* **Image token**: LLaVA needs an ``<image>`` token inside its vocabulary; as LLaVA does, it is added to
  the tokenizer as a special token and the text config's vocabulary grows by one (49153; the new
  embedding row is zero, and is overwritten by image features anyway). omnifuse puts its placeholder id
  just past the vocabulary and leaves the LLM's 49152 rows untouched.
* **Vision**: the same tiny random CLIP vision tower (hidden 256, 2 blocks, patch 32) in both, hidden
  state of layer -2, CLS dropped (LLaVA's ``vision_feature_select_strategy="default"``); the image size
  is chosen so that the tower yields ``--image-tokens`` patch tokens (4 → 64 px, 16 → 128 px, ...).
* **Projector**: LLaVA's ``LlavaMultiModalProjector`` vs omnifuse's ``mlp`` connector (Linear → GELU →
  Linear, hidden = LLM width), with copied weights.
* **Text**: easy-vqa-like questions about synthetic coloured shapes ("what color is the shape?" →
  "red"), rendered with the LLM's ChatML template and an empty system turn on both sides. The reference
  uses LLaVA's processor-free path: the ``<image>`` token in the text, expanded to N copies of
  ``image_token_id`` in ``input_ids``; labels mask everything up to the assistant answer. The script
  checks that both sides get identical token ids (up to the placeholder id), labels and pixels.

Measured, interleaved in one process (the order alternates every round, so drift on a shared machine
hits both sides alike):

* **training** (LLaVA stage 1: LLM and vision tower frozen, projector trained with AdamW, lr 1e-3,
  grad-norm clip 1.0, as omnifuse's trainer does): forward + backward + clip + optimizer step on
  pre-built batches (data preparation is not timed on either side). omnifuse computes the loss with
  ``MultimodalLM.forward`` (logits only at label positions); the reference passes ``labels`` to
  ``LlavaForConditionalGeneration.forward`` (logits everywhere, the plain way). tokens/s = non-pad
  tokens / step time; 1 warm-up step each, then the median of ``--steps`` steps each. The losses of
  the two sides are compared step by step (they should agree to ~1e-5: same weights, same data).
* **generation**: greedy decoding with a KV cache, ``--new-tokens`` new tokens per prompt, from sample
  prompts to token ids: omnifuse's ``Engine.generate_ids`` (which encodes the prompts itself) vs the
  reference's own prompt encoding + ``generate(do_sample=False, max_new_tokens=N, min_new_tokens=N)``.
  tokens/s = generated tokens / time; 1 short warm-up each, then the median of ``--repeats`` runs each.
  Time to first token: the same calls for one new token. Both are also reported per CPU second of the
  process, and "identical greedy outputs: yes/no" compares every generated token of the two sides.
  Generation runs before training, while both sides still have the initial (identical) weights;
  ``--no-training`` stops after it.
* **memory**: peak RSS above the RSS at the start of each timed call (a thread samples
  ``/proc/self/statm`` every 2 ms; ``malloc_trim`` runs before each call), i.e. the transient memory of a
  step, not the weights: both models live in the same process. Turn off with ``--no-memory``.

Ratios are omnifuse / reference: "ratio" divides the two medians, "paired" is the median of the
per-round ratios (each round runs both sides back to back). torch runs on one thread by default
(``--threads``): on a shared 2-core machine, two OpenMP threads competing with other processes made a
forward pass ~8x slower and far noisier than one thread.

Run: ``.venv/bin/python benchmarks/bench_llava.py`` (or ``make bench``); ``--quick`` for a smoke run.
Defaults: batch 8, 16 image tokens, 8 training steps and 5 generation runs per side, 32 new tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

from omnifuse.assets import AssetKind, resolve
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.encoders.vision.hf import from_config
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.builders import build_model
from omnifuse.models.stages import apply_stage
from omnifuse.processing.processor import IGNORE_INDEX
from omnifuse.recipe import parse_recipe

LLM_NAME = "smollm2-135m-instruct"
PATCH = 32
VISION = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 4}
MEAN = STD = (0.5, 0.5, 0.5)  # what omnifuse's from_config uses for a tower without a processor config
LR = 1e-3
MAX_GRAD_NORM = 1.0
IMAGE_TOKEN = "<image>"

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 180, 30),
    "blue": (30, 30, 220),
    "black": (10, 10, 10),
    "gray": (128, 128, 128),
    "teal": (0, 128, 128),
    "brown": (140, 80, 20),
    "yellow": (230, 210, 20),
}
SHAPES = ("circle", "rectangle", "triangle")


# --------------------------------------------------------------------------- data
def make_samples(folder: Path, n: int, image_px: int = 64) -> list[Sample]:
    """easy-vqa-like samples: one coloured shape per image, a question about its colour or shape."""
    rng = np.random.default_rng(0)
    colors = sorted(COLORS)
    samples = []
    for i in range(n):
        color, shape = colors[rng.integers(len(colors))], SHAPES[rng.integers(len(SHAPES))]
        img = Image.new("RGB", (image_px, image_px), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        a, b = image_px // 5, image_px - image_px // 5
        if shape == "circle":
            draw.ellipse((a, a, b, b), fill=COLORS[color])
        elif shape == "rectangle":
            draw.rectangle((a, a + 6, b, b - 6), fill=COLORS[color])
        else:
            draw.polygon(((a, b), (b, b), ((a + b) // 2, a)), fill=COLORS[color])
        path = folder / f"{i}.png"
        img.save(path)
        other = SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]
        question, answer = [
            ("what color is the shape?", color),
            ("what shape is in the image?", shape),
            (f"what is the {color} shape?", shape),
            (f"is there a {color} {shape} in the image?", "yes"),
            (f"does the image contain a {other}?", "no"),
        ][i % 5]
        user = Message("user", (ImagePart(path), TextPart(question)))
        samples.append(Sample(f"s{i}", (user, Message("assistant", (TextPart(answer),))), {}))
    return samples


# --------------------------------------------------------------------------- the reference's input path
class ReferenceInputs:
    """LLaVA's processor-free input path: the chat template with an ``<image>`` token, each one expanded
    to ``image_tokens`` copies of ``image_token_id``; labels = everything after the generation prompt."""

    def __init__(self, tokenizer, image_token_id: int, image_tokens: int, image_size: int) -> None:
        self.tok = tokenizer
        self.image_token_id = image_token_id
        self.image_tokens = image_tokens
        self.image_size = image_size
        self.pad_id = tokenizer.pad_token_id

    def _messages(self, messages: Sequence[Message]) -> list[dict]:
        out = [{"role": "system", "content": ""}]  # the same empty system turn as the omnifuse recipe
        for m in messages:
            text = "".join(IMAGE_TOKEN if isinstance(p, ImagePart) else p.text for p in m.parts)
            out.append({"role": m.role, "content": text})
        return out

    def _ids(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        text = self.tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        ids = []
        for t in self.tok(text, add_special_tokens=False).input_ids:
            ids.extend([t] * self.image_tokens if t == self.image_token_id else [t])
        return ids

    def pixels(self, path: Path) -> torch.Tensor:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
        arr = (np.asarray(img, dtype=np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def encode(self, sample: Sample, for_generation: bool) -> tuple[list[int], list[int], list[torch.Tensor]]:
        prompt = self._ids(self._messages(sample.prompt()), add_generation_prompt=True)
        if for_generation:
            ids, labels = prompt, [IGNORE_INDEX] * len(prompt)
        else:
            ids = self._ids(self._messages(sample.messages), add_generation_prompt=False)
            if ids[: len(prompt)] != prompt:
                raise RuntimeError("the chat template is not prefix-stable; cannot mask labels")
            labels = [IGNORE_INDEX] * len(prompt) + ids[len(prompt) :]
        return ids, labels, [self.pixels(p) for p in sample.images()]

    def batch(self, samples: Sequence[Sample], for_generation: bool) -> dict[str, torch.Tensor]:
        enc = [self.encode(s, for_generation) for s in samples]
        width = max(len(e[0]) for e in enc)
        ids = torch.full((len(enc), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(enc), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for b, (i, lab, _) in enumerate(enc):
            sl = slice(width - len(i), width) if for_generation else slice(0, len(i))  # left pad to generate
            ids[b, sl], labels[b, sl], mask[b, sl] = torch.tensor(i), torch.tensor(lab), 1
        out = {
            "input_ids": ids,
            "attention_mask": mask,
            "pixel_values": torch.stack([p for e in enc for p in e[2]]),
        }
        if not for_generation:
            out["labels"] = labels
        return out


# --------------------------------------------------------------------------- models
def build(image_tokens: int):
    side = math.isqrt(image_tokens)
    if side * side != image_tokens:
        raise SystemExit(f"--image-tokens must be a square number (a patch grid), got {image_tokens}")
    path = resolve(LLM_NAME, AssetKind.LLM, progress=False)
    config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)

    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(config).float().eval()
    vcfg = CLIPVisionConfig(**VISION, patch_size=PATCH, image_size=PATCH * side)
    torch.manual_seed(1)
    encoder = from_config(vcfg, layer=-2, drop_cls=True).eval()
    recipe = parse_recipe(
        {
            "name": "bench-llava",
            "seed": 0,
            "model": {
                "encoders": {"image": {"type": "hf", "name": "random-clip-vision", "layer": -2}},
                "connectors": {"image": {"type": "mlp"}},
                "llm": {"name": LLM_NAME, "system_prompt": ""},
            },
            "stages": [
                {"name": "align", "trainable": {"connectors": "full"}, "lr": {"connectors": LR}, "steps": 1}
            ],
        }
    )
    model, processor = build_model(
        recipe.model, llm=llm, tokenizer=tokenizer, encoders={"image": encoder}, progress=False
    )
    assert model.tokens_per_item("image") == image_tokens

    ref_tok = AutoTokenizer.from_pretrained(path)
    ref_tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_token_id = ref_tok.convert_tokens_to_ids(IMAGE_TOKEN)
    text_cfg = copy.deepcopy(config)
    text_cfg.vocab_size = len(ref_tok)  # 49152 + 1: LLaVA's image token lives inside the vocabulary
    lcfg = LlavaConfig(
        vision_config=vcfg,
        text_config=text_cfg,
        image_token_index=image_token_id,
        image_seq_length=image_tokens,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    ref = LlavaForConditionalGeneration(lcfg).float().eval()
    with torch.no_grad():
        lm = ref.model.language_model
        state = dict(llm.model.state_dict())
        emb = state.pop("embed_tokens.weight")
        result = lm.load_state_dict(state, strict=False)
        assert list(result.missing_keys) == ["embed_tokens.weight"] and not result.unexpected_keys, result
        lm.embed_tokens.weight.zero_()
        lm.embed_tokens.weight[: emb.shape[0]].copy_(emb)
        if ref.lm_head.weight.data_ptr() != lm.embed_tokens.weight.data_ptr():  # untied: copy the head too
            ref.lm_head.weight.zero_()
            ref.lm_head.weight[: emb.shape[0]].copy_(llm.lm_head.weight)
        ref.model.vision_tower.load_state_dict(encoder.tower.state_dict())
        conn, proj = model.connectors["image"], ref.model.multi_modal_projector
        proj.linear_1.load_state_dict(conn.fc1.state_dict())
        proj.linear_2.load_state_dict(conn.fc2.state_dict())
    inputs = ReferenceInputs(ref_tok, image_token_id, image_tokens, PATCH * side)
    return model, processor, recipe, ref, inputs


# --------------------------------------------------------------------------- measuring
_LIBC = None
with contextlib.suppress(OSError):
    _LIBC = ctypes.CDLL("libc.so.6")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory during a ``with`` block, above the RSS at its start (sampled)."""

    enabled = True

    def __enter__(self) -> PeakRSS:
        self.delta = 0
        if not self.enabled:
            return self
        if _LIBC is not None:
            _LIBC.malloc_trim(0)  # give freed heap back, so the peak is not hidden by memory kept from before
        self._f = open("/proc/self/statm", "rb")  # noqa: SIM115 - closed in __exit__
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        self._f.seek(0)
        return int(self._f.read().split()[1]) * _PAGE

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self._f.close()
        self.delta = self.peak - self.start


def timed(fn: Callable[[], object]) -> tuple[float, object, int]:
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
    return dt, result, mem.delta


def interleave(rounds: int, a: Callable[[int], None], b: Callable[[int], None]) -> None:
    """a, b in alternating order (ab, ba, ab, ...) so that slow drift on a shared machine hits both."""
    for r in range(rounds):
        for f in (a, b) if r % 2 == 0 else (b, a):
            f(r)


def process_seconds() -> float:
    """Seconds since this process started (imports included), from /proc; NaN where unavailable."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


# --------------------------------------------------------------------------- the benchmark
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per side (after 1 warm-up)")
    ap.add_argument("--repeats", type=int, default=5, help="timed generation runs per side (after 1 warm-up)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--image-tokens", type=int, default=16, help="image tokens per sample (a square number)")
    ap.add_argument("--new-tokens", type=int, default=32, help="generated tokens per prompt")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine, threads competing with other processes make "
        "timings several times slower and noisier); 0 = torch's default (all cores)",
    )
    ap.add_argument("--no-memory", action="store_true", help="do not sample RSS")
    ap.add_argument("--no-training", action="store_true", help="measure generation only")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (< 60 s)")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.batch_size, args.image_tokens, args.new_tokens = 2, 1, 2, 4, 8
    PeakRSS.enabled = not args.no_memory
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")

    model, processor, recipe, ref, ref_inputs = build(args.image_tokens)
    bs = args.batch_size
    with tempfile.TemporaryDirectory(prefix="bench-llava-") as tmp:
        samples = make_samples(Path(tmp), bs * (args.steps + 1 + 1))
        train_sets = [samples[i * bs : (i + 1) * bs] for i in range(args.steps + 1)]
        gen_prompts = samples[-bs:]

        # ---- identical inputs on both sides
        ours_batches, ref_batches = [], []
        for chunk in train_sets:
            ours = processor.collate([processor.encode(s) for s in chunk])
            theirs = ref_inputs.batch(chunk, for_generation=False)
            ph = model.placeholder_ids["image"]
            mapped = ours.input_ids.masked_fill(ours.input_ids == ph, ref_inputs.image_token_id)
            if not (
                torch.equal(mapped, theirs["input_ids"])
                and torch.equal(ours.labels, theirs["labels"])
                and torch.equal(ours.attention_mask, theirs["attention_mask"])
                and torch.allclose(ours.media["image"], theirs["pixel_values"])
            ):
                raise SystemExit("omnifuse and the reference got different inputs; the comparison is void")
            ours_batches.append(ours)
            ref_batches.append(theirs)
        n_tokens = [int(b.attention_mask.sum()) for b in ours_batches]
        n_labels = [int((b.labels != IGNORE_INDEX).sum()) for b in ours_batches]

        # ---- generation (first, while the weights are identical)
        engine = Engine(model, processor)
        model.eval()
        ref.eval()
        eos = processor.tokenizer.eos_token_id

        def ours_generate(n_new: int) -> list[list[int]]:
            return engine.generate_ids(gen_prompts, GenerationConfig(max_new_tokens=n_new))

        def ref_generate(n_new: int) -> list[list[int]]:
            batch = ref_inputs.batch(gen_prompts, for_generation=True)
            out = ref.generate(
                **batch,
                do_sample=False,
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                pad_token_id=ref_inputs.pad_id,
                eos_token_id=eos,
            )
            return out[:, batch["input_ids"].shape[1] :].tolist()

        gen = {"omnifuse": [], "reference": []}
        # The same runs per CPU second of this process: on a machine shared with other jobs, wall time
        # also counts the time the scheduler gave the core to them; CPU time mostly does not.
        gen_cpu = {"omnifuse": [], "reference": []}
        gen_out: dict[str, list[list[int]]] = {}
        warm = min(4, args.new_tokens)
        ours_generate(warm)
        ref_generate(warm)

        def run_gen(name: str, fn: Callable[[int], list[list[int]]]) -> Callable[[int], None]:
            def go(_r: int) -> None:
                cpu0 = time.process_time()
                dt, ids, mem = timed(lambda: fn(args.new_tokens))
                cpu = time.process_time() - cpu0
                gen_out[name] = ids
                gen[name].append((sum(len(x) for x in ids) / dt, mem))
                gen_cpu[name].append(sum(len(x) for x in ids) / cpu)

            return go

        interleave(args.repeats, run_gen("omnifuse", ours_generate), run_gen("reference", ref_generate))
        # Time to first token: the same call for one new token (prompt encoding, prefill, first token).
        ttft = {"omnifuse": [], "reference": []}
        ttft_cpu = {"omnifuse": [], "reference": []}

        def run_first(name: str, fn: Callable[[int], list[list[int]]]) -> Callable[[int], None]:
            def go(_r: int) -> None:
                t0, cpu0 = time.perf_counter(), time.process_time()
                fn(1)
                ttft[name].append(time.perf_counter() - t0)
                ttft_cpu[name].append(time.process_time() - cpu0)

            return go

        interleave(args.repeats, run_first("omnifuse", ours_generate), run_first("reference", ref_generate))
        identical = gen_out["omnifuse"] == gen_out["reference"]
        gen_counts = {k: sum(len(x) for x in v) for k, v in gen_out.items()}
        pairs = [
            (a, b)
            for ra, rb in zip(gen_out["omnifuse"], gen_out["reference"], strict=True)
            for a, b in zip(ra, rb, strict=False)
        ]
        agree = sum(a == b for a, b in pairs) / max(1, len(pairs))

        if args.no_training:
            report_generation(args, gen, ttft, gen_counts, agree, identical)
            print_cpu(gen_cpu, ttft_cpu)
            return 0

        # ---- training: LLaVA stage 1
        stage = recipe.stages[0]
        model.train()
        model.encoders.eval()
        groups = apply_stage(model, stage, recipe.lora)
        ours_params = [p for g in groups for p in g["params"]]
        ours_opt = torch.optim.AdamW(groups, weight_decay=0.0)
        ref.train()
        ref.requires_grad_(False)
        ref.model.multi_modal_projector.requires_grad_(True)
        ref_params = [p for p in ref.parameters() if p.requires_grad]
        ref_opt = torch.optim.AdamW(ref_params, lr=LR, weight_decay=0.0)
        assert sum(p.numel() for p in ours_params) == sum(p.numel() for p in ref_params)

        def ours_step(i: int) -> float:
            out = model(**ours_batches[i].model_inputs())
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(ours_params, MAX_GRAD_NORM)
            ours_opt.step()
            ours_opt.zero_grad(set_to_none=True)
            return out.loss.item()

        def ref_step(i: int) -> float:
            out = ref(**ref_batches[i])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(ref_params, MAX_GRAD_NORM)
            ref_opt.step()
            ref_opt.zero_grad(set_to_none=True)
            return out.loss.item()

        train = {"omnifuse": [], "reference": []}
        losses = {"omnifuse": [ours_step(0)], "reference": [ref_step(0)]}  # warm-up, batch 0

        def run_train(name: str, fn: Callable[[int], float]) -> Callable[[int], None]:
            def go(r: int) -> None:
                dt, loss, mem = timed(lambda: fn(r + 1))
                losses[name].append(loss)
                train[name].append((n_tokens[r + 1] / dt, mem))

            return go

        interleave(args.steps, run_train("omnifuse", ours_step), run_train("reference", ref_step))
    loss_diff = max(abs(a - b) for a, b in zip(losses["omnifuse"], losses["reference"], strict=True))

    # ---- report
    mib = 1024 * 1024
    rss_peak = __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1024
    print()
    print(
        f"setup: LLM {LLM_NAME} config (random weights; hidden {model.llm.config.hidden_size}, "
        f"{model.llm.config.num_hidden_layers} layers, vocab {model.llm.config.vocab_size}), "
        f"CLIP tower {VISION['hidden_size']}-d x{VISION['num_hidden_layers']} patch {PATCH}, "
        f"{args.image_tokens} image tokens/sample, batch {bs}"
    )
    print(
        f"       torch {torch.__version__}, {torch.get_num_threads()} threads; training {args.steps} steps each "
        f"(+1 warm-up), {med(n_tokens):.0f} non-pad tokens/batch ({med(n_labels):.0f} label tokens); "
        f"generation {args.repeats} runs each (+1 warm-up), {args.new_tokens} new tokens/prompt"
    )
    print(
        f"checks: identical input ids/labels/pixels: yes; loss max |omnifuse - reference| over "
        f"{len(losses['omnifuse'])} steps: {loss_diff:.2e}; generated tokens: omnifuse {gen_counts['omnifuse']}, "
        f"reference {gen_counts['reference']} ({'same' if len(set(gen_counts.values())) == 1 else 'DIFFERENT'}), "
        f"{100 * agree:.1f} % identical; identical greedy outputs: {'yes' if identical else 'no'}"
    )
    print()
    header = (
        f"{'':30s}{'omnifuse':>12s}{'reference':>12s}{'ratio':>8s}{'paired':>8s}   "
        "(medians; paired = median of per-round ratios; min-max over runs)"
    )
    print(header)
    print("-" * len(header))
    rows = [("training tokens/s", train), ("generation tokens/s", gen)]
    for label, data in rows:
        o, r = [x[0] for x in data["omnifuse"]], [x[0] for x in data["reference"]]
        paired = med([a / b for a, b in zip(o, r, strict=True)])
        print(
            f"{label:30s}{med(o):12.1f}{med(r):12.1f}{med(o) / med(r):8.2f}{paired:8.2f}   "
            f"omnifuse {min(o):.1f}-{max(o):.1f}, reference {min(r):.1f}-{max(r):.1f}"
        )
    if PeakRSS.enabled:
        for label, data in [("training step peak RSS +MiB", train), ("generation peak RSS +MiB", gen)]:
            o, r = [x[1] / mib for x in data["omnifuse"]], [x[1] / mib for x in data["reference"]]
            ratio = f"{med(o) / med(r):8.2f}" if med(r) > 0 else f"{'-':>8s}"
            print(f"{label:30s}{med(o):12.1f}{med(r):12.1f}{ratio}")
    print_ttft(ttft)
    print(f"process peak RSS (both models): {rss_peak:.0f} MiB; wall time {process_seconds():.0f} s")
    print()
    for label, data in rows:
        o, r = med([x[0] for x in data["omnifuse"]]), med([x[0] for x in data["reference"]])
        print(f"{label}: omnifuse {o:.1f}, reference {r:.1f}, ratio {o / r:.2f}")
    print_summary(ttft, identical)
    print_cpu(gen_cpu, ttft_cpu)
    return 0


def print_cpu(gen_cpu: dict[str, list[float]], ttft_cpu: dict[str, list[float]]) -> None:
    """Generation per CPU second of this process (less sensitive to other jobs on the machine)."""
    go, gr = med(gen_cpu["omnifuse"]), med(gen_cpu["reference"])
    to, tr = med(ttft_cpu["omnifuse"]), med(ttft_cpu["reference"])
    print(f"generation tokens per CPU-s: omnifuse {go:.1f}, reference {gr:.1f}, ratio {go / gr:.2f}")
    print(f"time to first token, CPU s: omnifuse {to:.3f}, reference {tr:.3f}, ratio {to / tr:.2f}")


def print_ttft(ttft: dict[str, list[float]]) -> None:
    o, r = ttft["omnifuse"], ttft["reference"]
    paired = med([a / b for a, b in zip(o, r, strict=True)])
    print(
        f"{'time to first token s':30s}{med(o):12.3f}{med(r):12.3f}{med(o) / med(r):8.2f}{paired:8.2f}   "
        f"omnifuse {min(o):.3f}-{max(o):.3f}, reference {min(r):.3f}-{max(r):.3f}"
    )


def print_summary(ttft: dict[str, list[float]], identical: bool) -> None:
    o, r = med(ttft["omnifuse"]), med(ttft["reference"])
    print(f"time to first token: omnifuse {o:.3f} s, reference {r:.3f} s, ratio {o / r:.2f}")
    print(f"identical greedy outputs: {'yes' if identical else 'no'}")


def report_generation(args, gen, ttft, gen_counts, agree: float, identical: bool) -> None:
    """The generation part alone (``--no-training``)."""
    print()
    print(
        f"generation only: batch {args.batch_size}, {args.image_tokens} image tokens/sample, {args.new_tokens} new "
        f"tokens/prompt, {args.repeats} runs each (+1 warm-up), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"checks: generated tokens: omnifuse {gen_counts['omnifuse']}, reference {gen_counts['reference']}, "
        f"{100 * agree:.1f} % identical; identical greedy outputs: {'yes' if identical else 'no'}"
    )
    print()
    print(f"{'':30s}{'omnifuse':>12s}{'reference':>12s}{'ratio':>8s}{'paired':>8s}")
    o, r = [x[0] for x in gen["omnifuse"]], [x[0] for x in gen["reference"]]
    paired = med([a / b for a, b in zip(o, r, strict=True)])
    print(
        f"{'generation tokens/s':30s}{med(o):12.1f}{med(r):12.1f}{med(o) / med(r):8.2f}{paired:8.2f}   "
        f"omnifuse {min(o):.1f}-{max(o):.1f}, reference {min(r):.1f}-{max(r):.1f}"
    )
    print_ttft(ttft)
    print(f"wall time {process_seconds():.0f} s")
    print()
    print(f"generation tokens/s: omnifuse {med(o):.1f}, reference {med(r):.1f}, ratio {med(o) / med(r):.2f}")
    print_summary(ttft, identical)


if __name__ == "__main__":
    sys.exit(main())
