"""Perturbation attributions of a generative answer: Kernel SHAP, LIME and occlusion (through Captum) of
the answer tokens' log-probability to image regions and to the question's tokens.

The explained quantity is the one the gradient map explains: ``f = Σ_t log p(answer token t)``,
teacher-forced, at the predicting positions (:mod:`omnifuse.explain.attribution`). The features are

- the image's **regions**: a patch grid over the pixel tensor the encoder receives (default: the
  encoder's own token grid, e.g. MobileNetV2's 4×4 conv grid; ``grid`` to choose) or SLIC superpixels;
  a region is *absent* when its pixels are replaced by the image's per-channel mean (a flat patch of
  the image's average colour: no edge, no shape, no local colour);
- the question's **tokens**: a token is *absent* when the attention mask hides it (the LLM keeps every
  position; no other token can read the hidden one).

Kernel SHAP (Lundberg & Lee, 2017) samples coalitions of present features with the Shapley kernel and
fits a linear model: its values are additive, ``Σ φ_i ≈ f(x) − f(baseline)`` (baseline: every region
at the mean colour and every question token hidden; the gap is reported). LIME (Ribeiro et al., 2016)
fits a ridge regression on random coalitions weighted by their closeness to the full input (cosine
distance of the binary coalition vectors, kernel width 0.25: ``lime``'s image explainer defaults).
Occlusion removes one feature at a time: ``f(x) − f(x without i)``. Positive values support the answer.
One library for all three (Captum's ``KernelShap``, ``Lime``, ``FeatureAblation``) means one feature
mask, one baseline and one forward function for the three, and no extra dependency but Captum.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from omnifuse.errors import OmnifuseError
from omnifuse.explain.imagemap import input_box, to_image
from omnifuse.explain.inputs import MODALITY, ExplainInputs, encode_prompt
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Processor
from omnifuse.runtime import placement_of

METHODS = ("attention", "gradient", "occlusion", "shap", "lime")
PERTURBATION_METHODS = ("occlusion", "shap", "lime")
DEFAULT_METHODS = ("attention", "gradient")
DEFAULT_SAMPLES = 200
REGION_KINDS = ("patches", "superpixels")
DEFAULT_GRID = 8  # patches per side when the encoder declares no token grid
LIME_KERNEL_WIDTH = 0.25
LIME_RIDGE_ALPHA = 1.0


def parse_methods(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """The chosen methods from ``--method`` values (repeated or comma lists); default attention and
    gradient (the maps explain computed before these methods existed)."""
    if values is None:
        return DEFAULT_METHODS
    chosen: list[str] = []
    for value in [values] if isinstance(values, str) else values:
        for part in value.split(","):
            name = part.strip().lower()
            if name and name not in METHODS:
                raise OmnifuseError(
                    f"--method {part.strip()!r} is not an explanation method; choose from {', '.join(METHODS)} "
                    "(repeat --method or give a comma list, e.g. --method shap,lime)"
                )
            if name and name not in chosen:
                chosen.append(name)
    if not chosen:
        raise OmnifuseError(f"--method is empty; choose from {', '.join(METHODS)}")
    return tuple(chosen)


def check_settings(samples: int, grid: int | None, regions: str) -> None:
    """Settings that are wrong whatever the model: checked before it loads."""
    if samples < 1:
        raise OmnifuseError(
            f"--samples {samples}: SHAP and LIME need a positive number of model evaluations (default "
            f"{DEFAULT_SAMPLES}); more samples give a steadier map at the cost of time"
        )
    if grid is not None and not 1 <= grid <= 64:
        raise OmnifuseError(f"--grid {grid}: give the patches per side, 1 to 64 (e.g. 4 for a 4×4 grid)")
    if regions not in REGION_KINDS:
        raise OmnifuseError(f"--regions {regions!r}: choose {' or '.join(REGION_KINDS)}")


# ---------------------------------------------------------------------- features
@dataclass
class Regions:
    kind: str  # patches | superpixels
    labels: torch.Tensor  # [h, w] long: the region of each pixel of the encoder's input
    grid: tuple[int, int] | None  # (rows, cols) for patches
    count: int


def patch_regions(height: int, width: int, grid: tuple[int, int]) -> Regions:
    rows = torch.arange(height) * grid[0] // height
    cols = torch.arange(width) * grid[1] // width
    return Regions("patches", rows[:, None] * grid[1] + cols[None, :], grid, grid[0] * grid[1])


def superpixel_regions(pixels: torch.Tensor, count: int) -> Regions:
    """SLIC superpixels (scikit-image) of the encoder's input [C, h, w], rescaled to [0, 1] first."""
    from skimage.segmentation import slic

    arr = pixels.detach().float().cpu().permute(1, 2, 0).numpy()
    arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-8)
    labels = slic(arr, n_segments=count, compactness=10.0, start_label=0, channel_axis=-1)
    _, dense = np.unique(labels, return_inverse=True)  # ids 0..n-1 without gaps
    labels = torch.as_tensor(dense.reshape(labels.shape), dtype=torch.long)
    return Regions("superpixels", labels, None, int(labels.max()) + 1)


