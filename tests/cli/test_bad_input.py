"""Bad input through the real command line, one table: every case must end with a non-zero exit code and
one paragraph that names the problem — never "internal error", never a traceback.

The inputs are generated (tests/badinput.py): a tiny run is trained and evaluated once per module through
``omnifuse train`` / ``omnifuse eval`` (a random Llama folder, a random Whisper folder, random MobileNetV2),
and each case copies or damages what it needs in its own folder.
"""

from __future__ import annotations

import codecs
import json
import re
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import badinput as bad
from badinput_build import (
    DELETE,
    Case,
    Env,
    append,
    clip_in_data,
    cnn_weights,
    convert,
    copy_run,
    emptied,
    entries,
    eval_data,
    image_in_data,
    legacy,
    llm_folder,
    nan_weights,
    on_run,
    only_pickle,
    put,
    recipe_text,
    resume,
    sample,
    set_json,
    train,
    train_data,
    turns,
    validate,
    whisper_folder,
    with_clip,
    with_image,
    write,
)
from omnifuse.cli import main


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("bad-input")
    parts = bad.write_parts(root)
    run = root / "run"
    assert main(["train", str(parts["recipe"]), "--out", str(run), "--no-progress"]) == 0
    assert main(["eval", str(run), "--no-progress"]) == 0
    recipe = bad.recipe_dict(parts["llm"], parts["whisper"], parts["data"])
    return Env(parts, recipe, run, bad.bad_images(root / "images"), bad.bad_clips(root / "clips"))


# ------------------------------------------------------------------ the table
# fmt: off
C = Case
R = "recipe.yaml"
ST = "stages.0"
DUP_TOP = lambda env: recipe_text(env) + "seed: 1\n"  # noqa: E731
DUP_STAGE = lambda env: re.sub(r"^(\s*)steps: 2$", r"\1steps: 2\n\1steps: 3", recipe_text(env), count=1, flags=re.M)  # noqa: E731
BOMB_YAML = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else 'x'}]\n" for i in range(10))
PICKLED = b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.\n"

