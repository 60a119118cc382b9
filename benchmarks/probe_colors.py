"""Do the frozen MobileNetV2 features carry colour? A small MLP head on pooled features, per block.

Trains Linear → GELU → Linear (the connector's shape) with AdamW (lr 1e-3, batch 8, 150 steps) to
classify the answer of easy-vqa's "what color is the shape?" from average-pooled features of several
MobileNetV2 blocks (128 px, no crop, as in the quickstart); prints held-out accuracy per block.

    .venv/bin/python benchmarks/probe_colors.py
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from omnifuse.data.sources import load_data
from omnifuse.encoders.vision.mobilenet import build_mobilenet_v2


def main(n_images: int = 1600, n_train: int = 1200, blocks=(13, 16, 17, 18)) -> None:
    color_of = {}
    for s in load_data("easy-vqa:train"):
        if s.prompt()[-1].text() == "what color is the shape?":
            color_of[s.images()[0]] = s.answer()
    items = list(color_of.items())[:n_images]
    names = sorted({a for _, a in items})
    y = torch.tensor([names.index(a) for _, a in items])
    enc = build_mobilenet_v2(image_size=128, crop=False)
    feats = {}
    with torch.no_grad():
        x = torch.stack([enc.preprocess(Image.open(p)) for p, _ in items])
        for i, block in enumerate(enc.features):
            x = block(x)
            if i in blocks:
                feats[i] = x.mean((2, 3))
    print(f"{len(items)} images, {len(names)} colours, train {n_train} / test {len(items) - n_train}")
    for i, f in feats.items():
        torch.manual_seed(0)
        head = nn.Sequential(nn.Linear(f.shape[1], 576), nn.GELU(), nn.Linear(576, len(names)))
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
        for _ in range(150):
            idx = torch.randint(0, n_train, (8,))
            loss = nn.functional.cross_entropy(head(f[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = (head(f[n_train:]).argmax(1) == y[n_train:]).float().mean().item()
        print(f"block {i:>2} ({f.shape[1]:>4} channels): colour accuracy {100 * acc:.1f} %")


if __name__ == "__main__":
    main()