def image_regions(model: MultimodalLM, pixels: torch.Tensor, kind: str, grid: int | None) -> Regions:
    if pixels.dim() != 4 or pixels.shape[0] != 1:
        raise OmnifuseError(
            f"SHAP, LIME and occlusion perturb one image tensor [C, H, W]; this encoder's input has shape "
            f"{tuple(pixels.shape[1:])} (several views or frames), so they cannot be placed on the image"
        )
    height, width = pixels.shape[-2:]
    native = model.encoders[MODALITY].token_grid()
    cells = (grid, grid) if grid is not None else (native or (DEFAULT_GRID, DEFAULT_GRID))
    if kind == "superpixels":
        return superpixel_regions(pixels[0], cells[0] * cells[1])
    if cells[0] > height or cells[1] > width:
        raise OmnifuseError(
            f"--grid {cells[0]}: more patches than the encoder's {height}×{width} input pixels"
        )
    return patch_regions(height, width, cells)


def question_positions(prompt_ids: Sequence[int], empty_prompt_ids: Sequence[int]) -> list[int]:
    """Positions of the question's tokens: where the prompt differs from the same prompt with an empty
    question (the common prefix and suffix are the template and the image)."""
    a, b = list(prompt_ids), list(empty_prompt_ids)
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    return list(range(start, len(a) - end))


# ---------------------------------------------------------------------- the explained function
class AnswerLogProb:
    """``f(pixels [B, C, h, w], keep [B, Q]) → [B]``: the answer tokens' summed log-probability for each
    perturbed input; ``keep[b, j] = 0`` hides question token j from attention."""

    def __init__(self, model: MultimodalLM, inputs: ExplainInputs, positions: Sequence[int],
                 on_eval: Callable[[int], None] | None = None) -> None:  # fmt: skip
        self.model, self.inputs, self.on_eval = model, inputs, on_eval
        self.positions = torch.tensor(list(positions), dtype=torch.long, device=inputs.input_ids.device)
        self.targets = torch.tensor(inputs.target_ids, dtype=torch.long, device=inputs.input_ids.device)
        self.evaluations = 0

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        batch = pixels.shape[0]
        ids = self.inputs.input_ids.expand(batch, -1)
        mask = torch.ones_like(ids)
        if keep is not None and len(self.positions):
            mask[:, self.positions] = (keep > 0.5).long()
        n = len(self.targets)
        placement = placement_of(self.model)
        with (
            placement.autocast(),
            self.model.fuse(ids, {MODALITY: pixels}, {MODALITY: [1] * batch}) as embeds,
        ):
            logits = self.model.llm(
                inputs_embeds=embeds, attention_mask=mask, use_cache=False, logits_to_keep=n
            ).logits[:, -n:]
        logp = F.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(-1, self.targets[None, :, None].expand(batch, n, 1))[..., 0]
        self.evaluations += batch
        if self.on_eval is not None:
            self.on_eval(batch)
        return picked.sum(dim=-1)


# ---------------------------------------------------------------------- Captum
def _binary_cosine_kernel(_original, _perturbed, interpretable: torch.Tensor, **_) -> float:
    """LIME's sample weight: exp(−d² / w²) of the cosine distance between the coalition and the full
    input in the binary interpretable space (as ``lime``'s LimeImageExplainer, w = 0.25)."""
    z = interpretable.float().flatten()
    norm = float(z.norm())
    distance = 1.0 if norm == 0 else 1.0 - float(z.sum()) / (norm * z.numel() ** 0.5)
    return float(np.exp(-(distance**2) / LIME_KERNEL_WIDTH**2))


