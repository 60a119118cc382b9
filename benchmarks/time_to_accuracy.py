"""Time to 85 % accuracy: the omnifuse quickstart vs the plain PyTorch loop a user would write instead.

Both sides train the quickstart's model on easy-vqa:train and are scored every ``--eval-every`` steps (of
each stage, and at each stage's end) on the same seeded ``--eval-n`` easy-vqa test questions (the
recipe's ``data.eval_seed``), greedy decoding up to the recipe's ``generation.max_new_tokens``, scored with
omnifuse's own VQA normalisation and exact match (``omnifuse.eval.metrics.vqa_score``).

* **omnifuse**: ``omnifuse train quickstart.yaml --set eval.every=K --set eval.during_limit=N`` in a
  subprocess, with everything the recipe and runtime defaults do (feature cache, balanced sampling, logits
  only at answer positions, ...); its metrics.jsonl gives the curve.
* **plain**: this file's :func:`plain_worker`, also a subprocess: the same pretrained MobileNetV2
  (built from the recipe's encoder spec by omnifuse's builder only because the packaged weights are in
  torchvision's layout; a user would load the same CNN the same way), frozen, in eval mode, run on every
  image at every step (no cache); the same pooled-MLP projector (pool the CNN grid to 1 token as the
  recipe's connector does — the mean, or the maximum per channel for ``pooling: max`` —
  Linear 1280→576 → GELU → Linear 576→576, as ``pool`` + ``mlp`` build it); SmolLM2-135M-Instruct
  with ``AutoModelForCausalLM.from_pretrained`` on the packaged asset folder; an ``<image>`` special token
  added to the tokenizer and the embeddings resized (what LLaVA does); prompts through the tokenizer's chat
  template with the recipe's empty system turn; labels = everything after the generation prompt; the
  embedding at the image token replaced by the projector output (``masked_scatter``, as
  ``LlavaForConditionalGeneration`` does; its class needs a transformers vision tower, which a CNN is not);
  the loss from ``labels=`` (logits at every position); PEFT LoRA in stage 2; AdamW (weight decay 0 as
  the recipe's stages), grad-norm clip 1.0, warm-up + cosine to 0.1 × lr (omnifuse's ``lr_factor``, through
  ``LambdaLR``: the schedule is not what is compared); batch 8; samples in plain seeded random order (no
  question-type balancing); evaluation with ``generate(inputs_embeds=...)``.

Two clocks per eval point, evaluation excluded from both: **steps** = the sum of the steps' own wall
times (data, encoder, forward, backward, update); **wall** = seconds since the side's process was launched,
minus all evaluation before that point — it also counts start-up, model loading, work between steps
(omnifuse builds its feature cache before a stage's first step) and checkpoints. The time to target is
the first eval point at or above ``--target``; the ratio is omnifuse / plain on each clock (the wall ratio
is the headline: it hides nothing). If the plain side never reaches the target, its total time is a lower
bound for its time to target, so the ratio is an upper bound ("≤"); ``--plain-max-steps`` lets the plain
side train on past the recipe (at the schedule's final lr) until it reaches the target or that many steps.

The two sides run one after the other (omnifuse first), each on ``--threads`` torch threads; the load
average before each side is printed. A PNG of both accuracy curves against training time goes to ``--out``.

    .venv/bin/python benchmarks/time_to_accuracy.py --eval-every 20 --eval-n 200 --threads 1 --out runs/tta
    .venv/bin/python benchmarks/time_to_accuracy.py --steps-scale 0.02 --eval-every 4 --eval-n 20   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "src" / "omnifuse" / "recipes" / "quickstart.yaml"
IMAGE_TOKEN = "<image>"
IGNORE = -100


# --------------------------------------------------------------------------- pure helpers (tested)
@dataclass(frozen=True)
class Point:
    step: int  # optimizer steps so far, over all stages
    steps_s: float  # sum of the steps' wall times so far
    wall_s: float  # seconds since launch, evaluation excluded
    accuracy: float


def scaled(steps: int, warmup: int, scale: float) -> tuple[int, int]:
    """A stage's steps and warm-up multiplied by ``scale`` (at least 1 step; warm-up below the steps)."""
    n = max(1, round(steps * scale))
    return n, min(round(warmup * scale), n - 1)


