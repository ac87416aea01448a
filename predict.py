"""Score images and videos from the command line.

    python predict.py PATH [PATH ...] [--frames N] [--models KEYS] [--threshold T] [--json]
    python predict.py DIR [DIR ...] --recursive --output results.jsonl [--resume] [--csv results.csv]

Without --json: a readable table. With --json: one JSON object per input, one per line.
An unreadable or unsupported input prints one `error: ...` line on stderr and makes the exit status
2; the other inputs are still processed.

Batch scans (any of --recursive, --output, --csv; see batch_scan.py): folders are walked for the file
types media.py accepts, a progress bar runs on stderr, each input's report (or error record) is
appended to --output as one JSON line as soon as it is known, --resume continues a scan that was
stopped, --csv writes a flat table at the end and a summary closes the run (stderr).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from media import (ADVISORY_FACES_PER_TRACK, DEFAULT_VIDEO_FRAMES_ANALYSED, FULL_SEARCH_EVERY, IMAGE_EXTENSIONS,
                   MAX_VIDEO_FRAMES_ANALYSED, MIN_VIDEO_FRAMES_ANALYSED, VIDEO_EXTENSIONS, type_list)
from registry import MODEL_KEYS

EXIT_OK, EXIT_INPUT_ERROR, EXIT_NO_MODELS = 0, 2, 3


# ---- option values: shared with serve.py, which reads the same options from a form ------------------
def parse_models(text: str | None) -> list[str] | None:
    if not text:
        return None
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODEL_KEYS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODEL_KEYS)}")
    return keys or None


def whole_number(text: str, low: int, high: int | None, words: str) -> int:
    """`text` as a whole number in [low, high] (no upper bound when high is None), else the
    argparse error that the CLI and the API both show (`words` says what is allowed)."""
    try:
        n = int(text)
    except (TypeError, ValueError):
        n = None
    if n is None or n < low or (high is not None and n > high):
        raise argparse.ArgumentTypeError(f"must be a whole number {words}, got {text!r}")
    return n


def advisory_faces_arg(text: str) -> int:
    return whole_number(text, 0, None, "0 or more")


def frames_arg(text: str) -> int:
    return whole_number(text, MIN_VIDEO_FRAMES_ANALYSED, MAX_VIDEO_FRAMES_ANALYSED,
                        f"between {MIN_VIDEO_FRAMES_ANALYSED} and {MAX_VIDEO_FRAMES_ANALYSED}")


def threshold_arg(text: str) -> float:
    try:
        t = float(text)
    except (TypeError, ValueError):
        t = None
    if t is None or not 0.0 <= t <= 1.0:   # NaN fails the comparison too
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}")
    return t


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Judge whether the faces in images and videos are real or fake.")
    p.add_argument("paths", nargs="+", metavar="PATH", help=f"image ({type_list(IMAGE_EXTENSIONS)}) or video "
                   f"({type_list(VIDEO_EXTENSIONS)}); a folder with --recursive")
    p.add_argument("--frames", type=frames_arg, default=DEFAULT_VIDEO_FRAMES_ANALYSED,
                   help=f"frames sampled evenly from each video (default {DEFAULT_VIDEO_FRAMES_ANALYSED})")
    p.add_argument("--models", type=parse_models, default=None,
                   help=f"comma-separated subset of {','.join(MODEL_KEYS)} (default: all installed)")
    p.add_argument("--threshold", type=threshold_arg, default=None,
                   help="P(fake) at or above which a face is FAKE (default: the ensemble's calibrated threshold)")
    p.add_argument("--advisory-faces", type=advisory_faces_arg, default=ADVISORY_FACES_PER_TRACK, metavar="N",
                   help=f"in a video, advisory models (not voters in the ensemble) score at most N faces per "
                        f"person, spread over the video (default {ADVISORY_FACES_PER_TRACK}; 0: every face)")
    p.add_argument("--search-every-frame", action="store_true",
                   help="in a video, search every analysed frame for faces in full (slower); by default faces "
                        "are followed from one close frame to the next, with a full search at least every "
                        f"{FULL_SEARCH_EVERY} frames")
    p.add_argument("--fast", action="store_true",
                   help="score each face once instead of four or eight ways (the crop, its mirror, both "
                        "a few pixels away): quicker, but scores that move more with the framing "
                        "(README, 'Fast mode'); reports say \"fast\": true")
    p.add_argument("--json", action="store_true", help="one JSON object per input, one per line")
    p.add_argument("--models-dir", default=None, help="folder of converted models (default: converted_models/)")
    batch = p.add_argument_group("batch scans")
    batch.add_argument("-r", "--recursive", action="store_true",
                       help="walk folders for images and videos (the extensions listed above)")
    batch.add_argument("-o", "--output", metavar="FILE.jsonl",
                       help="append one JSON line per input (its report, or {input, error, reason}) as it is done")
    batch.add_argument("--resume", action="store_true",
                       help="continue the scan recorded in --output: inputs already there are skipped")
    batch.add_argument("--csv", metavar="FILE.csv", help="at the end, write one row per input (all of --output)")
    return p


def is_batch_scan(args) -> bool:
    return bool(args.recursive or args.output or args.csv)


def format_table_row(report: dict) -> str:
    prob = report["fake_probability"]
    per_model = "  ".join(f"{k}={v:.3f}" for k, v in report["models"].items() if v is not None)
    frames = f"{report['frames_with_faces']}/{report['frames_analyzed']} frames with faces" \
        if report["kind"] == "video" else f"{len(report['faces'])} face(s)"
    score = f"{prob:.3f}" if prob is not None else "  -  "
    return f"{report['verdict']:<8} {score:>6}  {report['input']}  [{frames}]  {per_model}"


def iter_outcomes(paths, engine, options):
    """(path, report, None) or (path, None, exception) per input. NoModelsError is not an input's
    fault and would repeat for every input: it propagates and ends the run."""
    from outcomes import analyze_to_report
    from scoring import NoModelsError

    for path in paths:
        try:
            yield path, analyze_to_report(path, engine, options), None
        except NoModelsError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad input must not stop the others
            yield path, None, exc


def print_result(report: dict, as_json: bool) -> None:
    from outcomes import to_json
    print(to_json(report) if as_json else format_table_row(report), flush=True)


def print_table_header(args) -> None:
    if not args.json:
        print(f"{'VERDICT':<8} {'P(fake)':>6}  INPUT")


def run_paths(args, engine, options) -> int:
    """The plain mode: each PATH's result on stdout, each failure as one `error:` line on stderr."""
    from outcomes import failure_message

    status = EXIT_OK
    print_table_header(args)
    for path, report, exc in iter_outcomes(args.paths, engine, options):
        if exc is not None:
            print(f"error: {failure_message(path, exc)}", file=sys.stderr)
            status = EXIT_INPUT_ERROR
        else:
            print_result(report, args.json)
    return status


