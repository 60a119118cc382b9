"""``omnifuse serve``: a trained model behind an OpenAI-compatible API and a chat page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omnifuse.cli import console
from omnifuse.cli.common import Device, Dtype, Quantize, app, check_placement
from omnifuse.errors import OmnifuseError


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


def _check_listen_options(host: str, port: int, log_level: str) -> str:
    """Everything the user can get wrong on the command line, checked before the model loads (which takes
    a while: a typo should fail in a second, as one paragraph); returns the log level in lower case."""
    import uvicorn

    if not 0 <= port <= 65535:  # 0: a free port the system picks (uvicorn logs which)
        raise OmnifuseError(f"--port {port}: a TCP port is a number from 1 to 65535 (or 0 for any free one)")
    levels = tuple(uvicorn.config.LOG_LEVELS)
    if log_level.lower() not in levels:
        raise OmnifuseError(f"--log-level {log_level!r}: choose one of {', '.join(levels)}")
    _check_port_free(host, port)  # a busy port or an address that is not this machine's
    return log_level.lower()


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
    allowed_local_media_path: Annotated[
        Path | None,
        typer.Option(help="read file:// video URLs of files inside this folder (as vLLM); default: refused"),
    ] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="requests decoded together")] = 8,
    max_queue: Annotated[int, typer.Option(min=1, help="requests waiting before 503 + Retry-After")] = 64,
    max_images: Annotated[int, typer.Option(min=0, help="images per request")] = 4,
    max_body_mb: Annotated[
        float, typer.Option(min=0.01, help="request body limit in MiB (413 above)")
    ] = 25.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    device: Device = None,
    dtype: Dtype = None,
    quantize: Quantize = None,
) -> None:
    """Serve a trained model through an OpenAI-compatible API (/v1/chat/completions) and a chat page at /."""
    import uvicorn

    from omnifuse.generation.engine import Engine, pack_weights, token_pruning
    from omnifuse.rundir import RunDir
    from omnifuse.serve.media import MediaLimits
    from omnifuse.serve.server import ServerSettings, create_app
    from omnifuse.tasks import load_language_model

    check_placement(device, dtype, quantize)
    log_level = _check_listen_options(host, port, log_level)
    recipe, model, processor = load_language_model(
        RunDir(run_dir), device=device, dtype=dtype, quantize=quantize
    )
    g = recipe.generation
    settings = ServerSettings(
        model_name=model_name or Path(run_dir).resolve().name,
        api_key=api_key,
        media=MediaLimits(allow_remote=allow_remote_media, local_media_path=allowed_local_media_path),
        max_body_bytes=int(max_body_mb * 1024**2),
        max_images=max_images,
        max_batch_size=max_batch_size,
        max_queue=max_queue,
        default_temperature=g.temperature,
        default_top_p=g.top_p,
    )
    where = f"http://{host}:{port}" if port else f"a free port of {host} (uvicorn logs which)"
    console.err.print(f"serving {settings.model_name} on {where} (chat page at /, API at /v1)")
    uvicorn.run(
        create_app(Engine(model, processor, token_pruning(recipe), pack_weights(recipe)), settings),
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=30,
    )