def curve(rows: Iterable[dict], launch: float) -> list[Point]:
    """Eval points of a metrics.jsonl (one row per optimizer step, ``seconds`` = its wall time, ``time`` =
    epoch seconds at its end, eval fields on the rows after which evaluation ran)."""
    points, steps_s, evals, step = [], 0.0, 0.0, 0
    for row in rows:
        if "seconds" not in row:
            continue
        step += 1
        steps_s += row["seconds"]
        if "eval_accuracy" in row:
            points.append(Point(step, steps_s, row["time"] - launch - evals, row["eval_accuracy"]))
            evals += row["eval_seconds"]
    return points


def time_to_target(points: Sequence[Point], target: float, clock: str) -> float | None:
    """Training seconds (``clock``: steps_s or wall_s) at the first eval point reaching ``target``."""
    return next((getattr(p, clock) for p in points if p.accuracy >= target), None)


def ratio_text(ours: Sequence[Point], plain: Sequence[Point], target: float, clock: str) -> str:
    """omnifuse / plain time to target, honest about a side that never got there."""
    a, b = time_to_target(ours, target, clock), time_to_target(plain, target, clock)
    if not ours or not plain:
        return "no eval points"
    if a is not None and b is not None:
        return f"{a / b:.3f}"
    if a is not None:  # plain ran out before the target: its time to target is more than its total
        return f"≤ {a / getattr(plain[-1], clock):.3f} (plain did not reach the target: an upper bound)"
    if b is not None:
        return f"≥ {getattr(ours[-1], clock) / b:.3f} (omnifuse did not reach the target: a lower bound)"
    return "undefined (neither side reached the target)"


