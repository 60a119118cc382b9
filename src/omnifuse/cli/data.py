"""``omnifuse assets`` and ``omnifuse data``: the packaged pretrained parts and the built-in data sets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from omnifuse.cli import console
from omnifuse.cli.common import Progress, app

assets_app = typer.Typer(help="List or prepare the packaged pretrained assets.", no_args_is_help=False)
data_app = typer.Typer(help="Export built-in data sets and convert data files to the native JSONL format.")
app.add_typer(assets_app, name="assets")
app.add_typer(data_app, name="data")


@assets_app.callback(invoke_without_command=True)
def assets(ctx: typer.Context) -> None:
    """List the packaged assets (or run `omnifuse assets prepare`)."""
    if ctx.invoked_subcommand is not None:
        return
    from omnifuse.assets import cache_dir, list_assets

    table = Table(title=f"packaged assets (cache: {cache_dir()})")
    for col in ("name", "kind", "package", "installed", "prepared"):
        table.add_column(col)
    for a in list_assets():
        table.add_row(
            a["name"],
            a["kind"],
            a["package"],
            "yes" if a["installed"] else "no",
            "yes" if a["prepared"] else "no",
        )
    console.out.print(table)


@assets_app.command("prepare")
def assets_prepare(progress: Progress = True) -> None:
    """Convert every packaged asset once into the cache (later calls return at once)."""
    from omnifuse.assets import prepare_all

    t0 = time.perf_counter()
    prepare_all(progress=progress)
    console.out.print(f"assets ready ({time.perf_counter() - t0:.1f} s)")


@data_app.command("easy-vqa")
def data_easy_vqa(
    out_dir: Annotated[
        Path, typer.Option("--out", help="folder to write train.jsonl, test.jsonl and images/")
    ],
    progress: Progress = True,
) -> None:
    """Export easy-vqa (4000/1000 images, 38,575/9,673 questions) to the native JSONL format."""
    from omnifuse.data.easy_vqa import export_easy_vqa
    from omnifuse.untrusted import check_out_dir

    files = export_easy_vqa(check_out_dir(out_dir), progress=progress)
    for split, path in files.items():
        console.out.print(f"{split}: {path}")


@data_app.command("spoken-easy-vqa")
def data_spoken_easy_vqa(
    out_dir: Annotated[
        Path, typer.Option("--out", help="folder to write train.jsonl, test.jsonl, images/ and audio/")
    ],
    limit_train: Annotated[int, typer.Option(help="seeded subset of train questions (0: all 38,575)")] = 4000,
    limit_test: Annotated[int, typer.Option(help="seeded subset of test questions (0: all 9,673)")] = 1000,
    voices_train: Annotated[
        str | None,
        typer.Option(help="comma-separated espeak-ng voices for train [default: six built-in voices]"),
    ] = None,
    voices_test: Annotated[
        str | None,
        typer.Option(
            help="comma-separated voices for test, none of them a train voice [default: four others]"
        ),
    ] = None,
    seed: int = 0,
    progress: Progress = True,
) -> None:
    """Export easy-vqa with the questions spoken by espeak-ng (16 kHz wav), test split in held-out voices."""
    from omnifuse.assets import cache_dir
    from omnifuse.data.easy_vqa import ensure_easy_vqa
    from omnifuse.data.export import MARKER
    from omnifuse.data.spoken_easy_vqa import export_spoken_easy_vqa
    from omnifuse.untrusted import check_out_dir

    check_out_dir(out_dir)  # before easy-vqa is unpacked and the questions are spoken
    t0 = time.perf_counter()
    files = export_spoken_easy_vqa(
        out_dir,
        ensure_easy_vqa(cache_dir(), progress=progress),
        limits={"train": limit_train or None, "test": limit_test or None},
        voices={
            split: [v.strip() for v in given.split(",") if v.strip()]
            for split, given in (("train", voices_train), ("test", voices_test))
            if given is not None
        },
        seed=seed,
        progress=progress,
    )
    for split, path in files.items():
        console.out.print(f"{split}: {path}")
    console.out.print(f"ready ({time.perf_counter() - t0:.1f} s); voices in {out_dir / MARKER}")


@data_app.command("av-digits")
def data_av_digits(
    out_dir: Annotated[
        Path, typer.Option("--out", help="folder to write train.jsonl, test.jsonl, images/ and audio/")
    ],
    progress: Progress = True,
) -> None:
    """Make av-digits (1347/450 digit images + spoken digits, held-out test voices) in the native format."""
    from omnifuse.data.av_digits import export_av_digits
    from omnifuse.untrusted import check_out_dir

    files = export_av_digits(check_out_dir(out_dir), progress=progress)
    for split, path in files.items():
        console.out.print(f"{split}: {path}")


@data_app.command("moving-shapes")
def data_moving_shapes(
    out_dir: Annotated[
        Path, typer.Option("--out", help="folder to write train.jsonl, test*.jsonl and clips/")
    ],
    train: Annotated[int, typer.Option(help="train clips (two questions and a caption each)")] = 600,
    test: Annotated[int, typer.Option(help="test clips (two questions and a caption each)")] = 160,
    seed: int = 0,
    progress: Progress = True,
) -> None:
    """Make moving-shapes: short MP4 clips of moving, recolouring, appearing and narrated shapes, with
    questions that need several frames (and the sound); test-single / test-noaudio ablations; a caption per
    clip in train-captions / test-captions (docs/video.md)."""
    from omnifuse.data.moving_shapes import export_moving_shapes
    from omnifuse.untrusted import check_out_dir

    t0 = time.perf_counter()
    files = export_moving_shapes(
        check_out_dir(out_dir), {"train": train, "test": test}, seed=seed, progress=progress
    )
    for split, path in files.items():
        console.out.print(f"{split}: {path}")
    console.out.print(f"ready ({time.perf_counter() - t0:.1f} s)")


@data_app.command("shapes-grounding")
def data_shapes_grounding(
    out_dir: Annotated[
        Path, typer.Option("--out", help="folder to write train.jsonl, test.jsonl and images/")
    ],
    train: Annotated[int, typer.Option(min=1, help="training scenes (about 5 samples each)")] = 3000,
    test: Annotated[int, typer.Option(min=1, help="test scenes")] = 300,
    seed: int = 0,
    progress: Progress = True,
) -> None:
    """Generate shapes-grounding: scenes of shapes with exact boxes, referring phrases and grounded
    captions in Qwen-VL's box text (docs/grounding.md)."""
    from omnifuse.data.shapes_grounding import export_shapes_grounding
    from omnifuse.untrusted import check_out_dir

    files = export_shapes_grounding(
        check_out_dir(out_dir), {"train": train, "test": test}, seed=seed, progress=progress
    )
    for split, path in files.items():
        console.out.print(f"{split}: {path}")


