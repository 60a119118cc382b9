"""Is where a shape sits in the frozen image features the grounding recipe feeds the LLM? A linear probe
(ridge regression, its penalty chosen by leave-one-out on the training rows) from the encoder's tokens of
src/omnifuse/recipes/qwen-vl-grounding.yaml (MobileNetV2 at 128 px, crop off: a 4×4 grid of 1280-d
tokens, flattened) to the centre of the box of "the circle", "the square" or "the triangle" — the
shapes-grounding referring questions whose expression names the shape type alone (the scene holds one of
that type), one probe per type, trained on the train split and scored on the held-out test split.

    python benchmarks/grounding_probe.py               # needs the packaged MobileNetV2 and shapes-grounding
    python benchmarks/grounding_probe.py --image-size 256 --limit 300

It prints, per shape type, the probe's mean centre error (in the boxes' 0–1000 coordinates) against
always answering the training mean, and the Pearson r of the predicted and true x and y. docs/grounding.md
quotes the output: it separates "the features do not hold the place" from "the LLM does not learn to write it".
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import RidgeCV

from omnifuse.data.boxes import first_box
from omnifuse.data.sources import load_data
from omnifuse.models.builders import build_encoder
from omnifuse.processing.processor import load_image
from omnifuse.recipe import load_recipe

RECIPE = "src/omnifuse/recipes/qwen-vl-grounding.yaml"
PHRASES = ("the circle", "the square", "the triangle")


def centred(samples, limit: int) -> dict[str, list]:
    """phrase → [(sample, (x, y) centre of its reference box)], at most ``limit`` per phrase."""
    out: dict[str, list] = {p: [] for p in PHRASES}
    for s in samples:
        phrase = s.meta.get("phrase")
        if s.meta.get("question_type") != "grounding" or phrase not in out or len(out[phrase]) >= limit:
            continue
        b = first_box(s.answer())
        out[phrase].append((s, ((b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2)))
    return out


def features(encoder, rows) -> tuple[np.ndarray, np.ndarray]:
    xs = []
    with torch.no_grad():
        for i in range(0, len(rows), 32):
            pixels = [encoder.preprocess(load_image(s.images()[0], s.id)) for s, _ in rows[i : i + 32]]
            xs.append(encoder(torch.stack(pixels)).flatten(1).numpy())
    return np.concatenate(xs), np.array([c for _, c in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=600, help="training rows per shape type (test: all)")
    ap.add_argument("--image-size", type=int, default=None, help="override the recipe's image size")
    args = ap.parse_args()
    t0 = time.perf_counter()
    spec = load_recipe(RECIPE).model.encoders["image"]
    if args.image_size:
        spec = spec.model_copy(update={"image_size": args.image_size})
    encoder = build_encoder(spec).eval()
    train = centred(load_data("shapes-grounding:train"), args.limit)
    test = centred(load_data("shapes-grounding:test"), 10**9)
    for phrase in PHRASES:
        (xtr, ytr), (xte, yte) = features(encoder, train[phrase]), features(encoder, test[phrase])
        pred = RidgeCV(alphas=np.logspace(-1, 4, 12)).fit(xtr, ytr).predict(xte)
        err = np.linalg.norm(pred - yte, axis=1).mean()
        mean = np.linalg.norm(ytr.mean(0) - yte, axis=1).mean()
        r = [np.corrcoef(pred[:, k], yte[:, k])[0, 1] for k in (0, 1)]
        print(
            f"{phrase}: train {len(ytr)}, test {len(yte)}; centre error {err:.0f} vs the mean's {mean:.0f} "
            f"(of 1000); r x {r[0]:.2f}, y {r[1]:.2f}"
        )
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
