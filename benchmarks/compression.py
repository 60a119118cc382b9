"""Compression that saves time: accuracy against speed of FastV token pruning and of MLP channel pruning,
each against the unpruned model of the same run, in one process.

    # FastV on a run with several image tokens (the quickstart has one: nothing to prune there)
    .venv/bin/python benchmarks/compression.py fastv RUN [--keeps 0.75 0.5 0.25] [--layer 2] [--limit 200]
    # FastV's speed alone with more image tokens (untrained connector: no accuracy)
    .venv/bin/python benchmarks/compression.py fastv-speed --set model.encoders.image.image_size=256 model.connectors.image.grid=8
    # MLP channels of the LLM pruned to each share, without and with a short LoRA recovery stage
    .venv/bin/python benchmarks/compression.py mlp RUN [--keeps 0.75 0.5] [--recover-steps 30] [--limit 200]

Accuracy: exact match on a seeded subset of the recipe's eval data (``--limit`` questions), with the paired
95 % bootstrap CI of the difference against the unpruned model (omnifuse.eval.stats). Speed: the median over
``--repeats`` of answering one fixed batch of ``--batch`` questions (greedy, the recipe's answer length),
all settings timed in turn within each repeat, as a ratio to the unpruned model (> 1: faster). One torch
thread (a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from omnifuse.data.sample import Sample, select_subset
from omnifuse.data.sources import load_data
from omnifuse.eval.stats import paired_comparison
from omnifuse.eval.vqa import evaluate_vqa
from omnifuse.generation.engine import Engine, generation_config
from omnifuse.generation.fastv import TokenPruning
from omnifuse.models.prune import channel_scores, kept_channels, mlp_parameters, prune_mlp
from omnifuse.recipe import PruneSpec, StageSpec
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training.loop import Trainer


def score(engine: Engine, samples, cfg, batch_size: int):
    result = evaluate_vqa(engine, samples, cfg, batch_size, progress=False)
    return result.accuracy, [p["score"] for p in result.predictions]


def timings(engines: dict[str, Engine], prompts: list[Sample], cfg, repeats: int) -> dict[str, float]:
    """Median seconds per setting to answer ``prompts`` as one batch; settings alternate in each repeat."""
    for engine in engines.values():  # warm-up
        engine.generate(prompts, cfg)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.generate(prompts, cfg)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def table(rows: list[tuple], title: str) -> None:
    print(f"\n{title}")
    print("| setting | accuracy | Δ vs unpruned (95 % CI) | s per batch | speed ratio | extra |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def compare(
    name: str, acc: float, scores, ref_scores, seconds: float, ref_seconds: float, extra: str
) -> tuple:
    c = paired_comparison(ref_scores, scores)
    delta = f"{100 * c.difference:+.1f} [{100 * c.ci[0]:+.1f}, {100 * c.ci[1]:+.1f}]"
    return (name, f"{100 * acc:.1f} %", delta, f"{seconds:.2f}", f"{ref_seconds / seconds:.2f}×", extra)


def prompt_lengths(engine: Engine, prompts: list[Sample]) -> float:
    return statistics.mean(len(engine.processor.encode(p, for_generation=True).input_ids) for p in prompts)


def fastv(args) -> None:
    recipe, model, proc = load_model(RunDir(args.run), progress=False)
    samples, prompts, cfg = data(recipe, args)
    engines = {"unpruned": Engine(model, proc)}
    for keep in args.keeps:
        engines[f"FastV K={args.layer} keep {keep:g}"] = Engine(model, proc, TokenPruning(args.layer, keep))
    n_media = model.media_tokens_per_item("image")
    results = {name: score(e, samples, cfg, args.eval_batch) for name, e in engines.items()}
    seconds = timings(engines, prompts, cfg, args.repeats)
    ref_acc, ref_scores = results["unpruned"]
    length = prompt_lengths(engines["unpruned"], prompts)
    rows = []
    for (name, (acc, scores)), keep in zip(results.items(), [1.0, *args.keeps], strict=True):
        kept = -(-n_media * keep // 1) if name != "unpruned" else n_media
        extra = f"{int(kept)}/{n_media} image tokens; prompt {length:.0f} → {length - n_media + kept:.0f} tokens after layer {args.layer}"
        rows.append(compare(name, acc, scores, ref_scores, seconds[name], seconds["unpruned"], extra))
    table(
        rows,
        f"FastV on {args.run} ({len(samples)} questions; batch of {len(prompts)} timed, {args.repeats} repeats)",
    )


def fastv_speed(args) -> None:
    """Speed alone (no accuracy: an untrained connector) of FastV with more image tokens than a trained run
    here has: the quickstart recipe with ``--set`` overrides (e.g. a 256-pixel image pooled to 8 × 8)."""
    from omnifuse.models.builders import build_model
    from omnifuse.recipe import load_recipe
    from omnifuse.recipes import RECIPES_DIR

    recipe = load_recipe(RECIPES_DIR / "quickstart.yaml", args.set or [])
    model, proc = build_model(recipe.model, progress=False)
    model.eval()
    _, prompts, cfg = data(recipe, args)
    engines = {"unpruned": Engine(model, proc)}
    for keep in args.keeps:
        engines[f"FastV K={args.layer} keep {keep:g}"] = Engine(model, proc, TokenPruning(args.layer, keep))
    seconds = timings(engines, prompts, cfg, args.repeats)
    n_media, length = model.media_tokens_per_item("image"), prompt_lengths(engines["unpruned"], prompts)
    print(
        f"\nFastV speed, untrained {' '.join(args.set or [])} ({n_media} image tokens, prompt {length:.0f} tokens;"
    )
    print(
        f"batch of {len(prompts)}, {args.repeats} repeats)\n| setting | s per batch | speed ratio |\n|---|---|---|"
    )
    for name, t in seconds.items():
        print(f"| {name} | {t:.2f} | {seconds['unpruned'] / t:.2f}× |")


def recover(recipe, model, proc, keep: float, steps: int, folder: Path) -> None:
    """The recipe's way: a stage that prunes, then trains LoRA on the attention + the connector."""
    stage = StageSpec(
        name="recover", prune=PruneSpec(mlp_keep=keep, calibration=64), trainable={"connectors": "full", "llm": "lora"},
        lr={"connectors": 1e-3, "llm": 1e-3}, steps=steps, batch_size=8, warmup=min(5, steps - 1),
        balance_by="question_type", save_every=steps,
    )  # fmt: skip
    run = RunDir(folder)
    folder.mkdir(parents=True)
    Trainer(recipe.model_copy(update={"stages": (stage,)}), run, model, proc, progress=False).run_stages()
    model.eval()


