"""HTTP API: the command line's analysis for other programs (FastAPI on uvicorn).

    python serve.py [--host 127.0.0.1] [--port 8000] [--workers N] [--queue N] [--models-dir DIR]
    make serve

    POST /v1/analyze  multipart/form-data: file (image or video), optional frames, models, threshold
                      -> the object `predict.py --json` prints for that file ("input" is the upload's name)
    GET  /v1/models   each installed model's manifest summary, and the ensemble
    GET  /health      200 once the models are loaded; 503 while loading or when none could be loaded
    GET  /docs        OpenAPI documentation (the schema itself: /openapi.json)

Why it is built this way:
* The analysis is `outcomes.analyze_to_report`, i.e. pipeline.analyze_path + build_report, the very
  functions behind predict.py, and option values are parsed by predict.py's own validators.
* One ScoringEngine, loaded once in a background thread at start-up: the port opens at once and
  /health says "loading" (503) rather than refusing connections while the models load.
* Analyses run in a fixed pool of worker threads sharing that engine (it is thread-safe). Admission
  is bounded (workers + queue depth) and decided before the upload is read, so a burst is answered
  429 + Retry-After instead of piling uploads up in memory or on disk.
* Upload bytes are counted as they arrive: a body larger than media.MAX_UPLOAD_BYTES (plus the
  multipart framing) is cut off with 413 whatever its Content-Length said. Decoding is bounded by
  the same media.py / video_processor.py limits as the app and the CLI.
* The upload is copied to a temporary file (OpenCV needs a path, with the extension) that is
  deleted in `finally`; Starlette's spool file is anonymous and closed with the form. Nothing the
  client sent outlives its request.
* Every error is `{"error": sentence, "reason": code}`; tracebacks go to the server log only.
* With DEEPFAKE_API_KEYS set (comma-separated; an environment variable, not a flag, so keys do not
  show in `ps`), every path except /health needs `Authorization: Bearer <key>`.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import predict
from media import (ADVISORY_FACES_PER_TRACK, DEFAULT_VIDEO_FRAMES_ANALYSED, IMAGE_EXTENSIONS, MAX_UPLOAD_BYTES, MAX_VIDEO_FRAMES_ANALYSED,
                   MIN_VIDEO_FRAMES_ANALYSED, VIDEO_EXTENSIONS, MediaError, kind_of, type_list)
from model_store import DEFAULT_MODELS_DIR
from outcomes import (AnalysisOptions, analyze_to_report, error_reason, failure_message, models_not_installed,
                      to_json)
import pipeline
from pipeline import NOT_SCORED
from scoring import NoModelsError, ScoringEngine

log = logging.getLogger("serve")

KEYS_ENV = "DEEPFAKE_API_KEYS"
WORKERS_ENV = "DEEPFAKE_API_WORKERS"
QUEUE_ENV = "DEEPFAKE_API_QUEUE"
MAX_UPLOAD_ENV = "DEEPFAKE_API_MAX_UPLOAD_BYTES"
UPLOAD_TIMEOUT_ENV = "DEEPFAKE_API_UPLOAD_TIMEOUT_S"
MODELS_DIR_ENV = "DFSTUDIO_MODELS_DIR"          # the app's variable: one setting for both
DEFAULT_WORKERS = 1            # torch already spreads one analysis over every core; raise on big machines
DEFAULT_QUEUE_DEPTH = 4
DEFAULT_UPLOAD_TIMEOUT_S = 300.0   # a client that trickles its upload cannot hold a slot for ever
MULTIPART_OVERHEAD_BYTES = 64 * 1024   # boundaries, part headers and the option fields
TEMP_PREFIX = "dfstudio-api-"
COPY_CHUNK_BYTES = 1 << 20
DEFAULT_ANALYSIS_SECONDS = 5.0     # Retry-After's guess before any analysis has been timed
MAX_RETRY_AFTER_S = 600
LOADING_RETRY_AFTER_S = 5

FILE_FIELD = "file"
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def boolean_field(text: str) -> bool:
    word = text.strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
    return word in TRUE_WORDS


OPTION_FIELDS = {"frames": predict.frames_arg, "models": predict.parse_models, "threshold": predict.threshold_arg,
                 "advisory_faces": predict.advisory_faces_arg, "fast": boolean_field}

# HTTP status per error reason (outcomes.error_reason and the API's own reasons); other reasons: 422.
STATUS_BY_REASON = {
    "bad_request": 400, "missing_file": 400, "bad_parameter": 400, "model_not_installed": 400,
    "unauthorized": 401, "not_found": 404, "method_not_allowed": 405, "upload_timeout": 408,
    "too_large": 413, "unsupported_type": 415, "queue_full": 429,
    "internal_error": 500, "not_ready": 503, "no_models": 503,
}
REASON_BY_STATUS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


# ---------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    models_dir: str = str(DEFAULT_MODELS_DIR)
    workers: int = DEFAULT_WORKERS
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    upload_timeout_s: float = DEFAULT_UPLOAD_TIMEOUT_S
    api_keys: tuple[str, ...] = ()


def parse_api_keys(text: str | None) -> tuple[str, ...]:
    """Comma-separated keys; blanks around them are ignored. Unset or empty: access control is off."""
    if not text or not text.strip():
        return ()
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if not keys:   # e.g. " , ": someone meant to switch keys on; running open would be the wrong guess
        raise ValueError(f"{KEYS_ENV} is set but holds no key")
    return keys


def bounded_int(name: str, text: str | int, low: int, high: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def positive_seconds(name: str, text: str | float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be a number of seconds above 0, got {text!r}")
    return value


def cli_type(check: Callable, name: str, *bounds) -> Callable[[str], object]:
    """An argparse type from a checker above (argparse shows ArgumentTypeError's message as it is)."""
    def parse(text: str):
        try:
            return check(name, text, *bounds)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def settings_from_env(environ=os.environ) -> Settings:
    """Settings from the environment (what `uvicorn --factory serve:app_from_env` uses)."""
    return Settings(
        models_dir=environ.get(MODELS_DIR_ENV) or str(DEFAULT_MODELS_DIR),
        workers=bounded_int(WORKERS_ENV, environ.get(WORKERS_ENV, DEFAULT_WORKERS), 1, 64),
        queue_depth=bounded_int(QUEUE_ENV, environ.get(QUEUE_ENV, DEFAULT_QUEUE_DEPTH), 0, 10_000),
        # Only lower than the app's limit: the API must not accept what the app and CLI refuse.
        max_upload_bytes=bounded_int(MAX_UPLOAD_ENV, environ.get(MAX_UPLOAD_ENV, MAX_UPLOAD_BYTES), 1, MAX_UPLOAD_BYTES),
        upload_timeout_s=positive_seconds(UPLOAD_TIMEOUT_ENV, environ.get(UPLOAD_TIMEOUT_ENV, DEFAULT_UPLOAD_TIMEOUT_S)),
        api_keys=parse_api_keys(environ.get(KEYS_ENV)),
    )


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(self, reason: str, message: str, status: int | None = None, headers: dict | None = None):
        super().__init__(message)
        self.reason, self.message = reason, message
        self.status = status or STATUS_BY_REASON.get(reason, 422)
        self.headers = headers or {}


def error_response(reason: str, message: str, status: int | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "reason": reason}, status_code=status or STATUS_BY_REASON.get(reason, 422),
                        headers=headers)


