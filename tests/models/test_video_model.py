"""Video through the spine: frames → image encoder per frame → temporal connector → LLM (tiny parts)."""

from __future__ import annotations

import pytest
import torch

from omnifuse.data.jsonl import load_jsonl
from omnifuse.errors import OmnifuseError
from omnifuse.fusion import scatter_features
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from tiny import make_video_parts, tiny_recipe_dict, video_recipe_dict, write_video_dataset

QFORMER = {
    "type": "video_qformer",
    "num_queries": 3,
    "layers": 1,
    "hidden": 16,
    "heads": 2,
    "frame_tokens": 2,
}
POOL = {"type": "frame_pool", "grid": 1}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_video_dataset(tmp_path_factory.mktemp("video") / "clips")


def build(data, tokenizer, connector, sampling=None, max_frames=4, audio=False):
    recipe = parse_recipe(video_recipe_dict(data, connector, sampling, audio))
    model, proc = build_model(recipe.model, **make_video_parts(tokenizer, max_frames, audio))
    return model.eval(), proc


def test_video_qformer_gives_num_queries_tokens_and_the_contract_is_checked(clips, chatml_tokenizer):
    model, proc = build(clips, chatml_tokenizer, QFORMER)
    sample = load_jsonl(clips)[0]
    enc = proc.encode(sample, for_generation=True)
    pid = model.placeholder_ids["video"]
    assert enc.input_ids.count(pid) == 3 == model.tokens_per_item("video", 4)
    assert enc.media["video"][0].shape == (3, 32, 32, 4)  # frames last: 4 sampled frames
    batch = proc.collate([enc])
    with torch.no_grad():
        features, lengths = model.encode("video", batch.media["video"], batch.media_lengths["video"])
        assert features.shape == (1, 3, 32) and lengths.tolist() == [3]
        embeds = model.llm.get_input_embeddings()(batch.input_ids.clamp(max=0))
        short = batch.input_ids.clone()
        short[short == pid] = 0  # the text lost its placeholders: the count check names both numbers
        with pytest.raises(
            OmnifuseError, match=r"sample v0: the text holds 0 placeholder tokens .* 3 feature"
        ):
            scatter_features(embeds, short, pid, features, [1], ["v0"], lengths)


def test_frame_pool_writes_each_frames_time_before_its_token(clips, chatml_tokenizer):
    model, proc = build(clips, chatml_tokenizer, POOL)
    enc = proc.encode(load_jsonl(clips)[0], for_generation=True)
    pid = model.placeholder_ids["video"]
    assert enc.input_ids.count(pid) == 4  # one pooled token per frame
    text = proc.tokenizer.decode([t for t in enc.input_ids if t != pid])
    # 6 frames at 4 fps = 1.5 s; uniform 4 → centres 0.1875, 0.5625, 0.9375, 1.3125 s → frames at 0, .5, .75, 1.25
    assert "at 0.0 s:at 0.5 s:at 0.8 s:at 1.2 s:" in text
    no_stamps = build(clips, chatml_tokenizer, {**POOL, "timestamps": False})[1]
    assert "at 0.0 s" not in no_stamps.tokenizer.decode(no_stamps.encode(load_jsonl(clips)[0]).input_ids[:60])


def test_frame_pool_pools_each_frame_by_its_pooling():
    from omnifuse.connectors.video import FramePool

    # 2 frames of a 2x2 grid of 1-channel features: one bright cell (a small shape) per frame.
    feats = torch.tensor([[[0.0], [0.0], [0.0], [8.0], [4.0], [0.0], [0.0], [0.0]]])
    lengths = torch.tensor([8])
    seen = {}
    for pooling in ("avg", "max", "avgmax"):
        pool = FramePool(1, 1, 4, (2, 2), grid=1, projector="linear", pooling=pooling)
        pool.projector = torch.nn.Identity()  # the pooled values themselves
        seen[pooling], out_lengths = pool(feats, lengths)
        assert out_lengths.tolist() == [2]
    assert seen["avg"].flatten().tolist() == [2.0, 1.0] and seen["max"].flatten().tolist() == [8.0, 4.0]
    assert seen["avgmax"].tolist() == [[[2.0, 8.0], [1.0, 4.0]]]  # both, per frame, in time order
    with pytest.raises(ValueError, match="pooling must be one of"):
        FramePool(1, 1, 4, (2, 2), pooling="median")
    assert FramePool(3, 5, 4, (2, 2), pooling="avgmax").projector(torch.zeros(1, 6)).shape == (1, 5)


