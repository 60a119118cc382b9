"""A real uvicorn server in a background thread, serving a tiny random model."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from omnifuse.generation.engine import Engine
from omnifuse.models.builders import build_model
from omnifuse.recipe import ModelSpec
from omnifuse.serve.server import ServerSettings, create_app
from tiny import make_parts

MODEL_SPEC = {
    "encoders": {"image": {"type": "mobilenet_v2", "weights": None}},
    "connectors": {"image": {"type": "mlp"}},
    "llm": {"name": "injected-by-tests", "system_prompt": ""},
}


def tiny_engine() -> Engine:
    model, processor = build_model(ModelSpec.model_validate(MODEL_SPEC), progress=False, **make_parts())
    return Engine(model.eval(), processor)


@dataclass
class RunningServer:
    url: str
    app: object
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def service(self):
        return self.app.state.service

    def alive(self) -> bool:
        return self.thread.is_alive() and httpx.get(f"{self.url}/health", timeout=10).status_code == 200


@contextlib.contextmanager
def running_server(settings: ServerSettings, engine: Engine | None = None) -> Iterator[RunningServer]:
    app = create_app(engine or tiny_engine(), settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", app, server, thread)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server(
        ServerSettings(model_name="tiny", default_max_tokens=8, max_body_bytes=2 * 1024**2)
    ) as s:
        yield s


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[RunningServer]:
    with running_server(ServerSettings(model_name="tiny", api_key="sesame", default_max_tokens=4)) as s:
        yield s
