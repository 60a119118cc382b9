"""Do the explanations point at the shape? Localisation of attention, gradient × input, occlusion, Kernel
SHAP and LIME on easy-vqa.

For easy-vqa TEST images (64×64: one shape of one colour on a plain light background) and their
colour and shape questions (at most one question per image, in the package's order), the script runs
``omnifuse.explain`` for the model's greedy first answer token and measures for each map

    localisation = (map mass inside the shape / total map mass) / (shape area / image area)

1 = no better than a uniform map, > 1 = the map concentrates on the shape (signed maps — occlusion,
SHAP, LIME — count their positive part: the evidence for the answer), and the **top-region hit rate**:
every map is summed over the same k×k grid of the image (``--grid``, default 4: the patches SHAP/LIME
perturb), and the top region (largest sum) hits when it holds at least one shape pixel; the chance
rate is the mean share of regions that hold a shape pixel (a region picked at random). The shape is segmented
by colour: the background colour is the median of the image's 2-pixel border (the shape touches the
border on at most one side, so the border is mostly background), and a pixel belongs to the shape
when some channel differs from it by more than 48 (of 255); anti-aliased edge pixels in between
count as background. ``--debug DIR`` saves the first images with their masks for a visual check.

The attention map exists only for connectors whose image tokens form a grid (MLP/linear connectors,
pool with grid > 1, pixel shuffle); for others it is reported as not applicable.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/explain_localisation.py --run RUN [--n 100]
        [--methods attention,gradient,occlusion,shap,lime] [--samples 100] [--grid 4] [--seed 0]
        [--offset K --json PART.json]  # a shard: questions K .. K+n-1
    .venv/bin/python benchmarks/explain_localisation.py --run RUN --merge PART*.json  # shards together
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from easy_vqa import get_test_image_paths, get_test_questions
from PIL import Image

from omnifuse.data.easy_vqa import SHAPES, YES_NO
from omnifuse.explain import explain
from omnifuse.explain.perturbation import PerturbationSettings, parse_methods
from omnifuse.rundir import RunDir
from omnifuse.sweep.report import mean_ci
from omnifuse.tasks.generate.load import load_model

BORDER = 2
THRESHOLD = 48


def shape_mask(image: Image.Image) -> np.ndarray:
    """Boolean [H, W]: pixels whose colour is far from the background colour (border median)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.int16)
    border = np.concatenate(
        [arr[:BORDER].reshape(-1, 3), arr[-BORDER:].reshape(-1, 3),
         arr[:, :BORDER].reshape(-1, 3), arr[:, -BORDER:].reshape(-1, 3)]
    )  # fmt: skip
    background = np.median(border, axis=0)
    return np.abs(arr - background).max(axis=-1) > THRESHOLD


def localisation(heat: np.ndarray, mask: np.ndarray) -> float:
    total = float(heat.sum())
    if total <= 0 or not mask.any():
        return math.nan
    return (float(heat[mask].sum()) / total) / float(mask.mean())


def region_sums(heat: np.ndarray, grid: int) -> np.ndarray:
    """[grid * grid] sums of ``heat`` over a grid×grid partition of the image (row-major)."""
    h, w = heat.shape
    rows, cols = np.arange(h) * grid // h, np.arange(w) * grid // w
    ids = rows[:, None] * grid + cols[None, :]
    return np.bincount(ids.ravel(), weights=heat.ravel(), minlength=grid * grid)


def top_region_hit(heat: np.ndarray, mask: np.ndarray, grid: int) -> bool | None:
    """Whether the region with the largest sum holds a shape pixel (None for an all-zero map)."""
    sums = region_sums(heat, grid)
    if not np.any(sums):
        return None
    return bool(region_sums(mask.astype(np.float64), grid)[int(sums.argmax())] > 0)


def chance_hit(mask: np.ndarray, grid: int) -> float:
    return float((region_sums(mask.astype(np.float64), grid) > 0).mean())


def method_maps(expl, methods) -> dict[str, np.ndarray | None]:
    """Each chosen method's heatmap at the image size (None where it does not apply)."""
    maps = {}
    for m in methods:
        if m == "attention":
            maps[m] = expl.attention.heatmap if expl.attention is not None else None
        elif m == "gradient":
            maps[m] = expl.gradient.heatmap
        else:
            maps[m] = expl.perturbations[m].heatmap
    return maps


def questions(n: int) -> list[tuple[str, str, str, Path]]:
    """(question type, question, answer, image path): colour and shape questions, one per image."""
    texts, answers, image_ids = get_test_questions()
    paths = get_test_image_paths()
    out, seen = [], set()
    for text, answer, image_id in zip(texts, answers, image_ids, strict=True):
        if answer in YES_NO or image_id in seen:
            continue
        seen.add(image_id)
        out.append(("shape" if answer in SHAPES else "color", text, answer, Path(paths[image_id])))
        if len(out) == n:
            break
    return out


def save_debug(items, folder: Path, k: int = 12) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tiles = []
    for _, _, _, path in items[:k]:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        mask = Image.fromarray((shape_mask(rgb) * 255).astype(np.uint8)).convert("RGB")
        pair = Image.new("RGB", (128, 64))
        pair.paste(rgb, (0, 0))
        pair.paste(mask, (64, 0))
        tiles.append(pair)
    sheet = Image.new("RGB", (128 * 4, 64 * math.ceil(len(tiles) / 4)), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % 4) * 128, (i // 4) * 64))
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST).save(folder / "masks.png")


