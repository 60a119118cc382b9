"""Why did the model answer that? Attention to the image tokens, gradient × input on the pixels and the
answer's log-probability with and without the image, for one image and one question.

Every explanation is about *answer tokens*: by default the first token of the model's own greedy
answer, or all tokens of an answer the caller gives (teacher-forced). The token ``t`` is predicted at
position ``p_t`` (the position just before it); attention rows, gradients and the logit lens
(:mod:`omnifuse.explain.lens`) are all taken at these predicting positions.

One forward pass does it all: the LLM runs with eager attention (the only implementation that returns
attention weights) and ``output_attentions=True``, forward hooks on the decoder layers keep their
outputs for the logit lens, and the pixel tensor the encoder receives requires grad, so the
gradient of the answer's log-probability reaches the pixels even when the encoder is frozen
(:meth:`MultimodalLM.encode` keeps the graph when the input asks for it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from omnifuse.errors import OmnifuseError
from omnifuse.explain.imagemap import input_box, to_image
from omnifuse.explain.inputs import (
    MODALITY,
    ExplainInputs,
    answer_token_ids,
    check_supported,
    encode_prompt,
    parse_layers,
    question_sample,
)
from omnifuse.explain.lens import LensResult, logit_lens
from omnifuse.explain.perturbation import (
    DEFAULT_METHODS,
    PerturbationResult,
    PerturbationSettings,
    parse_methods,
    perturbation_maps,
)
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Processor
from omnifuse.runtime import placement_of


def _ids(values: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Indices as a long tensor on ``like``'s device."""
    return torch.tensor(list(values), dtype=torch.long, device=like.device)


