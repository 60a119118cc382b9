"""The Typer application every verb module registers on, and the options the verbs share."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    help="Build, train, evaluate and chat with multimodal LLMs from pretrained parts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="override a recipe value: dotted.key=value (repeatable), e.g. stages.0.steps=20"
    ),
]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")]
Device = Annotated[
    str | None,
    typer.Option(
        help="auto|cpu|cuda|cuda:N|mps: where the model runs (default: the recipe's runtime.device)"
    ),
]
Dtype = Annotated[
    str | None,
    typer.Option(
        help="auto|fast|float32|bfloat16|float16: the compute precision (default: the recipe's runtime.dtype)"
    ),
]
Quantize = Annotated[
    str | None,
    typer.Option(
        help="none|int8|int4: store the LLM's linear layers in 8 or 4 bits (CPU: int8, torch dynamic "
        "quantisation; CUDA: bitsandbytes int8/int4; default: the recipe's runtime.quantize)"
    ),
]

Nproc = Annotated[
    int | None,
    typer.Option(
        min=1, help="run in N processes on this machine (one per GPU; gloo on CPUs), started by torchrun"
    ),
]


def relaunch(nproc: int) -> None:
    """Run this same command in ``nproc`` processes under torch's launcher (torchrun, the engine that
    ``accelerate launch`` uses too) on this machine, and exit with its status."""
    import subprocess
    import sys

    args, skip = [], False
    for a in sys.argv[1:]:  # the command without --nproc
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "omnifuse", *args]  # fmt: skip
    from omnifuse.cli import console

    console.err.print(f"starting {nproc} processes: {' '.join(cmd[1:])}")
    raise typer.Exit(subprocess.call(cmd))


def quiet_unless_main() -> None:
    """Under a launcher, only the first process prints results; the others' work lands in the same run."""
    from omnifuse.cli import console
    from omnifuse.runtime import current_world

    if not current_world().main:
        console.out.quiet = True


def check_placement(device: str | None, dtype: str | None, quantize: str | None = None) -> None:
    """A bad ``--device`` / ``--dtype`` / ``--quantize`` fails here, in a second, before any model loads
    (the recipe's runtime section is checked against them again when the model is placed)."""
    if quantize is not None:
        from omnifuse.models.quantize import check_quantize

        check_quantize(quantize)
    if device is None and dtype is None:
        return
    from omnifuse.runtime import resolve_placement

    resolve_placement(device=device, dtype=dtype)


def _print_version(value: bool) -> None:
    if value:
        from omnifuse import __version__

        typer.echo(f"omnifuse {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="print the version and exit"),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="on an error, show the traceback (anywhere on the command line)"),
    ] = False,
) -> None:
    # --debug is taken off the command line by omnifuse.cli.main before parsing (so that it works after the
    # verb too); it is declared here so that `omnifuse --help` shows it.
    del version, debug


FastVKeep = Annotated[
    float | None,
    typer.Option(
        "--fastv-keep",
        help="prune media tokens at inference (FastV): keep this share of each prompt's image tokens, the most "
        "attended, after --fastv-layer decoder layers; in (0, 1] (default: the recipe's generation.fastv, else off)",
    ),
]
FastVLayer = Annotated[
    int | None,
    typer.Option("--fastv-layer", help="with --fastv-keep: decoder layers that see every token (default 2)"),
]


def fastv_option(keep: float | None, layer: int | None):
    """``--fastv-keep`` / ``--fastv-layer`` as a recipe's ``generation.fastv`` (None: the recipe's own),
    checked before any model loads (the layer against the LLM's depth when the engine is built)."""
    from omnifuse.errors import OmnifuseError

    if keep is None:
        if layer is not None:
            raise OmnifuseError(
                "--fastv-layer says after which layer FastV prunes; give the share of image tokens to keep "
                "with --fastv-keep too (e.g. --fastv-keep 0.5)"
            )
        return None
    if not 0 < keep <= 1:
        raise OmnifuseError(f"--fastv-keep {keep}: give the share of image tokens kept, in (0, 1] (e.g. 0.5)")
    if layer is not None and layer < 1:
        raise OmnifuseError(
            f"--fastv-layer {layer}: give how many decoder layers see every token, at least 1"
        )
    from omnifuse.recipe import FastVSpec

    return FastVSpec(layer=2 if layer is None else layer, keep=keep)


PackedWeights = Annotated[
    str | None,
    typer.Option(
        "--packed-weights",
        help="auto|off: decode a float32 CPU model on oneDNN-packed copies of the LLM's linear weights where "
        "they fit (faster, as much memory again as those weights), or never (default: the recipe's "
        "generation.packed_weights, auto)",
    ),
]


def packed_weights_option(value: str | None) -> str | None:
    """``--packed-weights`` checked before any model loads (None: the recipe's own)."""
    from omnifuse.errors import OmnifuseError

    if value is not None and value not in ("auto", "off"):
        raise OmnifuseError(f"--packed-weights {value}: give auto (where they fit) or off (never)")
    return value