@data_app.command("shapes-rerendered")
def data_shapes_rerendered(
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write test.jsonl and images/")],
    n: Annotated[int, typer.Option("--n", min=1, help="questions (one image each)")] = 1000,
    seed: int = 0,
    progress: Progress = True,
) -> None:
    """Generate shapes-rerendered: easy-vqa's questions and vocabulary over shapes drawn differently
    (other image and shape sizes, edge positions, rotation, muted solid, gradient or noisy backgrounds),
    a check of generalisation beyond easy-vqa's renderer (docs/experiments.md)."""
    from omnifuse.data.shapes_rerendered import export_shapes_rerendered
    from omnifuse.untrusted import check_out_dir

    t0 = time.perf_counter()
    files = export_shapes_rerendered(check_out_dir(out_dir), n=n, seed=seed, progress=progress)
    for split, path in files.items():
        console.out.print(f"{split}: {path}")
    console.out.print(f"ready ({time.perf_counter() - t0:.1f} s)")


@data_app.command("convert")
def data_convert(
    kind: Annotated[
        str, typer.Argument(help="source format: llava, sharegpt, openai, coco-captions or refcoco")
    ],
    src: Path,
    out_file: Annotated[Path, typer.Option("--out", help="JSONL file to write")],
    images: Annotated[
        Path | None, typer.Option(help="folder the source's image paths are relative to")
    ] = None,
) -> None:
    """Convert LLaVA JSON, ShareGPT or OpenAI messages data to the native JSONL format (OpenAI's inline
    media are written to media/ beside --out)."""
    from omnifuse.data.converters import convert
    from omnifuse.untrusted import check_out_file

    n = convert(kind, src, check_out_file(out_file), images)
    console.out.print(f"wrote {n} samples to {out_file}")
