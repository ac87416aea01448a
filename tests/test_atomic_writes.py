"""Crash safety: a process killed (SIGKILL) in the middle of a save never leaves a broken file behind.

Checkpoints (training_engine.save_checkpoint) and converted models (model_store.save_converted_model,
atomic_write_bytes) are written to a temporary file, fsynced and renamed over the target. A forked
child process is stopped half-way through one of those writes (its file object writes half the bytes
and then sleeps), killed with SIGKILL, and the previous files must still load.

Also: a dataset folder with unreadable files loads the rest and reports how many it skipped.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from model_store import atomic_write_bytes, load_converted_model, save_converted_model, sha256_of

KEY = "cnn_transformer"
READY_TIMEOUT_S = 300          # generous: the machine may be busy


class _HalfThenHang:
    """A file object that writes half of what it is given, flushes it to disk and hangs."""

    def __init__(self, fh, ready_fd: int):
        self.fh, self.ready_fd = fh, ready_fd

    def write(self, data):
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        os.fsync(self.fh.fileno())
        os.write(self.ready_fd, b"P")
        time.sleep(3600)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.fh.__exit__(*exc)


def run_and_kill_mid_write(save, stop_at: int, folder: Path) -> None:
    """Run `save()` in a child process; when its `stop_at`-th atomic write (a file opened through
    os.fdopen, as atomic_write_bytes does) is half written, kill the child with SIGKILL.

    The child is forked (it has every module imported already, so no interpreter start-up); it never
    returns into pytest: it leaves through os._exit or dies by the signal."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child
        status = 1
        try:
            os.close(ready_r)
            torch.set_num_threads(1)               # no OpenMP pool after fork (as DataLoader workers do)
            real_fdopen, opened = os.fdopen, [0]

            def fdopen(fd, *args, **kwargs):
                fh = real_fdopen(fd, *args, **kwargs)
                opened[0] += 1
                return _HalfThenHang(fh, ready_w) if opened[0] == stop_at else fh

            os.fdopen = fdopen
            save()
            status = 3                             # finished without reaching the write: a test bug
        except BaseException:                      # noqa: BLE001 - report through the exit status
            status = 2
        finally:
            os._exit(status)
    os.close(ready_w)
    try:
        ready, _, _ = select.select([ready_r], [], [], READY_TIMEOUT_S)
        if not ready or os.read(ready_r, 1) != b"P":
            _, status = os.waitpid(pid, os.WNOHANG)
            pytest.fail(f"the child never reached write #{stop_at} (wait status {status})")
        # Mid-write: the half-written temporary file is on disk next to the target.
        partial = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
        assert partial and all(p.name.startswith(".") for p in partial), sorted(folder.iterdir())
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        pid = 0
    finally:
        os.close(ready_r)
        if pid:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


class StateOnly(torch.nn.Module):
    """Stands in for a trained model: save_converted_model only reads its weights."""

    def __init__(self, state):
        super().__init__()
        self._state = state

    def state_dict(self, *a, **kw):
        return dict(self._state)

    def parameters(self, *a, **kw):
        return iter(self._state.values())


# ---------------------------------------------------------------------------------------------------
def test_atomic_write_bytes_killed_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "blob.bin"
    old = os.urandom(1 << 20)
    atomic_write_bytes(target, old)
    run_and_kill_mid_write(lambda: atomic_write_bytes(target, b"new" * (1 << 20)), stop_at=1, folder=tmp_path)
    assert target.read_bytes() == old