def upload_too_large_message(limit: int) -> str:
    return f"upload is larger than the {limit / 1e6:.0f} MB limit"


class UploadTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__("too_large", upload_too_large_message(limit))


def failure_as_api_error(exc: BaseException, name: str, temp_path: str) -> ApiError:
    """An analysis failure in the words the CLI uses, naming the upload, never the server's temp path."""
    if isinstance(exc, NoModelsError):
        return ApiError("no_models", "no detector models are loaded")
    if isinstance(exc, MediaError):
        exc = MediaError(str(exc).replace(temp_path, name))
    else:   # not the input's known kind of fault: keep the details for the operator
        log.error("analysis of upload %r failed", name, exc_info=exc)
    return ApiError(error_reason(exc, name), failure_message(name, exc).replace(temp_path, name))


# ---------------------------------------------------------------------------------------------------
# ASGI middleware: access control first, then the byte limit (both before the body is read)
# ---------------------------------------------------------------------------------------------------
def bearer_token(scope) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" and token.strip() else None
    return None


def key_matches(token: bytes | None, keys: tuple[str, ...]) -> bool:
    """Constant-time against every key (no early exit), so timing tells neither the key nor which one."""
    if token is None:
        return False
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key.encode("utf-8"))
    return matched


class ApiKeyGate:
    OPEN_PATHS = frozenset({"/health"})   # load balancers probe it without credentials

    def __init__(self, app, keys: tuple[str, ...]):
        self.app, self.keys = app, keys

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and self.keys and scope["path"] not in self.OPEN_PATHS
                and not key_matches(bearer_token(scope), self.keys)):
            response = error_response("unauthorized", "a valid `Authorization: Bearer <key>` header is required",
                                      headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def declared_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodySizeLimit:
    """Refuses a body over `max_bytes` from its Content-Length, and counts the bytes that really
    arrive (chunked uploads have no length; a client can lie about it)."""

    def __init__(self, app, max_bytes: int, upload_limit: int):
        self.app, self.max_bytes, self.upload_limit = app, max_bytes, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await error_response("too_large", upload_too_large_message(self.upload_limit))(scope, receive, send)
            return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadTooLarge(self.upload_limit)
            return message

        await self.app(scope, counting_receive, send)


# ---------------------------------------------------------------------------------------------------
# The engine, loaded once in the background
# ---------------------------------------------------------------------------------------------------
@dataclass
class EngineState:
    status: str = "loading"          # loading | ready | no_models | failed
    engine: ScoringEngine | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"


def load_engine(state: EngineState, models_dir: str) -> None:
    try:
        # The face finder is built beside the models, before "ready": the first request should not
        # pay MTCNN's start.
        engine = pipeline.load_engine(models_dir)
    except Exception:  # noqa: BLE001 - reported by /health; details in the log
        log.exception("the models could not be loaded from %s", models_dir)
        state.status = "failed"
        return
    state.engine = engine
    state.status = "ready" if engine.models else "no_models"
    log.info("models %s: %s", state.status, ", ".join(engine.loaded_keys) or "none")


def without_dir(message: str, models_dir) -> str:
    """Model messages name files by full path; /health is public, the server's layout is not."""
    return message.replace(f"{models_dir}{os.sep}", "")


def model_states(engine: ScoringEngine) -> dict:
    states = engine.status.values()
    return {"loaded": [s.key for s in states if s.state == "loaded"],
            "missing": [s.key for s in states if s.state == "missing"],
            "broken": [{"key": s.key, "reason": without_dir(s.message, engine.models_dir)}
                       for s in states if s.state == "error"]}


HEALTH_MESSAGES = {"loading": "the models are still loading",
                   "no_models": "no detector models could be loaded; see `models`",
                   "failed": "the models could not be loaded; see the server log"}


def health_body(state: EngineState, pool: "AnalysisPool") -> tuple[int, dict]:
    """Ready (200) once loading has finished with at least one model; missing or broken ones are listed."""
    body = {"status": state.status, "ready": state.ready}
    if state.status in HEALTH_MESSAGES:
        body["error"] = HEALTH_MESSAGES[state.status]
    if state.engine is not None:
        body["models"] = model_states(state.engine)
    body["pool"] = {"workers": pool.workers, "queue_depth": pool.queue_depth, "in_flight": pool.admitted}
    return (200 if state.ready else 503), body


def model_summary(loaded) -> dict:
    manifest = loaded.manifest
    return {"key": loaded.key, "title": manifest.get("title"), "architecture": manifest.get("architecture"),
            "input_size": loaded.input_size, "temperature": loaded.temperature, "threshold": loaded.threshold,
            "num_parameters": manifest.get("num_parameters"), "metrics": manifest.get("metrics") or {},
            "sha256": manifest.get("sha256")}


def models_body(engine: ScoringEngine) -> dict:
    ensemble = engine.ensemble_manifest
    return {
        "models": [model_summary(engine.models[k]) for k in engine.loaded_keys],
        "ensemble": {"members": engine.loaded_keys, "default_threshold": engine.default_threshold,
                     **({k: ensemble[k] for k in ("weights", "bias", "threshold", "metrics") if k in ensemble}
                        if ensemble else {"weights": None, "note": "no ensemble.json: members are averaged"})},
        "unavailable": [{"key": s.key, "state": s.state, "reason": without_dir(s.message, engine.models_dir)}
                        for s in engine.status.values() if s.state != "loaded"],
    }


def ready_engine(state: EngineState) -> ScoringEngine:
    if state.ready:
        return state.engine
    reason = "not_ready" if state.status == "loading" else "no_models"
    raise ApiError(reason, HEALTH_MESSAGES[state.status],
                   headers={"Retry-After": str(LOADING_RETRY_AFTER_S)} if state.status == "loading" else None)


# ---------------------------------------------------------------------------------------------------
# Bounded worker pool
# ---------------------------------------------------------------------------------------------------
def retry_after_seconds(mean_analysis_s: float, admitted: int, workers: int) -> int:
    """About when a slot frees: the admitted work spread over the workers, at the recent pace."""
    wait = mean_analysis_s * max(admitted, 1) / max(workers, 1)
    return int(min(max(math.ceil(wait), 1), MAX_RETRY_AFTER_S))


class Ticket:
    """One admitted request's slot. Freed once: by the request if it never reaches a worker, else
    when its job ends (even if the client has gone away meanwhile, the job still holds a worker)."""

    def __init__(self, free: Callable[[], None]):
        self._free, self._lock, self._freed, self.handed_over = free, threading.Lock(), False, False

    def free(self) -> None:
        with self._lock:
            if self._freed:
                return
            self._freed = True
        self._free()

    def free_when_done(self, future: Future) -> None:
        self.handed_over = True
        future.add_done_callback(lambda _: self.free())


@dataclass
class AnalysisPool:
    workers: int
    queue_depth: int
    admitted: int = 0
    _durations: deque = field(default_factory=lambda: deque(maxlen=32))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _executor: ThreadPoolExecutor | None = None

    def __post_init__(self):
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="analysis")

    @property
    def capacity(self) -> int:
        return self.workers + self.queue_depth

    def try_admit(self) -> Ticket | None:
        with self._lock:
            if self.admitted >= self.capacity:
                return None
            self.admitted += 1
        return Ticket(self._release)

    def _release(self) -> None:
        with self._lock:
            self.admitted -= 1

    def retry_after_s(self) -> int:
        mean = sum(self._durations) / len(self._durations) if self._durations else DEFAULT_ANALYSIS_SECONDS
        return retry_after_seconds(mean, self.admitted, self.workers)

    def _timed(self, job: Callable):
        start = time.perf_counter()
        try:
            return job()
        finally:
            self._durations.append(time.perf_counter() - start)

    async def run(self, ticket: Ticket, job: Callable):
        future = self._executor.submit(self._timed, job)
        ticket.free_when_done(future)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------------
