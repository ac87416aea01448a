"""Fast CPU inference: each converted model exported once to ONNX and run with ONNX Runtime.

`ScoringEngine._runner_for` (scoring.py) tries `OnnxRunner(loaded)` first and falls back to eager
PyTorch on *any* exception, so everything here raises rather than return something doubtful:

* Export: fp32, from `loaded.model`, with a dynamic batch axis. The TorchScript-based exporter
  (`dynamo=False`) is tried first: it exports every architecture in the registry (timm Xception,
  EfficientNet-B3 and Swin, and the two custom transformer models), while the default dynamo
  exporter of torch 2.9+ needs the `onnxscript` package, which the project does not install. Should
  a future torch drop the TorchScript exporter, the dynamo exporter is tried next.
* Cache: `<cache>/<key>-<input size>px-<weights sha256>-<arch hash>.onnx`, outside git
  (env DFSTUDIO_ONNX_CACHE, default ~/.cache/deepfake-studio/onnx/), written atomically (temp file +
  os.replace) under a file lock. Next to it, `<same>.onnx.json` records the SHA-256 of the .onnx
  bytes and what they were exported from. A cached file is used only if its bytes hash to the
  recorded value and the record matches the model (weights sha256, input size, architecture args,
  opset); hashing and loading happen under the cache lock that every writer takes. Anything else
  (missing or corrupt record, truncated or modified .onnx, mismatch) is logged and the file rebuilt.
  After an export the 4 newest exports per model key are kept, older ones pruned.
* Pre-optimised: what is cached is the export after ONNX Runtime's hardware-independent graph
  optimisations (level EXTENDED), checked like the raw export; a start then only adds the CPU's
  layout optimisations (level ALL). The record names the ONNX Runtime version that wrote it.
* Check: every construction (fresh export or cache hit) compares ONNX Runtime's logits on a fixed
  batch (model_store.check_batch) with the model's: for a cached file, the logits recorded in the
  converted model's manifest at conversion (`check_logits`), so a start with a valid cache never
  builds the torch module; for a fresh export (or a manifest without them), the torch module's. A
  difference above `ATOL + RTOL*|expected|` (1e-3 each) rebuilds a cached file once, and raises for a
  fresh export, so the engine uses torch instead.
* Run: `InferenceSession.run` is thread-safe, so one session per model serves all threads.
  intra-op threads = torch.get_num_threads() (or os.cpu_count()), no spinning, graph optimisation
  ALL, at most 8 images of 128 px per call (fastest per image), one memory arena shared by all
  sessions. Measurements behind each choice: docs/performance.md.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fileio import atomic_write_bytes, atomic_write_json, sha256_of
from process_wide import once, release_free_memory
from model_store import LoadedModel, check_batch, recorded_check_logits

log = logging.getLogger("fast_runtime")

CACHE_ENV = "DFSTUDIO_ONNX_CACHE"
OPSET = 17
EXPORT_VERSION = 2          # bump when the export recipe changes: old cache entries are then ignored
                            # (2: the cache holds the graph pre-optimised by ONNX Runtime, see below)
ATOL = 1e-3                 # ONNX vs torch logits: |onnx - torch| <= ATOL + RTOL * |torch|
RTOL = 1e-3
EXPORT_BATCH = 1            # images in the dummy batch the exporter traces
# Images per ONNX Runtime call: 8 at 128 px (measured fastest per image on this CPU: batch 8 beat 1 and
# 32 by 10-40 %, docs/performance.md), fewer for larger inputs (same pixels per call, bounded memory).
BATCH_PIXELS = 8 * 128 * 128
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

KEEP_PER_MODEL = 4          # cached exports kept per model key (other weights or sizes); older ones pruned
# Counts exports in this process (tests use it to prove that a cached file was reused).
EXPORT_COUNT = 0


class OnnxUnavailable(RuntimeError):
    """This model cannot run through ONNX Runtime; the engine then uses torch."""


def cache_dir() -> Path:
    """$DFSTUDIO_ONNX_CACHE, else ~/.cache/deepfake-studio/onnx (outside the repository)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    try:
        return Path.home() / ".cache" / "deepfake-studio" / "onnx"
    except RuntimeError:  # no home directory: a per-user folder in the temp dir
        return Path(tempfile.gettempdir()) / f"deepfake-studio-onnx-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def _arch_hash(loaded: LoadedModel) -> str:
    arch = loaded.manifest.get("architecture") or {}
    blob = json.dumps({"name": arch.get("name"), "args": arch.get("args", {}), "opset": OPSET,
                       "export_version": EXPORT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_paths(loaded: LoadedModel, directory: Path | None = None) -> tuple[Path, Path]:
    """(.onnx, .onnx.json) for this model: keyed by weights sha256, input size and architecture."""
    sha = str(loaded.manifest["sha256"])
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower()):
        raise OnnxUnavailable(f"{loaded.key}: manifest sha256 is not a hex digest")
    stem = f"{loaded.key}-{loaded.input_size}px-{sha.lower()}-{_arch_hash(loaded)}"
    directory = directory or cache_dir()
    return directory / f"{stem}.onnx", directory / f"{stem}.onnx.json"


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def _record_for(loaded: LoadedModel) -> dict:
    """What a cache record must say for its .onnx to be used for `loaded`. The ONNX Runtime version is
    part of it: the cached graph is that runtime's own optimisation (it may hold its fused operators)."""
    arch = loaded.manifest.get("architecture") or {}
    return {"key": loaded.key, "weights_sha256": str(loaded.manifest["sha256"]).lower(),
            "input_size": loaded.input_size, "architecture": arch.get("name"), "args": arch.get("args", {}),
            "opset": OPSET, "export_version": EXPORT_VERSION, "onnxruntime": _ort_version()}


def _preoptimised(data: bytes) -> bytes | None:
    """The exported graph after ONNX Runtime's hardware-independent optimisations (level EXTENDED:
    constant folding, fusions), so that a start loading it from the cache skips them: the five
    models' sessions took 0.57 s of CPU to create from the raw export and 0.33 s from this
    (scripts/experiments/ort_session_costs.py, docs/performance.md). The layout optimisations of level ALL, which depend on the CPU, still run
    when the session is created. None if the runtime cannot write it (the raw export is cached then)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="dfstudio-ort-") as tmp:
        out = Path(tmp) / "optimised.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(out)
        so.log_severity_level = 3
        try:
            ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
            return out.read_bytes() or None
        except Exception as exc:  # noqa: BLE001 - an optimisation is optional
            log.info("ONNX Runtime could not pre-optimise the graph (%s); caching the raw export", exc)
            return None


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive lock (one per cache folder) so that two processes starting at once do not export
    the same model twice or read a file while the other replaces it."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: atomic replace alone keeps the cache consistent
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+b")
    except OSError as exc:  # read-only cache: reading a valid file or exporting in memory still works
        log.warning("ONNX cache lock %s unavailable (%s)", path, exc)
        yield
        return
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _export_bytes(model: torch.nn.Module, size: int) -> tuple[bytes, str]:
    """ONNX bytes of `model` (fp32, batch axis dynamic) and the exporter that made them."""
    model = model.eval()
    dummy = torch.zeros(EXPORT_BATCH, 3, size, size, dtype=torch.float32)
    errors = []
    for dynamo in (False, True):
        buf = io.BytesIO()
        try:
            # Not under no_grad/inference_mode: there nn.TransformerEncoderLayer takes its fused
            # fast path (aten::_transformer_encoder_layer_fwd), which has no ONNX export.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=OPSET,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              do_constant_folding=True, dynamo=dynamo)
                if dynamo:
                    kwargs.update(external_data=False)
                torch.onnx.export(model, (dummy,), buf, **kwargs)
            data = buf.getvalue()
            if data:
                return data, "torchscript" if not dynamo else "dynamo"
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter wrote nothing")
        except Exception as exc:  # noqa: BLE001 - reported below, the engine falls back to torch
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")
    raise OnnxUnavailable("ONNX export failed (" + "; ".join(errors) + ")")


@once
def _shared_arena() -> bool:
    """Register (once per process) a CPU arena allocator that sessions can share; False if unsupported."""
    try:
        import onnxruntime as ort

        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's defaults
        return True
    except Exception as exc:  # noqa: BLE001 - older/other builds: one arena-less session each
        log.info("no shared ONNX Runtime arena (%s)", exc)
        return False


def _session_options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = max(1, int(torch.get_num_threads() or os.cpu_count() or 1))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    # One memory arena shared by all sessions instead of one each: one arena per model (five when
    # measured) each keeps its model's largest activations for good (peak RSS of a 100-frame video 1.84-1.93 GB); no arena re-allocates
    # every run (1.54-1.56 GB, models 3.2 s per 100 faces); shared: 1.57-1.62 GB, models 2.6-3.0 s
    # (docs/performance.md).
    if _shared_arena():
        so.enable_cpu_mem_arena = True
        so.add_session_config_entry("session.use_env_allocators", "1")
    else:
        so.enable_cpu_mem_arena = False
    # Worker threads that spin after a run would take CPU from MTCNN/decoding (and from other
    # processes) on a 2-core machine; measured no slower without spinning (docs/performance.md).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _max_excess(onnx_out: np.ndarray, torch_out: np.ndarray) -> float:
    """max(|onnx - torch| - RTOL*|torch|); <= ATOL means equal within tolerance (inf if not finite)."""
    if onnx_out.shape != torch_out.shape or not np.all(np.isfinite(onnx_out)):
        return float("inf")
    return float(np.max(np.abs(onnx_out - torch_out) - RTOL * np.abs(torch_out)))


class OnnxRunner:
    """One converted model as an ONNX Runtime session (CPU); a scoring.Runner like TorchRunner.

    Scores never touch the torch module, so it is released once the session is verified (~300 MB
    for the five models, docs/performance.md); `model` rebuilds it from the verified file for
    explanations, and `lock` guards it so that explanations hold the same lock as with TorchRunner."""

    runtime = "onnx"

    def __init__(self, loaded: LoadedModel, directory: str | os.PathLike | None = None):
        import onnxruntime as ort  # noqa: F401 - fail early (-> torch fallback) if it is missing

        self.key = loaded.key
        self._loaded = loaded
        self.lock = threading.Lock()
        self.input_size = loaded.input_size
        self.batch_size = max(1, BATCH_PIXELS // (loaded.input_size * loaded.input_size))
        self.onnx_path, self.record_path = cache_paths(loaded, Path(directory) if directory else None)
        self.exported = False          # True when this construction exported (cache miss or rebuild)
        self.cache_problem = ""        # why a cached file was not used, if it was not
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self._check_input = check_batch(loaded.input_size)
        # What the graph must compute on the check batch: the logits recorded in the manifest (so a
        # cached graph is proven without building the torch module), else the torch module's.
        recorded = recorded_check_logits(loaded.manifest)
        self._check_expected = recorded if recorded is not None else self._torch_check(loaded)
        self.timings["check_expected_s"] = time.perf_counter() - t0

        with _file_lock(self.onnx_path.parent / ".lock"):
            session = self._from_cache(loaded)
            if session is None:
                session = self._export_and_cache(loaded)
        self.session = session
        loaded.release_module()
        release_free_memory()
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.timings["total_s"] = time.perf_counter() - t0

    def _torch_check(self, loaded: LoadedModel) -> np.ndarray:
        model = loaded.model.eval()
        with torch.inference_mode():
            return model(self._check_input).float().reshape(-1).numpy()

    @property
    def model(self) -> torch.nn.Module:
        """The torch module (rebuilt from the verified file if it was released): for explanations."""
        return self._loaded.model

    # ---------------------------------------------------------------------------------------------
    def _verified_session(self, data: bytes | str):
        """A session for `data` (bytes or path) if it matches torch's outputs on the check batch, else None."""
        import onnxruntime as ort

        t0 = time.perf_counter()
        session = ort.InferenceSession(data, _session_options(), providers=["CPUExecutionProvider"])
        self.timings["session_s"] = self.timings.get("session_s", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        out = session.run(None, {session.get_inputs()[0].name: self._check_input.numpy()})[0]
        out = np.asarray(out, dtype=np.float32).reshape(-1)
        self.timings["onnx_check_s"] = self.timings.get("onnx_check_s", 0.0) + time.perf_counter() - t0
        self.max_abs_diff = float(np.max(np.abs(out - self._check_expected))) if out.shape == self._check_expected.shape else float("inf")
        excess = _max_excess(out, self._check_expected)
        if not excess <= ATOL:
            self.cache_problem = (f"ONNX output differs from torch (max |diff| {self.max_abs_diff:.3g} > "
                                  f"{ATOL:g} + {RTOL:g}*|torch|)")
            return None
        return session

    def _from_cache(self, loaded: LoadedModel):
        if not self.onnx_path.exists():
            return None
        t0 = time.perf_counter()
        try:
            record = json.loads(self.record_path.read_text(encoding="utf-8"))
            digest = sha256_of(self.onnx_path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.cache_problem = f"cache record unreadable ({type(exc).__name__})"
            return self._discard()
        if not isinstance(record, dict):
            self.cache_problem = "cache record is not a JSON object"
            return self._discard()
        expected = _record_for(loaded)
        if any(record.get(k) != v for k, v in expected.items()):
            self.cache_problem = "cache record does not match this model"
            return self._discard()
        if digest != record.get("onnx_sha256"):
            self.cache_problem = "cached .onnx does not match its recorded SHA-256 (modified or incomplete)"
            return self._discard()
        self.timings["cache_read_s"] = time.perf_counter() - t0
        try:
            # From the path (no second copy of the bytes in memory). The file was hashed under the
            # cache lock, which every writer takes, and the torch check runs on what ORT loaded.
            session = self._verified_session(str(self.onnx_path))
        except Exception as exc:  # noqa: BLE001 - ORT refused the file: rebuild
            self.cache_problem = f"ONNX Runtime could not load the cached file ({type(exc).__name__})"
            session = None
        if session is None:
            return self._discard()
        return session

    def _discard(self):
        log.warning("%s: %s: %s; rebuilding", self.key, self.onnx_path, self.cache_problem)
        for path in (self.onnx_path, self.record_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return None

    def _export_and_cache(self, loaded: LoadedModel):
        global EXPORT_COUNT
        t0 = time.perf_counter()
        data, exporter = _export_bytes(loaded.model, loaded.input_size)
        # A fresh export is checked against the module it came from: a manifest's recorded logits
        # could be stale (say, from another torch's arithmetic), the module is the truth.
        self._check_expected = self._torch_check(loaded)
        EXPORT_COUNT += 1
        self.exported = True
        self.timings["export_s"] = time.perf_counter() - t0
        optimised = _preoptimised(data)
        self.timings["preoptimise_s"] = time.perf_counter() - t0 - self.timings["export_s"]
        session, why_not_cached = None, self.cache_problem
        if optimised is not None:   # what the cache will hold is what is checked and used
            try:
                session = self._verified_session(optimised)
            except Exception as exc:  # noqa: BLE001 - fall back to the raw export below
                log.info("%s: pre-optimised graph unusable (%s); using the raw export", self.key, exc)
            if session is not None:
                data = optimised
            else:
                log.info("%s: pre-optimised graph failed its check (%s); using the raw export",
                         self.key, self.cache_problem)
                self.cache_problem = why_not_cached
        if session is None:
            try:
                session = self._verified_session(data)
            except Exception as exc:  # noqa: BLE001
                raise OnnxUnavailable(f"{self.key}: ONNX Runtime cannot load the export ({type(exc).__name__}: {exc})") from None
        if session is None:
            raise OnnxUnavailable(f"{self.key}: {self.cache_problem}")
        record = {**_record_for(loaded), "onnx_sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                  "exporter": exporter, "preoptimised": data is optimised, "torch": torch.__version__,
                  "max_abs_diff_vs_torch": self.max_abs_diff, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            atomic_write_bytes(self.onnx_path, data)
            atomic_write_json(self.record_path, record)
            self._prune()
        except OSError as exc:  # a read-only cache only costs the next start another export
            log.warning("%s: could not cache %s (%s)", self.key, self.onnx_path, exc)
        return session

    def _prune(self) -> None:
        """Keep the KEEP_PER_MODEL newest exports of this model key (older weights' files go)."""
        mine = sorted(self.onnx_path.parent.glob(f"{self.key}-*px-*.onnx"),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        for old in mine[KEEP_PER_MODEL:]:
            if old == self.onnx_path:
                continue
            for path in (old, old.with_name(old.name + ".json")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # ---------------------------------------------------------------------------------------------
    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Raw logits (N,) for a normalised NCHW float32 batch; safe to call from several threads."""
        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        outs = []
        for start in range(0, x.shape[0], self.batch_size):
            part = x[start:start + self.batch_size]
            out = self.session.run([self.output_name], {self.input_name: part})[0]
            outs.append(np.asarray(out, dtype=np.float32).reshape(-1))
        out = np.concatenate(outs) if outs else np.zeros(0, np.float32)
        if out.shape[0] != x.shape[0]:
            raise RuntimeError(f"{self.key}: ONNX model returned {out.shape[0]} logits for {x.shape[0]} images")
        return out


__all__ = ["OnnxRunner", "OnnxUnavailable", "cache_dir", "cache_paths", "release_free_memory", "CACHE_ENV"]