# --------------------------------------------------------------------------- the plain side
def plain_model(recipe, llm_name: str):
    """The CNN, the projector, the LLM and tokenizer, built the way a user would (see the module doc)."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omnifuse.assets import AssetKind, resolve
    from omnifuse.models.builders import build_encoder

    encoder = build_encoder(recipe.model.encoders["image"]).eval().requires_grad_(False)
    path = resolve(llm_name, AssetKind.LLM, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    llm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    llm.resize_token_embeddings(len(tokenizer))
    width = llm.get_input_embeddings().embedding_dim
    pooling = recipe.model.connectors["image"].pooling
    if pooling not in ("avg", "max"):
        raise SystemExit(
            f"the plain side pools by mean or max; the recipe's connector has pooling {pooling!r}"
        )

    class Pool(nn.Module):  # [B, h·w, C] → [B, 1, C]: one token per image
        def forward(self, grid):
            return grid.amax(dim=1, keepdim=True) if pooling == "max" else grid.mean(dim=1, keepdim=True)

    projector = nn.Sequential(Pool(), nn.Linear(1280, width), nn.GELU(), nn.Linear(width, width))
    return encoder, projector, llm, tokenizer


class PlainInputs:
    """ChatML text with one ``<image>`` token; labels mask everything up to the answer."""

    def __init__(self, tokenizer, encoder, system_prompt: str | None) -> None:
        self.tok, self.encoder, self.system = tokenizer, encoder, system_prompt
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _chat(self, messages) -> list[dict]:
        out = [] if self.system is None else [{"role": "system", "content": self.system}]
        for m in messages:
            text = "".join(p.text if hasattr(p, "text") else IMAGE_TOKEN for p in m.parts)
            out.append({"role": m.role, "content": text})
        return out

    def _ids(self, messages, generation: bool) -> list[int]:
        text = self.tok.apply_chat_template(
            self._chat(messages), tokenize=False, add_generation_prompt=generation
        )
        return self.tok(text, add_special_tokens=False).input_ids

    def pixels(self, sample):
        from PIL import Image

        src = sample.images()[0]
        with Image.open(src) if isinstance(src, Path | str) else src.copy() as img:
            return self.encoder.preprocess(img.convert("RGB"))

    def batch(self, samples, generation: bool) -> dict:
        import torch

        rows = []
        for s in samples:
            prompt = self._ids(s.prompt(), True)
            full = prompt if generation else self._ids(s.messages, False)
            rows.append((full, [IGNORE] * len(prompt) + full[len(prompt) :]))
        width = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id)
        labels = torch.full((len(rows), width), IGNORE)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, (i, lab) in enumerate(rows):
            sl = slice(width - len(i), width) if generation else slice(0, len(i))  # left pad to generate
            ids[b, sl], labels[b, sl], mask[b, sl] = torch.tensor(i), torch.tensor(lab), 1
        pixels = torch.stack([self.pixels(s) for s in samples])
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels}


def embed(encoder, projector, llm, image_id: int, batch: dict):
    """Input embeddings with the pooled, projected CNN features at the image token."""
    import torch

    with torch.no_grad():
        grid = encoder(batch["pixel_values"])  # [B, h·w, 1280], frozen
    feats = projector(grid)  # 1 token per image
    embeds = llm.get_input_embeddings()(batch["input_ids"])
    where = (batch["input_ids"] == image_id).unsqueeze(-1).expand_as(embeds)
    return embeds.masked_scatter(where, feats.to(embeds.dtype))


def plain_evaluate(parts, inputs: PlainInputs, samples, max_new_tokens: int, batch_size: int) -> float:
    import torch

    from omnifuse.eval.metrics import vqa_score
    from omnifuse.eval.vqa import reference_answers

    encoder, projector, llm = parts
    stops = sorted({inputs.tok.eos_token_id, inputs.tok.convert_tokens_to_ids("<|im_end|>")})
    llm.eval()
    scores = []
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            batch = inputs.batch(chunk, generation=True)
            out = llm.generate(
                inputs_embeds=embed(encoder, projector, llm, inputs.image_id, batch),
                attention_mask=batch["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=inputs.pad_id,
            )
            answers = inputs.tok.batch_decode(out, skip_special_tokens=True)
            scores += [
                vqa_score(a.strip(), reference_answers(s)) for a, s in zip(answers, chunk, strict=True)
            ]
    llm.train()
    return sum(scores) / len(scores)


def plain_stages(recipe, scale: float, max_steps: int | None) -> list[dict]:
    """Each stage's steps, warm-up, lrs and whether the LLM gets LoRA; extra steps (``max_steps`` over the
    recipe's total) go to the last stage, at its schedule's final lr, only until the target is reached."""
    stages = []
    for st in recipe.stages:
        steps, warmup = scaled(st.steps, st.warmup, scale)
        stages.append({
            "name": st.name, "steps": steps, "warmup": warmup, "lr": dict(st.lr), "lora": st.trainable.get("llm") == "lora",
            "min_lr_ratio": st.min_lr_ratio, "max_grad_norm": st.max_grad_norm, "batch_size": st.batch_size, "extra": 0,
        })  # fmt: skip
    total = sum(s["steps"] for s in stages)
    if max_steps is not None and max_steps > total:
        stages[-1]["extra"] = max_steps - total
    return stages


class Order:
    """Plain seeded random order over the training set, reshuffled every epoch."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.rng, self.perm, self.pos = n, random.Random(seed), [], 0

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == len(self.perm):
                self.perm, self.pos = self.rng.sample(range(self.n), self.n), 0
            out.append(self.perm[self.pos])
            self.pos += 1
        return out