# POST /v1/analyze
# ---------------------------------------------------------------------------------------------------
def upload_name(filename: str | None) -> str:
    """The upload's base name (clients may send a path); its extension says image or video."""
    name = Path((filename or "").replace("\\", "/")).name.strip()
    if not name:
        raise ApiError("missing_file", f"the `{FILE_FIELD}` part needs a file name (its extension tells "
                                       f"image from video)")
    return name[-255:]


def parse_option(field_name: str, value) -> object:
    if not isinstance(value, str):
        raise ApiError("bad_parameter", f"{field_name}: must be a form field, not a file")
    try:
        return OPTION_FIELDS[field_name](value)
    except argparse.ArgumentTypeError as exc:
        raise ApiError("bad_parameter", f"{field_name}: {exc}") from None


def parse_analyze_form(form, engine: ScoringEngine) -> tuple[UploadFile, str, AnalysisOptions]:
    """The upload, its name and the options, checked as predict.py checks its arguments."""
    unknown = sorted(set(form.keys()) - set(OPTION_FIELDS) - {FILE_FIELD})
    if unknown:
        raise ApiError("bad_parameter", f"unknown field(s) {', '.join(unknown)}; "
                                        f"known: {FILE_FIELD}, {', '.join(OPTION_FIELDS)}")
    values = {k: parse_option(k, form[k]) for k in OPTION_FIELDS if form.get(k) not in (None, "")}
    options = AnalysisOptions(**{k: v for k, v in values.items() if v is not None})
    missing = models_not_installed(engine, options.models)
    if missing:
        raise ApiError("model_not_installed", f"model(s) not installed: {', '.join(missing)}")
    upload = form.get(FILE_FIELD)
    if not isinstance(upload, UploadFile):
        raise ApiError("missing_file", f"send the image or video as the multipart file field `{FILE_FIELD}`")
    name = upload_name(upload.filename)
    try:
        kind_of(name)
    except MediaError as exc:
        raise ApiError("unsupported_type", str(exc)) from None
    return upload, name, options


