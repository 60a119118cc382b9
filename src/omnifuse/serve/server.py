"""The OpenAI-compatible HTTP server (FastAPI): ``/v1/chat/completions``, ``/v1/models``, ``/health``
and a chat page at ``/``.

A request goes: size limit (ASGI middleware, 413) → bearer auth (401) → JSON and schema validation
(400 naming the field) → media decoding and prompt encoding in a worker thread (400/413 naming the
item) → the bounded batching queue (503 + Retry-After when full) → streamed or whole answer. Every
client mistake is a 4xx with an OpenAI-style error body; anything else is logged and answered 500
without taking the server down.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from omnifuse.audio.tts import espeak_available, synthesize
from omnifuse.data.inline_media import is_data_url, local_file_url, video_data_url
from omnifuse.data.openai_messages import AudioContent, ImageContent, PartError, VideoContent, native_messages
from omnifuse.data.sample import AudioPart, ImagePart, Sample, VideoPart
from omnifuse.errors import OmnifuseError
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.processing import Encoded
from omnifuse.serve import protocol as P
from omnifuse.serve.media import MediaLimits, load_audio_data, load_image_url
from omnifuse.serve.scheduler import Delta, Done, Failed, Job, QueueFull, Scheduler, ShuttingDown

log = logging.getLogger("omnifuse.serve")
MAX_AUDIO_SECONDS = 30.0  # a spoken question longer than Whisper's window is refused (400)


@dataclass(frozen=True)
class ServerSettings:
    model_name: str
    api_key: str | None = None
    media: MediaLimits = field(default_factory=MediaLimits)
    max_body_bytes: int = 25 * 1024**2
    max_images: int = 4  # per request
    max_batch_size: int = 8
    max_queue: int = 64
    batch_wait_ms: float = 5.0
    prefill_chunk: int = 256  # prompt tokens per forward pass; longer prompts run in the long lane
    prefill_budget: int = 4096  # padded prompt tokens per batch
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048
    default_temperature: float = 0.0  # when a request leaves it out: the recipe's generation setting
    default_top_p: float = 1.0
    voice: str = "en-us"


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, before parsing them.

    The body is read here (up to the limit) and replayed to the app, so a lying or missing
    Content-Length cannot get a larger body through."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = declared is not None and (not declared.isdigit() or int(declared) > self.limit)
        chunks, size, more = [], 0, True
        while more and not too_big:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            too_big = size > self.limit
            chunks.append(chunk)
            more = message.get("more_body", False)
        if too_big:
            err = P.APIError(413, f"the request body is larger than the limit of {self.limit} bytes")
            return await JSONResponse(err.body(), status_code=413)(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _error_response(err: P.APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class _RequestMedia:
    """A request's media decoded in memory (omnifuse.data.openai_messages.MediaReader), checked against
    the model's inputs and the server's limits."""

    def __init__(self, settings: ServerSettings, modalities: set[str]) -> None:
        self.settings, self.modalities, self.images = settings, modalities, 0

    def audio(self, part: AudioContent, where: str) -> AudioPart:
        if "audio" not in self.modalities:
            inputs = ", ".join(sorted(self.modalities))
            raise PartError(
                f"{where}: this model has no audio input (its inputs: text{', ' + inputs if inputs else ''}); "
                "send the question as text",
                where,
            )
        data = part.input_audio.data
        what = f"the audio at {where}"
        return AudioPart(waveform=load_audio_data(data, self.settings.media, MAX_AUDIO_SECONDS, what))

    def image(self, part: ImageContent, where: str) -> ImagePart:
        if "image" not in self.modalities:
            raise PartError(f"{where}: this model takes no images; send text only", where)
        self.images += 1
        if self.images > self.settings.max_images:
            raise PartError(
                f"{where}: too many images; this server takes at most {self.settings.max_images} per request",
                where,
            )
        return ImagePart(
            image=load_image_url(part.image_url.url, self.settings.media, f"the image at {where}")
        )

    def video(self, part: VideoContent, where: str) -> VideoPart:
        if "video" not in self.modalities:
            raise PartError(f"{where}: this model takes no video; send text or images", where)
        url, what = part.video_url.url, f"the video at {where}"
        if url[:7].lower() == "file://":  # only inside --allowed-local-media-path
            return VideoPart(path=local_file_url(url, self.settings.media, what))
        if not is_data_url(url):  # decoded by the processor, within omnifuse.video's bounds
            raise PartError(
                f"{what} must be a base64 data URL (data:video/mp4;base64,...)", f"{where}.video_url.url"
            )
        return VideoPart(data=video_data_url(url, self.settings.media, what)[1])


class ChatService:
    """Turns validated requests into engine jobs and their results into OpenAI responses."""

    def __init__(self, engine: Engine, settings: ServerSettings) -> None:
        self.engine, self.settings = engine, settings
        self.scheduler = Scheduler(
            engine,
            settings.max_batch_size,
            settings.max_queue,
            settings.batch_wait_ms / 1000,
            settings.prefill_chunk,
            settings.prefill_budget,
        )
        self.modalities = set(engine.processor.media)
        if engine.processor.speech_to_text is not None:
            self.modalities.add("audio")  # heard through the ASR cascade

    # ------------------------------------------------------------ request → prompt
    def to_sample(self, req: P.ChatRequest) -> Sample:
        try:
            messages = native_messages(req.messages, _RequestMedia(self.settings, self.modalities))
        except PartError as exc:
            raise P.APIError(exc.status, exc.message, param=exc.param) from None
        if messages[-1].role != "user":
            raise P.APIError(
                400, "the last message must be from the user: it is the question to answer", param="messages"
            )
        return Sample(P.new_id(), messages, {})

    def prepare(self, req: P.ChatRequest) -> tuple[Encoded, GenerationConfig]:
        """Check the request's bounds, validate media and encode the prompt (runs in a worker thread:
        decoding costs CPU). The cheap checks come first: the text's length bounds its token count,
        so an over-long conversation is refused before it costs a tokenizer pass."""
        s, ctx = self.settings, self.engine.context_length
        wanted = req.max_completion_tokens or req.max_tokens
        if wanted is not None and wanted > s.max_tokens_limit:
            raise P.APIError(
                400,
                f"max_tokens is {wanted}, over this server's limit of {s.max_tokens_limit}",
                param="max_tokens",
            )
        if ctx is not None and req.text_chars() > ctx * self.engine.max_token_chars:
            raise P.APIError(
                400,
                f"the messages hold {req.text_chars()} characters of text, more than the model's context length "
                f"of {ctx} tokens can take (a token is at most {self.engine.max_token_chars} characters); "
                "shorten the conversation",
                param="messages",
                code="context_length_exceeded",
            )
        sample = self.to_sample(req)
        try:
            encoded = self.engine.processor.encode(sample, for_generation=True)
        except OmnifuseError as exc:
            raise P.APIError(400, str(exc), param="messages") from None
        n_prompt = len(encoded.input_ids)
        if ctx is not None:
            room = ctx - n_prompt
            if room < 1 or (wanted is not None and wanted > room):
                raise P.APIError(
                    400,
                    f"the prompt is {n_prompt} tokens and {wanted or 1} more were asked for, over the model's "
                    f"context length of {ctx} tokens; shorten the conversation or lower max_tokens",
                    param="messages",
                    code="context_length_exceeded",
                )
        max_new = wanted or min(s.default_max_tokens, ctx - n_prompt if ctx else s.default_max_tokens)
        return encoded, self.generation(req, max_new)

    def generation(self, req: P.ChatRequest, max_new: int) -> GenerationConfig:
        s = self.settings
        temperature = s.default_temperature if "temperature" not in req.model_fields_set else req.temperature
        top_p = s.default_top_p if "top_p" not in req.model_fields_set else req.top_p
        # A sampled request without a seed gets one drawn here: every row is then deterministic, so the
        # scheduler can run a request again alone (after its batch failed) and get the text it had sent.
        seed = req.seed if req.seed is not None else secrets.randbelow(2**63)
        try:
            return GenerationConfig(max_new, temperature, top_p, seed)
        except ValueError as exc:  # the protocol checks the same bounds; this is the engine's own check
            raise P.APIError(400, str(exc)) from None

    # ------------------------------------------------------------ running
    async def submit(self, req: P.ChatRequest) -> Job:
        if req.model != self.settings.model_name:
            raise P.APIError(
                404,
                f"the model {req.model!r} does not exist; this server serves {self.settings.model_name!r}",
                param="model",
                code="model_not_found",
            )
        if req.wants_audio() and not espeak_available():
            raise P.APIError(
                400, "this server cannot speak: espeak-ng is not installed on it", param="modalities"
            )
        encoded, cfg = await run_in_threadpool(self.prepare, req)
        job = Job(encoded, cfg, req.stops(), asyncio.get_running_loop())
        try:
            self.scheduler.submit(job)
        except QueueFull:
            raise P.APIError(
                503,
                f"the server is busy ({self.scheduler.max_queue} requests waiting); retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        except ShuttingDown:
            raise P.APIError(503, "the server is shutting down", headers={"Retry-After": "5"}) from None
        return job

    def speak(self, text: str, voice: str) -> dict:
        try:
            wav = synthesize(text, voice=voice)
        except OmnifuseError as exc:
            raise P.APIError(400, str(exc), param="audio.voice") from None
        return {
            "id": f"audio_{uuid.uuid4().hex[:16]}",
            "data": base64.b64encode(wav).decode(),
            "expires_at": int(time.time()) + 3600,
            "transcript": text,
        }

    async def complete(self, req: P.ChatRequest, job: Job) -> dict:
        cid = P.new_id()
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, Failed):
                    raise P.APIError(event.status, event.message)
                if isinstance(event, Done):
                    break
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        audio = None
        if req.wants_audio():
            audio = await run_in_threadpool(
                self.speak, event.text, req.audio.voice if req.audio else self.settings.voice
            )
        use = P.usage(len(job.encoded.input_ids), event.completion_tokens)
        return P.completion(cid, req.model, event.text, event.finish_reason, use, audio)

    async def stream(self, req: P.ChatRequest, job: Job) -> AsyncIterator[str]:
        cid = P.new_id()
        try:
            yield P.chunk(cid, req.model, {"role": "assistant", "content": ""})
            while True:
                event = await job.events.get()
                if isinstance(event, Delta):
                    yield P.chunk(cid, req.model, {"content": event.text})
                elif isinstance(event, Failed):
                    yield f"data: {json.dumps(P.APIError(event.status, event.message).body())}\n\n"
                    return
                else:
                    break
            if req.wants_audio():
                voice = req.audio.voice if req.audio else self.settings.voice
                try:
                    audio = await run_in_threadpool(self.speak, event.text, voice)
                    yield P.chunk(cid, req.model, {"audio": audio})
                except P.APIError as err:
                    yield f"data: {json.dumps(err.body())}\n\n"
            yield P.chunk(cid, req.model, {}, finish=event.finish_reason)
            if req.stream_options and req.stream_options.include_usage:
                use = P.usage(len(job.encoded.input_ids), event.completion_tokens)
                yield P.chunk(cid, req.model, {}, use=use)
            yield "data: [DONE]\n\n"
        finally:  # also when the client disconnects: stop decoding for it
            job.cancelled = True


def create_app(engine: Engine, settings: ServerSettings) -> FastAPI:
    service = ChatService(engine, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.scheduler.start()
        log.info("serving %s", settings.model_name)
        yield
        await run_in_threadpool(service.scheduler.shutdown)

    app = FastAPI(title="omnifuse", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    _add_error_handlers(app)
    _add_api_routes(app, service, _authorizer(settings))
    page = resources.files("omnifuse.serve").joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as OpenAI's error body: ours, Starlette's (404, 405) and unexpected ones (500)."""

    @app.exception_handler(P.APIError)
    async def api_error(request: Request, err: P.APIError):
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error_response(P.APIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error_response(P.APIError(500, f"internal error: {type(exc).__name__}", type_="server_error"))


def _authorizer(settings: ServerSettings) -> Callable[[Request], None]:
    """A check of the bearer token (constant-time), or none when the server has no API key."""

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), settings.api_key.encode()
        ):
            raise P.APIError(
                401,
                "missing or wrong API key; send it as 'Authorization: Bearer KEY'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return authorize


def _add_api_routes(app: FastAPI, service: ChatService, authorize: Callable[[Request], None]) -> None:
    settings = service.settings

    @app.get("/health")
    async def health() -> dict:
        s = service.scheduler
        return {"status": "ok", "model": settings.model_name, "queue": s.depth, "batches": s.batches}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        entry = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "omnifuse"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        authorize(request)
        # Parsed in a worker thread: a body of many megabytes must not hold up the event loop,
        # which streams every other request's tokens.
        req = await run_in_threadpool(P.parse_request, await request.body())
        job = await service.submit(req)
        if req.stream:
            return StreamingResponse(
                service.stream(req, job),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )

        # A client that gives up on a whole-answer request should not keep its row decoding.
        async def watch_disconnect() -> None:
            while not await request.is_disconnected():
                await asyncio.sleep(0.25)
            job.cancelled = True

        watcher = asyncio.create_task(watch_disconnect())
        try:
            return JSONResponse(await service.complete(req, job))
        finally:
            watcher.cancel()
