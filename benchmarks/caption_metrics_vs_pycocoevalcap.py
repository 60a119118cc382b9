"""omnifuse's caption metrics beside pycocoevalcap's pure-Python scorers, on a synthetic corpus (docs/captioning.md).

pycocoevalcap (1.2, a 104 MB wheel with the Java tools) is not an omnifuse dependency; its Bleu, Cider
and Rouge scorers are plain Python. Put them on the path without installing the package:

    pip download --no-deps -d /tmp/pcoc pycocoevalcap
    cd /tmp/pcoc && unzip -q pycocoevalcap-*.whl 'pycocoevalcap/bleu/*' 'pycocoevalcap/cider/*' 'pycocoevalcap/rouge/*'
    PYTHONPATH=/tmp/pcoc python benchmarks/caption_metrics_vs_pycocoevalcap.py [N_IMAGES]

Both sides get the same tokens (omnifuse.eval.metrics.caption_tokens): the PTB tokeniser (Java) is not used.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from omnifuse.eval.captioning import caption_scores
from omnifuse.eval.metrics import caption_tokens


def corpus(n: int, seed: int = 2) -> tuple[list[str], list[list[str]]]:
    """Five references per image of one template; the hypothesis is the first with one word swapped."""
    rng = np.random.default_rng(seed)
    colors = "red blue green yellow black teal".split()
    shapes = "circle square triangle rectangle".split()
    sizes = "small big large tiny".split()

    def caption() -> str:
        return f"a {rng.choice(sizes)} {rng.choice(colors)} {rng.choice(shapes)} on a {rng.choice(colors)} background"

    refs = [[caption() for _ in range(5)] for _ in range(n)]
    hyps = []
    for rs in refs:
        words = rs[0].split()
        words[rng.integers(len(words))] = str(rng.choice(colors))
        hyps.append(" ".join(words))
    return hyps, refs


def main(n: int) -> None:
    hyps, refs = corpus(n)
    gts = {i: [" ".join(caption_tokens(r)) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(caption_tokens(h))] for i, h in enumerate(hyps)}
    t0 = time.perf_counter()
    ours = caption_scores(hyps, refs)
    seconds = time.perf_counter() - t0
    theirs = {
        "bleu4": 100 * Bleu(4).compute_score(gts, res, verbose=0)[0][3],
        "cider_d": Cider().compute_score(gts, res)[0],
        "rouge_l": Rouge().compute_score(gts, res)[0],
    }
    print(f"| metric ({n} images × 5 references) | omnifuse [95 % CI] | pycocoevalcap 1.2 |")
    print("|---|---:|---:|")
    for name, value in theirs.items():
        low, high = ours.ci95[name]
        print(f"| {name} | {getattr(ours, name):.6f} [{low:.4f}, {high:.4f}] | {value:.6f} |")
    print(f"\nomnifuse: {seconds:.1f} s with {ours.n_resamples} bootstrap resamples per metric")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