@pytest.mark.parametrize(
    "connector", [QFORMER, POOL, {**POOL, "pooling": "avgmax"}], ids=["qformer", "pool", "pool-avgmax"]
)
def test_fps_clips_of_different_lengths_batch_like_alone(clips, chatml_tokenizer, connector):
    model, proc = build(clips, chatml_tokenizer, connector, {"fps": 4, "max_frames": 8}, max_frames=8)
    samples = load_jsonl(clips)[:3]  # 6, 7 and 8 frames
    encoded = [proc.encode(s, for_generation=True) for s in samples]
    assert [e.media["video"][0].shape[-1] for e in encoded] == [6, 7, 8]
    batch = proc.collate(encoded, padding_side="right")
    with torch.no_grad():
        together = model(**batch.model_inputs()).logits
        for b, e in enumerate(encoded):
            alone = model(**proc.collate([e]).model_inputs()).logits
            assert torch.allclose(together[b, : len(e.input_ids)], alone[0], atol=1e-4)


def test_the_audio_track_reaches_the_audio_branch(tmp_path, chatml_tokenizer):
    data = write_video_dataset(tmp_path / "av", n=3, audio=True)
    model, proc = build(data, chatml_tokenizer, QFORMER, audio=True)
    enc = proc.encode(load_jsonl(data)[0], for_generation=True)
    assert len(enc.media["audio"]) == 1 and enc.input_ids.count(model.placeholder_ids["audio"]) > 0
    silent = write_video_dataset(tmp_path / "silent", n=1)  # no sound track: the video alone
    assert "audio" not in proc.encode(load_jsonl(silent)[0], for_generation=True).media


def test_recipe_checks_name_what_to_change(clips):
    raw = video_recipe_dict(clips, {"type": "mlp"})
    with pytest.raises(OmnifuseError, match="temporal connector"):
        parse_recipe(raw)
    raw = video_recipe_dict(clips, QFORMER)
    raw["model"]["encoders"]["video"]["audio"] = True
    with pytest.raises(OmnifuseError, match="there is none; add encoders.audio"):
        parse_recipe(raw)
    raw = video_recipe_dict(clips, QFORMER, sampling={"uniform": 4, "fps": 2})
    with pytest.raises(OmnifuseError, match="exactly one of uniform"):
        parse_recipe(raw)


def test_bad_clips_name_the_sample(clips, chatml_tokenizer, tmp_path):
    model, proc = build(clips, chatml_tokenizer, QFORMER)
    data = tmp_path / "bad.jsonl"
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "0.mp4").write_bytes(b"not a video at all")
    data.write_text(clips.read_text().split("\n")[0].replace('"v0"', '"b0"') + "\n")
    with pytest.raises(OmnifuseError, match=r"sample b0: video file .*0\.mp4 is not a readable video"):
        proc.encode(load_jsonl(data)[0])
    few = build(clips, chatml_tokenizer, QFORMER, {"uniform": 9}, max_frames=9)[1]
    with pytest.raises(OmnifuseError, match=r"sample v0: .*fewer than the 9"):
        few.encode(load_jsonl(clips)[0])


@pytest.mark.slow
def test_a_few_training_steps_and_generation(clips, chatml_tokenizer, tmp_path):
    from omnifuse.training.loop import train

    raw = video_recipe_dict(clips, QFORMER)
    raw["stages"] = [{**raw["stages"][1], "steps": 2, "batch_size": 2, "grad_accum": 1}]  # connectors + LoRA
    recipe = parse_recipe(raw)
    result = train(recipe, tmp_path / "run", progress=False, parts=make_video_parts(chatml_tokenizer))
    rows = (result.run.path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and all('"loss": nan' not in r for r in rows)
    engine = Engine(*build_model(recipe.model, **make_video_parts(chatml_tokenizer)))
    out = engine.generate(load_jsonl(clips)[:3], GenerationConfig(max_new_tokens=3))
    assert len(out) == 3 and all(isinstance(x, str) for x in out)


def test_chat_about_a_video(clips, chatml_tokenizer, tiny_parts, color_data):
    from omnifuse.generation.chat import ChatSession

    recipe = parse_recipe(video_recipe_dict(clips, QFORMER))
    session = ChatSession(
        *build_model(recipe.model, **make_video_parts(chatml_tokenizer)), recipe, max_new_tokens=2
    )
    session.add_video(clips.parent / "clips" / "0.mp4")
    assert isinstance(session.ask("which way does it move?"), str)
    sent = session.history[0].parts
    assert type(sent[0]).__name__ == "VideoPart" and sent[1].text == "which way does it move?"
    with pytest.raises(OmnifuseError, match="not a readable video"):
        session.add_video(clips)  # the JSONL file, not a video
    image_only = parse_recipe(tiny_recipe_dict(color_data))
    no_video = ChatSession(*build_model(image_only.model, **tiny_parts), image_only)
    with pytest.raises(OmnifuseError, match="takes no video"):
        no_video.add_video(clips.parent / "clips" / "0.mp4")
