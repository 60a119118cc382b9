"""Latency per spoken query: ASR cascade vs direct audio embedding, against the typed question.

Loads trained run directories and answers the same spoken-easy-vqa test questions one at a time (batch 1,
greedy, after a warm-up), interleaving the paths so that machine load hits them alike. Prints the median
seconds per query of each path and its ratio to the typed-question reference (the same questions typed:
``spoken-easy-vqa:test-typed``). The cascade's time includes transcribing the clip (nothing is cached).

With ``--plot PNG`` it also draws each path's accuracy (the ``eval.json`` of its run, with its 95 % CI)
against its median latency.

    python benchmarks/audio_latency.py --text runs/audio/typed --cascade runs/audio/cascade \\
        --embed runs/audio/embed --n 30 --plot docs/img/audio_paths.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from omnifuse.data.sample import Sample, select_subset
from omnifuse.data.sources import load_data
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model


def engine_for(run: Path, asr: bool) -> Engine:
    recipe, model, processor = load_model(RunDir(run), progress=False)
    if not asr:
        processor.speech_to_text = None  # the typed reference never needs the recogniser
    return Engine(model, processor), recipe


def fresh(engine: Engine) -> None:
    """Forget remembered transcripts, so each spoken query pays for its transcription."""
    if engine.processor.speech_to_text is not None:
        engine.processor.speech_to_text.forget()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=Path, required=True, help="run answering typed questions (reference)")
    ap.add_argument("--cascade", type=Path, required=True, help="run with model.asr")
    ap.add_argument("--embed", type=Path, required=True, help="run with an audio encoder")
    ap.add_argument("--n", type=int, default=30, help="questions timed per path")
    ap.add_argument("--plot", type=Path, help="write accuracy vs latency to this PNG")
    args = ap.parse_args()

    spoken = select_subset(load_data("spoken-easy-vqa:test"), args.n, seed=1)
    typed = {s.id: s for s in load_data("spoken-easy-vqa:test-typed")}
    paths = {
        "typed question (reference)": (engine_for(args.text, asr=False), [typed[s.id] for s in spoken]),
        "ASR cascade": (engine_for(args.cascade, asr=True), spoken),
        "audio embedding": (engine_for(args.embed, asr=False), spoken),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    for (engine, _), samples in paths.values():  # warm-up
        engine.generate([Sample(samples[0].id, samples[0].prompt(), {})], GenerationConfig(2))
    for i in range(len(spoken)):
        for name, ((engine, recipe), samples) in paths.items():
            fresh(engine)
            cfg = GenerationConfig(recipe.generation.max_new_tokens)
            prompt = Sample(samples[i].id, samples[i].prompt(), samples[i].meta)
            t0 = time.perf_counter()
            engine.generate([prompt], cfg)
            times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["typed question (reference)"])
    print(f"median seconds per query over {len(spoken)} spoken-easy-vqa test questions (batch 1, greedy)")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"  {name:28s} {med:6.3f} s   {med / ref:5.2f}× the typed question")
    if args.plot:
        runs = {
            "typed question (reference)": args.text,
            "ASR cascade": args.cascade,
            "audio embedding": args.embed,
        }
        plot(
            args.plot,
            {name: json.loads((run / "eval.json").read_text()) for name, run in runs.items()},
            times,
        )


def plot(path: Path, evals: dict[str, dict], times: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ev in evals.items():
        acc, (lo, hi) = 100 * ev["accuracy"], (100 * x for x in ev["ci95"])
        lat = statistics.median(times[name])
        ax.errorbar(lat, acc, yerr=[[acc - lo], [hi - acc]], fmt="o", capsize=4, label=f"{name}: {acc:.1f} %")
    ax.set_xscale("log")
    ax.set_xlabel("median seconds per query (batch 1, CPU)")
    ax.set_ylabel("accuracy on held-out voices, % (95 % CI)")
    ax.set_title(f"spoken easy-vqa, {evals['audio embedding']['n']} test questions")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
