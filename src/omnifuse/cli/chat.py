"""``omnifuse chat`` and ``omnifuse explain``: ask a trained model, and show why it answered so."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from omnifuse.cli import console
from omnifuse.cli.common import (
    Device,
    Dtype,
    FastVKeep,
    FastVLayer,
    PackedWeights,
    Progress,
    Quantize,
    app,
    check_placement,
    fastv_option,
    packed_weights_option,
)
from omnifuse.cli.render import print_classifier_explanation, print_explanation
from omnifuse.errors import OmnifuseError


def _check_speech_out(path: Path) -> None:
    """Fail before loading the model when the answer could not be spoken or written."""
    from omnifuse.audio.tts import INSTALL_HINT, espeak_available

    if not espeak_available():
        raise OmnifuseError(f"--speak needs espeak-ng, which is not installed; {INSTALL_HINT}")
    if path.is_dir() or not path.parent.is_dir():
        raise OmnifuseError(f"--speak {path}: give a wav file path in an existing folder")


def _speak(answer: str, path: Path, voice: str) -> None:
    from omnifuse.atomic import atomic_write_bytes
    from omnifuse.audio.tts import synthesize

    atomic_write_bytes(path, synthesize(answer, voice=voice))
    console.err.print(f"spoken answer written to {path}")


@app.command()
def chat(
    run_dir: Path,
    question: Annotated[
        str | None, typer.Argument(help="one question; leave out for an interactive chat")
    ] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option(
            help="image file to ask about; repeat for several, placed in order before the question or at its "
            "<image> markers ('compare <image> with <image>')"
        ),
    ] = None,
    audio: Annotated[
        Path | None, typer.Option(help="a spoken question (wav/flac/ogg/mp3; models with audio input)")
    ] = None,
    video: Annotated[
        Path | None, typer.Option(help="a video to ask about (mp4/webm/...; models with a video encoder)")
    ] = None,
    start: Annotated[float | None, typer.Option(min=0, help="--video: sample from this second")] = None,
    end: Annotated[float | None, typer.Option(min=0, help="--video: sample up to this second")] = None,
    speak: Annotated[
        Path | None, typer.Option(help="also speak the answer into this wav file (espeak-ng)")
    ] = None,
    voice: Annotated[str, typer.Option(help="espeak-ng voice for --speak")] = "en-us",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="draw the answer's boxes (<ref>/<box> grounding text) on the image, as a PNG"
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="default: the recipe's generation setting")
    ] = None,
    device: Device = None,
    dtype: Dtype = None,
    quantize: Quantize = None,
    fastv_keep: FastVKeep = None,
    fastv_layer: FastVLayer = None,
    packed_weights: PackedWeights = None,
) -> None:
    """Ask a trained model about images or a video, typed or spoken (one question, or interactive with
    /image, /video, /audio, /reset, /quit)."""
    from omnifuse.generation.chat import ChatSession
    from omnifuse.rundir import RunDir
    from omnifuse.tasks import load_language_model
    from omnifuse.untrusted import open_image

    check_placement(device, dtype, quantize)
    fastv = fastv_option(fastv_keep, fastv_layer)
    packed_weights = packed_weights_option(packed_weights)
    if speak is not None:
        _check_speech_out(speak)
    for path in image or []:  # checked before the model loads: a wrong path fails in milliseconds
        open_image(path, "image file")
    if out is not None:
        _check_boxes_out(out, image, question is not None or audio is not None)
    recipe, model, processor = load_language_model(
        RunDir(run_dir), device=device, dtype=dtype, quantize=quantize
    )
    if fastv is not None:
        recipe = recipe.with_fastv(fastv)
    recipe = recipe.with_packed_weights(packed_weights)
    session = ChatSession(model, processor, recipe, max_new_tokens=max_new_tokens)
    for path in image or []:
        session.add_image(path)
    if video is not None:
        session.add_video(video, start, end)
    if question is not None or audio is not None:
        answer = session.ask(question, audio)
        console.out.print(escape(answer))
        if speak is not None:
            _speak(answer, speak, voice)
        if out is not None:
            _draw_boxes(answer, image, out)
        return
    _interactive(session, speak, voice)


def _last_image(image) -> Path | None:
    """The last image of the question (one path, or the list of several): Qwen-VL draws boxes on it."""
    return image[-1] if isinstance(image, list) and image else image if isinstance(image, Path) else None


def _check_boxes_out(out: Path, image, one_question: bool) -> None:
    if _last_image(image) is None or not one_question:
        raise OmnifuseError(
            "--out draws the answer's boxes on the image: ask one question (not the interactive chat) about an "
            "image given with --image"
        )
    if out.suffix.lower() != ".png" or out.is_dir() or not out.parent.is_dir():
        raise OmnifuseError(f"--out {out}: give a .png file path in an existing folder")


def _draw_boxes(answer: str, image, out: Path) -> None:
    """The answer's boxes drawn on the (last) image (omnifuse.data.boxes) into ``out``; says how many."""
    import io

    from omnifuse.atomic import atomic_write_bytes
    from omnifuse.data.boxes import draw_grounding
    from omnifuse.untrusted import open_image

    canvas, drawn = draw_grounding(open_image(_last_image(image), "image file"), answer)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    what = f"{drawn} box(es) drawn" if drawn else "the answer holds no box; the image is copied unchanged"
    console.err.print(f"{what}: {out}")


