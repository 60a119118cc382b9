"""``omnifuse <verb>``: the command line. Results go to stdout, progress and logs to stderr.

Errors the user can fix are printed as one paragraph with a non-zero exit code; ``--debug`` (anywhere
on the command line) shows the traceback instead.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from omnifuse.errors import OmnifuseError

app = typer.Typer(
    help="Build, train, evaluate and chat with multimodal LLMs from pretrained parts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
assets_app = typer.Typer(help="List or prepare the packaged pretrained assets.", no_args_is_help=False)
data_app = typer.Typer(help="Export built-in data sets and convert data files to the native JSONL format.")
app.add_typer(assets_app, name="assets")
app.add_typer(data_app, name="data")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
QUICKSTART = RECIPES_DIR / "quickstart.yaml"

Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="override a recipe value: dotted.key=value (repeatable), e.g. stages.0.steps=20"
    ),
]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")]


def _peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


# ------------------------------------------------------------------ recipes and training
def _describe_generate(r) -> str:
    stages = ", ".join(
        f"{s.name} ({s.steps or s.epochs} {'steps' if s.steps else 'epochs'})" for s in r.stages
    )
    return f"valid recipe {r.name!r}; stages: {stages}"


def _describe_classifier(r) -> str:
    mods = ", ".join(f"{m} ({s.type})" for m, s in sorted(r.model.encoders.items()))
    dp = f"; DP-SGD at ε {r.privacy.target_epsilon}" if r.privacy else ""
    return f"valid classifier recipe {r.name!r}; {r.model.fusion.type} fusion of {mods}, {r.train.epochs} epochs{dp}"


def _describe_align(r) -> str:
    modalities = " ↔ ".join(f"{m} ({e.type})" for m, e in r.model.encoders.items())
    return f"valid alignment recipe {r.name!r}; method {r.method.type}, {modalities}"


def _train_generate(r, run_dir: Path, resume: bool, progress: bool, tensorboard: bool) -> None:
    from omnifuse.training.loop import train as run_training

    res = run_training(r, run_dir, resume=resume, console=err, progress=progress, tensorboard=tensorboard)
    if res.already_finished:
        _say_finished(run_dir)
        return
    out.print(
        f"trained {r.name} in {res.seconds:.1f} s ({res.steps} steps, final loss {res.final_loss or float('nan'):.4f}); "
        f"run directory: {run_dir}  peak memory {_peak_rss_gb():.2f} GB"
    )


def _train_classifier(r, run_dir: Path, resume: bool, progress: bool, tensorboard: bool) -> None:
    from omnifuse.training.classifier import train_classifier

    res = train_classifier(r, run_dir, resume=resume, console=err, progress=progress)
    if res.already_finished:
        _say_finished(run_dir)
    _print_classifier(run_dir)


def _train_align(r, run_dir: Path, resume: bool, progress: bool, tensorboard: bool) -> None:
    from omnifuse.alignment.run import headline, train_align

    result = train_align(r, run_dir, progress=progress, resume=resume)
    if result.already_finished:
        _say_finished(run_dir)
        out.print(f"{r.name} ({r.method.type}): {headline(result.evaluation)}")
        return
    out.print(
        f"trained {r.name} ({r.method.type}) in {result.seconds:.1f} s: {headline(result.evaluation)}; "
        f"run directory: {run_dir}"
    )


def _say_finished(run_dir: Path) -> None:
    out.print(
        f"{run_dir} finished training already; nothing was trained or changed (its weights are intact). "
        "Evaluate it with `omnifuse eval`, or train again into a new --out"
    )


def _recipe_kinds() -> dict[type, tuple]:
    """Each recipe class → (its line for `validate`, its trainer for `train`)."""
    from omnifuse.recipe import AlignRecipe, ClassifierRecipe, Recipe

    return {
        Recipe: (_describe_generate, _train_generate),
        ClassifierRecipe: (_describe_classifier, _train_classifier),
        AlignRecipe: (_describe_align, _train_align),
    }


@app.command()
def validate(recipe: Path, set_: Overrides = None) -> None:
    """Check a recipe file: keys, types, component names, stages."""
    from omnifuse.recipe import load_recipe

    r = load_recipe(recipe, set_ or [])
    describe, _ = _recipe_kinds()[type(r)]
    out.print(f"{recipe}: {escape(describe(r))}")


@app.command()
def train(
    recipe: Path,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="run directory (default runs/<recipe name>)")
    ] = None,
    set_: Overrides = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")] = False,
    tensorboard: Annotated[
        bool, typer.Option(help="also log to RUN/tensorboard (needs tensorboard; LLM recipes)")
    ] = False,
    progress: Progress = True,
) -> None:
    """Train a recipe through all its stages into a run directory (a classifier recipe: extract or load
    the cached features, train the fusion head, evaluate it; an alignment recipe: fit the method on cached
    features and evaluate retrieval or zero-shot accuracy)."""
    from omnifuse.recipe import Recipe, load_recipe

    r = load_recipe(recipe, set_ or [])
    if tensorboard and not isinstance(r, Recipe):
        raise OmnifuseError(
            "--tensorboard is for LLM recipes; classifier and alignment runs log their epochs to "
            "RUN/metrics.jsonl (plotted in RUN/report.md)"
        )
    _, trainer = _recipe_kinds()[type(r)]
    trainer(r, out_dir or Path("runs") / r.name, resume, progress, tensorboard)


def _print_classifier(run_dir: Path) -> None:
    result = json.loads((run_dir / "eval.json").read_text())
    lo, hi = result["accuracy_ci95"]
    line = (
        f"{result['fusion']} fusion: accuracy {_score(result['accuracy'], (lo, hi))}, macro F1 "
        f"{result['macro_f1']:.3f} on {result['n']} samples; {result['trainable_params']:,} trainable parameters"
    )
    if "privacy" in result:
        p = result["privacy"]
        line += f"; DP-SGD spent ε = {p['epsilon']:.2f} (target {p['target_epsilon']}, δ = {p['delta']:g})"
    out.print(line)
    rob_file = run_dir / "robustness.json"
    if rob_file.is_file():
        rob = json.loads(rob_file.read_text())
        table = Table(title="robustness (accuracy)")
        table.add_column("condition")
        table.add_column("accuracy", justify="right")
        table.add_row("clean", f"{100 * rob['clean']:.1f} %")
        for m, v in rob["missing"].items():
            table.add_row(
                f"{m} missing (zeroed / dropped)", f"{100 * v['zeroed']:.1f} / {100 * v['dropped']:.1f} %"
            )
        for std, row in rob["noise"].items():
            for target, acc in row.items():
                table.add_row(f"noise σ={std} on {target}", f"{100 * acc:.1f} %")
        out.print(table)
    out.print(f"run directory: {run_dir}  report: {run_dir / 'report.md'}")


@app.command("eval")
def eval_(
    run_dir: Path,
    data: Annotated[
        str | None, typer.Option(help="JSONL file in the native format (default: the recipe's eval data)")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="evaluate a seeded subset of this many samples")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    blind: Annotated[
        bool | None, typer.Option("--blind/--no-blind", help="also run the text-only baseline")
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(help="re-run an earlier evaluation from its manifest (RUN/eval_manifest.json)"),
    ] = None,
    robustness: Annotated[
        bool,
        typer.Option(help="also run the robustness probes (blank, noise, shuffled images, token dropout)"),
    ] = False,
    progress: Progress = True,
) -> None:
    """Evaluate a trained run (exact-match VQA accuracy, per question type, blind baseline)."""
    from omnifuse.eval.runner import evaluate_run
    from omnifuse.rundir import RunDir

    outcome = evaluate_run(
        RunDir(run_dir),
        data,
        limit,
        blind,
        progress=progress and not as_json,
        manifest=manifest,
        robustness=robustness,
    )
    if as_json:
        print(json.dumps(outcome.summary()))
        return
    _print_scores(outcome)
    if outcome.probes:
        _print_probes(outcome)
    if outcome.reproduction is not None:
        _print_reproduction(outcome.reproduction)
    out.print(f"report: {run_dir / 'report.md'}  manifest: {run_dir / 'eval_manifest.json'}")


def _print_probes(outcome) -> None:
    table = Table(title="robustness probes (same questions, changed inputs)")
    for col in ("probe", "accuracy", "answers changed"):
        table.add_column(col, justify="left" if col == "probe" else "right")
    table.add_row("clean", f"{100 * outcome.result.accuracy:.1f} %", "–")
    for row in outcome.probes:
        table.add_row(row.probe, f"{100 * row.result.accuracy:.1f} %", f"{100 * row.changed:.1f} %")
    out.print(table)


def _print_reproduction(rep) -> None:
    if rep.same:
        out.print(f"[green]reproduced[/green]: the scores equal those recorded in {rep.manifest}")
    else:
        out.print(f"[yellow]not reproduced[/yellow]: recorded {rep.then}, now {rep.now}")
    for name, (then, now) in rep.drift.items():
        out.print(f"  {name} was {then} when recorded, is {now} now")


def _score(accuracy: float, ci=None) -> str:
    """``85.7 % [83.5, 87.8]``: the accuracy and its 95 % interval, in percent."""
    text = f"{100 * accuracy:.1f} %"
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else text


def _print_scores(outcome) -> None:
    table = Table(title=f"evaluation on {outcome.data} (accuracy [95 % bootstrap CI])")
    table.add_column("question type")
    table.add_column("n", justify="right")
    table.add_column("accuracy", justify="right")
    if outcome.blind:
        table.add_column("blind", justify="right")
    r = outcome.result
    rows = [("all", {"n": r.n, "accuracy": r.accuracy, "ci95": r.ci95})]
    rows += list(r.per_type.items())
    for name, v in rows:
        cells = [name, str(v["n"]), _score(v["accuracy"], v.get("ci95"))]
        if outcome.blind:
            b = outcome.blind
            bv = {"accuracy": b.accuracy, "ci95": b.ci95} if name == "all" else b.per_type[name]
            cells.append(_score(bv["accuracy"], bv.get("ci95")))
        table.add_row(*cells)
    out.print(table)
    if r.asr is not None:
        out.print(
            f"ASR cascade: word error rate {100 * r.asr['wer']:.1f} % over {r.asr['n']} spoken questions, "
            f"{100 * r.asr['exact']:.1f} % heard exactly (predictions.jsonl: 'heard')"
        )


@app.command()
def report(
    run_dir: Path,
    samples: Annotated[int, typer.Option(min=0, help="sample predictions shown with their images")] = 12,
    explained: Annotated[
        int, typer.Option("--explain", min=0, help="of those, how many get attention / gradient heatmaps")
    ] = 4,
    progress: Progress = True,
) -> None:
    """Write RUN/report.html: one self-contained page (recipe, stages, curves, scores, robustness,
    samples, heatmaps)."""
    from omnifuse.eval.html import write_html_report
    from omnifuse.rundir import RunDir

    path = write_html_report(RunDir(run_dir), samples=samples, explained=explained, progress=progress)
    out.print(f"report: {path}")


@app.command()
def compare(
    run_a: Path,
    run_b: Path,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Compare two evaluated runs on the same samples: B − A with a 95 % paired bootstrap CI and a
    paired permutation-test p-value, overall and per question type."""
    from omnifuse.eval.compare import compare_runs

    c = compare_runs(run_a, run_b)
    if as_json:
        print(json.dumps(c.summary()))
        return
    table = Table(title=f"A = {escape(str(run_a))}, B = {escape(str(run_b))} (paired, same samples)")
    table.add_column("question type")
    for col in (
        "n",
        "accuracy A",
        "accuracy B",
        "B − A, points [95 % CI]",
        "p",
        "only A right",
        "only B right",
    ):
        table.add_column(col, justify="right", no_wrap=col.startswith("B − A"))
    for name, v in [("all", c.overall), *c.per_type.items()]:
        table.add_row(
            name,
            str(v.n),
            _score(v.mean_a),
            _score(v.mean_b),
            f"{100 * v.difference:+.1f} [{100 * v.ci[0]:+.1f}, {100 * v.ci[1]:+.1f}]",
            "< 0.001" if v.p_value < 0.001 else f"{v.p_value:.3f}",
            "—" if v.only_a is None else str(v.only_a),
            "—" if v.only_b is None else str(v.only_b),
        )
    out.print(table)
    out.print(
        "p: two-sided paired permutation test (sign flips of the per-sample differences); "
        "only A / B right: questions one run gets right and the other wrong"
    )


