"""Builders: recipe specs → flat constructor arguments → modules. Configs never enter nn.Modules.

Dispatch is by spec class (one table per component kind), never by name substrings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from omnifuse.components import Connector, Encoder, Fusion, ImageEncoder, missing_members
from omnifuse.connectors import (
    LinearConnector,
    MLPConnector,
    PerceiverResampler,
    PixelShuffleConnector,
    PoolConnector,
)
from omnifuse.connectors.qformer import build_qformer
from omnifuse.connectors.stack import StackConnector
from omnifuse.connectors.video import FramePool, VideoQFormer
from omnifuse.encoders.audio.asr import Transcriber
from omnifuse.encoders.audio.whisper import build_whisper_encoder
from omnifuse.encoders.multi import MultiEncoder
from omnifuse.encoders.video import FrameEncoder
from omnifuse.encoders.vision.efficientnet import build_efficientnet_lite0
from omnifuse.encoders.vision.hf import build_hf_vision
from omnifuse.encoders.vision.mobilenet import build_mobilenet_v2
from omnifuse.errors import OmnifuseError
from omnifuse.fusion import CrossAttentionFusion
from omnifuse.fusion.late import SpeechToText
from omnifuse.llm import hidden_size, load_llm, vocab_size
from omnifuse.llm.grounding_tokens import add_grounding_tokens
from omnifuse.models.llava_import import llava_parts, load_connector
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import MediaSlot, Processor, Tiling
from omnifuse.processing.processor import load_clip
from omnifuse.recipe import (
    ConnectorPluginSpec,
    CrossAttentionFusionSpec,
    EarlyFusionSpec,
    EfficientNetLite0Spec,
    EncoderPluginSpec,
    FusionPluginSpec,
    HFVisionSpec,
    LinearConnectorSpec,
    MLPConnectorSpec,
    MobileNetV2Spec,
    ModelSpec,
    MultiEncoderSpec,
    PerceiverConnectorSpec,
    PixelShuffleConnectorSpec,
    PluginSpec,
    PoolConnectorSpec,
    QFormerConnectorSpec,
    StackConnectorSpec,
    TilingSpec,
    WhisperEncoderSpec,
)
from omnifuse.recipe.components import FramePoolSpec, FramesEncoderSpec, VideoQFormerSpec
from omnifuse.video import Sampling, load_audio_track, load_video

ENCODER_BUILDERS: dict[type, Callable[..., nn.Module]] = {
    MobileNetV2Spec: lambda s: build_mobilenet_v2(weights=s.weights, image_size=s.image_size, crop=s.crop),
    EfficientNetLite0Spec: lambda s: build_efficientnet_lite0(
        weights=s.weights, image_size=s.image_size, crop=s.crop
    ),
    HFVisionSpec: lambda s: build_hf_vision(s.name, layer=s.layer, drop_cls=s.drop_cls),
    MultiEncoderSpec: lambda s: MultiEncoder([build_encoder(e) for e in s.encoders], s.combine),
    WhisperEncoderSpec: lambda s: build_whisper_encoder(s.weights),
    FramesEncoderSpec: lambda s: FrameEncoder(build_encoder(s.image), _sampling(s).max_frames),
    EncoderPluginSpec: lambda s: s.component()(**s.options()),
}


def _sampling(spec: FramesEncoderSpec) -> Sampling:
    s = spec.sampling
    return Sampling(uniform=s.uniform, fps=s.fps, max_frames=s.uniform or s.max_frames)


def _projector(kind: str, in_dim: int, out_dim: int, hidden: int | None) -> nn.Module:
    return LinearConnector(in_dim, out_dim) if kind == "linear" else MLPConnector(in_dim, out_dim, hidden)


CONNECTOR_BUILDERS: dict[type, Callable[..., nn.Module]] = {
    LinearConnectorSpec: lambda s, i, o: LinearConnector(i, o),
    MLPConnectorSpec: lambda s, i, o: MLPConnector(i, o, s.hidden),
    PoolConnectorSpec: lambda s, i, o: PoolConnector(
        s.grid, _projector(s.projector, i * PoolConnector.width_factor(s.pooling), o, s.hidden), s.pooling
    ),
    PerceiverConnectorSpec: lambda s, i, o: PerceiverResampler(
        i, o, num_latents=s.num_latents, depth=s.depth, heads=s.heads, dim=s.dim, ffn_mult=s.ffn_mult
    ),
    PixelShuffleConnectorSpec: lambda s, i, o: PixelShuffleConnector(
        s.factor, _projector(s.projector, i * s.factor**2, o, s.hidden)
    ),
    QFormerConnectorSpec: lambda s, i, o: build_qformer(
        s.text_model,
        i,
        o,
        init=s.init,
        num_queries=s.num_queries,
        cross_attention_every=s.cross_attention_every,
        embed_dim=s.embed_dim,
        max_text_len=s.max_text_len,
        projector=s.projector,
        hidden=s.hidden,
    ),
    StackConnectorSpec: lambda s, i, o: StackConnector(i, o, factor=s.factor, hidden=s.hidden),
    ConnectorPluginSpec: lambda s, i, o: s.component()(i, o, **s.options()),
}

# Temporal connectors also get the video encoder: its tokens per frame, frame grid and most frames.
VIDEO_CONNECTOR_BUILDERS: dict[type, Callable[..., nn.Module]] = {
    VideoQFormerSpec: lambda s, e, o: VideoQFormer(
        e.output_dim, o, e.tokens_per_frame, e.frame_grid, e.max_frames, num_queries=s.num_queries,
        layers=s.layers, hidden=s.hidden, heads=s.heads, frame_tokens=s.frame_tokens, projector=s.projector,
    ),
    FramePoolSpec: lambda s, e, o: FramePool(
        e.output_dim, o, e.tokens_per_frame, e.frame_grid, grid=s.grid, projector=s.projector, hidden=s.hidden,
        pooling=s.pooling,
    ),
}  # fmt: skip


# Fusion builders get the loaded LLM and its width; cross-attention wraps the LLM's decoder layers.
FUSION_BUILDERS: dict[type, Callable[..., nn.Module | None]] = {
    EarlyFusionSpec: lambda s, llm, d: None,
    CrossAttentionFusionSpec: lambda s, llm, d: CrossAttentionFusion(
        llm, d, every_n=s.every_n, heads=s.heads, ffn_mult=s.ffn_mult
    ),
    FusionPluginSpec: lambda s, llm, d: s.component()(llm, d, **s.options()),
}


def checked(part: object, protocol: type, spec, what: str) -> object:
    """``part`` if it has every member of ``protocol``; an error naming the missing ones otherwise (a
    plugin's class may set data members such as ``output_dim`` only in ``__init__``)."""
    missing = missing_members(part, protocol)
    if missing:
        origin = f"the plugin {spec.type}" if isinstance(spec, PluginSpec) else type(part).__name__
        raise OmnifuseError(
            f"{what}: {origin} built a {type(part).__name__} that lacks {', '.join(missing)} of the "
            f"{protocol.__name__} contract (omnifuse.components; see docs/extending.md)"
        )
    return part


def build_encoder(spec) -> nn.Module:
    return checked(ENCODER_BUILDERS[type(spec)](spec), Encoder, spec, "encoder")


def build_connector(spec, in_dim: int, out_dim: int, encoder: nn.Module | None = None) -> nn.Module:
    if type(spec) in VIDEO_CONNECTOR_BUILDERS:
        if not isinstance(encoder, FrameEncoder):
            raise OmnifuseError(f"connector {spec.type} reads video frames: give it a frames encoder")
        return checked(
            VIDEO_CONNECTOR_BUILDERS[type(spec)](spec, encoder, out_dim), Connector, spec, "connector"
        )
    return checked(CONNECTOR_BUILDERS[type(spec)](spec, in_dim, out_dim), Connector, spec, "connector")


def build_fusion(spec, llm: PreTrainedModel, d_llm: int) -> nn.Module | None:
    fusion = FUSION_BUILDERS[type(spec)](spec, llm, d_llm)
    return None if fusion is None else checked(fusion, Fusion, spec, "fusion")


def build_tiling(spec: TilingSpec | None, encoder: nn.Module, modality: str) -> Tiling | None:
    """The processor's tiling for one modality; ``tile_size: null`` takes the encoder's input size."""
    if spec is None:
        return None
    default = encoder.image_size if isinstance(encoder, ImageEncoder) else None
    size = spec.tile_size if spec.tile_size is not None else default
    if size is None:
        raise OmnifuseError(
            f"model.tiling.{modality}.tile_size is null, but the {modality} encoder "
            f"({type(encoder).__name__}) does not declare an image_size; give tile_size in pixels"
        )
    return Tiling(spec.max_tiles, size, spec.global_view, spec.markers)


def build_model(
    spec: ModelSpec,
    llm: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    encoders: dict[str, nn.Module] | None = None,
    progress: bool = True,
    connectors: dict[str, nn.Module] | None = None,
    llm_dtype: torch.dtype = torch.float32,
    llm_kwargs: dict | None = None,
) -> tuple[MultimodalLM, Processor]:
    """Build the model and its processor. ``llm``/``tokenizer``/``encoders`` may be injected (tests use
    tiny random ones); otherwise they are loaded from the pretrained assets the spec names. Injected
    ``connectors`` (some modalities or all) replace the spec's builders for theirs (an exported folder
    rebuilds a Q-Former from its stored shape instead of the BERT asset). ``llm_dtype``: the dtype the
    LLM's weights are loaded in (see :func:`omnifuse.runtime.load_dtype`); ``llm_kwargs``: more arguments
    of its ``from_pretrained`` (bitsandbytes quantisation, :mod:`omnifuse.models.quantize`)."""
    from_llava = (
        llava_parts(spec) if spec.init_from is not None and llm is None and encoders is None else None
    )
    if from_llava is not None:  # a LLaVA checkpoint's parts; its projector once the connector exists
        llm, tokenizer, encoders = from_llava.llm, from_llava.tokenizer, from_llava.encoders
    if llm is None or tokenizer is None:
        llm, tokenizer = load_llm(spec.llm.name, progress=progress, dtype=llm_dtype, **(llm_kwargs or {}))
    if spec.llm.grounding_tokens:  # before the placeholder ids, which sit past the grown vocabulary
        add_grounding_tokens(llm, tokenizer)
    encoders = encoders if encoders is not None else {m: build_encoder(s) for m, s in spec.encoders.items()}
    d_llm = hidden_size(llm)
    given = connectors or {}
    connectors = {
        m: given[m]
        if m in given
        else build_connector(spec.connectors[m], encoders[m].output_dim, d_llm, encoders[m])
        for m in spec.encoders
    }
    # Placeholder ids sit just past the vocabulary (see omnifuse.fusion.early).
    base = max(vocab_size(llm), len(tokenizer))
    placeholder_ids = {m: base + k for k, m in enumerate(sorted(spec.encoders))}
    fusion = build_fusion(spec.fusion, llm, d_llm)
    model = MultimodalLM(encoders, connectors, llm, placeholder_ids, fusion)
    if from_llava is not None:
        load_connector(model, from_llava.connector, str(spec.init_from))
    slots = {m: _media_slot(model, m, spec) for m in spec.encoders}
    speech_to_text = None
    if spec.asr is not None:
        asr = spec.asr
        transcriber = Transcriber.load(asr.name)
        speech_to_text = SpeechToText(transcriber, batch_size=asr.batch_size, max_seconds=asr.max_seconds)
    return model, Processor(tokenizer, slots, spec.llm.system_prompt, speech_to_text)


def _media_slot(model: MultimodalLM, modality: str, spec: ModelSpec) -> MediaSlot:
    """How the processor feeds one modality: images at a fixed token count (per view with tiling), audio
    clips loaded as 16 kHz waveforms with a token count that follows each clip's length."""
    encoder, enc_spec = model.encoders[modality], spec.encoders[modality]
    placeholder_id = model.placeholder_ids[modality]
    if isinstance(enc_spec, FramesEncoderSpec):
        return _video_slot(model, modality, spec)
    if not isinstance(enc_spec, WhisperEncoderSpec):
        tiling = build_tiling(spec.tiling.get(modality), encoder, modality)
        return MediaSlot(encoder.preprocess, model.tokens_per_item(modality), placeholder_id, tiling)
    max_seconds = enc_spec.max_seconds
    return MediaSlot(
        encoder.preprocess,
        None,  # each clip's own count: tokens_for
        placeholder_id,
        load=lambda source, sample_id: load_clip(source, sample_id, max_seconds),
        tokens_for=lambda features: model.tokens_per_item(modality, features.shape[-1]),
    )


def _video_slot(model: MultimodalLM, modality: str, spec: ModelSpec) -> MediaSlot:
    """Clips decoded and sampled (bounded, omnifuse.video) into frames with timestamps; the token count
    follows each clip's frames; with frame_pool's timestamps each frame's time is written before it;
    with ``audio: true`` the clip's audio track goes to the audio slot."""
    enc_spec, connector = spec.encoders[modality], spec.connectors[modality]
    sampling = _sampling(enc_spec)

    def load(part, sample_id: str):
        name = f"sample {sample_id}: video " + ("data" if part.path is None else f"file {part.path}")
        return load_video(part.source, sampling, part.start, part.end, enc_spec.max_seconds, name)

    def audio_track(part, sample_id: str):
        name = f"sample {sample_id}: video " + ("data" if part.path is None else f"file {part.path}")
        seconds = spec.encoders["audio"].max_seconds
        return load_audio_track(part.source, part.start, part.end, max_seconds=seconds, name=name)

    stamps = isinstance(connector, FramePoolSpec) and connector.timestamps
    return MediaSlot(
        model.encoders[modality].preprocess,
        None,  # each clip's own count: tokens_for (fps sampling varies the frames)
        model.placeholder_ids[modality],
        load=load,
        tokens_for=lambda pixels: model.tokens_per_item(modality, pixels.shape[-1]),
        segments=(lambda clip: [f"at {t:.1f} s:" for t in clip.timestamps]) if stamps else None,
        audio_track=audio_track if enc_spec.audio and "audio" in model.encoders else None,
    )
