"""Do the explanations point at the shape? Localisation of attention and gradient × input on easy-vqa.

For easy-vqa TEST images (64×64: one shape of one colour on a plain light background) and their
colour and shape questions (at most one question per image, in the package's order), the script runs
``omnifuse.explain`` for the model's greedy first answer token and measures for each map

    localisation = (map mass inside the shape / total map mass) / (shape area / image area)

1 = no better than a uniform map, > 1 = the map concentrates on the shape. The shape is segmented
by colour: the background colour is the median of the image's 2-pixel border (the shape touches the
border on at most one side, so the border is mostly background), and a pixel belongs to the shape
when some channel differs from it by more than 48 (of 255); anti-aliased edge pixels in between
count as background. ``--debug DIR`` saves the first images with their masks for a visual check.

The attention map exists only for connectors whose image tokens form a grid (MLP/linear connectors,
pool with grid > 1, pixel shuffle); for others it is reported as not applicable.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/explain_localisation.py --run RUN [--n 100]
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
    parser.add_argument("--debug", type=Path, default=None, help="save segmentation masks here")
    parser.add_argument("--json", type=Path, default=None, help="write per-image results here")
    args = parser.parse_args()

    items = questions(args.n)
    if args.debug:
        save_debug(items, args.debug)
    _, model, processor = load_model(RunDir(args.run), progress=False)
    rows = []
    t0 = time.perf_counter()
    for qtype, question, answer, path in items:
        with Image.open(path) as img:
            image = img.convert("RGB")
        expl = explain(
            model, processor, image, question, layers=args.layers, max_new_tokens=0, contributions=False
        )
        mask = shape_mask(image)
        att = expl.attention.heatmap if expl.attention is not None else None
        first = processor.tokenizer(answer, add_special_tokens=False).input_ids[0]
        rows.append(
            {
                "image": path.name,
                "type": qtype,
                "question": question,
                "answer": answer,
                "first_token_correct": expl.target_ids[0] == first,
                "shape_area": float(mask.mean()),
                "attention": localisation(att, mask) if att is not None else None,
                "gradient": localisation(expl.gradient.heatmap, mask)
                if expl.gradient.heatmap is not None
                else None,
                "attention_image_share": expl.attention.image_share if expl.attention is not None else None,
            }
        )
    seconds = time.perf_counter() - t0
    reason = expl.attention.reason if expl.attention is not None else expl.attention_reason
    print(f"run: {args.run}  images: {len(rows)}  ({seconds:.0f} s)")
    print(f"image tokens: {model.media_tokens_per_item('image')}, grid: {model.media_grid('image')}")
    print(f"first answer token correct: {100 * np.mean([r['first_token_correct'] for r in rows]):.1f} %")
    print(f"mean shape area: {100 * np.mean([r['shape_area'] for r in rows]):.1f} % of the image")
    print("localisation (mass in shape / shape area share), mean ± 95 % CI; 1 = uniform map")
    for subset in ("all", "color", "shape"):
        sel = [r for r in rows if subset == "all" or r["type"] == subset]
        att = [r["attention"] for r in sel if r["attention"] is not None]
        grad = [r["gradient"] for r in sel if r["gradient"] is not None]
        att_s = fmt(att) if att else f"not applicable ({reason})" if subset == "all" else "not applicable"
        print(f"  {subset:>5}: attention {att_s}; gradient × input {fmt(grad)}")
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
