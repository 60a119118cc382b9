"""Quantised inference (omnifuse.models.quantize): CPU int8 through torch's dynamic quantisation on a tiny
trained run — the layers it replaces, the logits it changes, eval and chat answering through the CLI —
and the CUDA paths that cannot run here: the bitsandbytes configuration they would pass, and their
refusals on this machine."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from omnifuse.cli import console, main
from omnifuse.data.jsonl import load_jsonl
from omnifuse.errors import OmnifuseError
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models import quantize as q
from omnifuse.recipe import RuntimeSpec, parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.runtime import Placement
from omnifuse.tasks.generate.load import load_model
from omnifuse.training.loop import train
from tiny import make_parts, tiny_recipe_dict, write_color_dataset

CPU = Placement(torch.device("cpu"), torch.float32)
GPU = Placement(torch.device("cuda", 0), torch.bfloat16)  # a device object only: nothing runs on it


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny two-stage recipe (connectors, then LoRA on the LLM's q/v projections), trained."""
    root = tmp_path_factory.mktemp("quantize")
    data = write_color_dataset(root / "colors", n=6)
    raw = tiny_recipe_dict(data)
    train(parse_recipe(raw), root / "run", parts=make_parts(), progress=False)
    return root / "run", data


def _load(run, quantize):
    return load_model(RunDir(run), False, make_parts(), quantize=quantize)