def captum_attribute(method: str, f: AnswerLogProb, inputs: tuple, baselines: tuple, masks: tuple,
                     samples: int, batch: int) -> torch.Tensor:  # fmt: skip
    """One value per feature ``[F]`` (features numbered across the inputs by ``masks``)."""
    from captum.attr import FeatureAblation, KernelShap, Lime

    common = {"baselines": baselines, "feature_mask": masks, "perturbations_per_eval": batch}
    if method == "shap":
        values = KernelShap(f).attribute(inputs, n_samples=samples, return_input_shape=False, **common)
    elif method == "lime":
        from captum._utils.models.linear_model import SkLearnRidge

        lime = Lime(f, interpretable_model=SkLearnRidge(alpha=LIME_RIDGE_ALPHA),
                    similarity_func=_binary_cosine_kernel)  # fmt: skip
        values = lime.attribute(inputs, n_samples=samples, return_input_shape=False, **common)
    else:  # occlusion: one feature at a time, in the inputs' shape; read one value per feature back
        maps = FeatureAblation(f).attribute(inputs, **common)
        count = int(max(int(m.max()) for m in masks)) + 1
        values = torch.zeros(count)
        for m, a in zip(masks, maps, strict=True):
            flat_m = m.expand_as(a).flatten().cpu()
            values.scatter_(0, flat_m, a.detach().float().flatten().cpu())
        return values
    return values.detach().float().reshape(-1).cpu()


@dataclass
class PerturbationResult:
    method: str
    samples: int | None  # model evaluations asked for (None for occlusion: one per feature)
    seed: int | None
    evaluations: int
    regions: Regions = field(repr=False)
    region_values: np.ndarray = field(repr=False)  # [regions]
    tokens: list[str]
    token_positions: list[int]
    token_values: list[float]
    full_log_prob: float  # f(x)
    baseline_log_prob: float  # f(every region at the mean colour, every question token hidden)
    seconds: float
    heatmap: np.ndarray | None = field(default=None, repr=False)  # [H, W] at the original image size

    @property
    def image_total(self) -> float:
        return float(self.region_values.sum())

    @property
    def question_total(self) -> float:
        return float(sum(self.token_values))

    def image_abs_share(self) -> float:
        """Σ|values of image regions| / Σ|all values| (0 when every value is 0)."""
        img = float(np.abs(self.region_values).sum())
        total = img + float(np.abs(self.token_values).sum())
        return img / total if total > 0 else 0.0

    def region_map(self) -> np.ndarray:
        """Values as the patch grid [rows, cols], or per superpixel [regions]."""
        grid = self.regions.grid
        return self.region_values.reshape(grid) if grid is not None else self.region_values

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "samples": self.samples,
            "seed": self.seed,
            "model_evaluations": self.evaluations,
            "regions": self.regions.kind,
            "grid": list(self.regions.grid) if self.regions.grid else None,
            "region_values": self.region_map().tolist(),
            "question_tokens": [
                {"position": p, "text": t, "value": v}
                for p, t, v in zip(self.token_positions, self.tokens, self.token_values, strict=True)
            ],
            "log_prob": self.full_log_prob,
            "baseline_log_prob": self.baseline_log_prob,
            "image_total": self.image_total,
            "question_total": self.question_total,
            "efficiency_gap": self.image_total
            + self.question_total
            - (self.full_log_prob - self.baseline_log_prob),
            "image_abs_share": self.image_abs_share(),
            "seconds": round(self.seconds, 2),
        }