RECIPES = [
    C("lr-zero", "lr", validate({f"{ST}.lr.connectors": 0.0})),
    C("lr-negative", "lr", validate({f"{ST}.lr.connectors": -1e-3})),
    C("lr-nan", "lr", validate({f"{ST}.lr.connectors": float("nan")})),
    C("lr-inf", "lr", validate({f"{ST}.lr.connectors": float("inf")})),
    C("lr-minus-inf", "lr", validate({f"{ST}.lr.llm": float("-inf")})),
    C("lr-string", "lr", validate({f"{ST}.lr.connectors": "fast"})),
    C("lr-bool", "lr", validate({f"{ST}.lr.connectors": True})),
    C("lr-null", "lr", validate({f"{ST}.lr.connectors": None})),
    C("lr-list", "lr", validate({f"{ST}.lr": [1e-3]})),
    C("lr-unknown-part", "lr", validate({f"{ST}.lr.decoder": 1e-3})),
    C("steps-true", "steps", validate({f"{ST}.steps": True})),
    C("steps-false", "steps", validate({f"{ST}.steps": False})),
    C("steps-zero", "steps", validate({f"{ST}.steps": 0})),
    C("steps-negative", "steps", validate({f"{ST}.steps": -3})),
    C("steps-fraction", "steps", validate({f"{ST}.steps": 2.5})),
    C("steps-string", "steps", validate({f"{ST}.steps": "ten"})),
    C("batch-size-true", "batch_size", validate({f"{ST}.batch_size": True})),
    C("batch-size-zero", "batch_size", validate({f"{ST}.batch_size": 0})),
    C("save-every-false", "save_every", validate({f"{ST}.save_every": False})),
    C("grad-accum-true", "grad_accum", validate({f"{ST}.grad_accum": True})),
    C("warmup-negative", "warmup", validate({f"{ST}.warmup": -1})),
    C("max-grad-norm-nan", "max_grad_norm", validate({f"{ST}.max_grad_norm": float("nan")})),
    C("seed-negative", "seed", validate({"seed": -1})),
    C("seed-2-32", "seed", validate({"seed": 2**32})),
    C("seed-huge", "seed", validate({"seed": 10**30})),
    C("seed-float", "seed", validate({"seed": 1.5})),
    C("seed-true", "seed", validate({"seed": True})),
    C("seed-string", "seed", validate({"seed": "zero"})),
    C("seed-date", "seed", validate(None, lambda env: recipe_text(env).replace("seed: 0", "seed: 2001-12-14"))),
    C("lora-alpha-negative", "alpha", validate({"lora.alpha": -16})),
    C("lora-alpha-zero", "alpha", validate({"lora.alpha": 0})),
    C("lora-alpha-nan", "alpha", validate({"lora.alpha": float("nan")})),
    C("lora-r-zero", "lora.r", validate({"lora.r": 0})),
    C("lora-r-true", "boolean", validate({"lora.r": True})),
    C("lora-targets-string", "target_modules", validate({"lora.target_modules": 7})),
    C("modality-photo", "photo", validate({"model.encoders": {"photo": {"type": "mobilenet_v2", "weights": None}},
                                           "model.connectors": {"photo": {"type": "mlp"}}})),  # fmt: skip
    C("modality-video", "video", validate({"model.encoders.video": {"type": "mobilenet_v2", "weights": None},
                                           "model.connectors.video": {"type": "mlp"}})),  # fmt: skip
    C("connector-missing", "audio", validate({"model.connectors.audio": DELETE})),
    C("encoder-type-unknown", "model.encoders.image", validate({"model.encoders.image.type": "resnet"})),
    C("connector-type-unknown", "model.connectors.image", validate({"model.connectors.image.type": "qformerx"})),
    C("pool-grid-zero", "grid", validate({"model.connectors.image.grid": 0})),
    C("image-size-tiny", "image_size", validate({"model.encoders.image.image_size": 4})),
    C("whisper-seconds-zero", "max_seconds", validate({"model.encoders.audio.max_seconds": 0})),
    C("unknown-top-key", "stagez", validate({"stagez": []})),
    C("unknown-stage-key", "stpes", validate({f"{ST}.stpes": 3})),
    C("unknown-model-key", "fusoin", validate({"model.fusoin": {"type": "early"}})),
    C("stages-empty", "stages", validate({"stages": []})),
    C("stages-mapping", "stages", validate({"stages": {"align": {"steps": 2}}})),
    C("stages-string", "stages", validate({"stages": "align"})),
    C("stage-no-steps", "steps", validate({f"{ST}.steps": DELETE})),
    C("trainable-mode-unknown", "half", validate({f"{ST}.trainable.connectors": "half"})),
    C("trainable-part-unknown", "decoder", validate({f"{ST}.trainable.decoder": "full"})),
    C("name-list", "name", validate({"name": ["a", "b"]})),
    C("model-missing", "model", validate({"model": DELETE})),
    C("max-new-tokens-zero", "max_new_tokens", validate({"generation.max_new_tokens": 0})),
    C("temperature-nan", "temperature", validate({"generation.temperature": float("nan")})),
    C("top-p-two", "top_p", validate({"generation.top_p": 2.0})),
    C("eval-batch-zero", "batch_size", validate({"eval.batch_size": 0})),
    C("recipe-eval-limit-negative", "eval_limit", validate({"data.eval_limit": -1})),
    C("data-train-number", "data.train", validate({"data.train": 5})),
    C("top-level-list", R, validate(None, lambda env: "- name: x\n- seed: 1\n")),
    C("top-level-scalar", R, validate(None, lambda env: "just a sentence\n")),
    C("top-level-number", R, validate(None, lambda env: "42\n")),
    C("empty-file", R, validate(None, lambda env: "")),
    C("only-comments", R, validate(None, lambda env: "# nothing here\n")),
    C("duplicate-top-key", "twice", validate(None, DUP_TOP)),
    C("duplicate-stage-key", "twice", validate(None, DUP_STAGE)),
    C("utf16-no-bom", "UTF-16", validate(None, lambda env: bad.utf16_no_bom(recipe_text(env)))),
    C("utf32-no-bom", R, validate(None, lambda env: recipe_text(env).encode("utf-32-le"))),
    C("latin1", "UTF-8", validate(None, lambda env: bad.latin1(recipe_text(env).replace("tiny", "caf\xe9")))),
    C("invalid-byte-in-comment", "UTF-8", validate(None, lambda env: b"# \xff\xfe\xfd\n" + recipe_text(env).encode())),
    C("png-as-recipe", R, validate(None, lambda env: bad.png_bytes())),
    C("deep-flow-yaml", "nested", validate(None, lambda env: bad.deep_yaml_flow())),
    C("deep-block-yaml", "nested", validate(None, lambda env: bad.deep_yaml_block())),
    C("alias-bomb", "million", validate(None, lambda env: BOMB_YAML)),
    C("python-tag", R, validate(None, lambda env: "name: !!python/object/apply:os.system ['true']\n")),
    C("unclosed-bracket", R, validate(None, lambda env: recipe_text(env) + "extra: [1, 2\n")),
    C("tab-indent", R, validate(None, lambda env: "name: x\nmodel:\n\tllm: y\n")),
    C("list-as-key", R, validate(None, lambda env: "? [a, b]\n: 1\n")),
    C("recipe-folder", "is a folder", lambda env, tmp: ["validate", str(tmp)]),
    C("recipe-missing", "does not exist", lambda env, tmp: ["validate", str(tmp / "nope.yaml")]),
    C("set-nan-lr", "lr", validate({}, None, "--set", f"{ST}.lr.connectors=nan")),
    C("set-negative-seed", "seed", validate({}, None, "--set", "seed=-5")),
    C("set-no-equals", "dotted.key=value", validate({}, None, "--set", "seed")),
    C("set-index-out-of-range", "stages", validate({}, None, "--set", "stages.9.steps=1")),
    C("set-steps-bool", "steps", validate({}, None, "--set", f"{ST}.steps=true")),
]

