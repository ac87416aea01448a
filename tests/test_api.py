"""serve.py: the real server (uvicorn in a subprocess, loopback, a free port), called over HTTP.

Covers: health and model listing, an image and a video giving the very object `predict.py --json`
prints, every hostile file of tests/hostile_corpus.py's corpus refused with a 4xx and a reason
(and the server healthy afterwards), bad parameters, the upload byte limit (declared and streamed),
a burst of concurrent requests answered 429 + Retry-After beyond the pool, access control on and off,
a server without models, and that no uploaded byte is left in the server's temp folder.

The models are two random-weight 64 px models (conftest.two_random_models_dir): scores are
meaningless, so tests compare structure and equality between entry points, never scores.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import predict
import scoring
import serve
from report_helpers import assert_reports_match
from conftest import every_cli_run_uses, make_video, stop_process
from hostile_corpus import CASES, ERR, NON_ASCII_IMAGE

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 240          # generous: the machine may be shared with training
REQUEST_TIMEOUT_S = 120
UPLOAD_LIMIT = 2_000_000         # the test server's byte limit (lowered, so 413 needs little data)
API_KEYS = ("first-key", "second-key")
BURST = 8

# Which reason (and so which status) each refused corpus file must get; files that cannot be uploaded
# (a folder, a missing file) are covered by test_requests_without_a_usable_file.
EXPECTED_REFUSALS = {
    "empty.jpg": ("empty", 422), "text.jpg": ("unreadable", 422), "truncated.jpg": ("unreadable", 422),
    "huge_20000x20000.png": ("too_many_pixels", 422), "bomb_100000x100000.png": ("too_many_pixels", 422),
    "bomb_9000x9000.png": ("too_many_pixels", 422), "bomb_screen.gif": ("too_many_pixels", 422),
    "notes.txt": ("unsupported_type", 415), "no_extension": ("unsupported_type", 415),
    "zero_frames.avi": ("unreadable", 422), "zero_frames.mp4": ("unreadable", 422),
    "truncated.mp4": ("unreadable", 422), "text.mp4": ("unreadable", 422), "too_big.avi": ("too_many_pixels", 422),
}
NOT_UPLOADABLE = {"folder.jpg", "missing.jpg"}


# ---------------------------------------------------------------------------------------------------
# A server in a subprocess
# ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path, tmpdir: Path):
        self.proc, self.url, self.log, self.tmpdir = proc, url, log, tmpdir
        self.tmp_listing_when_ready: list[str] = []

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S, **kw)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until_loaded(server: Server) -> dict:
    """Poll /health until loading is over (ready or not); fail with the server's log if it dies."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, f"server exited:\n{server.log_text()}"
        try:
            body = httpx.get(f"{server.url}/health", timeout=5).json()
            if body["status"] != "loading":
                return body
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not loaded after {STARTUP_TIMEOUT_S} s:\n{server.log_text()}")


@contextlib.contextmanager
def running_server(tmp: Path, models_dir: Path, args=(), env=None):
    tmp.mkdir(parents=True, exist_ok=True)
    server_tmp = tmp / "server-tmp"      # the server's TMPDIR: what uploads leave behind shows up here
    server_tmp.mkdir()
    port = free_port()
    log = tmp / "server.log"
    inherited = {k: v for k, v in os.environ.items() if k != serve.KEYS_ENV}   # keys only where a test sets them
    full_env = {**inherited, "TMPDIR": str(server_tmp), **(env or {})}
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--host", "127.0.0.1", "--port", str(port),
                                 "--models-dir", str(models_dir), "--log-level", "warning", *args],
                                cwd=tmp, env=full_env, stdout=log_fh, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log, server_tmp)
    try:
        yield server
    finally:
        stop_process(proc, timeout=20)
    assert "Traceback" not in server.log_text(), server.log_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory, two_random_models_dir):
    """The main server: no access control, one worker and a queue of one (so a burst overflows),
    a 2 MB upload limit (via the environment; the pool via flags)."""
    with running_server(tmp_path_factory.mktemp("api"), two_random_models_dir, args=("--workers", "1", "--queue", "1"),
                        env={serve.MAX_UPLOAD_ENV: str(UPLOAD_LIMIT)}) as srv:
        health = wait_until_loaded(srv)
        assert health["status"] == "ready", health
        srv.tmp_listing_when_ready = sorted(os.listdir(srv.tmpdir))
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def cli_engine(two_random_models_dir):
    """predict.main() builds its own ScoringEngine; give it one loaded once for the module."""
    with every_cli_run_uses(scoring.ScoringEngine(two_random_models_dir)) as engine:
        yield engine


