"""model.llm.grounding_tokens: <ref> </ref> <box> </box> as one token each, with trainable embedding rows
that the run saves and a reload brings back (same greedy answers)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from omnifuse.data.boxes import parse_grounding
from omnifuse.data.sample import select_subset
from omnifuse.data.sources import load_data
from omnifuse.eval.vqa import evaluate_vqa
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.llm.grounding_tokens import ROWS, TAGS, add_grounding_tokens, bake_added_tokens
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training import evaluation
from omnifuse.training.loop import train
from tiny import CHATML, make_llm, make_parts, make_tokenizer, tiny_recipe_dict, write_color_dataset

TEXT = "<ref>the red shape</ref><box>(12,40),(501,999)</box>"


def test_the_tokenizer_grows_by_four_one_token_per_tag_and_decoding_keeps_them():
    tokenizer = make_tokenizer(CHATML)
    llm = make_llm(len(tokenizer))
    before = len(tokenizer)
    plain = [len(tokenizer.encode(t, add_special_tokens=False)) for t in TAGS]
    ids = add_grounding_tokens(llm, tokenizer)
    assert len(tokenizer) == before + 4 and ids == list(range(before, before + 4))
    assert max(plain) > 1  # split into pieces before
    assert [tokenizer.encode(t, add_special_tokens=False) for t in TAGS] == [[i] for i in ids]
    encoded = tokenizer.encode(TEXT, add_special_tokens=False)
    assert set(ids) <= set(encoded)
    decoded = tokenizer.decode(encoded, skip_special_tokens=True)  # as the engine decodes
    assert decoded == TEXT
    [grounded] = parse_grounding(decoded)
    assert grounded.phrase == "the red shape" and len(grounded.boxes) == 1
    # The LLM embeds and scores the new ids with its new rows (tied).
    assert llm.get_input_embeddings().num_embeddings == before + 4
    out = llm(torch.tensor([encoded]))
    assert out.logits.shape[-1] == before + 4


def test_baking_gives_a_plain_model_with_the_same_logits():
    tokenizer = make_tokenizer(CHATML)
    llm = make_llm(len(tokenizer))
    add_grounding_tokens(llm, tokenizer)
    with torch.no_grad():
        getattr(llm.get_input_embeddings(), ROWS).normal_()
    ids = torch.tensor([tokenizer.encode(TEXT, add_special_tokens=False)])
    wrapped = llm(ids).logits
    assert bake_added_tokens(llm)
    assert type(llm.get_input_embeddings()) is torch.nn.Embedding
    torch.testing.assert_close(llm(ids).logits, wrapped)


def _grounding_data(folder: Path) -> Path:
    vqa = write_color_dataset(folder, n=12)
    rows = []
    for line in vqa.read_text().splitlines():
        s = json.loads(line)
        s["messages"][1]["content"][0]["text"] = TEXT
        s["meta"] = {"task": "grounding", "question_type": "grounding"}
        rows.append(s)
    out = folder / "grounding.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_a_run_with_the_tokens_trains_saves_and_reloads_their_rows(tmp_path, monkeypatch):
    data = _grounding_data(tmp_path / "g")
    raw = tiny_recipe_dict(data)
    raw["model"]["llm"]["grounding_tokens"] = True
    raw["eval"] |= {"every": 4, "during_limit": 6}
    raw["generation"] = {"max_new_tokens": 12}
    seen = []

    def recording(engine, *args, **kwargs):
        result = evaluate_vqa(engine, *args, **kwargs)
        seen.append(result)
        return result

    monkeypatch.setattr(evaluation, "evaluate_vqa", recording)
    recipe = parse_recipe(raw)
    train(recipe, tmp_path / "run", parts=make_parts(), progress=False)

    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    [name] = [k for k in saved if k.endswith(ROWS)]
    assert saved[name].shape[0] == 4
    fresh, _ = build_model(recipe.model, **make_parts())
    assert not torch.equal(fresh.get_parameter(name).detach(), saved[name])  # stage 2 (LoRA) trained them

    loaded_recipe, model, processor = load_model(RunDir(tmp_path / "run"), progress=False, parts=make_parts())
    assert len(processor.tokenizer) == len(make_parts()["tokenizer"]) + 4
    torch.testing.assert_close(model.get_parameter(name).detach(), saved[name])
    subset = select_subset(load_data(str(data)), 6, loaded_recipe.data.eval_seed)
    cfg = GenerationConfig(12, 0.0, 1.0, seed=0)
    again = evaluate_vqa(Engine(model, processor), subset, cfg, 8, progress=False)
    assert [p["prediction"] for p in again.predictions] == [p["prediction"] for p in seen[-1].predictions]