NESTED = lambda env: ['{"id": "deep", "messages": ' + bad.deep_json() + "}"]  # noqa: E731
DATA = [  # a bad line after three good ones, or a bad file, as training data (train) or --data (eval)
    ("nested-line", "nested", NESTED),
    ("non-utf8-line", "UTF-8", lambda env: [b'{"id": "x\xff", "messages": []}']),
    ("utf16-line", "NUL", lambda env: [bad.utf16_no_bom(json.dumps(sample(env, 5)))]),
    ("nan-literal", "NaN", lambda env: [json.dumps({**sample(env, 5), "meta": {"w": 1}}).replace("1}", "NaN}")]),
    ("infinity-literal", "Infinity", lambda env: [json.dumps(sample(env, 5))[:-1] + ', "meta": {"w": -Infinity}}']),
    ("list-line", "a list", lambda env: ["[1, 2, 3]"]),
    ("string-line", "a string", lambda env: ['"just text"']),
    ("huge-integer", "digits", lambda env: ['{"id": ' + "9" * 5000 + ', "messages": []}']),
    ("truncated-line", "invalid JSON", lambda env: [json.dumps(sample(env, 5))[:40]]),
    ("missing-media", "missing media", lambda env: [json.dumps(sample(env, 5, image=Path("/nowhere/x.png")))]),
    ("duplicate-id", "duplicate id", lambda env: [json.dumps(sample(env, 0))]),
    ("wrong-role", "role", lambda env: [json.dumps(sample(env, 5)).replace('"assistant"', '"bot"')]),
]
TRAIN = [
    *(C(f"train-{name}", says, train_data(make)) for name, says, make in DATA),
    C("train-data-utf16-file", "NUL", lambda env, tmp: train({"data.train": str(write(
        tmp / "u16.jsonl", bad.utf16_no_bom(json.dumps(sample(env)) + "\n")))})(env, tmp)),  # fmt: skip
    C("train-data-folder", "is a folder", lambda env, tmp: train({"data.train": str(tmp)})(env, tmp)),
    C("train-data-missing", "does not exist", train({"data.train": "/nowhere/train.jsonl"})),
    C("train-data-empty", "no samples", lambda env, tmp: train({"data.train": str(write(tmp / "e.jsonl", ""))})(env, tmp)),
    *(C(f"train-image-{k}", says, image_in_data(k, "train"))
      for k, says in [("bomb-30000", "pixels"), ("bomb-8000", "over the limit"), ("truncated", "truncated.png"),
                      ("text-file", "not a readable image")]),  # fmt: skip
    C("train-out-is-file", "--out", train(out=lambda tmp: write(tmp / "taken", "x"))),
    C("train-out-below-file", "--out", train(out=lambda tmp: write(tmp / "taken", "x") / "run")),
    C("train-resume-out-is-file", "--out", train(None, "--resume", out=lambda tmp: write(tmp / "taken", "x"))),
    C("cnn-weights-text", "cnn.safetensors", cnn_weights("not weights at all\n")),
    C("cnn-weights-empty", "empty", cnn_weights(b"")),
    C("cnn-weights-wrong-keys", "does not fit", cnn_weights(None)),
    C("cnn-weights-pickled", "pickled", cnn_weights(PICKLED, "cnn.pth")),
    C("llm-folder-empty", "is empty", llm_folder(emptied)),
    C("llm-no-config", "config.json", llm_folder(lambda f: (f / "config.json").unlink())),
    C("llm-config-garbage", "config.json", llm_folder(lambda f: write(f / "config.json", "{model_type: llama"))),
    C("llm-config-list", "config.json", llm_folder(lambda f: write(f / "config.json", "[1, 2]"))),
    C("llm-config-bad-values", "could not load the LLM", llm_folder(set_json("config.json", lambda c: {**c, "hidden_size": "wide"}))),
    C("llm-config-other-shape", "could not load the LLM", llm_folder(set_json("config.json", lambda c: {**c, "intermediate_size": 48}))),
    C("llm-only-pickle", "OMNIFUSE_ALLOW_PICKLE", llm_folder(only_pickle)),
    C("llm-weights-text", "model.safetensors", llm_folder(lambda f: write(f / "model.safetensors", "text\n"))),
    C("llm-weights-truncated", "truncated", llm_folder(lambda f: bad.half_file(f / "model.safetensors"))),
    C("llm-no-weights", "no weights", llm_folder(lambda f: (f / "model.safetensors").unlink())),
    C("llm-tokenizer-garbage", "tokenizer", llm_folder(lambda f: write(f / "tokenizer.json", "{not json"))),
    C("llm-is-a-file", "is a file", lambda env, tmp: train({"model.llm.name": str(write(tmp / "llm.txt", "x"))})(env, tmp)),
    C("llm-path-missing", "does not exist", train({"model.llm.name": "./no/such/llm"})),
    C("whisper-folder-empty", "is empty", whisper_folder(emptied)),
    C("whisper-only-pickle", "OMNIFUSE_ALLOW_PICKLE", whisper_folder(only_pickle)),
    C("whisper-no-preprocessor", "Whisper", whisper_folder(lambda f: (f / "preprocessor_config.json").unlink())),
]