def _interactive(session, speak: Path | None, voice: str) -> None:
    """The chat loop: questions, /image PATH, /audio PATH, /reset, /quit; a bad path keeps the chat going."""
    console.err.print(
        "interactive chat: type a question; /image PATH (again for several; <image> in the question places "
        "them), /video PATH, /audio PATH (a spoken question), /reset, /quit"
    )
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        try:
            if line == "/reset":
                session.reset()
            elif line.startswith("/video"):
                session.add_video(Path(line.removeprefix("/video").strip()))
                console.err.print("video attached")
            elif line.startswith("/image"):
                session.add_image(Path(line.removeprefix("/image").strip()))
                n = len(session.images)
                console.err.print(f"{n} images attached to the next question" if n > 1 else "image attached")
            else:
                spoken = line.startswith("/audio")
                clip = Path(line.removeprefix("/audio").strip()) if spoken else None
                answer = session.ask(None if spoken else line, clip)
                console.out.print(f"model> {escape(answer)}")
                if speak is not None:
                    _speak(answer, speak, voice)
        except OmnifuseError as exc:  # a bad image path must not end the conversation
            console.err.print(f"[red]error:[/red] {escape(str(exc))}")


@app.command()
def explain(
    run_dir: Path,
    question: Annotated[str, typer.Argument(help="the question about the image")],
    image: Annotated[Path | None, typer.Option(help="image file to ask about")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="folder for explain.json and the PNGs (default RUN/explain)")
    ] = None,
    audio: Annotated[Path | None, typer.Option(help="audio clip (classifier runs that read audio)")] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            help="maps to compute: attention, gradient, occlusion, shap, lime (repeat or comma list; "
            "default attention,gradient)"
        ),
    ] = None,
    samples: Annotated[
        int, typer.Option(help="model evaluations for shap and lime (more: steadier, slower)")
    ] = 200,  # omnifuse.explain.perturbation.DEFAULT_SAMPLES (a test keeps them equal)
    seed: Annotated[int, typer.Option(help="seed of the shap / lime sampling (same seed, same map)")] = 0,
    regions: Annotated[
        str, typer.Option(help="image features for shap / lime / occlusion: patches or superpixels (SLIC)")
    ] = "patches",
    grid: Annotated[
        int | None,
        typer.Option(
            help="patches per side (default: the encoder's token grid, else 8); superpixels: ~grid²"
        ),
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(help="LLM layers for the attention map: all (default), lastN, A-B, or a list"),
    ] = None,
    answer: Annotated[
        str | None, typer.Option(help="explain this answer's tokens instead of the model's own first token")
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="length of the greedy answer shown (default: the recipe's setting)"),
    ] = None,
    progress: Progress = True,
    device: Device = None,
    dtype: Dtype = None,
) -> None:
    """Explain an answer: attention to image regions, gradient × input, SHAP / LIME / occlusion of image
    regions and question tokens, with/without image, logit lens; for a classifier run, SHAP / LIME /
    occlusion of each modality's features (the question is its text input)."""
    from omnifuse.explain import open_image
    from omnifuse.explain.perturbation import PerturbationSettings, check_settings, parse_methods
    from omnifuse.rundir import RunDir
    from omnifuse.tasks import task_of_run
    from omnifuse.untrusted import check_out_dir

    check_placement(device, dtype)
    methods = parse_methods(method)  # bad input fails before the model loads
    check_settings(samples, grid, regions)
    run = RunDir(run_dir).require_trained()
    folder = check_out_dir(out_dir or Path(run_dir) / "explain")
    settings = PerturbationSettings(samples=samples, seed=seed, regions=regions, grid=grid)
    classifier = getattr(task_of_run(run), "explain_inputs", None)  # tasks without a language model
    if classifier is not None:
        _explain_classifier(classifier, run, question, image, audio, folder, methods, settings, answer, progress,
                            device, dtype)  # fmt: skip
        return
    if image is None:
        raise OmnifuseError(
            f"{run.path} is a language-model run: give the image to ask about with --image PATH"
        )
    picture = open_image(image)
    _explain_language_model(
        run, picture, question, folder, str(image), methods, settings, layers, answer, max_new_tokens,
        progress, device, dtype,
    )  # fmt: skip