def fmt(values: list[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "n/a"
    mean, ci = mean_ci(vals)
    return f"{mean:.2f} ± {ci:.2f} (n={len(vals)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="trained run directory")
    parser.add_argument("--n", type=int, default=100, help="questions (one per image)")
    parser.add_argument("--layers", default=None, help="attention layers (explain --layers syntax)")
    parser.add_argument("--methods", default="attention,gradient,occlusion,shap,lime", help="comma list")
    parser.add_argument("--samples", type=int, default=100, help="model evaluations for shap and lime")
    parser.add_argument("--grid", type=int, default=4, help="patches per side (perturbation and hit rate)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shap / lime sampling")
    parser.add_argument("--debug", type=Path, default=None, help="save segmentation masks here")
    parser.add_argument("--json", type=Path, default=None, help="write per-image results here")
    parser.add_argument("--offset", type=int, default=0, help="skip the first questions (shard a run)")
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=None, help="report these --json files together"
    )
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads(f.read_text()) for f in args.merge]
        info = {**parts[0]["info"], "seconds": sum(p["info"]["seconds"] for p in parts)}
        report(info, [r for p in parts for r in p["rows"]], parts[0]["info"]["methods"])
        return

    methods = parse_methods(args.methods)
    settings = PerturbationSettings(samples=args.samples, seed=args.seed, grid=args.grid)
    items = questions(args.offset + args.n)[args.offset :]
    if args.debug:
        save_debug(items, args.debug)
    _, model, processor = load_model(RunDir(args.run), progress=False)
    rows = []
    t0 = time.perf_counter()
    for qtype, question, answer, path in items:
        with Image.open(path) as img:
            image = img.convert("RGB")
        expl = explain(model, processor, image, question, layers=args.layers, max_new_tokens=0,
                       contributions=False, methods=methods, settings=settings)  # fmt: skip
        mask = shape_mask(image)
        first = processor.tokenizer(answer, add_special_tokens=False).input_ids[0]
        row = {"image": path.name, "type": qtype, "question": question, "answer": answer,
               "first_token_correct": expl.target_ids[0] == first, "shape_area": float(mask.mean()),
               "chance_hit": chance_hit(mask, args.grid),
               "attention_image_share": expl.attention.image_share if expl.attention is not None else None}  # fmt: skip
        for m, heat in method_maps(expl, methods).items():
            positive = None if heat is None else np.clip(heat, 0, None)
            row[m] = None if positive is None else localisation(positive, mask)
            row[f"{m}_hit"] = None if heat is None else top_region_hit(heat, mask, args.grid)
        for m, r in expl.perturbations.items():
            row[f"{m}_image_share"] = r.image_abs_share()
            row[f"{m}_seconds"] = r.seconds
        rows.append(row)
        if args.json:  # after every image: a shard stopped early still counts what it did
            args.json.write_text(json.dumps({"info": run_info(args, methods, model, expl, t0), "rows": rows}))
    info = run_info(args, methods, model, expl, t0)
    report(info, rows, methods)
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=1))


def run_info(args, methods, model, expl, t0: float) -> dict:
    return {
        "run": str(args.run), "seconds": time.perf_counter() - t0, "methods": list(methods),
        "samples": args.samples, "seed": args.seed, "grid": args.grid,
        "image_tokens": model.media_tokens_per_item("image"), "token_grid": model.media_grid("image"),
        "reason": expl.attention.reason if expl.attention is not None else expl.attention_reason,
    }  # fmt: skip


def report(info: dict, rows: list[dict], methods) -> None:
    reason, grid = info["reason"], info["grid"]
    print(
        f"run: {info['run']}  images: {len(rows)}  ({info['seconds']:.0f} s)  methods: {', '.join(methods)}"
    )
    print(f"samples (shap, lime): {info['samples']}, seed {info['seed']}, grid {grid}×{grid}")
    print(f"image tokens: {info['image_tokens']}, grid: {info['token_grid']}")
    print(f"first answer token correct: {100 * np.mean([r['first_token_correct'] for r in rows]):.1f} %")
    print(f"mean shape area: {100 * np.mean([r['shape_area'] for r in rows]):.1f} % of the image")
    print(
        f"chance top-region hit rate ({grid}×{grid}): {100 * np.mean([r['chance_hit'] for r in rows]):.1f} %"
    )
    print("per method: localisation (mass in shape / shape area share; 1 = uniform), mean ± 95 % CI;")
    print("  top-region hit rate; image share of Σ|attribution| (perturbation methods); seconds per image")
    for subset in ("all", "color", "shape"):
        sel = [r for r in rows if subset == "all" or r["type"] == subset]
        if not sel:
            continue
        print(f"  {subset} ({len(sel)} questions):")
        for m in methods:
            loc = [r[m] for r in sel if r[m] is not None]
            hits = [r[f"{m}_hit"] for r in sel if r[f"{m}_hit"] is not None]
            if not loc and not hits:
                print(f"    {m:>9}: not applicable ({reason})" if m == "attention" else f"    {m:>9}: n/a")
                continue
            line = f"    {m:>9}: localisation {fmt(loc)}; top region hits {100 * np.mean(hits):.1f} % ({sum(hits)}/{len(hits)})"
            if f"{m}_image_share" in sel[0]:
                share = np.mean([r[f"{m}_image_share"] for r in sel])
                secs = np.mean([r[f"{m}_seconds"] for r in sel])
                line += f"; image share {100 * share:.0f} %; {secs:.1f} s"
            print(line)


if __name__ == "__main__":
    main()