DAMAGED_RUN = [  # (id, phrase, damage): eval, chat, report and explain each meet all of them
    ("recipe-garbled", R, put(R, "name: [unclosed\n")),
    ("recipe-garbled-legacy", R, legacy(put(R, "name: [unclosed\n"))),
    ("recipe-duplicate-legacy", "twice", legacy(append(R, "seed: 3\n"))),
    ("recipe-utf16-legacy", R, legacy(lambda run: write(run / R, bad.utf16_no_bom((run / R).read_text())))),
    ("recipe-list-legacy", R, legacy(put(R, "- 1\n- 2\n"))),
    ("recipe-deep-legacy", "nested", legacy(put(R, bad.deep_yaml_flow()))),
    ("weights-empty", "model.safetensors", put("model.safetensors", b"")),
    ("weights-empty-legacy", "model.safetensors", legacy(put("model.safetensors", b""))),
    ("weights-half-legacy", "model.safetensors", legacy(lambda run: bad.half_file(run / "model.safetensors"))),
    ("weights-nan-legacy", "NaN", legacy(nan_weights("model.safetensors"))),
    ("weights-none-legacy", "model.safetensors", legacy(lambda run: save_file({}, str(run / "model.safetensors")))),
    ("status-garbled", "status.json", put("status.json", "{not json")),
    ("status-failed", "failed", put("status.json", json.dumps({"status": "failed", "updated": 0.0, "error": "x"}))),
    ("status-unknown", "status", put("status.json", json.dumps({"status": "paused", "updated": 0.0}))),
    ("not-a-run", "not an omnifuse run", lambda run: [p.unlink() for p in run.iterdir() if p.is_file()]),
]
RUNS = [
    *(C(f"{verb}-{name}", says, on_run(argv, damage)) for name, says, damage in DAMAGED_RUN
      for verb, argv in [("eval", ["eval", "--no-progress"]), ("chat", ["chat", "hello"]),
                         ("report", ["report", "--no-progress"]), ("explain", ["explain", "what?", "--image", "{image}"])]
      if verb != "explain" or name.startswith(("recipe-garbled", "weights-empty", "status", "not-a-run"))),  # fmt: skip
    C("eval-run-missing", "does not exist", lambda env, tmp: ["eval", str(tmp / "nope")]),
    C("eval-limit-negative", "limit", on_run(["eval", "--limit", "-1", "--no-progress"])),
    C("eval-manifest-garbled", "eval_manifest.json", on_run(["eval", "--no-progress", "--manifest", "{run}/eval_manifest.json"], put("eval_manifest.json", "{"))),
    C("eval-importance-unknown-perturbation", "unknown 'blur'", on_run(["eval", "--importance", "--perturbations", "noise,blur", "--no-progress"])),
    C("eval-perturbations-without-importance", "only with --importance", on_run(["eval", "--perturbations", "noise", "--no-progress"])),
    C("eval-importance-one-sample", "needs at least two", on_run(["eval", "--importance", "--limit", "1", "--no-progress"])),
    C("eval-importance-seed-negative", "a seed is a whole number", on_run(["eval", "--importance", "--importance-seed", "-3", "--no-progress"])),
    C("chat-run-is-file", "run", lambda env, tmp: ["chat", str(write(tmp / "run", "x")), "hi"]),
    C("chat-max-new-tokens-zero", "--max-new-tokens", on_run(["chat", "hi", "--max-new-tokens", "0"])),
    C("explain-max-new-tokens-zero", "--max-new-tokens", on_run(["explain", "what?", "--image", "x.png",
                                                                 "--max-new-tokens", "-1"])),  # fmt: skip
    C("report-samples-negative", "--samples", on_run(["report", "--samples", "-1"])),
]

MEDIA = [
    *(C(f"chat-image-{k}", says, with_image("chat", k)) for k, (_, says) in bad.IMAGE_CASES.items()),
    *(C(f"explain-image-{k}", says, with_image("explain", k)) for k, (_, says) in bad.IMAGE_CASES.items()),
    *(C(f"eval-image-{k}", says, image_in_data(k, "eval")) for k in ("bomb-30000", "truncated", "garbage-jpeg", "empty-file")
      for says in [bad.IMAGE_CASES[k][1]]),  # fmt: skip
    *(C(f"chat-audio-{k}", says, with_clip(k)) for k, (_, says) in bad.CLIP_CASES.items()),
    *(C(f"eval-audio-{k}", says, clip_in_data(k)) for k in ("one-sample", "rate-1hz", "truncated", "text-file")
      for says in [bad.CLIP_CASES[k][1]]),  # fmt: skip
    *(C(f"eval-{name}", says, eval_data(make)) for name, says, make in DATA[:6]),
    C("explain-out-is-file", "--out", on_run(["explain", "what?", "--image", "{image}", "--out", "{run}/recipe.yaml"])),
    C("explain-out-below-file", "--out", on_run(["explain", "what?", "--image", "{image}", "--out", "{run}/run.json/x"])),
    C("explain-layers-bad", "--layers", on_run(["explain", "what?", "--image", "{image}", "--layers", "last9"])),
]

