"""``OmnifuseForConditionalGeneration``: an exported folder as a transformers model.

It wraps omnifuse's :class:`~omnifuse.models.multimodal.MultimodalLM`, rebuilt from ``config.json`` by
omnifuse's own builders (the parts that would read pretrained assets are built in the shapes the config
records, see :mod:`omnifuse.hf.parts`) and then filled with the folder's weights, every name checked
(:mod:`omnifuse.hf.weights`). ``forward`` gives the logits; ``generate`` runs omnifuse's generation
engine, so its answer is the one ``omnifuse chat`` gives.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutput

from omnifuse import __version__
from omnifuse.errors import OmnifuseError
from omnifuse.generation.engine import Engine
from omnifuse.generation.engine import GenerationConfig as EngineConfig
from omnifuse.hf.config import OmnifuseConfig
from omnifuse.hf.media import batch_media, encoded_rows, media_inputs
from omnifuse.hf.parts import (
    build_connector_shape,
    build_encoder_shape,
    build_llm,
    describe_connector,
    describe_encoder,
)
from omnifuse.hf.weights import load_weights_into, write_weights
from omnifuse.llm import hidden_size
from omnifuse.models.builders import build_model
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Processor
from omnifuse.recipe import ModelSpec


def config_of(spec: ModelSpec, model: MultimodalLM) -> OmnifuseConfig:
    """The config.json of a built model: its recipe section and the shapes of its asset-backed parts."""
    return OmnifuseConfig(
        recipe_model=spec.model_dump(mode="json", exclude={"init_from"}),
        llm_config=model.llm.config.to_dict(),
        parts={
            "encoders": {m: describe_encoder(s, model.encoders[m]) for m, s in spec.encoders.items()},
            "connectors": {m: describe_connector(s, model.connectors[m]) for m, s in spec.connectors.items()},
        },
        placeholder_ids=dict(model.placeholder_ids),
        omnifuse_version=__version__,
    )


def model_spec(config: OmnifuseConfig) -> ModelSpec:
    try:
        return ModelSpec.model_validate(config.recipe_model)
    except ValueError as exc:
        raise OmnifuseError(
            f"config.json: its recipe_model section is not a valid model section ({exc})"
        ) from None


def build_parts(config: OmnifuseConfig, tokenizer: PreTrainedTokenizerBase) -> tuple[MultimodalLM, Processor]:
    """The model (random weights, in the exported shapes) and its processor, from a config alone. An ASR
    cascade is left out: it belongs to the processor (:mod:`omnifuse.hf.processing` loads it)."""
    spec = model_spec(config).model_copy(update={"asr": None})
    shapes = config.parts or {}
    llm = build_llm(config.llm_config)
    encoders = {
        m: build_encoder_shape(s, shapes.get("encoders", {}).get(m, {})) for m, s in spec.encoders.items()
    }
    connectors = {}
    for m, s in spec.connectors.items():
        built = build_connector_shape(s, shapes.get("connectors", {}).get(m, {}), hidden_size(llm))
        if built is not None:
            connectors[m] = built
    model, processor = build_model(
        spec, llm=llm, tokenizer=tokenizer, encoders=encoders, connectors=connectors, progress=False
    )
    if config.placeholder_ids and dict(model.placeholder_ids) != dict(config.placeholder_ids):
        raise OmnifuseError(
            f"config.json: placeholder ids {config.placeholder_ids} differ from the rebuilt model's "
            f"{model.placeholder_ids}; the tokenizer files do not belong to this model. Export it again"
        )
    return model.eval(), processor


def local_folder(path) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise OmnifuseError(
            f"{path} is not an exported omnifuse folder (no config.json in it); give the folder "
            "`omnifuse export RUN --out DIR` wrote (hub repositories: download them first, e.g. `hf download`)"
        )
    return folder


class OmnifuseForConditionalGeneration(PreTrainedModel):
    config_class = OmnifuseConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(
        self, config: OmnifuseConfig, model: MultimodalLM | None = None, processor: Processor | None = None
    ) -> None:
        super().__init__(config)
        if model is None or processor is None:
            tokenizer = AutoTokenizer.from_pretrained(local_folder(config.name_or_path))
            model, processor = build_parts(config, tokenizer)
        self.model = model
        self.processor = processor
        if getattr(self, "generation_config", None) is None:
            self.generation_config = None  # the folder's generation_config.json, when loaded from one

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *args, config=None, dtype=None, device_map=None, **kwargs
    ):
        """Rebuild from ``config.json`` and load every weight from the folder's safetensors (never a
        pickle). ``dtype`` stores the weights in that type; ``device_map`` is one device ("cpu", "cuda",
        "auto": the GPU if there is one). Hub-download arguments the Auto classes pass along are unused."""
        folder = local_folder(pretrained_model_name_or_path)
        config = config if isinstance(config, OmnifuseConfig) else OmnifuseConfig.from_pretrained(folder)
        model, processor = build_parts(config, AutoTokenizer.from_pretrained(folder))
        load_weights_into(model, folder)
        wrapper = cls(config, model, processor)
        if (folder / "generation_config.json").is_file():
            wrapper.generation_config = GenerationConfig.from_pretrained(folder)
        dtype = dtype or kwargs.get("torch_dtype")
        if isinstance(dtype, torch.dtype):
            wrapper.to(dtype)
        wrapper.to(_device(device_map))
        return wrapper.eval()

    def save_pretrained(self, save_directory, max_shard_size: str = "2GB", dtype=None, **kwargs) -> None:
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(folder)
        if self.generation_config is not None:
            self.generation_config.save_pretrained(folder)
        write_weights(self.model, folder, dtype or self.model.llm.dtype, max_shard_size)

    def forward(self, input_ids, attention_mask=None, labels=None, **media) -> CausalLMOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        values, counts, lengths = media_inputs(self.model, media, input_ids.shape[0])
        out = self.model(input_ids, attention_mask, values, counts, labels=labels, media_lengths=lengths)
        return CausalLMOutput(loss=out.loss, logits=out.logits)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, generation_config=None, **kwargs) -> torch.Tensor:
        """The prompts followed by their answers (``[B, prompt + longest answer]``, the pad token after a
        shorter answer), decoded by omnifuse's engine: greedy or sampled as the generation config says,
        stopping at the template's end-of-turn token. ``max_new_tokens``, ``do_sample``, ``temperature``,
        ``top_p`` and ``seed`` may be given; other generation settings are refused."""
        media = {k: kwargs.pop(k) for k in list(kwargs) if k in batch_media(self.model)}
        cfg = self._engine_config(generation_config or self.generation_config, kwargs)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        values, counts, lengths = media_inputs(self.model, media, input_ids.shape[0])
        rows = encoded_rows(input_ids, attention_mask, values, counts, lengths)
        self.processor.device = self.device  # the engine's batches go where the model is
        answers: list[list[int]] = [[] for _ in rows]
        for step in Engine(self.model, self.processor).stream(rows, [cfg] * len(rows)):
            if step.errors:
                raise next(iter(step.errors.values()))
            for i, tok in step.tokens:
                answers[i].append(tok)
        longest = max((len(a) for a in answers), default=0)
        out = torch.full((len(rows), longest), self.processor.pad_id, dtype=input_ids.dtype)
        for i, answer in enumerate(answers):
            out[i, : len(answer)] = torch.tensor(answer, dtype=input_ids.dtype)
        return torch.cat([input_ids, out.to(input_ids.device)], dim=1)

    @staticmethod
    def _engine_config(generation_config: GenerationConfig | None, kwargs: dict) -> EngineConfig:
        known = {"max_new_tokens", "do_sample", "temperature", "top_p", "seed"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise OmnifuseError(
                f"generate(): {', '.join(unknown)} not supported by omnifuse's engine; it takes the model's "
                f"inputs (from its processor) and {', '.join(sorted(known))}"
            )
        base = generation_config.to_dict() if generation_config is not None else {}
        settings = {k: base.get(k) for k in known} | kwargs
        sample = bool(settings.get("do_sample"))
        length = settings.get("max_new_tokens")
        try:
            return EngineConfig(
                max_new_tokens=16 if length is None else int(length),
                temperature=float(settings.get("temperature") or 1.0) if sample else 0.0,
                top_p=float(settings.get("top_p") or 1.0) if sample else 1.0,
                seed=settings.get("seed") if sample else None,  # the recipe's, from the folder, as chat uses
            )
        except ValueError as exc:
            raise OmnifuseError(f"generate(): {exc}") from None


def _device(device_map) -> torch.device:
    if device_map is None or device_map == "auto":
        return torch.device("cuda" if device_map == "auto" and torch.cuda.is_available() else "cpu")
    if isinstance(device_map, (str, torch.device, int)):
        return torch.device(device_map)
    raise OmnifuseError(
        f"device_map {device_map!r}: an omnifuse model loads onto one device; give 'cpu', 'cuda', 'cuda:1' "
        "or 'auto'"
    )


def wrap(spec: ModelSpec, model: MultimodalLM, processor: Processor) -> OmnifuseForConditionalGeneration:
    """A built model (a trained run's) as the transformers model an export saves."""
    return OmnifuseForConditionalGeneration(config_of(spec, model), model, processor)