def analyze_upload(fileobj, name: str, engine: ScoringEngine, options: AnalysisOptions) -> dict:
    """Runs in a worker: copy the upload to a temp file, analyse it, always delete the file."""
    fd, temp_path = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=Path(name).suffix.lower())
    try:
        with os.fdopen(fd, "wb") as out:
            fileobj.seek(0)
            shutil.copyfileobj(fileobj, out, COPY_CHUNK_BYTES)
        try:
            return analyze_to_report(temp_path, engine, options, name=name)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a 4xx/5xx with a sentence
            raise failure_as_api_error(exc, name, temp_path) from None
    finally:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass


async def read_form(request: Request, timeout_s: float):
    try:
        with anyio.fail_after(timeout_s):
            # One file and the option fields; Starlette answers 400 for more.
            return await request.form(max_files=1, max_fields=len(OPTION_FIELDS))
    except TimeoutError:
        raise ApiError("upload_timeout", f"the upload did not arrive within {timeout_s:.0f} s") from None
    except ClientDisconnect:
        raise ApiError("bad_request", "the client went away during the upload") from None


# ---------------------------------------------------------------------------------------------------
# OpenAPI documentation of the request and of the report (README "HTTP API" has the same in words)
# ---------------------------------------------------------------------------------------------------
NUMBER_OR_NULL = {"type": ["number", "null"]}
FACE_SCHEMA = {
    "type": "object",
    "required": ["frame", "box", "detection_probability", "fake_probability", "verdict", "models", "track"],
    "properties": {
        "frame": {"type": "integer"}, "track": {"type": "integer"},
        "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                "description": "x1, y1, x2, y2 in the image's (frame's) pixels"},
        "detection_probability": {"type": "number"}, "landmarks": {"type": "array"},
        "fake_probability": NUMBER_OR_NULL, "verdict": {"enum": ["FAKE", "REAL", "NO_FACE", NOT_SCORED]},
        "models": {"type": "object", "additionalProperties": NUMBER_OR_NULL,
                   "description": f"per-model P(fake); in a video, advisory models (not voters) score at most "
                                  f"`advisory_faces` faces per person (default {ADVISORY_FACES_PER_TRACK}), so a "
                                  f"face may lack them"},
    },
}
REPORT_SCHEMA = {
    "title": "Report", "type": "object",
    "description": "The object `predict.py --json` prints; videos add fps, frame_count, frames_failed, persons, "
                   "statistics.",
    "required": ["input", "kind", "verdict", "fake_probability", "threshold", "models", "models_used",
                 "frames_analyzed", "frames_with_faces", "faces", "width", "height", "notes", "fast"],
    "properties": {
        "input": {"type": "string", "description": "the upload's file name"},
        "kind": {"enum": ["image", "video"]},
        "verdict": {"enum": ["FAKE", "REAL", "NO_FACE"]},
        "fake_probability": {**NUMBER_OR_NULL, "description": "ensemble P(fake) of the most suspicious face/person"},
        "threshold": {"type": "number"},
        "models": {"type": "object", "additionalProperties": NUMBER_OR_NULL, "description": "per-model P(fake)"},
        "models_used": {"type": "array", "items": {"type": "string"}},
        "frames_analyzed": {"type": "integer"}, "frames_with_faces": {"type": "integer"},
        "faces": {"type": "array", "items": FACE_SCHEMA},
        "width": {"type": "integer"}, "height": {"type": "integer"},
        "notes": {"type": "array", "items": {"type": "string"}},
        "fast": {"type": "boolean", "description": "fast mode: the voters scored each face once instead of "
                                                   "averaging its test-time views (quicker, less steady scores)"},
        "fps": NUMBER_OR_NULL, "frame_count": {"type": ["integer", "null"]},
        "frames_failed": {"type": "array", "items": {"type": "integer"}},
        "frames_searched_in_full": {"type": ["integer", "null"],
                                    "description": "analysed frames MTCNN searched in full; in the others "
                                                   "faces were followed from the frame before"},
        "persons": {"type": "array", "items": {"type": "object"}},
        "statistics": {"type": "object"},
    },
}
ERROR_SCHEMA = {"title": "Error", "type": "object", "required": ["error", "reason"],
                "properties": {"error": {"type": "string"}, "reason": {"type": "string"}}}