# ------------------------------------------------------------------ chat
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
    err.print(f"spoken answer written to {path}")


@app.command()
def chat(
    run_dir: Path,
    question: Annotated[
        str | None, typer.Argument(help="one question; leave out for an interactive chat")
    ] = None,
    image: Annotated[Path | None, typer.Option(help="image file to ask about")] = None,
    audio: Annotated[
        Path | None, typer.Option(help="a spoken question (wav/flac/ogg/mp3; models with audio input)")
    ] = None,
    speak: Annotated[
        Path | None, typer.Option(help="also speak the answer into this wav file (espeak-ng)")
    ] = None,
    voice: Annotated[str, typer.Option(help="espeak-ng voice for --speak")] = "en-us",
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="default: the recipe's generation setting")
    ] = None,
) -> None:
    """Ask a trained model about an image, typed or spoken (one question, or interactive with /image,
    /audio, /reset, /quit)."""
    from omnifuse.generation.chat import ChatSession
    from omnifuse.rundir import RunDir, load_model
    from omnifuse.untrusted import open_image

    if speak is not None:
        _check_speech_out(speak)
    if image is not None:  # checked before the model loads: a wrong path fails in milliseconds
        open_image(image, "image file")
    recipe, model, processor = load_model(RunDir(run_dir))
    session = ChatSession(model, processor, recipe, max_new_tokens=max_new_tokens)
    if image is not None:
        session.set_image(image)
    if question is not None or audio is not None:
        answer = session.ask(question, audio)
        out.print(escape(answer))
        if speak is not None:
            _speak(answer, speak, voice)
        return
    err.print(
        "interactive chat: type a question; /image PATH, /audio PATH (a spoken question), /reset, /quit"
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
            elif line.startswith("/image"):
                session.set_image(Path(line.removeprefix("/image").strip()))
                err.print("image set")
            else:
                spoken = line.startswith("/audio")
                clip = Path(line.removeprefix("/audio").strip()) if spoken else None
                answer = session.ask(None if spoken else line, clip)
                out.print(f"model> {escape(answer)}")
                if speak is not None:
                    _speak(answer, speak, voice)
        except OmnifuseError as exc:  # a bad image path must not end the conversation
            err.print(f"[red]error:[/red] {escape(str(exc))}")


@app.command()
def explain(
    run_dir: Path,
    question: Annotated[str, typer.Argument(help="the question about the image")],
    image: Annotated[Path, typer.Option(help="image file to ask about")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="folder for explain.json and the PNGs (default RUN/explain)")
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
) -> None:
    """Explain an answer: attention to image regions, gradient × input, with/without image, logit lens."""
    from omnifuse.explain import explain as run_explain
    from omnifuse.explain import open_image, write_explanation
    from omnifuse.rundir import RunDir, load_model
    from omnifuse.untrusted import check_out_dir

    run = RunDir(run_dir).require_trained()  # bad input fails before the model loads
    picture = open_image(image)
    folder = check_out_dir(out_dir or Path(run_dir) / "explain")
    recipe, model, processor = load_model(run)
    expl = run_explain(
        model,
        processor,
        picture,
        question,
        answer=answer,
        layers=layers,
        max_new_tokens=max_new_tokens or recipe.generation.max_new_tokens,
    )
    obj = write_explanation(expl, picture, folder, str(image))
    _print_explanation(expl, obj, folder)


def _print_explanation(expl, obj: dict, folder: Path) -> None:
    tokens = " ".join(repr(t) for t in expl.target_tokens)
    out.print(f"question: {escape(expl.question)}")
    out.print(
        f"answer{' (given)' if expl.answer_given else ''}: {escape(expl.answer)}   explained token(s): {escape(tokens)}"
    )
    if expl.contributions:
        table = Table(title="modality contribution: log p(answer tokens)")
        for col in ("condition", "log p", "p", "top first token"):
            table.add_column(col, justify="left" if col in ("condition", "top first token") else "right")
        base = expl.contributions[0].log_prob
        for c in expl.contributions:
            delta = "" if c is expl.contributions[0] else f" ({c.log_prob - base:+.2f})"
            table.add_row(
                c.condition,
                f"{c.log_prob:.3f}{delta}",
                f"{math.exp(c.log_prob):.3f}",
                escape(repr(c.top_token)),
            )
        out.print(table)
    att = obj["attention"]
    if "skipped" in att:
        out.print(f"attention: skipped ({escape(att['skipped'])})")
    else:
        masses = ", ".join(f"{m:.3f}" for m in att["mass_per_image_token"][:32])
        more = " …" if len(att["mass_per_image_token"]) > 32 else ""
        out.print(
            f"attention to the image: {100 * att['image_share']:.1f} % of the answer's attention "
            f"(layers {escape(_span(att['layers']))}); per image token: {masses}{more}"
        )
        if att["heatmap_skipped"]:
            out.print(f"attention heatmap: skipped, {escape(att['heatmap_skipped'])}")
    grad = obj["gradient_x_input"]
    if "skipped" in grad:
        out.print(f"gradient × input: skipped ({escape(grad['skipped'])})")
    lens = Table(title=f"logit lens for {expl.target_tokens[0]!r}")
    for col in ("layer", "p(answer)", "rank", "top token", "p(top)"):
        lens.add_column(col, justify="right" if col != "top token" else "left")
    for e in expl.lens.layers:
        lens.add_row(
            str(e.layer),
            f"{e.prob[0]:.4f}",
            str(e.rank[0]),
            escape(repr(e.top_token[0])),
            f"{e.top_prob[0]:.4f}",
        )
    out.print(lens)
    files = ", ".join(str(folder / f) for f in ["explain.json", *[v for v in obj["files"].values() if v]])
    out.print(f"written: {escape(files)}")


def _span(layers: list[int]) -> str:
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(map(str, layers))


@app.command()
def sweep(
    sweep_file: Path,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="sweep folder (default runs/sweeps/<sweep name>)")
    ] = None,
    set_: Overrides = None,
    plan: Annotated[bool, typer.Option(help="print the variants and their budgets; train nothing")] = False,
    progress: Progress = True,
) -> None:
    """Train and evaluate recipe variants on the same data and seeds; compare them (mean ± 95 % CI)."""
    from omnifuse.recipe import ClassifierRecipe
    from omnifuse.sweep import check_budget, load_sweep, run_sweep, write_report

    sw = load_sweep(sweep_file, set_ or [])
    folder = out_dir or Path("runs") / "sweeps" / sw.spec.name
    counts = check_budget(sw)
    table = Table(title=f"sweep {sw.spec.name}: {len(sw.variants)} variants × seeds {sw.spec.seeds}")
    for col in ("variant", "stages", "training samples"):
        table.add_column(col)
    for v in sw.variants:
        if isinstance(v.recipe, ClassifierRecipe):
            what = f"{v.recipe.train.epochs} epochs"
        else:
            what = " → ".join(s.name for s in v.recipe.stages)
        table.add_row(v.name, what, f"{counts[v.name]:,}")
    err.print(table)
    if plan:
        return
    records = run_sweep(sw, folder, console=err, progress=progress)
    command = " ".join(["omnifuse sweep", str(sweep_file), *(f"--set {x}" for x in set_ or [])])
    rows = write_report(folder, sw.spec.name, records, command)
    result = Table(title=f"sweep {sw.spec.name} (mean ± 95 % CI over {len(sw.spec.seeds)} seeds)")
    classifier = all(r.classifier for r in rows)
    cols = ["variant", "accuracy", "trainable", "train s"]
    cols += ["macro F1", "ε"] if classifier else ["image tokens", "latency ms"]
    for col in cols:
        result.add_column(col, justify="right" if col != "variant" else "left")
    for r in rows:
        cells = [r.variant, f"{100 * r.accuracy:.1f} ± {100 * r.ci:.1f} %", f"{r.trainable_params:,}"]
        cells.append(f"{r.train_seconds:.1f}" if classifier else f"{r.train_seconds:.0f}")
        if classifier:
            cells += [f"{r.macro_f1:.3f}", "—" if r.epsilon is None else f"{r.epsilon:.2f}"]
        else:
            cells += [str(r.image_tokens), f"{r.latency_ms:.0f}"]
        result.add_row(*cells)
    out.print(result)
    out.print(f"report: {folder / 'report.md'}")