REPORT_FILES = [  # (id, phrase, damage) for `report`, which reads what train and eval wrote
    ("eval-json-garbled", "eval.json", put("eval.json", "{")),
    ("eval-json-list", "eval.json", put("eval.json", "[]")),
    ("eval-json-accuracy-string", "accuracy", set_json("eval.json", lambda e: {**e, "accuracy": "high"})),
    ("eval-json-n-missing", "n is missing", set_json("eval.json", lambda e: {k: v for k, v in e.items() if k != "n"})),
    ("eval-json-ci-short", "ci95", set_json("eval.json", lambda e: {**e, "ci95": [0.1]})),
    ("eval-json-per-type-bad", "per_type", set_json("eval.json", lambda e: {**e, "per_type": {"color": {"n": "x"}}})),
    ("eval-json-nan", "NaN", put("eval.json", '{"accuracy": NaN}')),
    ("eval-json-utf16", "eval.json", lambda run: write(run / "eval.json", bad.utf16_no_bom((run / "eval.json").read_text()))),
    ("predictions-list-line", "predictions.jsonl", append("predictions.jsonl", "[1, 2]\n")),
    ("predictions-no-correct", "correct", append("predictions.jsonl", '{"id": "z", "answer": "a", "prediction": "b"}\n')),
    ("predictions-garbled", "predictions.jsonl", append("predictions.jsonl", "{oops\n")),
    ("metrics-list-line", "metrics.jsonl", append("metrics.jsonl", "[1, 2]\n")),
    ("metrics-loss-string", "loss", append("metrics.jsonl", '{"stage": "align", "loss": "low"}\n')),
    ("metrics-stage-number", "stage", append("metrics.jsonl", '{"stage": 3, "loss": 1.0}\n')),
    ("metrics-nan", "NaN", append("metrics.jsonl", '{"stage": "align", "loss": NaN}\n')),
    ("metrics-garbled", "metrics.jsonl", append("metrics.jsonl", b"\xff\xfe garbage\n")),
    ("robustness-not-list", "robustness.json", put("robustness.json", '{"probe": "blank"}')),
    ("robustness-no-probe", "probe", put("robustness.json", '[{"accuracy": 0.5, "answers_changed": 0.1}]')),
    ("manifest-no-subset", "subset", set_json("eval_manifest.json", lambda m: {k: v for k, v in m.items() if k != "subset"})),
    ("manifest-garbled", "eval_manifest.json", put("eval_manifest.json", "nope")),
]
REPORTS = [C(f"report-{name}", says, on_run(["report", "--no-progress"], damage)) for name, says, damage in REPORT_FILES]

COMPARE = [
    *(C(f"compare-{name}", says, lambda env, tmp, d=damage: ["compare", str(env.run), str(copy_run(env, tmp, d))])
      for name, says, damage in [
          ("list-line", "predictions.jsonl", append("predictions.jsonl", "[1]\n")),
          ("no-id", "id is missing", append("predictions.jsonl", '{"correct": true}\n')),
          ("correct-string", "correct", append("predictions.jsonl", '{"id": "q", "correct": "yes"}\n')),
          ("score-string", "score", append("predictions.jsonl", '{"id": "q", "correct": true, "score": "1"}\n')),
          ("nan", "NaN", append("predictions.jsonl", '{"id": "q", "correct": true, "score": NaN}\n')),
          ("non-utf8", "UTF-8", append("predictions.jsonl", b'{"id": "\xff"}\n')),
          ("utf16", "predictions.jsonl", lambda run: write(run / "predictions.jsonl", bad.utf16_no_bom("{}\n"))),
          ("empty", "empty", put("predictions.jsonl", "")),
          ("missing", "no predictions.jsonl", lambda run: (run / "predictions.jsonl").unlink()),
          ("is-folder", "predictions.jsonl", lambda run: ((run / "predictions.jsonl").unlink(), (run / "predictions.jsonl").mkdir())),
      ]),  # fmt: skip
    C("compare-run-missing", "does not exist", lambda env, tmp: ["compare", str(env.run), str(tmp / "nope")]),
]

