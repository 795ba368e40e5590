"""HTTP routes of the generator server: thin wrappers that validate with ``shared.protocol`` and
call the engine. The engine starts in the background, so ``/health`` answers 503 until it is up."""

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from generator_server.adapters import AdapterRejected, UnknownAdapterVersion
from generator_server.engine import BadPrompt, GeneratorEngine
from generator_server.merge_mode import VersionsKeptSwitching
from generator_server.settings import ServerSettings
from shared.models import resolve_model
from shared.probe import AdapterNotApplied
from shared.protocol import (
    AdapterListResponse,
    AdapterLoadResponse,
    AdapterUpload,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
)
from shared.versions import VersionConflict

logger = logging.getLogger(__name__)

HTTP_REQUESTS = Counter("grpo_math_http_requests", "HTTP requests by route and status", ["route", "status"])


def engine_of(request: Request) -> GeneratorEngine:
    engine: GeneratorEngine | None = request.app.state.engine
    if engine is None:
        raise HTTPException(503, "the engine is still starting")
    if engine.engine.errored:
        raise HTTPException(503, "the vLLM engine has died; restart the server")
    return engine


def require_api_key(request: Request) -> None:
    expected: str | None = request.app.state.api_key
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 413, 422, 503)}
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERRORS)


@v1.post("/generate", response_model=GenerateResponse)
async def generate(request: Request, body: GenerateRequest) -> GenerateResponse:
    settings: ServerSettings = request.app.state.settings
    within_limits = GenerateRequest.model_validate(body.model_dump(), context=settings.limits())  # this server's limits
    return await engine_of(request).generate(within_limits)


ADAPTER_FORM = {  # the multipart body of POST /v1/adapters, for the OpenAPI schema (read by hand below)
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["version", "adapter_config", "adapter_model"],
                "properties": {
                    "version": {"type": "string", "description": '"next" or an integer above every loaded version'},
                    "activate": {"type": "string", "enum": ["true", "false"], "default": "true"},
                    "adapter_config": {"type": "string", "description": "adapter_config.json (text or file)"},
                    "adapter_model": {"type": "string", "format": "binary", "description": "adapter_model.safetensors"},
                    "adapter_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                },
            }
        }
    },
}


@v1.post("/adapters", response_model=AdapterLoadResponse, openapi_extra={"requestBody": ADAPTER_FORM})
async def load_adapter(request: Request) -> AdapterLoadResponse:
    engine = engine_of(request)
    fields: dict[str, str | bytes] = {}
    async with request.form() as form:
        for name, value in form.multi_items():
            if name in fields:
                raise HTTPException(422, f"form field {name!r} given twice")
            fields[name] = await value.read() if isinstance(value, UploadFile) else value
    upload = AdapterUpload.from_multipart(fields, engine.settings.limits())
    return await engine.load_adapter(upload)


@v1.get("/adapters", response_model=AdapterListResponse)
async def list_adapters(request: Request) -> AdapterListResponse:
    return engine_of(request).list_adapters()


def create_app(settings: ServerSettings, on_cpu: bool, stop_serving: Callable[[], None]) -> FastAPI:
    """The app; ``stop_serving`` ends the HTTP server if the engine fails to start."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        starting = asyncio.create_task(start_engine(app))
        yield
        starting.cancel()
        if app.state.engine is not None:
            app.state.engine.shutdown()
            logger.info("engine stopped")

    async def start_engine(app: FastAPI) -> None:
        try:
            model_path = await asyncio.to_thread(resolve_model, settings.model)
            app.state.engine = await asyncio.to_thread(GeneratorEngine.start, settings, model_path, on_cpu)
        except Exception as error:
            logger.exception("the engine failed to start")
            app.state.startup_error = error
            stop_serving()  # uvicorn shuts down cleanly; main() then exits 1
            return
        engine = app.state.engine
        logger.info(
            "ready: model %s (%s), dtype %s, device %s, %s mode, LoRA rank <= %d, %d adapter versions kept, %s:%d",
            model_path,
            "nf4-dequantized" if settings.serves_nf4_copy() else "as stored",
            engine.engine.model_config.dtype,
            "cpu" if on_cpu else "cuda",
            settings.adapter_mode,
            settings.max_lora_rank,
            settings.adapter_keep,
            f"{'https' if settings.ssl_certfile else 'http'}://{settings.host}",
            settings.port,
        )

    app = FastAPI(title="grpo-math generator server", lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = None
    app.state.startup_error = None
    app.state.api_key = settings.api_key()
    app.include_router(v1)
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)

    @app.get("/health", response_model=HealthResponse)
    async def health(request: Request) -> HealthResponse:
        engine = engine_of(request)
        return HealthResponse(
            status="ok",
            model=engine.model_path,
            adapter_version=engine.active_version,
            adapter_mode=settings.adapter_mode,
            limits=settings.limits(),
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        HTTP_REQUESTS.labels(route.path if route else "unmatched", str(response.status_code)).inc()
        return response

    for error_type, status in (
        (ValidationError, 422),
        (AdapterRejected, 400),
        (AdapterNotApplied, 422),  # loaded, but the probe saw the base model (shared.probe)
        (BadPrompt, 400),
        (UnknownAdapterVersion, 404),
        (VersionConflict, 409),
        (VersionsKeptSwitching, 409),
    ):
        app.add_exception_handler(error_type, _error_handler(status))
    return app


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than this route's limit of {limit} bytes")


class BodySizeLimit:
    """Refuses a request body over its route's limit with 413: by its Content-Length before
    anything is read, or, without one, as soon as the bytes received pass the limit."""

    def __init__(self, app, max_body_bytes: Callable[[str], int]) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            response = JSONResponse({"detail": BodyTooLarge(limit).detail}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


def _error_handler(status: int):
    async def handle(request: Request, error: Exception) -> JSONResponse:
        if isinstance(error, ValidationError):
            detail = error.errors(include_url=False, include_context=False, include_input=False)
        else:
            detail = str(error)
        return JSONResponse({"detail": detail}, status_code=status)

    return handle