def perturbation_attribution(
    model: MultimodalLM, inputs: ExplainInputs, positions: Sequence[int], tokens: Sequence[str],
    method: str, *, samples: int = DEFAULT_SAMPLES, seed: int = 0, regions: str = "patches",
    grid: int | None = None, batch: int = 8, on_eval: Callable[[int], None] | None = None,
) -> PerturbationResult:  # fmt: skip
    """``method`` (shap, lime, occlusion) attributions of the answer's log-probability to the image's
    regions and the question tokens at ``positions`` (see the module docstring). Sampling is seeded:
    the same seed gives the same map; the global torch random state is left as it was."""
    if method not in PERTURBATION_METHODS:
        raise OmnifuseError(f"{method!r} is not a perturbation method ({', '.join(PERTURBATION_METHODS)})")
    if inputs.pixels is None:
        raise OmnifuseError(f"{method} needs an image: there are no pixels to perturb")
    pixels = inputs.pixels.detach()
    reg = image_regions(model, pixels, regions, grid)
    n_features = reg.count + len(positions)
    if method == "shap" and samples < n_features + 2:
        raise OmnifuseError(
            f"--samples {samples}: Kernel SHAP fits one value per feature ({reg.count} image regions + "
            f"{len(positions)} question tokens = {n_features}) and needs more samples than features; give "
            f"--samples {n_features + 2} or more (a few times more for a steady map), or fewer regions (--grid)"
        )
    device = pixels.device
    keep = torch.ones(1, len(positions), device=device, dtype=pixels.dtype)
    mean = pixels.mean(dim=(-2, -1), keepdim=True).expand_as(pixels)
    labels = reg.labels.to(device)[None, None]
    token_ids = (torch.arange(len(positions), device=device) + reg.count)[None]
    f = AnswerLogProb(model, inputs, positions, on_eval)
    args = ((pixels, keep), (mean, torch.zeros_like(keep)), (labels, token_ids))
    if not positions:  # no question tokens: only the image
        args = tuple(a[:1] for a in args)
    start = time.perf_counter()
    rng = torch.random.fork_rng(devices=[]) if method != "occlusion" else nullcontext()
    with rng:
        torch.manual_seed(seed)
        values = captum_attribute(method, f, *args, samples=samples, batch=batch)
        full = float(f(pixels, keep)[0])
        base = float(f(mean, torch.zeros_like(keep))[0])
    values = values.numpy().astype(np.float64)
    return PerturbationResult(
        method=method,
        samples=None if method == "occlusion" else samples,
        seed=None if method == "occlusion" else seed,
        evaluations=f.evaluations,
        regions=reg,
        region_values=values[: reg.count],
        tokens=list(tokens),
        token_positions=list(positions),
        token_values=values[reg.count :].tolist(),
        full_log_prob=full,
        baseline_log_prob=base,
        seconds=time.perf_counter() - start,
    )


def region_heatmap(
    result: PerturbationResult, box: tuple[int, int, int, int], image: Image.Image
) -> np.ndarray:
    """The region values painted over the part of the original image the encoder saw (nearest)."""
    per_pixel = torch.as_tensor(result.region_values, dtype=torch.float32)[result.regions.labels]
    return to_image(per_pixel, box, image.size, "nearest")


@dataclass(frozen=True)
class PerturbationSettings:
    """``--samples``, ``--seed``, ``--regions``, ``--grid`` and the batch of perturbed inputs per forward."""

    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    regions: str = "patches"
    grid: int | None = None
    batch: int = 8


def perturbation_maps(
    model: MultimodalLM, processor: Processor, image: Image.Image, question: str, inputs: ExplainInputs,
    methods: Sequence[str], settings: PerturbationSettings, on_eval: Callable[[int], None] | None = None,
) -> dict[str, PerturbationResult]:  # fmt: skip
    """The chosen perturbation methods' results, each with its heatmap over the original image."""
    chosen = [m for m in methods if m in PERTURBATION_METHODS]
    if not chosen:
        return {}
    prompt_len = len(inputs.input_ids[0]) - len(inputs.target_ids) + 1
    positions, tokens = question_tokens(processor, image, inputs.input_ids[0, :prompt_len].tolist())
    box = input_box(model.encoders[MODALITY], *image.size)
    out = {}
    for method in chosen:
        result = perturbation_attribution(
            model, inputs, positions, tokens, method, samples=settings.samples, seed=settings.seed,
            regions=settings.regions, grid=settings.grid, batch=settings.batch, on_eval=on_eval,
        )  # fmt: skip
        result.heatmap = region_heatmap(result, box, image)
        out[method] = result
    return out


def question_tokens(
    processor: Processor, image: Image.Image, prompt: Sequence[int]
) -> tuple[list[int], list[str]]:
    """(positions, texts) of the question's tokens in ``prompt`` (the encoded prompt with the image)."""
    empty, _ = encode_prompt(processor, image, "")
    positions = question_positions(prompt, empty)
    return positions, [processor.tokenizer.decode([prompt[p]]) for p in positions]


def planned_evaluations(
    model: MultimodalLM, processor: Processor, image: Image.Image, question: str, methods: Sequence[str],
    settings: PerturbationSettings,
) -> int:  # fmt: skip
    """How many model evaluations the chosen perturbation methods will make (for a progress bar)."""
    chosen = [m for m in methods if m in PERTURBATION_METHODS]
    if not chosen:
        return 0
    prompt, pixels = encode_prompt(processor, image.convert("RGB"), question)
    if pixels is None:
        return 0
    features = image_regions(model, pixels, settings.regions, settings.grid).count
    features += len(question_tokens(processor, image.convert("RGB"), prompt)[0])
    return sum(2 + (features + 1 if m == "occlusion" else settings.samples) for m in chosen)
