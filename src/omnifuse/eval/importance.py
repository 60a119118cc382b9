"""Data-set-level modality importance: how much does a score drop when one modality is taken away?

For each modality of a run and each perturbation, the same samples are scored twice — intact and with that
one modality perturbed — and the per-sample scores are compared pairwise:

* ``remove``: the modality is absent. Generate runs: the sample without that modality's media parts (so
  without its placeholders; for images this is the blind baseline). Classify runs: the modality dropped as
  the model is told of a missing modality (the robustness table's *dropped*). Align runs: not defined — a
  retrieval pair without one side has nothing to rank.
* ``permute``: each sample gets another sample's input of that modality (a seeded derangement: no sample
  keeps its own), so the input stays realistic but no longer belongs to the rest of the sample.
* ``noise``: the input is replaced by seeded Gaussian noise whose moments are the *data set's* (not the
  sample's, which would leak its content): in the model's input space. Generate runs: pixels with the eval
  images' per-channel mean and standard deviation (each image's size kept), waveforms with the eval clips'
  RMS (each clip's length kept) — the encoder belongs to the evaluated model, and the same noise then reaches
  every encoder, connector and fusion without a hook. Classify and align runs: the normalised frozen-encoder
  features (the trained head's input) with their per-element mean and standard deviation over the eval set.

Each row holds the intact and perturbed means, the drop (intact − perturbed) with a 95 % paired bootstrap
interval (BCa over the same samples, :func:`omnifuse.eval.stats.paired_comparison`) and the two-sided p-value
of the paired sign-flip permutation test, and for 0/1 scores how many samples the perturbation made wrong
(``lost``) and right (``gained``). A modality the model does not use has a drop of 0 with an interval
around 0 (exactly 0 when no prediction changes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from omnifuse.data.sample import Sample
from omnifuse.errors import OmnifuseError
from omnifuse.eval.media import (
    NOISY_KINDS,
    derangement,
    media_modalities,
    need_two,
    noise_media,
    permute_media,
    remove_media,
)
from omnifuse.eval.stats import paired_comparison
from omnifuse.eval.vqa import VQAResult, evaluate_vqa
from omnifuse.generation.engine import Engine, GenerationConfig

PERTURBATIONS = ("remove", "permute", "noise")
IMPORTANCE_SEED = 0
STATISTICS = (
    "drop = intact − perturbed on the same samples; 95 % paired bootstrap interval (BCa, 4000 resamples); "
    "p: two-sided paired sign-flip permutation test"
)


@dataclass(frozen=True)
class ImportanceSettings:
    """``omnifuse eval --importance [--perturbations remove,permute,noise] [--importance-seed N]
    [--importance-repeats K]``: permute and noise are drawn ``repeats`` times and each sample's perturbed
    score is its mean over the draws (remove draws nothing)."""

    perturbations: tuple[str, ...] = PERTURBATIONS
    seed: int = IMPORTANCE_SEED
    explicit: bool = False  # the perturbations were named by the user (not the default set)
    repeats: int = 1

    def seeds(self, modality_index: int, perturbation: str) -> list[int]:
        """The seeds of the draws of one modality's perturbation: the first ``seed + modality_index``, the
        others spread from it (one draw for remove)."""
        first = self.seed + modality_index
        if perturbation == "remove":
            return [first]
        more = np.random.SeedSequence([self.seed, modality_index]).generate_state(self.repeats - 1)
        return [first, *(int(x) for x in more)]


def importance_settings(
    perturbations: str | None, seed: int | None, enabled: bool, repeats: int | None = None
) -> ImportanceSettings | None:
    """The settings from the command line's options; a clear error for an unknown perturbation, a seed out of
    range, a repeat count under 1, or importance options without ``--importance``."""
    options = (
        ("--perturbations", perturbations),
        ("--importance-seed", seed),
        ("--importance-repeats", repeats),
    )
    if not enabled:
        given = [f for f, v in options if v is not None]
        if given:
            raise OmnifuseError(
                f"{' and '.join(given)} set(s) up the modality importance, which runs only with --importance: "
                "add --importance, or drop them"
            )
        return None
    if seed is not None and not 0 <= seed < 2**32:
        raise OmnifuseError(f"--importance-seed {seed}: a seed is a whole number from 0 to {2**32 - 1}")
    if repeats is not None and repeats < 1:
        raise OmnifuseError(
            f"--importance-repeats {repeats}: draw each permutation and noise at least once (1 or more)"
        )
    common = {"seed": IMPORTANCE_SEED if seed is None else seed, "repeats": repeats or 1}
    if perturbations is None:
        return ImportanceSettings(**common)
    names = [p.strip() for p in perturbations.split(",") if p.strip()]
    unknown = [p for p in names if p not in PERTURBATIONS]
    if unknown or not names:
        raise OmnifuseError(
            f"--perturbations {perturbations!r}: {'unknown ' + ', '.join(map(repr, unknown)) if unknown else 'empty'}; "
            f"name one or more of {', '.join(PERTURBATIONS)}, separated by commas (e.g. --perturbations permute,noise)"
        )
    return ImportanceSettings(tuple(p for p in PERTURBATIONS if p in names), explicit=True, **common)


def mean_over_draws(draws: Sequence[Sequence[float]]) -> list[float]:
    """Each sample's score averaged over the draws (one list of per-sample scores per draw)."""
    return np.mean(np.asarray(draws, dtype=float), axis=0).tolist()


