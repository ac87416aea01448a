"""Batch scanning for predict.py: folders walked, one JSON line per input appended as it goes, resume.

The output file is the scan's only state. Each input's line (its report, or an error record) is
written with a single `os.write` on a descriptor opened with O_APPEND and then fsync'ed, so a scan
killed at any moment leaves whole lines plus at most one cut-off line at the end. `--resume` cuts
that partial line off and skips every input whose resolved path already has a line, so a killed scan
of 10,000 files continues where it stopped and each input ends up in the file exactly once.

Errors are recorded too (`{"input", "error", "reason"}`): a file that cannot be read will not become
readable by trying again, and retrying it on every resume would never let a scan finish. To retry
them, delete their lines (e.g. `grep -v '"reason"' out.jsonl > retry.jsonl`) and resume that file.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from media import ACCEPTED_EXTENSIONS
from registry import MODEL_KEYS

RESOLVED_KEY = "resolved_path"   # added to every output line: what --resume matches on
ERROR_VERDICT = "ERROR"          # the verdict column of a CSV row for an input that failed


class OutputInUse(Exception):
    """Another scan holds the output file."""


# ---- inputs ---------------------------------------------------------------------------------------
def resolved(path: str) -> str:
    """The identity of an input: the same file reached by two spellings or a link is one input."""
    return str(Path(path).resolve())


def walk_media_files(folder: str) -> Iterator[str]:
    """Files with an accepted extension under `folder`, in a stable (sorted) order.

    Links to folders are not followed (a link loop would never end); links to files are."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in ACCEPTED_EXTENSIONS:
                yield os.path.join(root, name)


def expand_inputs(paths: Iterable[str], recursive: bool) -> list[str]:
    """Files as given (whatever their extension: a wrong one gets its error line); with `recursive`,
    folders are replaced by the media files under them. Later duplicates of an input are dropped."""
    seen: set[str] = set()
    out = []
    for path in paths:
        candidates = walk_media_files(path) if recursive and os.path.isdir(path) else [path]
        for candidate in candidates:
            key = resolved(candidate)
            if key not in seen:
                seen.add(key)
                out.append(candidate)
    return out


# ---- the output file ------------------------------------------------------------------------------
def drop_partial_last_line(path: str) -> int:
    """Cut anything after the last newline (a line whose write a kill interrupted); bytes dropped."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        # Read backwards in blocks: only the tail matters, the file may hold 10,000 reports.
        end, block = size, 1 << 16
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            newline = fh.read(end - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
    return size - keep


def iter_records(path: str, bad_lines: list | None = None) -> Iterator[dict]:
    """The records of a JSON-lines file, one at a time (a scan's file can be large); lines that are
    not JSON objects with an "input" are skipped and, when `bad_lines` is given, counted into it."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if isinstance(record, dict) and "input" in record:
                yield record
            elif bad_lines is not None:
                bad_lines.append(line)


def done_inputs(records: Iterable[dict]) -> set[str]:
    return {r.get(RESOLVED_KEY) or resolved(r["input"]) for r in records}


class JsonLinesAppender:
    """Appends one record per line: a single os.write of the whole line with O_APPEND, then fsync.

    Holds an exclusive lock on the file while open, so two scans cannot interleave in one output."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise OutputInUse(f"{path}: another scan is writing to this file") from None

    def append(self, line: str) -> None:
        data = (line.rstrip("\n") + "\n").encode("utf-8")
        written = os.write(self.fd, data)
        while written < len(data):   # only on a full disk or a signal; the rest still goes in order
            written += os.write(self.fd, data[written:])
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "JsonLinesAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- summaries: computed from CSV rows (small), so a whole 10,000-input file never sits in memory ----
def csv_row(record: dict) -> dict:
    if "error" in record:
        return {"input": record["input"], "kind": "", "verdict": ERROR_VERDICT, "fake_probability": None,
                "faces": 0, "error": record["error"], "reason": record.get("reason", "")}
    return {"input": record["input"], "kind": record["kind"], "verdict": record["verdict"],
            "fake_probability": record["fake_probability"], "faces": len(record["faces"]),
            **(record.get("models") or {})}


def csv_columns(rows: list[dict]) -> list[str]:
    used = {k for row in rows for k in row if k in MODEL_KEYS}
    return (["input", "kind", "verdict", "fake_probability", "faces"] + [k for k in MODEL_KEYS if k in used]
            + ["error", "reason"])


def csv_text(rows: list[dict]) -> str:
    """One row per input; empty cells where a value does not apply (no face, an error, a model off)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_columns(rows), restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def summarize(rows: Iterable[dict]) -> dict:
    verdicts, reasons, faces, total = Counter(), Counter(), 0, 0
    for row in rows:
        total += 1
        faces += row["faces"]
        if row["verdict"] == ERROR_VERDICT:
            reasons[row["reason"] or "unknown"] += 1
        else:
            verdicts[row["verdict"]] += 1
    return {"inputs": total, "by_verdict": dict(sorted(verdicts.items())), "faces": faces,
            "errors": sum(reasons.values()), "errors_by_reason": dict(sorted(reasons.items()))}


def format_summary(summary: dict, seconds: float, skipped: int = 0) -> str:
    verdicts = ", ".join(f"{v} {n}" for v, n in summary["by_verdict"].items()) or "no results"
    lines = [f"summary: {summary['inputs']} input(s): {verdicts}; {summary['faces']} face(s); "
             f"{seconds:.1f} s this run"]
    if skipped:
        lines.append(f"summary: {skipped} input(s) were already in the output and skipped (--resume)")
    if summary["errors"]:
        reasons = ", ".join(f"{reason} {n}" for reason, n in summary["errors_by_reason"].items())
        lines.append(f"summary: {summary['errors']} error(s): {reasons}")
    return "\n".join(lines)
