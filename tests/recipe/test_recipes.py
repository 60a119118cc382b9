"""Every recipe under src/omnifuse/recipes/ validates; bad recipes fail with one clear error."""

from __future__ import annotations

import pytest
import yaml

from omnifuse.errors import OmnifuseError
from omnifuse.recipe import dump_recipe, load_recipe, parse_recipe
from omnifuse.recipes import RECIPES_DIR

ROOT = RECIPES_DIR
QUICKSTART = ROOT / "quickstart.yaml"
SWEEPS = sorted((ROOT / "sweeps").rglob("*.yaml"))
RECIPES = sorted(p for p in ROOT.rglob("*.yaml") if p not in SWEEPS)


def test_recipes_folder_is_not_empty():
    assert any(p.name == "quickstart.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.name))
def test_every_recipe_validates(path):
    recipe = load_recipe(path)
    # The resolved form round-trips: what a run directory stores loads back to the same recipe.
    assert parse_recipe(yaml.safe_load(dump_recipe(recipe))) == recipe


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: str(p.name))
def test_every_sweep_validates_with_its_budget(path):
    from omnifuse.sweep import check_budget, load_sweep

    sweep = load_sweep(path)  # resolves every variant's recipe
    assert len(sweep.spec.seeds) >= 3 and len(sweep.variants) >= 2
    counts = check_budget(sweep)  # refuses a variant off the sweep's budget
    assert set(counts) == {v.name for v in sweep.variants}


def base() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda r: r["model"]["connectors"]["image"].update(type="qformerx"),
            ["model.connectors.image", "'linear', 'mlp', 'pool'"],
        ),
        (
            lambda r: r["model"]["encoders"]["image"].update(type="resnet"),
            ["mobilenet_v2", "efficientnet_lite0", "hf"],
        ),
        (lambda r: r["stages"][0].update(batch_size="big"), ["stages.0.batch_size", "integer"]),
        (lambda r: r["stages"][0].update(bacth_size=4), ["stages.0.bacth_size", "unknown key"]),
        (lambda r: r.update(lerning_rate=1), ["lerning_rate", "unknown key"]),
        (lambda r: r["stages"][0]["trainable"].update(vision=True), ["stages.0.trainable.vision"]),
        (
            lambda r: r["stages"][0]["trainable"].update(decoder="full"),
            ["unknown component 'decoder'", "connectors", "llm"],
        ),
        (lambda r: r["stages"][1]["trainable"].update(llm="half"), ["'frozen', 'lora' or 'full'"]),
        (lambda r: r["stages"][0].update(epochs=1), ["exactly one of steps or epochs"]),
        (lambda r: r["stages"][0]["lr"].clear(), ["has no lr"]),
        (lambda r: r.update(stages=[]), ["at least one"]),
        (
            lambda r: r["model"]["connectors"].update(audio={"type": "mlp"}),
            ["every encoder needs a connector"],
        ),
        (  # an audio encoder needs the frame-stacking connector, and only audio parts reach it
            lambda r: (
                r["model"]["encoders"].update(audio={"type": "whisper"}),
                r["model"]["connectors"].update(audio={"type": "mlp"}),
            ),
            ["model.connectors.audio", "{type: stack, factor: 8}"],
        ),
        (
            lambda r: (
                r["model"]["encoders"].update(speech={"type": "whisper"}),
                r["model"]["connectors"].update(speech={"type": "stack"}),
            ),
            ["model.encoders.speech", "audio parts go to encoders.audio"],
        ),
        (
            lambda r: r["model"]["connectors"].update(image={"type": "stack"}),
            ["the stack connector is for audio"],
        ),
        (
            lambda r: (
                r["model"].update(asr={"name": "whisper-base"}),
                r["model"]["encoders"].update(audio={"type": "whisper"}),
                r["model"]["connectors"].update(audio={"type": "stack"}),
            ),
            ["model.asr and model.encoders.audio are both set"],
        ),
        (
            lambda r: r["model"].update(asr={"name": "whisper-base", "max_seconds": 60}),
            ["model.asr.max_seconds"],
        ),
        (
            lambda r: r["stages"][0].update(objective="distil"),
            ["unknown objective 'distil'", "{type: lm}", "{type: distill}", "{type: qformer}"],
        ),
        (
            lambda r: r["stages"][0].update(objective={"type": "distil"}),
            ["stages.0.objective", "'lm', 'distill', 'qformer'"],
        ),
        (
            lambda r: r["stages"][0].update(objective={"type": "distill", "weight": 2}),
            ["stages.0.objective.distill.weight", "less than or equal to 1"],
        ),
        # what training would choke on, caught before it starts
        (
            lambda r: r["stages"][0]["lr"].update(connectors=-1e-3),
            ["stages.0.lr.connectors", "greater than or equal to 0"],
        ),
        (
            lambda r: r["stages"][0]["lr"].update(connectors=float("nan")),
            ["stages.0.lr.connectors", "finite"],
        ),
        (
            lambda r: r["stages"][0]["lr"].update(connectors=float("inf")),
            ["stages.0.lr.connectors", "finite"],
        ),
        (
            lambda r: r["stages"][0]["lr"].update(connectors=0),
            ["'connectors' trains (full) with lr 0", "frozen"],
        ),
        (lambda r: r.update(seed=2**32), ["seed", "4294967295"]),
        (lambda r: r.update(seed=-1), ["seed", "0"]),
        (lambda r: r["data"].update(eval_seed=2**40), ["data.eval_seed"]),
        (lambda r: r["stages"][0].update(steps=True), ["stages.0", "steps: must be a number", "not true"]),
        (lambda r: r["stages"][0].update(batch_size=False), ["batch_size: must be a number", "not false"]),
        (lambda r: r.update(lora={"alpha": -16}), ["lora.alpha", "greater than 0"]),
        (lambda r: r.update(lora={"r": 0}), ["lora.r"]),
        (lambda r: r["generation"].update(max_new_tokens=0), ["generation.max_new_tokens"]),
        (
            lambda r: (
                r["model"]["encoders"].update(photo=r["model"]["encoders"].pop("image")),
                r["model"]["connectors"].update(photo=r["model"]["connectors"].pop("image")),
            ),
            ["model.encoders.photo", "'photo' is not a modality", "image or audio"],
        ),
    ],
)
def test_bad_recipes_name_the_key(change, expected):
    raw = base()
    change(raw)
    with pytest.raises(OmnifuseError) as info:
        parse_recipe(raw, "bad.yaml")
    msg = str(info.value)
    assert msg.startswith("bad.yaml is not a valid recipe")
    for part in expected:
        assert part in msg, (part, msg)