# ------------------------------------------------------------------ rows and the summary
@dataclass(frozen=True)
class ImportanceRow:
    modality: str
    perturbation: str
    measure: str  # what is scored: "accuracy", "R@1 image→audio", ...
    n: int
    intact: float
    perturbed: float
    drop: float
    ci: tuple[float, float]
    p_value: float
    lost: int | None  # 0/1 scores: right intact, wrong perturbed
    gained: int | None

    def summary(self) -> dict:
        out = {
            "modality": self.modality,
            "perturbation": self.perturbation,
            "measure": self.measure,
            "n": self.n,
            "intact": self.intact,
            "perturbed": self.perturbed,
            "drop": self.drop,
            "ci95": list(self.ci),
            "p_value": self.p_value,
        }
        if self.lost is not None:
            out |= {"lost": self.lost, "gained": self.gained}
        return out


def importance_row(
    modality: str, perturbation: str, measure: str, intact: Sequence[float], perturbed: Sequence[float]
) -> ImportanceRow:
    """One cell of the table from per-sample scores of the same samples, intact and perturbed."""
    # paired_comparison(A, B) gives B − A: with A the perturbed scores that is the drop.
    c = paired_comparison(perturbed, intact, seed=0)
    return ImportanceRow(
        modality,
        perturbation,
        measure,
        c.n,
        c.mean_b,
        c.mean_a,
        c.difference,
        c.ci,
        c.p_value,
        c.only_b,
        c.only_a,
    )


def importance_summary(
    rows: Sequence[ImportanceRow], settings: ImportanceSettings, noise: str, notes: Sequence[str] = ()
) -> dict:
    """What eval.json holds under ``importance``: the settings, how noise was drawn, the rows, notes."""
    return {
        "perturbations": list(settings.perturbations),
        "seed": settings.seed,
        "repeats": settings.repeats,
        "statistics": STATISTICS,
        "noise": noise,
        "notes": list(notes),
        "rows": [r.summary() for r in rows],
    }


# ------------------------------------------------------------------ features (classify, align)
def permuted_rows(x: torch.Tensor, seed: int) -> torch.Tensor:
    """The rows of ``x`` in a seeded derangement: row i gets another row's values."""
    need_two(len(x))
    return x[torch.tensor(derangement(len(x), seed), device=x.device)]