def test_int8_quantises_the_decoder_linears_and_keeps_embeddings_and_head_float(tiny_run):
    run, _ = tiny_run
    recipe, model, _ = _load(run, "int8")
    llm = model.llm
    assert recipe.runtime.quantize == "int8"  # what eval records as the model in use
    assert not [n for n, _ in model.named_parameters() if "lora_" in n]  # merged before quantising
    layers = llm.config.num_hidden_layers
    per_layer = 6  # q, k, v, o, gate, up; not down (its input is wider than the hidden size)
    assert q.quantized_linear_count(model) == layers * per_layer
    layer = llm.model.layers[0]
    quantized = [getattr(layer.self_attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    assert all(isinstance(m, DynamicLinear) for m in [*quantized, layer.mlp.gate_proj, layer.mlp.up_proj])
    assert type(llm.get_output_embeddings()) is nn.Linear
    assert llm.get_input_embeddings().weight.dtype == torch.float32
    float_left = {n.rsplit(".", 1)[-1] for n, m in llm.named_modules() if type(m) is nn.Linear}
    assert float_left == {"down_proj", "lm_head"}


def test_int8_logits_stay_close_to_float(tiny_run):
    """int8 per output channel rounds each weight by at most 1/254 of its channel's largest magnitude, and
    each activation tensor by 1/254 of its range (dynamic, per tensor): a relative error of ~0.5 % per
    matrix product, which grows through the 2 × 6 products to a few percent. 5 % relative L2 error on the
    logits leaves room for that and fails for a wrong scale, a dropped bias or unmerged LoRA (each
    ≥ 10 % here); the greedy token must agree at nearly every position."""
    run, _ = tiny_run
    _, ref, _ = _load(run, "none")
    _, quant, _ = _load(run, "int8")
    ids = torch.randint(0, ref.llm.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref.llm(input_ids=ids).logits, quant.llm(input_ids=ids).logits
    rel = ((b - a).norm() / a.norm()).item()
    assert 0 < rel < 0.05, rel
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    assert agree >= 0.9, agree


@pytest.fixture
def tiny_cli(monkeypatch):
    """The CLI loads the run from the tiny parts instead of the packaged assets."""
    import omnifuse.tasks.generate.load as load

    real = load.load_model
    monkeypatch.setattr(
        load, "load_model", lambda run, progress=True, parts=None, **kw: real(run, False, make_parts(), **kw)
    )
    monkeypatch.setattr(console, "out", Console(soft_wrap=True, width=220))


def test_a_quantised_model_generates_what_the_float_one_does(tiny_run):
    """Greedy decoding of the tiny run's questions: the int8 model generates tokens (the tiny model's
    tokens decode to blank text, so the ids are compared), the same as the float model's."""
    run, data = tiny_run
    samples = load_jsonl(data)
    cfg = GenerationConfig(max_new_tokens=4)
    ids = {m: Engine(*_load(run, m)[1:]).generate_ids(samples, cfg) for m in ("none", "int8")}
    assert all(len(t) == 4 for t in ids["int8"])
    assert ids["int8"] == ids["none"]


def test_a_quantised_run_answers_in_eval_and_chat(tiny_run, tiny_cli, capsys):
    run, data = tiny_run
    assert main(["eval", str(run), "--quantize", "int8", "--no-progress", "--no-blind"]) == 0
    assert "evaluation on" in capsys.readouterr().out
    assert json.loads((run / "eval_manifest.json").read_text())["inference"]["quantize"] == "int8"
    predictions = (run / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == len(load_jsonl(data))
    image = data.parent / "img" / "0.png"
    assert (
        main(["chat", str(run), "what color is the shape?", "--image", str(image), "--quantize", "int8"]) == 0
    )


def test_the_bitsandbytes_configuration_a_cuda_load_passes(monkeypatch):
    eight = q.bnb_config("int8", torch.bfloat16)
    assert eight.load_in_8bit and not eight.load_in_4bit
    four = q.bnb_config("int4", torch.bfloat16)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    monkeypatch.setattr(q.importlib.util, "find_spec", lambda name: object())  # as if installed
    plan = q.plan_quantize("int4", GPU, "--quantize")
    assert plan.bitsandbytes and not plan.dynamic
    assert plan.llm_kwargs["device_map"] == {"": 0}
    assert plan.llm_kwargs["quantization_config"].bnb_4bit_quant_type == "nf4"
    assert q.plan_quantize("int4", GPU, "runtime.quantize", training=True).bitsandbytes  # QLoRA


def test_cuda_without_bitsandbytes_names_the_extra(monkeypatch):
    monkeypatch.setattr(q.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(OmnifuseError, match=r"omnifuse\[gpu\]"):
        q.plan_quantize("int8", GPU, "--quantize")


@pytest.mark.parametrize(
    ("mode", "placement", "training", "says"),
    [
        ("int3", CPU, False, "not one of none, int8, int4"),
        ("int4", CPU, False, "int4 needs CUDA"),
        ("int8", CPU, True, "needs a CUDA GPU and bitsandbytes"),
        ("int4", CPU, True, "needs a CUDA GPU and bitsandbytes"),
        ("int8", Placement(torch.device("cpu"), torch.bfloat16), False, "computes in float32"),
        ("int8", Placement(torch.device("mps"), torch.float32), False, "mps has neither"),
    ],
)
def test_what_this_machine_cannot_do_is_refused_before_loading(mode, placement, training, says):
    with pytest.raises(OmnifuseError, match=says):
        q.plan_quantize(mode, placement, "--quantize", training=training)


def test_cpu_int8_inference_needs_nothing_loaded_differently():
    plan = q.plan_quantize("int8", CPU, "--quantize")
    assert plan.dynamic and not plan.llm_kwargs
    assert q.training_quantize(RuntimeSpec()).mode == "none"


def test_a_quantised_llm_is_not_pruned_or_trained_fully(tmp_path):
    """The recipe refuses what cannot act on quantised weights; a bitsandbytes load refuses runs whose LLM
    is not the base asset's (CPU int8 quantises after loading, so it takes them)."""
    from omnifuse.tasks.generate.load import _check_bitsandbytes

    raw = tiny_recipe_dict(write_color_dataset(tmp_path / "colors", n=3))
    raw["stages"][1]["prune"] = {"mlp_keep": 0.5}
    with pytest.raises(OmnifuseError, match="prunes the LLM.s MLP"):
        parse_recipe({**raw, "runtime": {"quantize": "int4"}})
    plan = q.QuantizePlan("int4", llm_kwargs={"quantization_config": object()})
    with pytest.raises(OmnifuseError, match="pruned its MLP"):
        _check_bitsandbytes(plan, parse_recipe(raw), "--quantize")
    raw["stages"][1].pop("prune")
    raw["stages"][1]["trainable"]["llm"] = "full"
    with pytest.raises(OmnifuseError, match="trained the LLM fully"):
        _check_bitsandbytes(plan, parse_recipe(raw), "--quantize")
    _check_bitsandbytes(q.QuantizePlan("int8", dynamic=True), parse_recipe(raw), "--quantize")