def plain_step(parts, inputs, optimizer, scheduler, trainable, samples, max_grad_norm) -> float:
    import torch

    encoder, projector, llm = parts
    batch = inputs.batch(samples, generation=False)
    embeds = embed(encoder, projector, llm, inputs.image_id, batch)
    loss = llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    loss.backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def plain_optimizer(parts: list, st: dict, lora):
    """Stage ``st``'s AdamW over the projector (and LoRA on the LLM, wrapped by PEFT on first use), its
    warm-up + cosine schedule (omnifuse's ``lr_factor``) and the trainable parameters."""
    import torch
    from peft import LoraConfig, get_peft_model

    from omnifuse.training.loop import lr_factor

    if st["lora"] and not hasattr(parts[2], "peft_config"):
        cfg = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
        )
        parts[2] = get_peft_model(parts[2], cfg)
    groups = [{"params": list(parts[1].parameters()), "lr": st["lr"]["connectors"]}]
    if st["lora"]:
        groups.append(
            {"params": [p for p in parts[2].parameters() if p.requires_grad], "lr": st["lr"]["llm"]}
        )
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_factor(i, st["steps"], st["warmup"], st["min_lr_ratio"])
    )
    return optimizer, schedule, [p for g in groups for p in g["params"]]


def plain_stage(
    args, recipe, si: int, st: dict, parts: list, inputs, data: tuple, log, reached: bool
) -> bool:
    """Train one stage, a metrics row per step (eval fields where it evaluated); whether the target is
    reached. Extra steps (``--plain-max-steps``) run only until it is."""
    train, evals = data
    optimizer, schedule, trainable = plain_optimizer(parts, st, recipe.lora)
    order = Order(len(train), recipe.seed + si)
    last = st["steps"] + st["extra"]
    for step in range(1, last + 1):
        if step > st["steps"] and reached:
            break
        t0 = time.perf_counter()
        chunk = [train[i] for i in order.take(st["batch_size"])]
        loss = plain_step(parts, inputs, optimizer, schedule, trainable, chunk, st["max_grad_norm"])
        row = {"stage": st["name"], "step": step, "loss": round(loss, 6), "seconds": round(time.perf_counter() - t0, 4), "time": round(time.time(), 3)}  # fmt: skip
        if step % args.eval_every == 0 or step in (st["steps"], last):
            t1 = time.perf_counter()
            acc = plain_evaluate(
                parts, inputs, evals, recipe.generation.max_new_tokens, recipe.eval.batch_size
            )
            row |= {"eval_accuracy": round(acc, 6), "eval_n": len(evals), "eval_seconds": round(time.perf_counter() - t1, 3)}  # fmt: skip
            reached = reached or acc >= args.target
            print(
                f"plain {st['name']} step {step}: eval accuracy {100 * acc:.1f} %",
                file=sys.stderr,
                flush=True,
            )
        log.write(json.dumps(row) + "\n")
        log.flush()
    return reached


def plain_worker(args) -> None:
    """Train and evaluate the plain side, one metrics row per step into ``args.plain_worker``."""
    import torch
    from transformers.utils import logging as hf_logging

    from omnifuse.data.sample import select_subset
    from omnifuse.data.sources import load_data
    from omnifuse.recipe import load_recipe

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    torch.manual_seed(recipe.seed)
    encoder, projector, llm, tok = plain_model(recipe, recipe.model.llm.name)
    inputs = PlainInputs(tok, encoder, recipe.model.llm.system_prompt)
    data = (
        load_data(recipe.data.train),
        select_subset(load_data(recipe.data.eval), args.eval_n, recipe.data.eval_seed),
    )
    llm.requires_grad_(False)
    llm.train()
    parts, reached = [encoder, projector, llm], False
    with open(args.plain_worker, "w") as log:
        for si, st in enumerate(plain_stages(recipe, args.steps_scale, args.plain_max_steps)):
            reached = plain_stage(args, recipe, si, st, parts, inputs, data, log, reached)