def noise_like(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Seeded Gaussian noise shaped like ``x`` with its per-element mean and standard deviation over the rows
    (axis 0): the data set's moments, nothing of any one sample. Drawn on the CPU (the same on every device)."""
    g = torch.Generator().manual_seed(seed)
    xf = x.detach().float().cpu()
    mean, std = xf.mean(0), xf.std(0, unbiased=False)
    z = torch.randn(xf.shape, generator=g)
    return (mean + std * z).to(x.device, x.dtype)


MEDIA_PERTURBATIONS = {"remove": remove_media, "permute": permute_media, "noise": noise_media}
MEDIA_NOISE = (
    "input space: Gaussian pixels with the eval images' per-channel mean and standard deviation (each image's "
    "size kept); Gaussian waveforms with the eval clips' RMS (each clip's length kept)"
)


def _scores(result: VQAResult) -> list[float]:
    return [p["score"] for p in result.predictions]


def generate_importance(
    engine: Engine,
    samples: Sequence[Sample],
    intact: VQAResult,
    cfg: GenerationConfig,
    batch_size: int,
    settings: ImportanceSettings,
    blind: VQAResult | None = None,
    progress: bool = True,
) -> dict:
    """Importance of each media modality of a generative run: the VQA score of ``samples`` (``intact``:
    their unperturbed result) with one modality removed, permuted or replaced by noise. Removing the images
    is the blind baseline: its result is reused when given."""
    need_two(len(samples))
    kinds = media_modalities(samples)
    if not kinds:
        raise OmnifuseError(
            "--importance measures what each modality (image, audio, video) adds, but the evaluated samples hold "
            "no media: evaluate data with media, or drop --importance"
        )
    rows, notes = [], []
    for i, kind in enumerate(kinds):
        for perturbation in settings.perturbations:
            if perturbation == "noise" and kind not in NOISY_KINDS:
                notes.append(f"noise: not measured for {kind} (noise is drawn for images and audio only)")
                continue
            if perturbation == "remove" and kind == "image" and blind is not None:
                perturbed = _scores(blind)  # the same inputs: every image part left out
            else:
                draws = []
                for seed in settings.seeds(i, perturbation):
                    changed = MEDIA_PERTURBATIONS[perturbation](samples, kind, seed)
                    label = f"importance: {kind} {perturbation}"
                    result = evaluate_vqa(engine, changed, cfg, batch_size, progress=progress, label=label)
                    draws.append(_scores(result))
                perturbed = mean_over_draws(draws)
            rows.append(importance_row(kind, perturbation, "accuracy", _scores(intact), perturbed))
    if not rows:
        raise OmnifuseError(
            f"--perturbations {','.join(settings.perturbations)}: {'; '.join(notes)}; use remove or permute"
        )
    return importance_summary(rows, settings, MEDIA_NOISE, notes)


# ------------------------------------------------------------------ the table as text
def table(summary: dict) -> tuple[str, tuple[str, ...], list[tuple[str, ...]]]:
    """(title, columns, rows) of eval.json's ``importance``: scores in percent, the drop in points. The
    measure gets a column only when it varies (align: R@1 per direction); otherwise the title names it."""
    measures = list(dict.fromkeys(r["measure"] for r in summary["rows"]))
    one = len(measures) == 1
    columns = ("modality", "perturbation", *(() if one else ("measure",)), "n", "intact", "perturbed",
               "drop [95 % CI]", "p", "lost / gained")  # fmt: skip
    rows = []
    for r in summary["rows"]:
        lo, hi = r["ci95"]
        rows.append((
            r["modality"], r["perturbation"], *(() if one else (r["measure"],)), str(r["n"]),
            f"{100 * r['intact']:.1f}", f"{100 * r['perturbed']:.1f}",
            f"{100 * r['drop']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]", f"{r['p_value']:.2g}",
            f"{r['lost']} / {r['gained']}" if "lost" in r else "–",
        ))  # fmt: skip
    title = f"modality importance ({measures[0] if one else 'measure'} in %, drop in points)"
    return title, columns, rows


def explanation(summary: dict) -> list[str]:
    """How the table was measured: the statistics, the noise, the notes."""
    repeats = summary.get("repeats", 1)
    draws = (
        f", each sample's perturbed score its mean over {repeats} draws of permute and noise"
        if repeats > 1
        else ""
    )
    return [
        f"{summary['statistics']}; lost / gained: samples the perturbation made wrong / right; seed {summary['seed']}"
        + draws,
        f"noise: {summary['noise']}",
        *summary["notes"],
    ]


def importance_markdown(summary: dict | None) -> list[str]:
    """The report's section (report.md) for eval.json's ``importance``; nothing without it."""
    if summary is None:
        return []
    title, columns, rows = table(summary)
    lines = ["## Modality importance", "", f"{title[0].upper()}{title[1:]}:", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return [*lines, "", *(f"- {line}" for line in explanation(summary)), ""]
