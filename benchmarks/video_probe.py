"""Is what moving-shapes asks in the frozen frame features? Linear probes (logistic regression) on the exact
tokens the video Q-Former of src/omnifuse/recipes/video-llama.yaml reads: 8 uniform frames through
MobileNetV2 at 96 px, each 3×3 grid average-pooled to 2×2 (frame_tokens: 4), trained on the train split's
clips and scored on the held-out test split (other speeds, sizes, positions).

    python benchmarks/video_probe.py      # needs the packaged MobileNetV2 and the moving-shapes data set

Probes: colour at the start (first frame), colour at the end (last frame), direction (last − first frame)
and, as the single-frame reference, direction from the middle frame alone. docs/video.md quotes the output.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from omnifuse.connectors.video import _pool_frames
from omnifuse.data.sources import load_data
from omnifuse.models.builders import build_encoder
from omnifuse.recipe import load_recipe
from omnifuse.video import Sampling, load_video

RECIPE = "src/omnifuse/recipes/video-llama.yaml"
PROBES = {  # name → (question type, which frames' features)
    "colour_start (first frame)": ("colour_start", lambda x: x[:, 0]),
    "colour_end (last frame)": ("colour_end", lambda x: x[:, -1]),
    "direction (last − first frame)": ("direction", lambda x: x[:, -1] - x[:, 0]),
    "direction (middle frame only)": ("direction", lambda x: x[:, x.shape[1] // 2]),
}


def features(encoder, samples, question_type: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for s in samples:
        if s.meta["question_type"] != question_type:
            continue
        clip = load_video(s.videos()[0].path, Sampling(uniform=8))
        with torch.no_grad():
            tokens, _ = encoder(encoder.preprocess(clip)[None])
        grid = encoder.frame_grid
        xs.append(_pool_frames(tokens.reshape(1, 8, grid[0] * grid[1], -1), grid, 4)[0])
        ys.append(s.answer())
    return torch.stack(xs).numpy(), np.array(ys)


def main() -> None:
    t0 = time.perf_counter()
    encoder = build_encoder(load_recipe(RECIPE).model.encoders["video"]).eval()
    train, test = load_data("moving-shapes:train"), load_data("moving-shapes:test")
    cache: dict[str, tuple] = {}
    for name, (qtype, view) in PROBES.items():
        if qtype not in cache:
            cache[qtype] = (features(encoder, train, qtype), features(encoder, test, qtype))
        (xtr, ytr), (xte, yte) = cache[qtype]
        flat = lambda x, view=view: view(x).reshape(len(x), -1)  # noqa: E731
        probe = LogisticRegression(max_iter=2000, C=0.1).fit(flat(xtr), ytr)
        print(f"{name}: test {100 * probe.score(flat(xte), yte):.1f} % (n={len(yte)}), train n={len(ytr)}")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