ANALYZE_FORM_SCHEMA = {
    "type": "object", "required": [FILE_FIELD],
    "properties": {
        FILE_FIELD: {"type": "string", "format": "binary",
                     "description": f"an image ({type_list(IMAGE_EXTENSIONS)}) or a video "
                                    f"({type_list(VIDEO_EXTENSIONS)}); the file name's extension decides which"},
        "frames": {"type": "integer", "minimum": MIN_VIDEO_FRAMES_ANALYSED, "maximum": MAX_VIDEO_FRAMES_ANALYSED,
                   "default": DEFAULT_VIDEO_FRAMES_ANALYSED, "description": "frames sampled from a video"},
        "models": {"type": "string", "description": "comma-separated subset of the installed models"},
        "threshold": {"type": "number", "minimum": 0, "maximum": 1,
                      "description": "P(fake) at or above which a face is FAKE (default: the ensemble's)"},
        "advisory_faces": {"type": "integer", "minimum": 0, "default": ADVISORY_FACES_PER_TRACK,
                           "description": "in a video, advisory models score at most this many faces per "
                                          "person (0: every face)"},
        "fast": {"type": "boolean", "default": False,
                 "description": "score each face once instead of four or eight ways: quicker, but scores that move "
                                "more with the framing"},
    },
}