def _check_port_free(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise OmnifuseError(f"cannot listen on {host!r}: not an address of this machine") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise OmnifuseError(
                f"cannot listen on {host}:{port} ({exc.strerror}); pick another port with --port"
            ) from None


@app.command()
def serve(
    run_dir: Path,
    host: Annotated[
        str, typer.Option(help="address to listen on (0.0.0.0 for all interfaces)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="OMNIFUSE_API_KEY", help="require 'Authorization: Bearer KEY' on /v1 routes"),
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="model id clients send; default: the run folder's name")
    ] = None,
    allow_remote_media: Annotated[
        bool, typer.Option(help="fetch http(s) image URLs (public addresses only); default: data URLs only")
    ] = False,
    max_batch_size: Annotated[int, typer.Option(min=1, help="requests decoded together")] = 8,
    max_queue: Annotated[int, typer.Option(min=1, help="requests waiting before 503 + Retry-After")] = 64,
    max_images: Annotated[int, typer.Option(min=0, help="images per request")] = 4,
    max_body_mb: Annotated[
        float, typer.Option(min=0.01, help="request body limit in MiB (413 above)")
    ] = 25.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve a trained model through an OpenAI-compatible API (/v1/chat/completions) and a chat page at /."""
    import uvicorn

    from omnifuse.generation.engine import Engine
    from omnifuse.rundir import RunDir, load_model
    from omnifuse.serve.media import MediaLimits
    from omnifuse.serve.server import ServerSettings, create_app

    # Everything the user can get wrong on the command line is checked before the model loads,
    # which takes a while: a typo should fail in a second, as one paragraph.
    if not 0 <= port <= 65535:  # 0: a free port the system picks (uvicorn logs which)
        raise OmnifuseError(f"--port {port}: a TCP port is a number from 1 to 65535 (or 0 for any free one)")
    levels = tuple(uvicorn.config.LOG_LEVELS)
    if log_level.lower() not in levels:
        raise OmnifuseError(f"--log-level {log_level!r}: choose one of {', '.join(levels)}")
    log_level = log_level.lower()
    _check_port_free(host, port)  # a busy port or an address that is not this machine's
    recipe, model, processor = load_model(RunDir(run_dir))
    g = recipe.generation
    settings = ServerSettings(
        model_name=model_name or Path(run_dir).resolve().name,
        api_key=api_key,
        media=MediaLimits(allow_remote=allow_remote_media),
        max_body_bytes=int(max_body_mb * 1024**2),
        max_images=max_images,
        max_batch_size=max_batch_size,
        max_queue=max_queue,
        default_temperature=g.temperature,
        default_top_p=g.top_p,
    )
    where = f"http://{host}:{port}" if port else f"a free port of {host} (uvicorn logs which)"
    err.print(f"serving {settings.model_name} on {where} (chat page at /, API at /v1)")
    uvicorn.run(
        create_app(Engine(model, processor), settings),
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=30,
    )


# ------------------------------------------------------------------ assets and data
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
    out.print(table)


@assets_app.command("prepare")
def assets_prepare(progress: Progress = True) -> None:
    """Convert every packaged asset once into the cache (later calls return at once)."""
    from omnifuse.assets import prepare_all

    t0 = time.perf_counter()
    prepare_all(progress=progress)
    out.print(f"assets ready ({time.perf_counter() - t0:.1f} s)")


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
        out.print(f"{split}: {path}")


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
        out.print(f"{split}: {path}")
    out.print(f"ready ({time.perf_counter() - t0:.1f} s); voices in {out_dir / MARKER}")


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
        out.print(f"{split}: {path}")


@data_app.command("convert")
def data_convert(
    kind: Annotated[str, typer.Argument(help="source format: llava or sharegpt")],
    src: Path,
    out_file: Annotated[Path, typer.Option("--out", help="JSONL file to write")],
    images: Annotated[
        Path | None, typer.Option(help="folder the source's image paths are relative to")
    ] = None,
) -> None:
    """Convert LLaVA JSON or ShareGPT data to the native JSONL format."""
    from omnifuse.data.converters import convert
    from omnifuse.untrusted import check_out_file

    n = convert(kind, src, check_out_file(out_file), images)
    out.print(f"wrote {n} samples to {out_file}")


# ------------------------------------------------------------------ quickstart
@app.command()
def quickstart(
    out_dir: Annotated[Path, typer.Option("--out", help="run directory")] = Path("runs/quickstart"),
    set_: Overrides = None,
    progress: Progress = True,
) -> None:
    """Train the quickstart recipe on easy-vqa, evaluate it against a blind baseline, report, chat."""
    from omnifuse.assets import prepare_all
    from omnifuse.data.sources import resolve_data_path
    from omnifuse.eval.runner import evaluate_run
    from omnifuse.generation.chat import ChatSession
    from omnifuse.recipe import load_recipe
    from omnifuse.rundir import RunDir, load_model
    from omnifuse.training.loop import train as run_training

    recipe = load_recipe(QUICKSTART, set_ or [])
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    prepare_all(progress=progress)
    times["asset preparation (once)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    resolve_data_path(recipe.data.train)
    test_file = resolve_data_path(recipe.data.eval)
    times["data preparation (once)"] = time.perf_counter() - t0
    run = RunDir(out_dir)
    resume = run.exists()
    if resume:
        err.print(f"{out_dir} exists: continuing that run (delete it to start over)")
    t0 = time.perf_counter()
    run_training(recipe, out_dir, resume=resume, console=err, progress=progress)
    times["training"] = time.perf_counter() - t0
    loaded = load_model(run, progress=progress)
    outcome = evaluate_run(run, progress=progress, loaded=loaded)
    times["evaluation"] = outcome.seconds
    if outcome.blind_seconds:
        times["blind evaluation"] = outcome.blind_seconds
    _print_scores(outcome)
    summary = Table(title="quickstart")
    summary.add_column("")
    summary.add_column("", justify="right")
    summary.add_row("accuracy", f"{100 * outcome.result.accuracy:.1f} % (n={outcome.result.n})")
    if outcome.blind:
        summary.add_row("blind baseline", f"{100 * outcome.blind.accuracy:.1f} %")
    for k, v in times.items():
        summary.add_row(k, f"{v:.1f} s")
    summary.add_row(
        "training + evaluation", f"{times['training'] + outcome.seconds + (outcome.blind_seconds or 0):.1f} s"
    )
    summary.add_row("peak memory (RSS)", f"{_peak_rss_gb():.2f} GB")
    out.print(summary)
    from omnifuse.eval.html import write_html_report

    page = write_html_report(run, loaded=loaded, progress=progress)
    out.print(
        f"report: {page} (one page: scores, stages, curves, samples, heatmaps) and {out_dir / 'report.md'}"
    )
    # A chat example on a test image.
    from omnifuse.data.sample import load_jsonl

    sample = load_jsonl(test_file)[0]
    image = sample.images()[0]
    recipe_, model, processor = loaded
    session = ChatSession(model, processor, recipe_)
    session.set_image(image)
    out.print("\nchat example:")
    for q in ("what shape is in the image?", "what color is the shape?"):
        out.print(f"  $ omnifuse chat {out_dir} --image {image} {q!r}")
        out.print(f"  {session.ask(q)}")
        session.reset()
        session.set_image(image)


# ------------------------------------------------------------------ entry point
def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # omnifuse draws its own bars for long work (`--progress/--no-progress`); transformers' bar for loading
    # local weights is noise beside them and would ignore --no-progress. Read when transformers is imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    try:
        result = app(args=args, prog_name="omnifuse", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # a usage error: unknown option, missing argument, bad value
        exc.show()
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted; a training run continues with `omnifuse train RECIPE --out RUN --resume`")
        return 130
    except OmnifuseError as exc:
        if debug:
            traceback.print_exc()
        err.print(f"[bold red]error:[/bold red] {escape(str(exc))}")
        return 2
    except Exception as exc:  # anything else is a bug of ours; still no traceback unless asked
        if debug:
            traceback.print_exc()
        err.print(
            f"[bold red]internal error:[/bold red] {escape(type(exc).__name__)}: {escape(str(exc))}\n"
            "This is a bug in omnifuse; rerun with --debug for the traceback and report it."
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
