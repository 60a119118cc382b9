"""Packaged pretrained assets and the cache they are converted into (see :mod:`omnifuse.assets.resolver`)."""

from omnifuse.assets.resolver import (
    ASSETS,
    PackagedAsset,
    cache_dir,
    cache_path,
    get_asset,
    is_installed,
    is_prepared,
    list_assets,
    prepare,
    prepare_all,
    resolve_llm,
    resolve_text_model,
    resolve_weights,
    source_path,
)

__all__ = [
    "ASSETS",
    "PackagedAsset",
    "cache_dir",
    "cache_path",
    "get_asset",
    "is_installed",
    "is_prepared",
    "list_assets",
    "prepare",
    "prepare_all",
    "resolve_llm",
    "resolve_text_model",
    "resolve_weights",
    "source_path",
]