def error_responses(*statuses: int) -> dict:
    return {s: {"description": next((r for r, st in STATUS_BY_REASON.items() if st == s), "error"),
                "content": {"application/json": {"schema": ERROR_SCHEMA}}} for s in statuses}


# ---------------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------------
router = APIRouter()


@router.post("/v1/analyze", summary="Analyse one image or video",
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"multipart/form-data": {"schema": ANALYZE_FORM_SCHEMA}}}},
             responses={200: {"description": "the report", "content": {"application/json": {"schema": REPORT_SCHEMA}}},
                        **error_responses(400, 401, 408, 413, 415, 422, 429, 503)})
async def analyze(request: Request) -> Response:
    app_state = request.app.state
    engine = ready_engine(app_state.engine_state)
    pool: AnalysisPool = app_state.pool
    ticket = pool.try_admit()       # before reading the body: a refused upload costs nothing
    if ticket is None:
        raise ApiError("queue_full", f"all {pool.capacity} analysis slots are taken; retry later",
                       headers={"Retry-After": str(pool.retry_after_s())})
    try:
        form = await read_form(request, app_state.settings.upload_timeout_s)
        try:
            upload, name, options = parse_analyze_form(form, engine)
            if (upload.size or 0) > app_state.settings.max_upload_bytes:
                raise UploadTooLarge(app_state.settings.max_upload_bytes)
            report = await pool.run(ticket, partial(analyze_upload, upload.file, name, engine, options))
        finally:
            await form.close()
    finally:
        if not ticket.handed_over:
            ticket.free()
    return Response(to_json(report), media_type="application/json")


