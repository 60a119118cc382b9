"""BLIP-2's caption stage on held-out images: greedy ITG decoding of the Q-Former, and the wiring from the
recipe (objective.eval) through omnifuse eval into eval.json, the printout and both reports."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from omnifuse.data.jsonl import load_jsonl, write_jsonl
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.eval.html import write_html_report
from omnifuse.eval.qformer_captions import itg_greedy
from omnifuse.eval.runner import evaluate_run
from omnifuse.recipe import parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.base import TableData
from omnifuse.tasks.generate.load import load_model
from omnifuse.tasks.generate.printout import eval_printout
from omnifuse.training.loop import train
from tiny import make_parts, make_qformer, tiny_recipe_dict, write_tiny_bert


def _manual_greedy(qf, features, steps):
    """One caption, one token at a time, with the full ITG forward each step (no batching)."""
    ids = torch.tensor([[qf.tokenizer.cls_token_id]])
    for _ in range(steps):
        logits = qf.lm_logits(qf.joint_states(features, ids, torch.ones_like(ids), causal=True))
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        if ids[0, -1].item() == qf.tokenizer.sep_token_id:
            break
    return qf.tokenizer.decode(ids[0, 1:], skip_special_tokens=True).strip()


def test_greedy_itg_batch_equals_one_at_a_time():
    qf = make_qformer(in_dim=16, num_queries=3).eval()
    torch.manual_seed(3)
    features = torch.randn(3, 9, 16)
    with torch.no_grad():
        batch = itg_greedy(qf, features, max_len=6)
        singles = [_manual_greedy(qf, features[i : i + 1], 5) for i in range(3)]
    assert batch == singles


def test_a_trained_qformer_writes_its_captions_back():
    qf = make_qformer(in_dim=16, num_queries=2)
    torch.manual_seed(1)
    features = torch.randn(2, 9, 16)
    captions = ["a red circle", "the blue triangle"]
    ids, mask = qf.tokenize(captions)
    opt = torch.optim.AdamW(qf.parameters(), lr=1e-2)
    for _ in range(25):  # the ITG loss alone (training.qformer_pretrain's third loss)
        hidden = qf.joint_states(features, ids, mask, causal=True)[:, qf.num_queries :]
        logits = qf.lm_logits(hidden[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert itg_greedy(qf.eval(), features) == captions


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from tiny import write_color_dataset

    root = tmp_path_factory.mktemp("qcap")
    data = write_color_dataset(root / "colors")
    captions = [
        Sample(f"c{s.id}", (Message("user", (ImagePart(s.images()[0]),)), Message("assistant", (TextPart(f"a {s.answer()} one"),))),
               {"task": "caption"})
        for s in load_jsonl(data)
    ]  # fmt: skip
    cap_file = write_jsonl(captions, root / "colors" / "captions.jsonl")
    raw = tiny_recipe_dict(data)
    bert = write_tiny_bert(root / "bert")
    raw["model"]["connectors"]["image"] = {
        "type": "qformer",
        "text_model": str(bert),
        "num_queries": 3,
        "max_text_len": 8,
    }
    raw["stages"][0].update(objective={"type": "qformer", "eval": str(cap_file), "eval_limit": 10}, data=str(cap_file))  # fmt: skip
    raw["stages"] = raw["stages"][:1]  # the caption stage alone: the LLM only answers the (few) VQA questions
    raw["data"] |= {"eval": str(cap_file), "eval_limit": 2}  # caption samples (meta.task) through the LLM too
    raw["eval"]["blind"] = False
    train(parse_recipe(raw), root / "run", parts=make_parts(), progress=False)
    run = RunDir(root / "run")
    loaded = load_model(run, progress=False, parts=make_parts())
    outcome = evaluate_run(run, progress=False, loaded=loaded)
    return run, outcome, loaded


def test_eval_scores_the_caption_stage_on_its_held_out_data(evaluated):
    run, outcome, _ = evaluated
    saved = json.loads((run.path / "eval.json").read_text())["captions"]
    assert list(saved) == ["align"]  # by the qformer stage's name
    scores = saved["align"]
    assert scores["n"] == 10 and scores["decoder"] == "Q-Former ITG, greedy"
    for metric in ("bleu4", "cider_d", "rouge_l"):
        low, high = scores[f"{metric}_ci95"]
        assert low <= scores[metric] <= high
    assert len(scores["examples"]) == 8 and scores["examples"][0]["references"][0].startswith("a ")
    tables = [
        t
        for t in eval_printout(outcome, run.path)
        if isinstance(t, TableData) and t.title.startswith("stage align")
    ]
    assert [row[0] for row in tables[0].rows] == [
        "BLEU-4",
        "CIDEr-D (×100)",
        "ROUGE-L (×100)",
        "exact match %",
    ]
    # The LLM's answers to the caption samples of data.eval are scored by the caption metrics (eval.scoring).
    llm = json.loads((run.path / "eval.json").read_text())["metrics"]["caption"]
    assert llm["n"] == 2 and {"bleu4", "cider_d", "rouge_l"} <= set(llm)
    report = (run.path / "report.md").read_text()
    assert "## Captioning: stage align" in report and "| BLEU-4 |" in report


def test_html_report_shows_the_caption_table(evaluated):
    run, _, loaded = evaluated
    page = write_html_report(run, loaded=loaded, samples=2, explained=0, progress=False).read_text()
    assert 'id="captions-align"' in page and "CIDEr-D (×100)" in page