def mlp(args) -> None:
    recipe, ref_model, proc = load_model(RunDir(args.run), progress=False)
    samples, prompts, cfg = data(recipe, args)
    engines = {"unpruned": Engine(ref_model, proc)}
    params = {"unpruned": (sum(p.numel() for p in ref_model.llm.parameters()), mlp_parameters(ref_model))}
    calibration = select_subset(load_data(recipe.data.train), 64, recipe.seed)
    tmp = Path(tempfile.mkdtemp(prefix="compression-"))
    for keep in args.keeps:
        _, model, proc_k = load_model(RunDir(args.run), progress=False)
        before = mlp_parameters(model)
        prune_mlp(model, kept_channels(channel_scores(model, proc_k, calibration), keep))
        engines[f"MLP keep {keep:g}, no recovery"] = Engine(model, proc_k)
        params[f"MLP keep {keep:g}, no recovery"] = (
            sum(p.numel() for p in model.llm.parameters()),
            before * keep,
        )
        if args.recover_steps:
            _, model, proc_k = load_model(RunDir(args.run), progress=False)
            recover(recipe, model, proc_k, keep, args.recover_steps, tmp / f"keep{keep:g}")
            name = f"MLP keep {keep:g} + {args.recover_steps} LoRA steps"
            engines[name] = Engine(model, proc_k)
            params[name] = (sum(p.numel() for p in model.llm.parameters()), before * keep)
    results = {name: score(e, samples, cfg, args.eval_batch) for name, e in engines.items()}
    seconds = timings(engines, prompts, cfg, args.repeats)
    ref_acc, ref_scores = results["unpruned"]
    rows = []
    for name, (acc, scores) in results.items():
        total, mlp_n = params[name]
        extra = f"LLM {total / 1e6:.1f} M parameters (MLPs {mlp_n / 1e6:.1f} M)"
        rows.append(compare(name, acc, scores, ref_scores, seconds[name], seconds["unpruned"], extra))
    table(
        rows,
        f"MLP channel pruning of {args.run} ({len(samples)} questions; batch of {len(prompts)} timed, {args.repeats} repeats)",
    )


def data(recipe, args):
    samples = select_subset(load_data(recipe.data.eval), args.limit, recipe.data.eval_seed)
    prompts = [Sample(s.id, s.prompt(), s.meta) for s in samples[: args.batch]]
    return samples, prompts, generation_config(recipe, greedy=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("method", choices=["fastv", "fastv-speed", "mlp"])
    parser.add_argument("run", type=Path, nargs="?", help="the trained run (fastv-speed: none)")
    parser.add_argument("--set", nargs="*", help="fastv-speed: quickstart recipe overrides")
    parser.add_argument("--keeps", type=float, nargs="+", default=None)
    parser.add_argument("--layer", type=int, default=2, help="fastv: decoder layers that see every token")
    parser.add_argument("--recover-steps", type=int, default=30, help="mlp: LoRA recovery steps (0: none)")
    parser.add_argument("--limit", type=int, default=200, help="eval questions (seeded subset)")
    parser.add_argument("--eval-batch", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16, help="questions in the timed batch")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.method in ("fastv", "fastv-speed"):
        args.keeps = args.keeps or [0.75, 0.5, 0.25]
        (fastv if args.method == "fastv" else fastv_speed)(args)
    else:
        args.keeps = args.keeps or [0.75, 0.5]
        mlp(args)


if __name__ == "__main__":
    main()