@router.get("/v1/models", summary="Installed models and the ensemble",
            responses=error_responses(401, 503))
async def list_models(request: Request) -> dict:
    return models_body(ready_engine(request.app.state.engine_state))


@router.get("/health", summary="Ready once the models are loaded (503 before, or when none loaded)")
async def health(request: Request) -> JSONResponse:
    status, body = health_body(request.app.state.engine_state, request.app.state.pool)
    headers = {"Retry-After": str(LOADING_RETRY_AFTER_S)} if body["status"] == "loading" else None
    return JSONResponse(body, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------------
def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request, exc: ApiError):
        return error_response(exc.reason, exc.message, exc.status, exc.headers)

    async def on_http_error(request, exc: StarletteHTTPException):
        reason = REASON_BY_STATUS.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
        return error_response(reason, str(exc.detail), exc.status_code, getattr(exc, "headers", None))

    async def on_validation_error(request, exc: RequestValidationError):
        return error_response("bad_request", "; ".join(str(e.get("msg", e)) for e in exc.errors()) or "bad request")

    async def on_unexpected(request, exc: Exception):
        # Starlette logs the traceback (server side) after this response is sent.
        return error_response("internal_error", "internal error; the server log has the details")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)


def create_app(settings: Settings) -> FastAPI:
    engine_state = EngineState()
    pool = AnalysisPool(settings.workers, settings.queue_depth)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=load_engine, args=(engine_state, settings.models_dir),
                         name="model-loader", daemon=True).start()
        yield
        pool.shutdown()

    app = FastAPI(title="Deepfake Detection Studio API", version="1",
                  description="The analysis of `predict.py --json`, over HTTP. See README, 'HTTP API'.",
                  lifespan=lifespan)
    app.state.engine_state, app.state.pool, app.state.settings = engine_state, pool, settings
    app.include_router(router)
    install_error_handlers(app)
    # Added last = runs first: unauthenticated requests are turned away before a byte is counted.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
                       upload_limit=settings.max_upload_bytes)
    app.add_middleware(ApiKeyGate, keys=settings.api_keys)
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory serve:app_from_env`: every setting from the environment."""
    return create_app(settings_from_env())


def build_parser(defaults: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Serve the deepfake analysis over HTTP (see README, 'HTTP API').")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--models-dir", default=defaults.models_dir, help=f"converted models (env {MODELS_DIR_ENV})")
    p.add_argument("--workers", type=cli_type(bounded_int, "--workers", 1, 64), default=defaults.workers,
                   help=f"analyses run at once (env {WORKERS_ENV}, default {DEFAULT_WORKERS})")
    p.add_argument("--queue", type=cli_type(bounded_int, "--queue", 0, 10_000), default=defaults.queue_depth,
                   help=f"requests waiting for a worker before 429 (env {QUEUE_ENV}, default {DEFAULT_QUEUE_DEPTH})")
    p.add_argument("--max-upload-bytes", type=cli_type(bounded_int, "--max-upload-bytes", 1, MAX_UPLOAD_BYTES),
                   default=defaults.max_upload_bytes,
                   help=f"at most media.MAX_UPLOAD_BYTES ({MAX_UPLOAD_BYTES}) (env {MAX_UPLOAD_ENV})")
    p.add_argument("--upload-timeout", type=cli_type(positive_seconds, "--upload-timeout"), default=defaults.upload_timeout_s,
                   help=f"seconds an upload may take (env {UPLOAD_TIMEOUT_ENV}, default {DEFAULT_UPLOAD_TIMEOUT_S:.0f})")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def main(argv=None) -> int:
    import uvicorn

    try:
        defaults = settings_from_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = build_parser(defaults).parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(levelname)s: %(message)s")
    settings = replace(defaults, models_dir=args.models_dir, workers=args.workers, queue_depth=args.queue,
                       max_upload_bytes=args.max_upload_bytes, upload_timeout_s=args.upload_timeout)
    if settings.api_keys:
        log.info("access control on: %d API key(s)", len(settings.api_keys))
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