# --------------------------------------------------------------------------- running both sides
def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def launch(cmd: list[str], threads: int, log: Path) -> float:
    """Run a side to completion; its launch time (epoch seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print(f"  load average before: {os.getloadavg()[0]:.2f}; log: {log}", flush=True)
    start = time.time()
    with log.open("w") as f:
        done = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        sys.exit(f"{cmd[1:4]} failed (exit {done.returncode}); see {log}")
    return start


def run_omnifuse(args, out: Path) -> list[Point]:
    from omnifuse.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    sets = [
        f"eval.every={args.eval_every}",
        f"eval.during_limit={args.eval_n}",
        f"runtime.threads={args.threads}",
    ]
    for i, st in enumerate(recipe.stages):
        steps, warmup = scaled(st.steps, st.warmup, args.steps_scale)
        sets += [f"stages.{i}.steps={steps}", f"stages.{i}.warmup={warmup}"]
    run = out / "omnifuse-run"
    cmd = [sys.executable, "-m", "omnifuse", "train", str(args.recipe), "--out", str(run), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    print(f"omnifuse: {' '.join(cmd[1:])}", flush=True)
    start = launch(cmd, args.threads, out / "omnifuse.log")
    return curve(read_rows(run / "metrics.jsonl"), start)


def run_plain(args, out: Path) -> list[Point]:
    metrics = out / "plain-metrics.jsonl"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--plain-worker", str(metrics), "--recipe", str(args.recipe),
           "--steps-scale", str(args.steps_scale), "--eval-every", str(args.eval_every), "--eval-n", str(args.eval_n),
           "--threads", str(args.threads), "--target", str(args.target)]  # fmt: skip
    if args.plain_max_steps:
        cmd += ["--plain-max-steps", str(args.plain_max_steps)]
    print(f"plain: {' '.join(cmd[1:])}", flush=True)
    start = launch(cmd, args.threads, out / "plain.log")
    return curve(read_rows(metrics), start)


def report(sides: dict[str, list[Point]], target: float, out: Path) -> None:
    for name, points in sides.items():
        print(f"\n{name}: step, training s (steps), training s (wall), accuracy")
        for p in points:
            print(f"  {p.step:5d} {p.steps_s:9.1f} {p.wall_s:9.1f} {100 * p.accuracy:6.1f} %")
    print(f"\ntime to {100 * target:.1f} %:")
    for clock in ("wall_s", "steps_s"):
        for name, points in sides.items():
            t = time_to_target(points, target, clock)
            last = getattr(points[-1], clock) if points else 0.0
            print(
                f"  {name:8s} {clock[:-2]:5s}: "
                + (f"{t:.1f} s" if t is not None else f"not reached within {last:.1f} s")
            )
        print(
            f"  ratio omnifuse / plain ({clock[:-2]}): {ratio_text(sides['omnifuse'], sides['plain'], target, clock)}"
        )
    plot(sides, target, out / "time_to_accuracy.png")


def plot(sides: dict[str, list[Point]], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in sides.items():
        ax.plot([p.wall_s for p in points], [100 * p.accuracy for p in points], marker="o", ms=3, label=name)
    ax.axhline(100 * target, color="gray", ls="--", lw=1, label=f"target {100 * target:.0f} %")
    ax.set_xlabel("training wall time, s (since launch, evaluation excluded)")
    ax.set_ylabel("easy-vqa accuracy, % (seeded eval subset)")
    ax.set_title("Time to accuracy: omnifuse quickstart vs a plain PyTorch loop")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def parse(argv: Sequence[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=RECIPE)
    ap.add_argument(
        "--out", type=Path, default=Path("runs/time-to-accuracy"), help="run folders, logs and the plot"
    )
    ap.add_argument("--target", type=float, default=0.85, help="accuracy to reach (0–1)")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's steps and warm-up")
    ap.add_argument(
        "--eval-every", type=int, default=20, help="evaluate every K steps of each stage (and at its end)"
    )
    ap.add_argument("--eval-n", type=int, default=200, help="seeded easy-vqa test questions per evaluation")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads of both sides (omnifuse: runtime.threads)"
    )
    ap.add_argument("--plain-max-steps", type=int, default=None, help="total steps the plain side may train until it reaches the target (default: the recipe's)")  # fmt: skip
    ap.add_argument("--plain-worker", type=Path, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.plain_worker is not None:
        plain_worker(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs; {args.threads} torch thread(s) per side; target {100 * args.target:.1f} %")
    sides = {"omnifuse": run_omnifuse(args, args.out), "plain": run_plain(args, args.out)}
    report(sides, args.target, args.out)


if __name__ == "__main__":
    main()