def test_overrides():
    r = parse_recipe(
        base(), overrides=["stages.0.steps=7", "model.connectors.image.grid=3", "data.eval_limit=null"]
    )
    assert r.stages[0].steps == 7 and r.model.connectors["image"].grid == 3 and r.data.eval_limit is None
    with pytest.raises(OmnifuseError, match="index"):
        parse_recipe(base(), overrides=["stages.5.steps=1"])
    with pytest.raises(OmnifuseError, match="dotted.key=value"):
        parse_recipe(base(), overrides=["stages.0.steps"])
    with pytest.raises(OmnifuseError, match="unknown key"):
        parse_recipe(base(), overrides=["stages.0.stepz=1"])


def test_recipes_are_immutable():
    r = parse_recipe(base())
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        r.stages[0].steps = 3


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(OmnifuseError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(OmnifuseError, match="not valid YAML"):
        load_recipe(bad)


def test_a_key_given_twice_is_refused_not_replaced(tmp_path):
    text = QUICKSTART.read_text()
    stages = text[text.index("stages:") :]
    twice = tmp_path / "twice.yaml"
    twice.write_text(text + "\n" + stages.split("\nlora:")[0].split("\ngeneration:")[0] + "\n")
    with pytest.raises(OmnifuseError, match=r"the key 'stages' is given twice \(first on line \d+\)"):
        load_recipe(twice)


def test_a_utf16_recipe_is_read_and_latin1_bytes_are_named(tmp_path):
    text = QUICKSTART.read_text()
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes(text.encode("utf-16"))  # with its byte-order mark, as Windows editors write it
    assert load_recipe(utf16) == load_recipe(QUICKSTART)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(b"name: caf\xe9\n")  # Latin-1 bytes
    with pytest.raises(
        OmnifuseError, match=r"latin1\.yaml is not UTF-8 text .* at byte \d+\); save it as UTF-8"
    ):
        load_recipe(latin)


def test_objectives_are_a_tagged_union_and_the_old_flat_form_is_still_read():
    from omnifuse.recipe import DistillObjective, LMObjective, QFormerObjective, RecipeDeprecation

    raw = base()
    raw["stages"][0]["objective"] = {"type": "distill", "temperature": 2.0, "weight": 0.25}
    new = parse_recipe(raw)
    assert new.stages[0].objective == DistillObjective(type="distill", temperature=2.0, weight=0.25)
    assert new.stages[1].objective == LMObjective()
    # the spelling before the union: a string and flat distill_* keys (every old run directory has them)
    old = base()
    old["stages"][0].update(objective="distill", distill_temperature=2.0, distill_weight=0.25)
    old["stages"][1].update(objective="generative", distill_temperature=1.0, distill_weight=0.5)
    with pytest.warns(RecipeDeprecation) as caught:
        assert parse_recipe(old, "old.yaml") == new
    messages = [str(w.message) for w in caught]
    assert any("`objective: distill, distill_weight, distill_temperature`" in m for m in messages), messages
    assert any("write `objective: {type: lm}`" in m for m in messages), messages
    assert all(w.filename == "old.yaml" for w in caught)  # named after the recipe, not omnifuse's code
    qformer = QFormerObjective(type="qformer")
    assert qformer.losses == ("itc", "itm", "itg")
    with pytest.raises(ValueError, match="names a loss twice"):
        QFormerObjective(type="qformer", losses=("itc", "itc"))


def test_the_cli_says_an_old_spelling_as_one_note_and_hides_library_warnings(tmp_path, capsys, monkeypatch):
    import warnings

    import omnifuse.recipe
    from omnifuse.cli import main

    old = base()
    old["stages"][0].update(objective="generative")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    real = omnifuse.recipe.load_recipe

    def noisy(*args, **kwargs):  # a library warning raised while the verb runs
        warnings.warn("some library's internal notice", UserWarning, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(omnifuse.recipe, "load_recipe", noisy)
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"note: {path}: stage " in err and "write `objective: {type: lm}`" in err, err
    assert "RecipeDeprecation" not in err and "library's internal notice" not in err, err
    assert main(["validate", str(path), "--debug"]) == 0
    assert "library's internal notice" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, expected",
    [
        ("photo", ["'photo' is not a modality", "did you mean 'image'?", "image or audio"]),
        ("imgae", ["did you mean 'image'?"]),
        ("video", ["video parts need {type: frames"]),  # a modality, read by a frames encoder
        ("movie", ["'movie' is not a modality", "did you mean 'video'?", "image or audio or video"]),
    ],
)
def test_modalities_are_a_closed_vocabulary_with_a_guess(name, expected):
    raw = base()
    raw["model"]["encoders"][name] = raw["model"]["encoders"].pop("image")
    raw["model"]["connectors"][name] = raw["model"]["connectors"].pop("image")
    with pytest.raises(OmnifuseError) as info:
        parse_recipe(raw, "bad.yaml")
    for part in [f"model.encoders.{name}", *expected]:
        assert part in str(info.value), (part, str(info.value))


def test_validate_names_the_allowed_modalities(tmp_path):
    """`omnifuse validate` on a recipe with modality `photo`: one paragraph naming them, exit non-zero."""
    import subprocess
    import sys

    raw = base()
    raw["model"]["encoders"]["photo"] = raw["model"]["encoders"].pop("image")
    raw["model"]["connectors"]["photo"] = raw["model"]["connectors"].pop("image")
    path = tmp_path / "photo.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "omnifuse", "validate", str(path)], capture_output=True, text=True
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "'photo' is not a modality" in out and "image or audio" in out, out
    assert "Traceback" not in out


def test_loading_a_recipe_imports_no_torch():
    """Why the specs live in recipe/ (docs/architecture.md, Recipes): validating never loads torch."""
    import subprocess
    import sys

    code = (
        "import sys; from omnifuse.recipe import load_recipe; "
        f"[load_recipe(p) for p in {[str(p) for p in RECIPES]!r}]; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
