"""The builders the rows of tests/cli/test_bad_input.py are made of.

A row is a :class:`Case`: an id, a phrase the error message must hold, and a builder that writes what the
case needs into the test's own folder (a damaged copy of the module's tiny run, a mutated recipe, a data
file with one bad line) and returns the command line.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

import badinput as bad


@dataclass(frozen=True)
class Env:
    parts: dict[str, Path]
    recipe: dict
    run: Path
    images: dict[str, tuple[Path, str]]
    clips: dict[str, tuple[Path, str]]


Build = Callable[[Env, Path], list[str]]


@dataclass(frozen=True)
class Case:
    id: str
    says: str  # a phrase the message must hold (case-insensitive): the file, the key, the problem
    build: Build


# ------------------------------------------------------------------ builders
DELETE = object()


def changed(recipe: dict, changes: dict) -> dict:
    """``recipe`` with dotted keys set (``stages.0.lr.connectors``), or removed with DELETE."""
    out = copy.deepcopy(recipe)
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = out
        for key in path:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if value is DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return out


def recipe_text(env: Env) -> str:
    return env.parts["recipe"].read_text()


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def validate(
    changes: dict | None = None, text: Callable[[Env], str | bytes] | None = None, *extra: str
) -> Build:
    def build(env: Env, tmp: Path) -> list[str]:
        path = tmp / "recipe.yaml"
        write(path, text(env)) if text else bad.write_yaml(path, changed(env.recipe, changes or {}))
        return ["validate", str(path), *extra]

    return build


def train(changes: dict | None = None, *extra: str, out: Callable[[Path], Path] | None = None) -> Build:
    def build(env: Env, tmp: Path) -> list[str]:
        recipe = bad.write_yaml(tmp / "recipe.yaml", changed(env.recipe, changes or {}))
        target = out(tmp) if out else tmp / "out"
        return ["train", str(recipe), "--out", str(target), "--no-progress", *extra]

    return build


def sample(env: Env, i: int = 0, image: Path | None = None, audio: Path | None = None) -> dict:
    folder, k = env.parts["data"].parent, i % 6  # the data set has six images and clips
    content = [{"type": "image", "image": str(image or folder / "img" / f"{k}.png")},
               {"type": "audio", "audio": str(audio or folder / "audio" / f"{k}.wav")}]  # fmt: skip
    return {"id": f"b{i}", "messages": [{"role": "user", "content": content},
                                        {"role": "assistant", "content": "red"}]}  # fmt: skip


def data_lines(make: Callable[[Env], list[str | bytes]]) -> Callable[[Env, Path], Path]:
    def write_data(env: Env, tmp: Path) -> Path:
        good = [json.dumps(sample(env, i)).encode() for i in range(3)]
        lines = [x.encode() if isinstance(x, str) else x for x in make(env)]
        return write(tmp / "bad.jsonl", b"\n".join(good + lines) + b"\n")

    return write_data


def train_data(make: Callable[[Env], list[str | bytes]]) -> Build:
    def build(env: Env, tmp: Path) -> list[str]:
        path = data_lines(make)(env, tmp)
        return train({"data.train": str(path)})(env, tmp)

    return build


def eval_data(make: Callable[[Env], list[str | bytes]]) -> Build:
    def build(env: Env, tmp: Path) -> list[str]:
        return ["eval", str(copy_run(env, tmp)), "--data", str(data_lines(make)(env, tmp)), "--no-progress"]

    return build


def copy_run(env: Env, tmp: Path, damage: Callable[[Path], object] | None = None) -> Path:
    run = tmp / "run"
    shutil.copytree(env.run, run)
    if damage:
        damage(run)
    return run


def on_run(verb: list[str], damage: Callable[[Path], object] | None = None) -> Build:
    """``VERB RUN ARGS...`` on a (damaged) copy of the run; ``{run}`` and ``{image}`` in ARGS are filled in."""

    def build(env: Env, tmp: Path) -> list[str]:
        run = copy_run(env, tmp, damage)
        image = str(env.parts["image"])
        return [
            verb[0],
            str(run),
            *(a.replace("{run}", str(run)).replace("{image}", image) for a in verb[1:]),
        ]

    return build


def legacy(damage: Callable[[Path], object]) -> Callable[[Path], None]:
    """The damage in a run directory without status.json (older runs): no hash catches it first."""

    def both(run: Path) -> None:
        (run / "status.json").unlink()
        damage(run)

    return both


def resume(damage: Callable[[Path], object]) -> Build:
    """``train --resume`` of a run interrupted after its first step, with ``damage`` done to it."""

    def build(env: Env, tmp: Path) -> list[str]:
        def interrupted(run: Path) -> None:
            write(run / "status.json", json.dumps({"status": "running", "updated": 0.0}))
            state = json.loads((run / "checkpoint" / "state.json").read_text())
            state["progress"] = {"stage": 0, "step": 1}
            write(run / "checkpoint" / "state.json", json.dumps(state))
            damage(run)

        run = copy_run(env, tmp, interrupted)
        return ["train", str(env.parts["recipe"]), "--out", str(run), "--resume", "--no-progress"]

    return build


def set_json(rel: str, edit: Callable[[object], object]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / rel
        write(path, json.dumps(edit(json.loads(path.read_text()))))

    return damage


def put(rel: str, content: str | bytes) -> Callable[[Path], Path]:
    return lambda run: write(run / rel, content)


def append(rel: str, line: str | bytes) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        with (run / rel).open("ab") as fh:
            fh.write(line.encode() if isinstance(line, str) else line)

    return damage


def nan_weights(rel: str) -> Callable[[Path], Path]:
    return lambda run: bad.nan_weights_like(run / rel, run / rel)


def llm_folder(damage: Callable[[Path], object]) -> Build:
    """``train`` with the LLM a damaged copy of the tiny model's folder."""

    def build(env: Env, tmp: Path) -> list[str]:
        folder = tmp / "llm"
        shutil.copytree(env.parts["llm"], folder)
        damage(folder)
        return train({"model.llm.name": str(folder)})(env, tmp)

    return build


