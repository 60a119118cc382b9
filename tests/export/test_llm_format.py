"""`--format llm`: the language model alone, LoRA merged (a plain causal-LM folder) or as a PEFT adapter."""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from omnifuse.cli import main
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model


def _ids(tokenizer) -> torch.Tensor:
    messages = [{"role": "user", "content": "what color is the shape?"}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")[
        "input_ids"
    ]


def _run_logits(run, ids) -> torch.Tensor:
    _, model, _ = load_model(RunDir(run), progress=False, device="cpu", dtype="float32")
    assert any("lora_" in n for n, _ in model.llm.named_parameters())  # the run does train LoRA
    with torch.no_grad():
        return model.llm(input_ids=ids).logits


def test_merged_llm_matches_the_run(cnn_run, tmp_path):
    run, _ = cnn_run
    out = tmp_path / "llm"
    assert main(["export", str(run), "--out", str(out), "--format", "llm", "--no-progress"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # the template travels with the tokenizer
    llm = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora_" in n for n, _ in llm.named_parameters())
    ids = _ids(tokenizer)
    with torch.no_grad():
        ours = llm(input_ids=ids).logits
    assert (ours - _run_logits(run, ids)).abs().max() <= 1e-4
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: text-generation" in card
    assert "--format llm" in card and "95 % CI" in card and "Eval manifest sha256" in card


def test_unmerged_llm_is_base_plus_peft_adapter(cnn_run, tmp_path):
    run, _ = cnn_run
    out = tmp_path / "llm-adapter"
    args = ["export", str(run), "--out", str(out), "--format", "llm", "--no-merge-lora", "--no-progress"]
    assert main(args) == 0
    base = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = _ids(AutoTokenizer.from_pretrained(out))
    with torch.no_grad():
        plain = base(input_ids=ids).logits.clone()
        tuned = PeftModel.from_pretrained(base, out / "adapter").eval()(input_ids=ids).logits
    expected = _run_logits(run, ids)
    assert (tuned - expected).abs().max() <= 1e-4
    assert (plain - expected).abs().max() > 1e-4  # the adapter does change the answer


def test_bfloat16_export_stores_bfloat16(cnn_run, tmp_path):
    run, _ = cnn_run
    out = tmp_path / "llm-bf16"
    args = ["export", str(run), "--out", str(out), "--format", "llm", "--dtype", "bfloat16", "--no-progress"]
    assert main(args) == 0
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