PAIR = HUMAN, GPT = ("human", "where?"), ("gpt", "here")
SHAREGPT_OK = json.dumps({"conversations": turns(HUMAN, GPT)})
CONVERT = [
    C("sharegpt-utf16-no-bom", "NUL", convert("sharegpt", bad.utf16_no_bom(SHAREGPT_OK + "\n"), name="s.jsonl")),
    C("sharegpt-latin1", "UTF-8", convert("sharegpt", bad.latin1(SHAREGPT_OK.replace("here", "l\xe0")), name="s.jsonl")),
    C("sharegpt-nested-line", "nested", convert("sharegpt", '{"conversations": ' + bad.deep_json() + "}\n", name="s.jsonl")),
    C("sharegpt-nested-list", "nested", convert("sharegpt", bad.deep_json(), name="s.json")),
    C("sharegpt-list-line", "JSON object", convert("sharegpt", "[1, 2]\n", name="s.jsonl")),
    C("sharegpt-garbled-line", "invalid JSON", convert("sharegpt", SHAREGPT_OK + "\n{oops\n", name="s.jsonl")),
    C("sharegpt-nan", "NaN", convert("sharegpt", '{"conversations": [], "w": NaN}\n', name="s.jsonl")),
    C("sharegpt-conversations-dict", "conversations", convert("sharegpt", entries({"conversations": {"a": 1}}))),
    C("sharegpt-conversations-empty", "conversations", convert("sharegpt", entries({"conversations": []}))),
    C("sharegpt-role-unknown", "robot", convert("sharegpt", entries({"conversations": turns(("robot", "hi"), GPT)}))),
    C("sharegpt-role-list", "from", convert("sharegpt", entries({"conversations": [{"from": ["human"], "value": "x"}, {"from": "gpt", "value": "y"}]}))),
    C("sharegpt-value-number", "value", convert("sharegpt", entries({"conversations": turns(("human", 3), GPT)}))),
    C("sharegpt-images-mismatch", "marker", convert("sharegpt", entries({"conversations": turns(HUMAN, GPT), "images": ["a.png"]}))),
    C("sharegpt-images-number", "images", convert("sharegpt", entries({"conversations": turns(HUMAN, GPT), "images": 5}))),
    C("sharegpt-system-number", "system", convert("sharegpt", entries({"conversations": turns(HUMAN, GPT), "system": 1}))),
    C("sharegpt-binary", "s.jsonl", convert("sharegpt", bad.png_bytes(), name="s.jsonl")),
    C("sharegpt-empty", "no entries", convert("sharegpt", "", name="s.jsonl")),
    C("llava-object", "JSON list", convert("llava", json.dumps({"conversations": []}))),
    C("llava-nested", "nested", convert("llava", bad.deep_json())),
    C("llava-utf16-no-bom", "NUL", convert("llava", bad.utf16_no_bom(entries({"conversations": turns(HUMAN, GPT)})))),
    C("llava-latin1", "UTF-8", convert("llava", bad.latin1(entries({"conversations": turns(HUMAN, ("gpt", "\xe0"))})))),
    C("llava-empty-file", "src.json", convert("llava", "")),
    C("llava-missing-image", "missing image", convert("llava", entries({"image": "nope.png", "conversations": turns(HUMAN, GPT)}))),
    C("llava-no-conversations", "conversations", convert("llava", entries({"id": 1}))),
    C("llava-id-list", "id", convert("llava", entries({"id": [1], "conversations": turns(HUMAN, GPT)}))),
    C("llava-entry-string", "JSON object", convert("llava", entries("hello"))),
    C("llava-image-list-of-numbers", "image", convert("llava", entries({"image": [1, 2], "conversations": turns(HUMAN, GPT)}))),
    C("convert-src-folder", "is a folder", lambda env, tmp: ["data", "convert", "llava", str(tmp), "--out", str(tmp / "o.jsonl")]),
    C("convert-src-missing", "does not exist", convert("llava", None)),
    C("convert-out-folder", "--out", lambda env, tmp: ["data", "convert", "llava", str(write(tmp / "s.json", "[]")), "--out", str(tmp)]),
    C("convert-out-below-file", "--out", lambda env, tmp: ["data", "convert", "llava", str(write(tmp / "s.json", "[]")), "--out", str(tmp / "s.json" / "o.jsonl")]),
    C("convert-kind-unknown", "alpaca", convert("alpaca", "[]")),
    C("convert-images-not-folder", "image folder", convert("llava", entries({"conversations": turns(HUMAN, GPT)}), "--images", "/nowhere")),
]

EXPORTS = [
    *(C(f"{verb}-out-is-file", "--out", lambda env, tmp, v=verb: ["data", v, "--out", str(write(tmp / "f", "x")), "--no-progress"])
      for verb in ("easy-vqa", "spoken-easy-vqa", "av-digits")),
    *(C(f"{verb}-out-below-file", "--out", lambda env, tmp, v=verb: ["data", v, "--out", str(write(tmp / "f", "x") / "d"), "--no-progress"])
      for verb in ("easy-vqa", "spoken-easy-vqa", "av-digits")),
    *(C(f"{verb}-out-holds-other-files", "not an earlier export",
        lambda env, tmp, v=verb: ["data", v, "--out", str(write(tmp / "mine" / "notes.txt", "x").parent), "--no-progress"])
      for verb in ("easy-vqa", "av-digits")),  # fmt: skip
]

def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


SERVE = [
    C("serve-port-70000", "--port", lambda env, tmp: ["serve", str(env.run), "--port", "70000"]),
    C("serve-port-negative", "--port", lambda env, tmp: ["serve", str(env.run), "--port", "-1"]),
    C("serve-log-level-chatty", "--log-level", lambda env, tmp: ["serve", str(env.run), "--log-level", "chatty"]),
    *(C(f"serve-{name}", says, lambda env, tmp, d=damage: ["serve", str(copy_run(env, tmp, d)), "--port", free_port()])
      for name, says, damage in DAMAGED_RUN if name in ("recipe-garbled", "recipe-garbled-legacy", "weights-empty",
                                                         "weights-nan-legacy", "status-failed", "not-a-run")),  # fmt: skip
]

# --device / --dtype are checked before the model loads: no GPU here (on a GPU machine, one it lacks);
# an unknown device; float16 on the CPU; a dtype omnifuse has no autocast for.
NO_SUCH_GPU = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
PLACEMENT_VERBS = [("eval", ["eval", "--no-progress"]), ("chat", ["chat", "hi"]), ("report", ["report", "--no-progress"]),
                   ("explain", ["explain", "what?", "--image", "{image}"]), ("serve", ["serve", "--port", "0"])]