def _arange(values: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    return torch.arange(len(values), device=like.device)


# ---------------------------------------------------------------------- one forward pass
@contextmanager
def eager_attention(llm: nn.Module) -> Iterator[None]:
    """Run the LLM with eager attention (SDPA and flash kernels return no attention weights), then put
    back the implementation it had, through the config API (``set_attn_implementation``)."""
    before = getattr(llm.config, "_attn_implementation", None)
    switch = before != "eager"
    if switch:
        llm.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch and before is not None:
            llm.set_attn_implementation(before)


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    decoder = llm.get_decoder() if hasattr(llm, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise OmnifuseError(
            f"explain cannot find the decoder layers of {type(llm).__name__} (expected llm.get_decoder().layers)"
        )
    return layers


@dataclass
class ForwardResult:
    logits: torch.Tensor  # [T, V], float
    attentions: list[torch.Tensor] | None  # per layer [H, T, T]
    layer_outputs: list[torch.Tensor]  # per layer [T, D]
    pixel_grad: torch.Tensor | None  # d sum_t log p(target_t) / d pixels, [1, ...]
    log_probs: list[float]  # per target token


def explain_forward(model: MultimodalLM, inputs: ExplainInputs, attentions: bool = True) -> ForwardResult:
    """The one forward (+ backward to the pixels) every explanation reads from."""
    llm = model.llm
    layers = decoder_layers(llm)
    outputs: list[torch.Tensor | None] = [None] * len(layers)

    def keep(index: int):
        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            outputs[index] = hidden.detach()[0]

        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    pixels = inputs.pixels.detach().clone().requires_grad_(True) if inputs.pixels is not None else None
    media = {MODALITY: pixels} if pixels is not None else {}
    counts = {MODALITY: [1 if pixels is not None else 0]}
    mask = torch.ones_like(inputs.input_ids)
    placement = placement_of(model)
    try:
        with eager_attention(llm) if attentions else nullcontext(), torch.enable_grad():
            with placement.autocast(), model.fuse(inputs.input_ids, media, counts) as embeds:
                out = llm(
                    inputs_embeds=embeds, attention_mask=mask, use_cache=False, output_attentions=attentions
                )
            logits = out.logits[0]
            logp = F.log_softmax(logits[inputs.target_positions].float(), dim=-1)
            target_lp = logp[_arange(inputs.target_ids, logp), _ids(inputs.target_ids, logp)]
            grad = None
            if pixels is not None and pixels.requires_grad:
                (grad,) = torch.autograd.grad(target_lp.sum(), pixels, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    atts = None
    if attentions:
        if out.attentions is None or any(a is None for a in out.attentions):
            raise OmnifuseError(
                f"{type(llm).__name__} returned no attention weights even with eager attention"
            )
        atts = [a.detach()[0].float() for a in out.attentions]
    if any(o is None for o in outputs):
        raise OmnifuseError("not every decoder layer ran; cannot build the logit lens")
    return ForwardResult(
        logits.detach().float(),
        atts,
        [o for o in outputs if o is not None],
        grad,
        target_lp.detach().tolist(),
    )


# ---------------------------------------------------------------------- attention
@dataclass
class AttentionResult:
    layers: list[int]
    per_token: list[list[float]]  # [answer tokens][image tokens], mean over heads and layers
    mass: list[float]  # [image tokens]: per_token averaged over the answer tokens
    image_share: float  # sum of ``mass``: the share of the answer's attention that goes to the image
    share_per_layer: list[float]  # every layer (not only the chosen ones), mean over heads and answer tokens
    grid: tuple[int, int] | None
    reason: str | None  # why there is no heatmap (grid is None)
    heatmap: np.ndarray | None = field(default=None, repr=False)  # [H, W] at the original image size

    def to_json(self) -> dict:
        return {
            "layers": self.layers,
            "image_share": self.image_share,
            "mass_per_image_token": self.mass,
            "per_answer_token": self.per_token,
            "image_share_per_layer": self.share_per_layer,
            "grid": list(self.grid) if self.grid else None,
            "heatmap_skipped": self.reason,
        }


def no_grid_reason(model: MultimodalLM) -> str:
    connector = model.connectors[MODALITY]
    n = model.media_tokens_per_item(MODALITY)
    name = type(connector).__name__
    if n == 1:
        return (
            f"the connector ({name}) turns the image into 1 token, which stands for the whole image: its attention "
            "cannot be placed on any region (the attention mass is still reported)"
        )
    if model.encoders[MODALITY].token_grid() is None:
        return (
            f"the image encoder ({type(model.encoders[MODALITY]).__name__}) declares no single spatial grid for "
            f"its tokens, so the {n} image tokens cannot be placed on the image (the attention mass per token is "
            "still reported)"
        )
    if connector.output_grid(model.encoders[MODALITY].token_grid()) is None:
        return (
            f"the connector ({name}) makes {n} learned latents/queries that each read the whole image, not "
            "image regions, so there is no map to draw (the attention mass per token is still reported)"
        )
    return (
        f"the model does not declare a spatial grid for its {n} image tokens (encoder token_grid() / connector "
        "output_grid()), so they cannot be placed on the image (the attention mass per token is still reported)"
    )


def image_attention(
    model: MultimodalLM, fwd: ForwardResult, inputs: ExplainInputs, layers: Sequence[int]
) -> AttentionResult:
    """Attention from each answer token's predicting position to the image tokens, mean over heads and
    the chosen layers. Each row is part of a softmax over all earlier positions: non-negative, sum ≤ 1."""
    assert fwd.attentions is not None
    img = _ids(inputs.image_positions, fwd.attentions[0])
    rows = _ids(inputs.target_positions, fwd.attentions[0])
    per_layer = torch.stack([a[:, rows][:, :, img] for a in fwd.attentions])  # [L, H, n, I]
    chosen = per_layer[list(layers)].mean(dim=(0, 1))  # [n, I]
    mass = chosen.mean(dim=0)
    grid = model.media_grid(MODALITY)
    return AttentionResult(
        list(layers),
        chosen.tolist(),
        mass.tolist(),
        float(mass.sum()),
        per_layer.mean(dim=1).sum(dim=-1).mean(dim=-1).tolist(),
        grid,
        None if grid is not None else no_grid_reason(model),
    )


@dataclass
class GradientResult:
    heatmap: np.ndarray | None = field(repr=False)  # [H, W] at the original image size, ≥ 0
    input_map: np.ndarray | None = field(repr=False)  # [h, w] over the encoder's input
    reason: str | None = None

    def to_json(self) -> dict:
        if self.heatmap is None:
            return {"skipped": self.reason}
        return {
            "total": float(self.heatmap.sum()),
            "max": float(self.heatmap.max()),
            "input_size": list(self.input_map.shape) if self.input_map is not None else None,
        }


def gradient_x_input(
    model: MultimodalLM, fwd: ForwardResult, inputs: ExplainInputs, image: Image.Image
) -> GradientResult:
    """|Σ_channels ∂ log p(answer) / ∂x · x| on the pixel tensor the encoder receives, mapped back to
    the original image size."""
    if inputs.pixels is None or fwd.pixel_grad is None:
        return GradientResult(None, None, "the answer's log-probability does not depend on the pixels")
    if inputs.pixels.dim() != 4:
        return GradientResult(
            None,
            None,
            f"the encoder's input is not one image tensor [C, H, W] (shape {tuple(inputs.pixels.shape[1:])}); "
            "gradient maps need a single-image encoder",
        )
    contrib = (fwd.pixel_grad[0] * inputs.pixels[0]).sum(dim=0).abs()  # [h, w]
    box = input_box(model.encoders[MODALITY], *image.size)
    heatmap = to_image(contrib, box, image.size, "bilinear").clip(min=0)
    return GradientResult(heatmap, contrib.float().cpu().numpy())


def attention_heatmap(model: MultimodalLM, att: AttentionResult, image: Image.Image) -> np.ndarray | None:
    """The attention mass per grid cell, each cell painted over its region of the image (nearest)."""
    if att.grid is None:
        return None
    grid = torch.tensor(att.mass, device="cpu").reshape(att.grid)  # drawn on the CPU
    box = input_box(model.encoders[MODALITY], *image.size)
    return to_image(grid, box, image.size, "nearest")


# ---------------------------------------------------------------------- modality contribution
@torch.no_grad()
def answer_log_prob(
    model: MultimodalLM,
    processor: Processor,
    image: Image.Image | None,
    question: str,
    target_ids: Sequence[int],
) -> tuple[float, str]:
    """Sum of the target tokens' log-probabilities (teacher-forced) after this prompt, and the token
    the model would put first instead."""
    prompt_ids, pixels = encode_prompt(processor, image, question)
    placement = placement_of(model)
    inputs = ExplainInputs.build(
        prompt_ids, pixels, model.placeholder_ids.get(MODALITY), target_ids, device=placement.device
    )
    media = {MODALITY: inputs.pixels} if inputs.pixels is not None else {}
    counts = {MODALITY: [1 if inputs.pixels is not None else 0]}
    with placement.autocast(), model.fuse(inputs.input_ids, media, counts) as embeds:
        logits = model.llm(
            inputs_embeds=embeds, attention_mask=torch.ones_like(inputs.input_ids), use_cache=False
        ).logits[0]
    logp = F.log_softmax(logits[inputs.target_positions].float(), dim=-1)
    total = float(logp[_arange(target_ids, logp), _ids(target_ids, logp)].sum())
    return total, processor.tokenizer.decode([int(logp[0].argmax())])


def blank_like(image: Image.Image) -> Image.Image:
    """A uniform grey image of the same size, at the image's mean brightness (no shape, no colour)."""
    level = int(round(float(np.asarray(image.convert("L"), dtype=np.float32).mean())))
    return Image.new("RGB", image.size, (level, level, level))


@dataclass
class Contribution:
    condition: str
    log_prob: float
    top_token: str

    def to_json(self) -> dict:
        return {"condition": self.condition, "log_prob": self.log_prob, "prob": float(np.exp(self.log_prob)),
                "top_first_token": self.top_token}  # fmt: skip


def modality_contribution(
    model: MultimodalLM, processor: Processor, image: Image.Image, question: str, target_ids: Sequence[int]
) -> list[Contribution]:
    rows = []
    for name, img in (("with image", image), ("without image", None), ("blank image", blank_like(image))):
        lp, top = answer_log_prob(model, processor, img, question, target_ids)
        rows.append(Contribution(name, lp, top))
    return rows


# ---------------------------------------------------------------------- everything together
@dataclass
class Explanation:
    question: str
    answer: str  # the greedy answer, or the given one
    answer_given: bool
    target_ids: list[int]
    target_tokens: list[str]
    log_probs: list[float]
    layers: list[int]
    attention: AttentionResult | None
    attention_reason: str | None
    gradient: GradientResult
    contributions: list[Contribution]
    lens: LensResult
    image_size: tuple[int, int]
    methods: tuple[str, ...] = DEFAULT_METHODS
    perturbations: dict[str, PerturbationResult] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "question": self.question,
            "answer": self.answer,
            "answer_given": self.answer_given,
            "explained_tokens": [
                {"id": i, "text": t, "log_prob": lp}
                for i, t, lp in zip(self.target_ids, self.target_tokens, self.log_probs, strict=True)
            ],  # fmt: skip
            "image_size": list(self.image_size),
            "attention": self.attention.to_json() if self.attention else {"skipped": self.attention_reason},
            "gradient_x_input": self.gradient.to_json(),
            "modality_contribution": [c.to_json() for c in self.contributions],
            "logit_lens": self.lens.to_json(),
            "methods": list(self.methods),
            **(
                {"perturbation": {m: r.to_json() for m, r in self.perturbations.items()}}
                if self.perturbations
                else {}
            ),
        }


def greedy_first_token(model: MultimodalLM, prompt_ids: Sequence[int], pixels: torch.Tensor | None) -> int:
    placement = placement_of(model)
    ids = torch.tensor([list(prompt_ids)], device=placement.device)
    pixels = pixels.to(placement.device) if pixels is not None else None
    media = {MODALITY: pixels} if pixels is not None else {}
    counts = {MODALITY: [1 if pixels is not None else 0]}
    with torch.no_grad(), placement.autocast(), model.fuse(ids, media, counts) as embeds:
        logits = model.llm(
            inputs_embeds=embeds, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=1
        ).logits
    return int(logits[0, -1].argmax())


def explained_answer(
    model: MultimodalLM, processor: Processor, image: Image.Image, question: str, answer: str | None,
    max_new_tokens: int,
) -> tuple[list[int], torch.Tensor | None, list[int], str]:  # fmt: skip
    """(prompt ids, pixels, the explained token ids, the answer text): the given answer's tokens, or the
    model's greedy first token (and its greedy answer of ``max_new_tokens``, shown)."""
    from omnifuse.generation.engine import Engine, GenerationConfig

    if answer is not None:
        prompt_ids, target_ids = answer_token_ids(processor, image, question, answer)
        _, pixels = encode_prompt(processor, image, question)
        answer_text = answer
    else:
        prompt_ids, pixels = encode_prompt(processor, image, question)
        target_ids = [greedy_first_token(model, prompt_ids, pixels)]
        answer_text = (
            Engine(model, processor).generate(
                [question_sample(image, question)], GenerationConfig(max_new_tokens)
            )[0]
            if max_new_tokens > 0
            else processor.tokenizer.decode(target_ids, skip_special_tokens=True).strip()
        )
    return prompt_ids, pixels, target_ids, answer_text


def explain(
    model: MultimodalLM,
    processor: Processor,
    image: Image.Image,
    question: str,
    answer: str | None = None,
    layers: str | None = None,
    max_new_tokens: int = 16,
    contributions: bool = True,
    methods: Sequence[str] | None = None,
    settings: PerturbationSettings | None = None,
    on_eval: Callable[[int], None] | None = None,
) -> Explanation:
    """Explain the model's answer to ``question`` about ``image`` (see the module docstring).
    ``methods``: which maps (default attention and gradient); shap, lime and occlusion add perturbation
    maps (:mod:`omnifuse.explain.perturbation`, ``settings``; ``on_eval(n)`` after each n evaluations)."""
    check_supported(model, processor)
    chosen_methods = parse_methods(methods)
    num_layers = len(decoder_layers(model.llm))
    chosen = parse_layers(layers, num_layers)
    image = image.convert("RGB")
    placeholder = model.placeholder_ids[MODALITY]
    prompt_ids, pixels, target_ids, answer_text = explained_answer(
        model, processor, image, question, answer, max_new_tokens
    )
    inputs = ExplainInputs.build(
        prompt_ids,
        pixels,
        placeholder if model.fusion is None else None,
        target_ids,
        device=placement_of(model).device,
    )
    use_attention = model.fusion is None and bool(inputs.image_positions)
    fwd = explain_forward(model, inputs, attentions=use_attention)
    attention, reason = None, None
    if use_attention:
        attention = image_attention(model, fwd, inputs, chosen)
        attention.heatmap = attention_heatmap(model, attention, image)
    else:
        reason = "cross-attention fusion: the image never enters the text, so no text token attends to image tokens"
    contrib = modality_contribution(model, processor, image, question, target_ids) if contributions else []
    perturbations = perturbation_maps(model, processor, image, question, inputs, chosen_methods,
                                      settings or PerturbationSettings(), on_eval)  # fmt: skip
    tok = processor.tokenizer
    return Explanation(
        question=question,
        answer=answer_text,
        answer_given=answer is not None,
        target_ids=target_ids,
        target_tokens=[tok.decode([t]) for t in target_ids],
        log_probs=fwd.log_probs,
        layers=chosen,
        attention=attention,
        attention_reason=reason,
        gradient=gradient_x_input(model, fwd, inputs, image),
        contributions=contrib,
        lens=logit_lens(model.llm, fwd.layer_outputs, inputs.target_positions, target_ids, tok),
        image_size=image.size,
        methods=chosen_methods,
        perturbations=perturbations,
    )