def whisper_folder(damage: Callable[[Path], object]) -> Build:
    def build(env: Env, tmp: Path) -> list[str]:
        folder = tmp / "whisper"
        shutil.copytree(env.parts["whisper"], folder)
        damage(folder)
        return train({"model.encoders.audio.weights": str(folder)})(env, tmp)

    return build


def emptied(folder: Path) -> None:
    shutil.rmtree(folder)
    folder.mkdir()


def only_pickle(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")


def cnn_weights(content: str | bytes | None, name: str = "cnn.safetensors") -> Build:
    def build(env: Env, tmp: Path) -> list[str]:
        path = tmp / name
        if content is None:
            save_file({"features.0.weight": torch.zeros(1)}, str(path))
        else:
            write(path, content)
        return train({"model.encoders.image.weights": str(path)})(env, tmp)

    return build


def with_image(verb: str, key: str) -> Build:
    def build(env: Env, tmp: Path) -> list[str]:
        image = str(env.images[key][0])
        if verb == "explain":
            return ["explain", str(copy_run(env, tmp)), "what color?", "--image", image]
        return ["chat", str(copy_run(env, tmp)), "--image", image, "what color?"]

    return build


def with_clip(key: str) -> Build:
    return lambda env, tmp: ["chat", str(copy_run(env, tmp)), "--audio", str(env.clips[key][0])]


def image_in_data(key: str, verb: str) -> Build:
    make = lambda env: [json.dumps(sample(env, 9, image=env.images[key][0]))]  # noqa: E731
    return train_data(make) if verb == "train" else eval_data(make)


def clip_in_data(key: str) -> Build:
    return eval_data(lambda env: [json.dumps(sample(env, 9, audio=env.clips[key][0]))])


def convert(kind: str, content: str | bytes | None, *extra: str, name: str = "src.json") -> Build:
    def build(env: Env, tmp: Path) -> list[str]:
        src = tmp / name if content is None else write(tmp / name, content)
        return ["data", "convert", kind, str(src), "--out", str(tmp / "out.jsonl"), *extra]

    return build


def entries(*items) -> str:
    return json.dumps(list(items), ensure_ascii=False)


def turns(*pairs) -> list[dict]:
    return [{"from": who, "value": text} for who, text in pairs]