PLACEMENT = [
    *(C(f"{verb}-{name}", says, on_run([*argv, *flags]))
      for verb, argv in PLACEMENT_VERBS
      for name, says, flags in [("device-no-gpu", NO_SUCH_GPU, ["--device", NO_SUCH_GPU]),
                                ("device-unknown", "tpu", ["--device", "tpu"]),
                                ("dtype-float16-cpu", "float16", ["--device", "cpu", "--dtype", "float16"]),
                                ("dtype-int8", "int8", ["--dtype", "int8"])]),
]  # fmt: skip

# The distributed strategy: FSDP needs several processes; what no launch of a recipe can run under FSDP
# (a Q-Former objective, evaluation during training, a one-process task, DP-SGD) its recipe refuses.
CLASSIC = str(Path(__import__("omnifuse.recipes").recipes.__file__).parent / "classic" / "av-digits.yaml")
DP = "privacy={target_epsilon: 4.0, delta: 1.0e-5, max_grad_norm: 1.0}"
FSDP = "runtime.distributed.strategy=fsdp"
SCALE = [
    C("train-fsdp-one-process", "single process", train({"runtime.distributed.strategy": "fsdp"})),
    C("train-fsdp-eval-every", "eval.every", validate({"runtime.distributed.strategy": "fsdp", "eval.every": 2})),
    C("train-fsdp-qformer", "Q-Former", lambda env, tmp: ["validate", str(Path(CLASSIC).parents[1] / "blip2.yaml"), "--set", FSDP]),
    C("train-fsdp-classify", "task classify trains in one process", lambda env, tmp: ["validate", CLASSIC, "--set", FSDP]),
    C("train-fsdp-dp-sgd", "DP-SGD", lambda env, tmp: ["validate", CLASSIC, "--set", FSDP, "--set", DP]),
    # DP-SGD on the LLM path (docs/privacy.md): refused before training, or by the recipe.
    C("train-dp-epsilon-out-of-reach", "out of reach", train({"privacy": {"target_epsilon": 0.01}})),
    C("train-dp-unsupported-layer", "no per-sample gradient rule",
      train({"privacy": {"noise_multiplier": 1.0}, f"{ST}.trainable.llm": "full", f"{ST}.lr.llm": 1e-3})),
    C("train-dp-fsdp", "shards the parameters", validate({"privacy": {"noise_multiplier": 1.0}, **{FSDP.split("=")[0]: "fsdp"}})),
    C("train-device-no-gpu", NO_SUCH_GPU, train(None, "--device", NO_SUCH_GPU)),
    C("train-dtype-float16-cpu", "float16", train(None, "--device", "cpu", "--dtype", "float16")),
    C("train-dtype-unknown", "int8", train(None, "--dtype", "int8")),
]

# Quantisation (docs/serving.md): an unknown mode; int4 needs CUDA; CPU int8 computes in float32 and
# cannot train (QLoRA needs CUDA + bitsandbytes); a quantised LLM cannot train fully; no LLM to quantise.
QUANT_CPU = {"runtime.device": "cpu"}
QUANTIZE = [
    *(C(f"{verb}-quantize-{name}", says, on_run([*argv, *flags]))
      for verb, argv in PLACEMENT_VERBS if verb in ("eval", "chat", "serve")
      for name, says, flags in [("int3", "int3", ["--quantize", "int3"]),
                                ("int4-cpu", "int4 needs CUDA", ["--device", "cpu", "--quantize", "int4"])]),
    C("eval-quantize-int8-bfloat16", "float32", on_run(["eval", "--no-progress", "--device", "cpu", "--dtype", "bfloat16", "--quantize", "int8"])),
    C("recipe-quantize-int3", "quantize", validate({"runtime.quantize": "int3"})),
    C("validate-qlora-cpu", "needs a CUDA GPU", validate({**QUANT_CPU, "runtime.quantize": "int4"})),
    C("train-quantize-int8-cpu", "needs a CUDA GPU", train({**QUANT_CPU, "runtime.quantize": "int8"})),
    C("recipe-quantize-llm-full", "trains the LLM fully", validate({"runtime.quantize": "int4", f"{ST}.trainable.llm": "full"})),
    C("recipe-quantize-classify", "no LLM to quantise", lambda env, tmp: ["validate", CLASSIC, "--set", "runtime.quantize=int8"]),
]