def test_checkpoint_killed_mid_save_keeps_the_previous_checkpoint(tmp_path):
    from training_engine import load_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    previous = {"model": {"w": torch.arange(300_000, dtype=torch.float32)}, "epoch": 1, "history": "[]"}
    save_checkpoint(path, previous)
    run_and_kill_mid_write(lambda: save_checkpoint(path, {"model": {"w": torch.ones(2_000_000)}, "epoch": 2,
                                                           "history": "[1]"}), stop_at=1, folder=tmp_path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 1 and torch.equal(loaded["model"]["w"], previous["model"]["w"])
    # The next save (the resumed run) replaces it normally; the dead write's temp file is ignored.
    save_checkpoint(path, {**previous, "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 2


@pytest.fixture
def old_and_new_model(random_models_dir, tmp_path):
    """A converted-model folder holding the 'old' model, and a different 'new' state dict on disk."""
    out = tmp_path / "converted"
    out.mkdir()
    for ext in (".json", ".safetensors"):
        shutil.copy(random_models_dir / f"{KEY}{ext}", out / f"{KEY}{ext}")
    new_state = {k: (v.float() + 0.5).half() if v.is_floating_point() else v
                 for k, v in load_file(str(out / f"{KEY}.safetensors")).items()}
    new_file = tmp_path / "new_state.safetensors"
    save_file(new_state, str(new_file))
    return out, new_file


@pytest.mark.parametrize("stop_at,survivor", [
    (1, "old"),     # staging the new weights
    (2, "old"),     # pointing the manifest at the staged weights
    (3, "new"),     # replacing <key>.safetensors (the manifest points at the staged copy)
    (4, "new"),     # pointing the manifest back at <key>.safetensors
])
def test_converted_model_killed_mid_save_stays_loadable(old_and_new_model, stop_at, survivor):
    out, new_file = old_and_new_model
    old_sha = json.loads((out / f"{KEY}.json").read_text())["sha256"]
    old_state = load_file(str(out / f"{KEY}.safetensors"))
    new_model = StateOnly(load_file(str(new_file)))
    run_and_kill_mid_write(lambda: save_converted_model(new_model, KEY, out, input_size=64, extra={"note": "new"}),
                           stop_at, out)
    loaded = load_converted_model(out / f"{KEY}.json")          # must not raise
    weights = out / loaded.manifest["weights_file"]
    assert sha256_of(weights) == loaded.manifest["sha256"]
    reference = load_file(str(new_file)) if survivor == "new" else old_state
    if survivor == "old":
        assert loaded.manifest["sha256"] == old_sha
    else:
        assert loaded.manifest["sha256"] != old_sha and loaded.manifest.get("note") == "new"
    for name, tensor in reference.items():
        assert torch.equal(loaded.model.state_dict()[name].to(tensor.dtype), tensor), name


def test_converted_model_save_leaves_only_the_pair(old_and_new_model):
    """A complete save leaves <key>.json and <key>.safetensors, nothing staged, matching checksums."""
    out, new_file = old_and_new_model
    path = save_converted_model(StateOnly(load_file(str(new_file))), KEY, out, input_size=64)
    assert sorted(p.name for p in out.iterdir()) == [f"{KEY}.json", f"{KEY}.safetensors"]
    manifest = json.loads(path.read_text())
    assert manifest["weights_file"] == f"{KEY}.safetensors"
    assert manifest["sha256"] == hashlib.sha256((out / f"{KEY}.safetensors").read_bytes()).hexdigest()
    load_converted_model(path)


# ---------------------------------------------------------------------------------------------------
def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (a decompression bomb's header)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_dataset_with_unreadable_files_loads_the_rest_and_counts_them(tmp_path, astronaut, caplog):
    import data_handler

    root = tmp_path / "dataset"
    rng = np.random.default_rng(0)
    good, bad = [], []
    for label in ("real", "fake"):
        folder = root / label / "nested"
        folder.mkdir(parents=True)
        for i in range(10):
            path = folder / f"{label}_{i:02d}.jpg"
            crop = astronaut[rng.integers(0, 300):, rng.integers(0, 300):][:200, :200]
            Image.fromarray(crop).save(path, quality=90)
            good.append(str(path))
    jpeg = Path(good[0]).read_bytes()
    corrupt = {
        root / "real" / "empty.jpg": b"",
        root / "real" / "text.png": b"not an image at all",
        root / "fake" / "truncated.jpg": jpeg[: len(jpeg) // 3],
        root / "fake" / "bomb.png": _png_declaring(100000, 100000),
    }
    for path, data in corrupt.items():
        path.write_bytes(data)
        bad.append(str(path))
    (root / "fake" / "notes.txt").write_text("ignored: not an image extension")

    records = data_handler.load_records(root, seed=0)
    assert sorted(records["path"]) == sorted(good + bad)
    assert set(records["split"]) <= set(data_handler.SPLITS)
    cache = tmp_path / "cache"
    total_loaded, total_skipped = 0, 0
    with caplog.at_level(logging.WARNING, logger="data_handler"):
        for split in data_handler.SPLITS:
            paths = records.loc[records["split"] == split, "path"].tolist()
            expected_bad = sum(p in bad for p in paths)
            for attempt in ("decoded", "cached"):
                loaded = data_handler.load_split(records, split, 32, cache_dir=cache, progress=False)
                assert loaded.skipped == expected_bad, (split, attempt)
                assert len(loaded.labels) == len(loaded.paths) == len(loaded.images) == len(paths) - expected_bad
                assert not set(loaded.paths) & set(bad)
                assert loaded.images.shape[1:] == (32, 32, 3) and loaded.images.dtype == np.uint8
                labels = dict(zip(records["path"], records["label"]))
                assert [labels[p] for p in loaded.paths] == loaded.labels.tolist()
            total_loaded += len(loaded.paths)
            total_skipped += loaded.skipped
    assert total_loaded == len(good) and total_skipped == len(bad)
    assert any("skipped" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