def cli_json(path: Path, models_dir: Path, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert predict.main([str(path), "--models-dir", str(models_dir), "--json", *extra]) == predict.EXIT_OK
    return json.loads(capsys.readouterr().out.strip())


def post_file(client: httpx.Client, path: Path, name: str | None = None, headers=None, **fields) -> httpx.Response:
    with open(path, "rb") as fh:
        return client.post("/v1/analyze", files={"file": (name or path.name, fh)},
                           data={k: str(v) for k, v in fields.items()}, headers=headers)


def assert_error(response: httpx.Response, status: int, reason: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "reason"} and body["reason"] == reason, body
    assert "Traceback" not in body["error"] and serve.TEMP_PREFIX not in body["error"], body
    return body


def assert_healthy(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200 and response.json()["ready"] is True, response.text


# ---------------------------------------------------------------------------------------------------
# Health, models, docs
# ---------------------------------------------------------------------------------------------------
def test_health_models_and_docs(client, two_random_models_dir):
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ready" and body["models"]["loaded"] == ["cross_attention", "cnn_transformer"]
    assert body["models"]["missing"] == ["xception", "efficientnet", "swin"] and body["models"]["broken"] == []
    assert body["pool"] == {"workers": 1, "queue_depth": 1, "in_flight": 0}

    models = client.get("/v1/models").json()
    assert [m["key"] for m in models["models"]] == ["cross_attention", "cnn_transformer"]
    for m in models["models"]:
        weights = two_random_models_dir / f"{m['key']}.safetensors"
        assert m["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        assert m["input_size"] == 64 and m["architecture"]["name"] == m["key"]
        assert m["metrics"] == {"test": {"auc": 0.5}}
    assert models["ensemble"]["weights"] == {"cross_attention": 0.5, "cnn_transformer": 0.5}
    assert models["ensemble"]["threshold"] == 0.5 and models["ensemble"]["members"] == ["cross_attention", "cnn_transformer"]
    assert {u["key"]: u["state"] for u in models["unavailable"]} == {"xception": "missing", "efficientnet": "missing",
                                                                     "swin": "missing"}
    assert str(two_random_models_dir) not in json.dumps(models)

    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    analyze = spec["paths"]["/v1/analyze"]["post"]
    assert "multipart/form-data" in analyze["requestBody"]["content"]
    assert {"200", "413", "415", "429"} <= set(analyze["responses"])
    assert {"/v1/models", "/health"} <= set(spec["paths"])


# ---------------------------------------------------------------------------------------------------
# Analyses: the same object as the CLI
# ---------------------------------------------------------------------------------------------------
def test_image_gives_the_cli_json(client, cli_engine, two_random_models_dir, astronaut_jpg, capsys):
    response = post_file(client, astronaut_jpg)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    api = response.json()
    assert api["input"] == "astronaut.jpg" and api["kind"] == "image" and len(api["faces"]) == 1
    cli = cli_json(astronaut_jpg, two_random_models_dir, capsys)
    assert_reports_match(api, cli)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(api, serve.REPORT_SCHEMA)

    # Options: the same meaning as the CLI's flags.
    api = post_file(client, astronaut_jpg, models="cnn_transformer", threshold="0").json()
    cli = cli_json(astronaut_jpg, two_random_models_dir, capsys, "--models", "cnn_transformer", "--threshold", "0")
    assert api["models_used"] == ["cnn_transformer"] and api["verdict"] == "FAKE"
    assert_reports_match(api, cli)

    # Fast mode: the `fast` field is the CLI's --fast; the report says so and notes what it costs.
    api = post_file(client, astronaut_jpg, fast="true").json()
    cli = cli_json(astronaut_jpg, two_random_models_dir, capsys, "--fast")
    assert api["fast"] is True and cli["fast"] is True and any("fast mode" in n for n in api["notes"])
    assert_reports_match(api, cli)
    assert post_file(client, astronaut_jpg, fast="no").json()["fast"] is False


def test_video_gives_the_cli_json(client, cli_engine, two_random_models_dir, astronaut, tmp_path, capsys):
    video = make_video(tmp_path / "clip.mp4", astronaut[::2, ::2].copy(), n=12)
    response = post_file(client, video, frames=4)
    assert response.status_code == 200, response.text
    api = response.json()
    assert api["input"] == "clip.mp4" and api["kind"] == "video"
    assert api["frames_analyzed"] == 4 and api["frame_count"] == 12 and len(api["persons"]) == 1
    assert_reports_match(api, cli_json(video, two_random_models_dir, capsys, "--frames", "4"))
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(api, serve.REPORT_SCHEMA)


# ---------------------------------------------------------------------------------------------------
# Hostile and bad input
# ---------------------------------------------------------------------------------------------------
def test_every_refused_corpus_file_gets_a_4xx_naming_the_reason(client, corpus):
    refused = {name for name, (expect, _) in CASES.items() if expect == ERR}
    assert refused == set(EXPECTED_REFUSALS) | NOT_UPLOADABLE     # a new corpus case needs an expectation here
    for name, (reason, status) in EXPECTED_REFUSALS.items():
        body = assert_error(post_file(client, corpus[name]), status, reason)
        assert body["error"].startswith(f"{name}: "), body    # named by the upload's name, not a server path
        for words in CASES[name][1]:
            assert words in body["error"], body
        assert str(corpus[name].parent) not in body["error"]
    assert_healthy(client)
    assert client.get("/health").json()["pool"]["in_flight"] == 0


def test_odd_names_and_odd_but_valid_files_are_analysed(client, corpus):
    """Non-ASCII and '%' in a multipart file name survive as the report's input; a 1x1 PNG is NO_FACE."""
    report = post_file(client, corpus[NON_ASCII_IMAGE]).json()
    assert report["input"] == NON_ASCII_IMAGE and len(report["faces"]) >= 1
    report = post_file(client, corpus["tiny_1x1.png"]).json()
    assert report["verdict"] == "NO_FACE" and (report["width"], report["height"]) == (1, 1)
    name = "vidéo 100% %d (1).avi"
    report = post_file(client, corpus["one_frame.avi"], name=name, frames=1).json()
    assert report["input"] == name and report["kind"] == "video" and report["frames_analyzed"] == 1


def test_bad_parameters_are_400_with_the_cli_wording(client, astronaut_jpg):
    cases = [({"frames": "0"}, "frames: must be a whole number between 1 and 300"),
             ({"frames": "301"}, "frames: must be a whole number between 1 and 300"),
             ({"frames": "many"}, "frames: must be a whole number"),
             ({"threshold": "1.5"}, "threshold: must be a number between 0 and 1"),
             ({"threshold": "nan"}, "threshold: must be a number between 0 and 1"),
             ({"models": "bogus"}, "models: unknown model(s) bogus"),
             ({"advisory_faces": "-1"}, "advisory_faces: must be a whole number 0 or more"),
             ({"fast": "maybe"}, "fast: must be true or false"),
             ({"frame": "3"}, "unknown field(s) frame")]
    for fields, words in cases:
        body = assert_error(post_file(client, astronaut_jpg, **fields), 400, "bad_parameter")
        assert words in body["error"], (fields, body)
    body = assert_error(post_file(client, astronaut_jpg, models="swin"), 400, "model_not_installed")
    assert body["error"] == "model(s) not installed: swin"


def test_requests_without_a_usable_file(client, astronaut_jpg):
    assert_error(client.post("/v1/analyze", data={"frames": "4"}), 400, "missing_file")
    assert_error(client.post("/v1/analyze", json={"file": "astronaut.jpg"}), 400, "missing_file")
    assert_error(client.post("/v1/analyze", files={"file": ("", b"abc")}), 400, "missing_file")
    # A client-side path is reduced to its base name (nothing of it reaches the file system).
    report = post_file(client, astronaut_jpg, name="../../etc/astronaut.jpg").json()
    assert report["input"] == "astronaut.jpg"
    assert_error(client.get("/v1/analyze"), 405, "method_not_allowed")
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")


def test_uploads_over_the_byte_limit_are_cut_off_with_413(client):
    too_big = np.random.default_rng(0).integers(0, 256, UPLOAD_LIMIT + 1, dtype=np.uint8).tobytes()
    body = assert_error(client.post("/v1/analyze", files={"file": ("big.jpg", too_big)}), 413, "too_large")
    assert "2 MB limit" in body["error"]

    def chunks():   # no Content-Length: the server has to count what arrives
        yield b'--XX\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
        for start in range(0, len(too_big), 1 << 16):
            yield too_big[start:start + (1 << 16)]
        yield b"\r\n--XX--\r\n"

    assert_error(client.post("/v1/analyze", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=XX"}),
                 413, "too_large")
    assert_healthy(client)


# ---------------------------------------------------------------------------------------------------
# Concurrency: a burst beyond workers + queue is turned away with 429, not queued without bound
# ---------------------------------------------------------------------------------------------------
def test_burst_beyond_the_pool_gets_429_with_retry_after(server, client, astronaut_jpg):
    start_together = threading.Barrier(BURST)
    responses: list[httpx.Response | BaseException] = [None] * BURST
    data = astronaut_jpg.read_bytes()

    def call(i: int) -> None:
        with server.client() as c:
            start_together.wait(timeout=30)
            try:
                responses[i] = c.post("/v1/analyze", files={"file": ("astronaut.jpg", data)})
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                responses[i] = exc

    started = time.monotonic()
    threads = [threading.Thread(target=call, args=(i,)) for i in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=REQUEST_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads)
    assert time.monotonic() - started < REQUEST_TIMEOUT_S
    statuses = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    # One worker and a queue of one: at most two of the burst can be in at once.
    assert 1 <= statuses.count(200) < BURST and statuses.count(429) >= 1, statuses
    for r in responses:
        if r.status_code == 429:
            assert r.json()["reason"] == "queue_full"
            assert 1 <= int(r.headers["Retry-After"]) <= serve.MAX_RETRY_AFTER_S
        else:
            assert r.json()["input"] == "astronaut.jpg"
    # The slots come back: the pool is empty again and the next request is served.
    deadline = time.monotonic() + 60
    while client.get("/health").json()["pool"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.get("/health").json()["pool"]["in_flight"] == 0
    assert post_file(client, astronaut_jpg).status_code == 200


# ---------------------------------------------------------------------------------------------------
# Nothing the client sent is kept (last in the module: after every upload above)
# ---------------------------------------------------------------------------------------------------
def test_no_upload_is_left_in_the_server_temp_folder(server, client):
    assert_healthy(client)
    assert sorted(os.listdir(server.tmpdir)) == server.tmp_listing_when_ready
    assert not [n for n in os.listdir(server.tmpdir) if n.startswith(serve.TEMP_PREFIX)]


# ---------------------------------------------------------------------------------------------------
# Access control; a broken and missing models in /health
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory, two_random_models_dir):
    """Keys on; cross_attention's weights corrupted (broken), so only cnn_transformer loads."""
    tmp = tmp_path_factory.mktemp("api_keys")
    models = tmp / "models"
    shutil.copytree(two_random_models_dir, models)
    weights = models / "cross_attention.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with running_server(tmp, models, env={serve.KEYS_ENV: " , ".join(API_KEYS) + ",",
                                          serve.WORKERS_ENV: "2", serve.QUEUE_ENV: "0"}) as srv:
        wait_until_loaded(srv)
        yield srv


def test_api_keys_guard_every_path_but_health(guarded_server, astronaut_jpg):
    with guarded_server.client() as c:
        health = c.get("/health")      # no key needed: load balancers probe it
        assert health.status_code == 200, health.text
        models = health.json()["models"]
        assert models["loaded"] == ["cnn_transformer"] and models["missing"] == ["xception", "efficientnet", "swin"]
        assert [b["key"] for b in models["broken"]] == ["cross_attention"]
        assert "SHA-256 mismatch" in models["broken"][0]["reason"]
        assert models["broken"][0]["reason"].startswith("cross_attention.safetensors")   # no server path
        assert health.json()["pool"] == {"workers": 2, "queue_depth": 0, "in_flight": 0}

        for path in ("/v1/models", "/docs", "/openapi.json"):
            response = c.get(path)
            assert_error(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"] == "Bearer"
        for header in ("Bearer wrong-key", "Bearer first-key-", "Basic Zmlyc3Qta2V5", "first-key", "Bearer"):
            assert_error(c.get("/v1/models", headers={"Authorization": header}), 401, "unauthorized")
        assert_error(post_file(c, astronaut_jpg), 401, "unauthorized")

        for key in API_KEYS:
            assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/docs", headers={"Authorization": f"bearer {API_KEYS[0]}"}).status_code == 200
        response = post_file(c, astronaut_jpg, headers={"Authorization": f"Bearer {API_KEYS[1]}"})
        assert response.status_code == 200, response.text
        assert response.json()["models_used"] == ["cnn_transformer"]


def test_server_without_models_is_not_ready(tmp_path, astronaut_jpg):
    with running_server(tmp_path, tmp_path / "no-models-here") as srv:
        health = wait_until_loaded(srv)
        assert health["status"] == "no_models" and health["ready"] is False
        assert health["models"]["missing"] == list(scoring.MODEL_KEYS)
        with srv.client() as c:
            assert c.get("/health").status_code == 503
            assert_error(post_file(c, astronaut_jpg), 503, "no_models")
            assert_error(c.get("/v1/models"), 503, "no_models")


# ---------------------------------------------------------------------------------------------------
# Pure helpers (in-process)
# ---------------------------------------------------------------------------------------------------
def test_key_matching_and_key_parsing():
    keys = serve.parse_api_keys(" alpha , beta,,")
    assert keys == ("alpha", "beta")
    assert serve.key_matches(b"beta", keys) and not serve.key_matches(b"gamma", keys)
    assert not serve.key_matches(None, keys) and not serve.key_matches(b"", keys)
    assert serve.parse_api_keys(None) == () and serve.parse_api_keys("") == ()
    with pytest.raises(ValueError, match="holds no key"):
        serve.parse_api_keys(" , ")
    assert serve.bearer_token({"headers": [(b"authorization", b"Bearer abc")]}) == b"abc"
    assert serve.bearer_token({"headers": [(b"authorization", b"Token abc")]}) is None


def test_retry_after_and_health_while_loading():
    assert serve.retry_after_seconds(2.0, admitted=3, workers=1) == 6
    assert serve.retry_after_seconds(0.01, admitted=1, workers=4) == 1
    assert serve.retry_after_seconds(1e6, admitted=9, workers=1) == serve.MAX_RETRY_AFTER_S
    pool = serve.AnalysisPool(workers=1, queue_depth=1)
    try:
        status, body = serve.health_body(serve.EngineState(), pool)
        assert status == 503 and body["status"] == "loading" and "models" not in body
        first, second = pool.try_admit(), pool.try_admit()
        assert first and second and pool.try_admit() is None
        first.free()
        first.free()                     # idempotent: a slot is never returned twice
        assert pool.admitted == 1
        second.free()
    finally:
        pool.shutdown()


def test_settings_from_env_refuse_a_limit_above_the_apps():
    assert serve.settings_from_env({}).max_upload_bytes == serve.MAX_UPLOAD_BYTES
    with pytest.raises(ValueError, match=serve.MAX_UPLOAD_ENV):
        serve.settings_from_env({serve.MAX_UPLOAD_ENV: str(serve.MAX_UPLOAD_BYTES + 1)})
    with pytest.raises(ValueError, match=serve.WORKERS_ENV):
        serve.settings_from_env({serve.WORKERS_ENV: "0"})
    assert serve.upload_name("C:\\Users\\me\\clip.MP4") == "clip.MP4"