RESUMES = [
    C("resume-state-garbled", "state.json", resume(put("checkpoint/state.json", "{"))),
    C("resume-state-empty", "state.json", resume(put("checkpoint/state.json", ""))),
    C("resume-state-list", "state.json", resume(put("checkpoint/state.json", "[1, 2]"))),
    C("resume-state-utf16", "state.json", resume(lambda run: write(run / "checkpoint/state.json", bad.utf16_no_bom("{}")))),
    C("resume-progress-string", "progress", resume(set_json("checkpoint/state.json", lambda s: {**s, "progress": {"stage": "one", "step": 0}}))),
    C("resume-progress-negative", "progress", resume(set_json("checkpoint/state.json", lambda s: {**s, "progress": {"stage": 0, "step": -4}}))),
    C("resume-progress-bool", "progress", resume(set_json("checkpoint/state.json", lambda s: {**s, "progress": {"stage": True, "step": 0}}))),
    C("resume-progress-past-end", "progress", resume(set_json("checkpoint/state.json", lambda s: {**s, "progress": {"stage": 7, "step": 0}}))),
    C("resume-progress-missing", "progress", resume(set_json("checkpoint/state.json", lambda s: {k: v for k, v in s.items() if k != "progress"}))),
    C("resume-rng-missing", "rng", resume(set_json("checkpoint/state.json", lambda s: {**s, "rng": "x"}))),
    C("resume-optimizer-zero-bytes", "optimizer.safetensors", resume(put("checkpoint/optimizer.safetensors", b""))),
    C("resume-optimizer-text", "optimizer.safetensors", resume(put("checkpoint/optimizer.safetensors", "text"))),
    C("resume-weights-half", "weights.safetensors", resume(lambda run: bad.half_file(run / "checkpoint/weights.safetensors"))),
    C("resume-weights-nan", "NaN", resume(nan_weights("checkpoint/weights.safetensors"))),
    C("resume-rng-empty", "rng.safetensors", resume(put("checkpoint/rng.safetensors", b""))),
    C("resume-recipe-edited", "recipe differs", resume(append(R, "seed: 7\n"))),
    C("resume-recipe-latin1", R, resume(put(R, bad.latin1("name: caf\xe9\n")))),
    C("resume-status-garbled", "status.json", resume(put("status.json", "{"))),
]

# fmt: on
CASES = [
    *RECIPES,
    *TRAIN,
    *RUNS,
    *MEDIA,
    *REPORTS,
    *COMPARE,
    *CONVERT,
    *EXPORTS,
    *SERVE,
    *PLACEMENT,
    *SCALE,
    *QUANTIZE,
    *RESUMES,
]


def _param(case: Case):
    return pytest.param(case, id=case.id)


def test_the_table_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) >= 150 and len(set(ids)) == len(ids)


def error_paragraph(err: str) -> str:
    """The error the user reads: from the last line that starts with "error:" (omnifuse's errors and
    typer's usage errors both do) to the end; logs and bars before it are not part of it."""
    starts = [m.start() for m in re.finditer(r"^error:", err, re.I | re.M)]
    return err[starts[-1] :].strip() if starts else ""


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_is_one_clear_paragraph(case: Case, env: Env, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("serve accepted the input and started"))
    code = main(case.build(env, tmp_path))
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text and "internal error" not in text, text
    assert code != 0, text
    message = error_paragraph(captured.err)
    assert message and "\n\n" not in message, captured.err
    assert case.says.lower() in message.lower(), message


# ------------------------------------------------------------------ what must still be accepted
def run_ok(argv: list[str], capsys) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0 and "error" not in captured.err.lower(), captured.err
    return captured.out


def test_a_utf16_recipe_with_its_byte_order_mark_is_read(env, tmp_path, capsys):
    path = write(tmp_path / "r.yaml", codecs.BOM_UTF16_LE + recipe_text(env).encode("utf-16-le"))
    assert "valid recipe 'tiny-bad-input'" in run_ok(["validate", str(path)], capsys)


def test_utf16_data_with_its_byte_order_mark_is_read(env, tmp_path, capsys):
    lines = "".join(json.dumps(sample(env, i)) + "\n" for i in range(2))
    data = write(tmp_path / "u16.jsonl", codecs.BOM_UTF16_LE + lines.encode("utf-16-le"))
    assert "evaluation on" in run_ok(
        ["eval", str(copy_run(env, tmp_path)), "--data", str(data), "--no-progress"], capsys
    )
    share = write(
        tmp_path / "s.jsonl",
        codecs.BOM_UTF16_BE + json.dumps({"conversations": turns(*PAIR)}).encode("utf-16-be"),
    )
    assert "wrote 1 samples" in run_ok(
        ["data", "convert", "sharegpt", str(share), "--out", str(tmp_path / "o.jsonl")], capsys
    )


def test_resume_drops_a_damaged_metrics_line_and_finishes(env, tmp_path, capsys):
    argv = resume(append("metrics.jsonl", "[1, 2]\n"))(env, tmp_path)
    assert "trained tiny-bad-input" in run_ok(argv, capsys)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]


def test_the_intact_run_still_reports_compares_and_explains(env, tmp_path, capsys):
    run = copy_run(env, tmp_path)
    assert "report.html" in run_ok(
        ["report", str(run), "--samples", "2", "--explain", "1", "--no-progress"], capsys
    )
    assert "paired" in run_ok(["compare", str(env.run), str(run)], capsys)
    out = run_ok(
        [
            "explain",
            str(run),
            "what color?",
            "--image",
            str(env.parts["image"]),
            "--out",
            str(tmp_path / "x"),
        ],
        capsys,
    )
    assert (tmp_path / "x" / "explain.json").is_file() and "logit lens" in out