def open_scan_output(args):
    """Lock --output and read what it already holds; (appender, resolved paths done) or an error text."""
    import batch_scan

    if not args.output:
        return None, set(), None
    if os.path.isdir(args.output):
        return None, set(), f"{args.output}: is a folder"
    try:
        appender = batch_scan.JsonLinesAppender(args.output)
    except batch_scan.OutputInUse as exc:
        return None, set(), str(exc)
    except OSError as exc:
        return None, set(), f"{args.output}: cannot write ({exc.strerror or exc})"
    if os.path.getsize(args.output) and not args.resume:
        appender.close()
        return None, set(), (f"{args.output} already holds results; add --resume to continue that scan, "
                             f"or choose another file")
    dropped = batch_scan.drop_partial_last_line(args.output)
    if dropped:
        print(f"note: {args.output}: dropped a cut-off last line ({dropped} bytes) left by an interrupted scan",
              file=sys.stderr)
    bad_lines: list = []
    done = batch_scan.done_inputs(batch_scan.iter_records(args.output, bad_lines))
    if bad_lines:
        print(f"note: {args.output}: {len(bad_lines)} line(s) are not results and were ignored", file=sys.stderr)
    return appender, done, None


def outcome_record(path: str, report: dict | None, exc: BaseException | None) -> dict:
    """The line a batch scan writes for one input: its report or error record, plus its resolved path."""
    import batch_scan
    from outcomes import error_record

    record = report if exc is None else error_record(path, exc)
    return {**record, batch_scan.RESOLVED_KEY: batch_scan.resolved(path)}


