"""Loss-threshold membership inference against trained generate runs (an empirical privacy check).

The attack (Yeom et al., 2018): a sample whose loss under the model is low is guessed to have been in the
training set. Members are the run's training samples (each stage's data, the seeded ``limit`` subset the
loop trained on); non-members are samples of the same data file that no stage trained on and whose image
(``meta.image_id``, where present) no member shows, a seeded subset of the same size. The score is
``−loss`` (each sample's mean next-token loss over its answer tokens, as DP-SGD's per-sample loss); the
attack's ROC AUC is 0.5 when members and non-members are indistinguishable. The 95 % interval is a
percentile bootstrap (members and non-members resampled separately). Also printed: the mean losses, and
the attack's TPR at 10 % FPR.

    .venv/bin/python benchmarks/membership_inference.py runs/privacy/eps-inf runs/privacy/eps-8 --n 200
"""

from __future__ import annotations

import argparse
import json
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from omnifuse.data.sample import Sample, select_subset
from omnifuse.data.sources import load_data
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training.objectives import per_sample_losses


def split(recipe, n: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(members, non-members): the stages' training samples, and as many unseen samples of the same data."""
    members: dict[str, Sample] = {}
    pools: dict[str, list[Sample]] = {}
    for stage in recipe.stages:
        ref = stage.data or recipe.data.train
        pools.setdefault(ref, load_data(ref))
        chosen = select_subset(pools[ref], stage.limit, recipe.seed) if stage.limit else pools[ref]
        members.update((s.id, s) for s in chosen)
    images = {s.meta.get("image_id") for s in members.values()} - {None}
    outside = [
        s
        for pool in pools.values()
        for s in pool
        if s.id not in members and (s.meta.get("image_id") is None or s.meta.get("image_id") not in images)
    ]
    rng = random.Random(seed)
    inside = list(members.values())
    k = min(n, len(inside), len(outside))
    return rng.sample(inside, k), rng.sample(outside, k)


@torch.no_grad()
def losses(model, processor, samples: list[Sample], batch_size: int = 16) -> np.ndarray:
    out = []
    for i in range(0, len(samples), batch_size):
        batch = processor.collate([processor.encode(s) for s in samples[i : i + batch_size]])
        logits = model(**batch.model_inputs()).logits
        out.append(per_sample_losses(logits, batch.labels).cpu())
    return torch.cat(out).numpy()


def attack(member_loss: np.ndarray, other_loss: np.ndarray, rounds: int, seed: int) -> dict:
    y = np.r_[np.ones(len(member_loss)), np.zeros(len(other_loss))]
    score = -np.r_[member_loss, other_loss]
    fpr, tpr, _ = roc_curve(y, score)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(rounds):
        a = rng.choice(member_loss, len(member_loss))
        b = rng.choice(other_loss, len(other_loss))
        boot.append(roc_auc_score(y, -np.r_[a, b]))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "auc": float(roc_auc_score(y, score)),
        "auc_ci95": [float(lo), float(hi)],
        "tpr_at_fpr_10": float(np.interp(0.10, fpr, tpr)),
        "member_loss": float(member_loss.mean()),
        "nonmember_loss": float(other_loss.mean()),
        "n_members": len(member_loss),
        "n_nonmembers": len(other_loss),
    }


def dp_auc_bound(eps: float, delta: float) -> float:
    """The largest AUC any attack can reach against an (ε, δ)-DP model: its ROC curve lies below
    TPR ≤ e^ε·FPR + δ and 1 − FPR ≥ e^−ε·(1 − TPR − δ) (Kairouz et al., 2015)."""
    x = np.linspace(0, 1, 100_001)
    tpr = np.minimum.reduce([np.ones_like(x), np.exp(eps) * x + delta, 1 - np.exp(-eps) * (1 - x - delta)])
    return float(np.trapezoid(np.clip(tpr, 0, 1), x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="finished generate run directories")
    ap.add_argument("--n", type=int, default=200, help="members (and as many non-members)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    results = {}
    for path in args.runs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            recipe, model, processor = load_model(RunDir(path), progress=False)
        members, others = split(recipe, args.n, args.seed)
        result = attack(
            losses(model, processor, members), losses(model, processor, others), args.bootstrap, args.seed
        )
        privacy = path / "privacy.json"
        result["epsilon"] = None
        if privacy.is_file():
            p = json.loads(privacy.read_text())
            result["epsilon"], result["delta"] = p["epsilon_spent"], p["delta"]
            result["auc_bound"] = dp_auc_bound(p["epsilon_spent"], p["delta"])
        results[str(path)] = result
        print(json.dumps({str(path): result}), flush=True)
    print(
        "\n| run | ε spent | AUC [95 % CI] | largest AUC (ε, δ) allows | TPR at 10 % FPR | loss members / non-members | n |"
    )
    print("|---|---|---|---|---|---|---|")
    for path, r in results.items():
        eps = "∞ (no DP)" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        lo, hi = r["auc_ci95"]
        bound = f"{r['auc_bound']:.3f}" if "auc_bound" in r else "1"
        print(
            f"| {path} | {eps} | {r['auc']:.3f} [{lo:.3f}, {hi:.3f}] | {bound} | {100 * r['tpr_at_fpr_10']:.1f} % | "
            f"{r['member_loss']:.3f} / {r['nonmember_loss']:.3f} | {r['n_members']} + {r['n_nonmembers']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