def _explain_classifier(load, run, question, image, audio, folder, methods, settings, answer, progress,
                        device, dtype) -> None:  # fmt: skip
    from omnifuse.explain.classifier import explain_classifier, refuse_map_methods
    from omnifuse.explain.render import write_classifier_explanation
    from omnifuse.progress import progress_bar
    from omnifuse.untrusted import open_image

    refuse_map_methods(methods)
    if image is not None:
        open_image(image, "--image")
    if audio is not None and not audio.is_file():
        raise OmnifuseError(f"--audio {audio} does not exist or is not a file")
    model, features, classes = load(run, question, image, audio, device=device, dtype=dtype)
    results = {}
    total = sum(settings.samples if m != "occlusion" else 0 for m in methods) or None
    with progress_bar("explaining", total, progress) as bar:
        for m in methods:
            results[m] = explain_classifier(
                model, features, classes, m, settings, answer, on_eval=bar.advance
            )
    inputs = {
        "question": question,
        "image": str(image) if image else None,
        "audio": str(audio) if audio else None,
    }
    obj = write_classifier_explanation(results, inputs, folder)
    print_classifier_explanation(results, obj, folder)


def _explain_language_model(
    run, picture, question, folder, image_path, methods, settings, layers, answer, max_new_tokens,
    progress, device, dtype,
) -> None:  # fmt: skip
    from omnifuse.explain import explain as run_explain
    from omnifuse.explain import write_explanation
    from omnifuse.explain.perturbation import planned_evaluations
    from omnifuse.progress import progress_bar
    from omnifuse.tasks import load_language_model

    # attributions take gradients through the LLM, which quantised layers do not have: always float here
    recipe, model, processor = load_language_model(
        run, progress=progress, device=device, dtype=dtype, quantize="none"
    )
    evaluations = planned_evaluations(model, processor, picture, question, methods, settings)
    # one bar: the answer with its attributions (generation, forward + backward, contributions, logit
    # lens), each model evaluation of shap / lime / occlusion, then the PNGs
    with progress_bar("explaining", 2 + evaluations, progress) as bar:
        expl = run_explain(
            model,
            processor,
            picture,
            question,
            answer=answer,
            layers=layers,
            max_new_tokens=max_new_tokens or recipe.generation.max_new_tokens,
            methods=methods,
            settings=settings,
            on_eval=bar.advance,
        )
        bar.advance()
        obj = write_explanation(expl, picture, folder, image_path)
        bar.advance()
    print_explanation(expl, obj, folder)