def scan_pending(pending: list[str], args, engine, options, appender) -> list[dict]:
    """Analyse each input, hand its record to the output file (or stdout) at once; this run's CSV rows."""
    from tqdm import tqdm

    import batch_scan
    from outcomes import to_json

    rows: list[dict] = []
    faces = errors = 0
    with tqdm(total=len(pending), unit="file", file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
              disable=not pending) as bar:
        for path, report, exc in iter_outcomes(pending, engine, options):
            record = outcome_record(path, report, exc)
            if exc is not None:
                bar.write(f"error: {record['error']}", file=sys.stderr)
            if appender:
                appender.append(to_json(record))
            elif exc is None:
                with tqdm.external_write_mode(file=sys.stderr):   # the bar steps aside for the line
                    print_result(report, args.json)
            rows.append(batch_scan.csv_row(record))
            faces, errors = faces + rows[-1]["faces"], errors + (exc is not None)
            bar.set_postfix_str(f"faces={faces} errors={errors}", refresh=False)
            bar.update(1)
    return rows


def run_batch(args, engine, options, appender, done: set[str]) -> int:
    """Walk, analyse what is not done yet, then the CSV and the summary of the whole scan."""
    import batch_scan
    from model_store import atomic_write_bytes

    inputs = batch_scan.expand_inputs(args.paths, args.recursive)
    pending = [p for p in inputs if batch_scan.resolved(p) not in done]
    started = time.perf_counter()
    if not appender:
        print_table_header(args)
    rows = scan_pending(pending, args, engine, options, appender)
    status = EXIT_INPUT_ERROR if any(r["verdict"] == batch_scan.ERROR_VERDICT for r in rows) else EXIT_OK
    if appender:   # the whole scan, earlier runs' lines included
        rows = [batch_scan.csv_row(r) for r in batch_scan.iter_records(args.output)]
    if args.csv:
        atomic_write_bytes(args.csv, batch_scan.csv_text(rows).encode("utf-8"))
    summary = batch_scan.summarize(rows)
    print(batch_scan.format_summary(summary, time.perf_counter() - started, skipped=len(inputs) - len(pending)),
          file=sys.stderr)
    return status


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and not args.output:
        parser.error("--resume needs --output (the file of the scan to continue)")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # The output is locked and checked before the models load: a mistake there costs no waiting.
    appender, done, problem = open_scan_output(args) if is_batch_scan(args) else (None, set(), None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    try:
        return run_with_engine(args, appender, done)
    finally:
        if appender:
            appender.close()


def run_with_engine(args, appender, done) -> int:
    from model_store import DEFAULT_MODELS_DIR
    from outcomes import AnalysisOptions, models_not_installed
    from pipeline import load_engine
    from scoring import NoModelsError, no_models_message

    engine = load_engine(args.models_dir or DEFAULT_MODELS_DIR)
    if not engine.models:
        print(f"error: {no_models_message(engine.models_dir)}", file=sys.stderr)
        return EXIT_NO_MODELS
    missing = models_not_installed(engine, args.models)
    if missing:
        print(f"error: model(s) not installed: {', '.join(missing)}", file=sys.stderr)
        return EXIT_NO_MODELS
    options = AnalysisOptions(frames=args.frames, models=args.models, threshold=args.threshold,
                              advisory_faces=args.advisory_faces, follow_faces=not args.search_every_frame,
                              fast=args.fast)
    try:
        if is_batch_scan(args):
            return run_batch(args, engine, options, appender, done)
        return run_paths(args, engine, options)
    except NoModelsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_MODELS


if __name__ == "__main__":
    sys.exit(main())
