"""``omnifuse export``: a trained run as a Hugging Face folder (hf, llava or llm format), with a model card."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from omnifuse.cli import console
from omnifuse.cli.common import Progress, app


@app.command("export")
def export_(
    run_dir: Path,
    out: Annotated[
        Path, typer.Option("--out", help="folder to write (created; must be empty unless --force)")
    ],
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help="hf (default): any recipe without video, loads through transformers' Auto classes after "
            "`import omnifuse.hf`; llava: LLaVA-shaped recipes, loads in plain transformers / vLLM / TGI; "
            "llm: the language model alone, a plain causal-LM folder",
        ),
    ] = "hf",
    merge_lora: Annotated[
        bool,
        typer.Option(
            "--merge-lora/--no-merge-lora",
            help="fold LoRA adapters into the base weights (hf and llava need it; llm without it writes a PEFT adapter)",
        ),
    ] = True,
    dtype: Annotated[
        str, typer.Option(help="float32|bfloat16|float16: the stored weights' type")
    ] = "float32",
    max_shard_size: Annotated[
        str, typer.Option(help="split the weights into safetensors shards of at most this size")
    ] = "2GB",
    force: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
    push_to_hub: Annotated[
        str | None, typer.Option(help="then upload the folder to this hub repository (needs hub access)")
    ] = None,
    progress: Progress = True,
) -> None:
    """Export a trained run: safetensors weights (sharded, with an index), config.json,
    generation_config.json, the tokenizer with its chat template, the preprocessing config and a model card."""
    from omnifuse.export import ExportOptions, export_format, export_run
    from omnifuse.export import push_to_hub as push
    from omnifuse.export.common import check_shard_size, parse_dtype

    export_format(format_)  # unknown formats and dtypes fail before anything loads
    options = ExportOptions(
        merge_lora=merge_lora, dtype=parse_dtype(dtype), max_shard_size=check_shard_size(max_shard_size)
    )
    command = shlex.join(
        ["omnifuse", "export", str(run_dir), "--out", str(out), "--format", format_, "--dtype", dtype]
        + ([] if merge_lora else ["--no-merge-lora"])
    )
    export_run(run_dir, out, format_, options, force=force, command=command, progress=progress)
    console.out.print(f"exported {escape(str(run_dir))} as {format_} to {escape(str(out))}")
    if push_to_hub:
        url = push(out, push_to_hub)
        console.out.print(f"pushed to {escape(url)}")
