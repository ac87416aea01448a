"""Score images and videos from the command line.

    python predict.py PATH [PATH ...] [--frames N] [--models KEYS] [--threshold T] [--json]

Without --json: a readable table. With --json: one JSON object per input, one per line.
An unreadable or unsupported input prints one `error: ...` line on stderr and makes the exit status
2; the other inputs are still processed.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from media import MAX_VIDEO_FRAMES_ANALYSED, MediaError
from registry import MODEL_KEYS

EXIT_OK, EXIT_INPUT_ERROR, EXIT_NO_MODELS = 0, 2, 3


def parse_models(text: str | None) -> list[str] | None:
    if not text:
        return None
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODEL_KEYS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODEL_KEYS)}")
    return keys


def frames_arg(text: str) -> int:
    n = int(text)
    if not 1 <= n <= MAX_VIDEO_FRAMES_ANALYSED:
        raise argparse.ArgumentTypeError(f"--frames must be between 1 and {MAX_VIDEO_FRAMES_ANALYSED}")
    return n


def threshold_arg(text: str) -> float:
    t = float(text)
    if not 0.0 <= t <= 1.0:
        raise argparse.ArgumentTypeError("--threshold must be between 0 and 1")
    return t


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Judge whether the faces in images and videos are real or fake.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image (jpg, png, webp, bmp, gif, tiff) or video "
                   "(mp4, avi, mov, mkv, webm)")
    p.add_argument("--frames", type=frames_arg, default=32, help="frames sampled evenly from each video (default 32)")
    p.add_argument("--models", type=parse_models, default=None,
                   help=f"comma-separated subset of {','.join(MODEL_KEYS)} (default: all installed)")
    p.add_argument("--threshold", type=threshold_arg, default=None,
                   help="P(fake) at or above which a face is FAKE (default: the ensemble's calibrated threshold)")
    p.add_argument("--json", action="store_true", help="one JSON object per input, one per line")
    p.add_argument("--models-dir", default=None, help="folder of converted models (default: converted_models/)")
    return p


def format_table_row(report: dict) -> str:
    prob = report["fake_probability"]
    per_model = "  ".join(f"{k}={v:.3f}" for k, v in report["models"].items() if v is not None)
    frames = f"{report['frames_with_faces']}/{report['frames_analyzed']} frames with faces" \
        if report["kind"] == "video" else f"{len(report['faces'])} face(s)"
    score = f"{prob:.3f}" if prob is not None else "  -  "
    return f"{report['verdict']:<8} {score:>6}  {report['input']}  [{frames}]  {per_model}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from model_store import DEFAULT_MODELS_DIR
    from pipeline import analyze_path, build_report
    from scoring import NoModelsError, ScoringEngine

    engine = ScoringEngine(args.models_dir or DEFAULT_MODELS_DIR)
    if not engine.models:
        from scoring import no_models_message
        print(f"error: {no_models_message(engine.models_dir)}", file=sys.stderr)
        return EXIT_NO_MODELS
    if args.models:
        missing = [k for k in args.models if k not in engine.models]
        if missing:
            print(f"error: model(s) not installed: {', '.join(missing)}", file=sys.stderr)
            return EXIT_NO_MODELS
    status = EXIT_OK
    if not args.json:
        print(f"{'VERDICT':<8} {'P(fake)':>6}  INPUT")
    for path in args.paths:
        try:
            analysis = analyze_path(path, engine, num_frames=args.frames, models=args.models)
            report = build_report(analysis, engine, args.threshold, args.models)
        except MediaError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = EXIT_INPUT_ERROR
            continue
        except NoModelsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_NO_MODELS
        except Exception as exc:  # noqa: BLE001 - one bad input must not stop the others
            print(f"error: {path}: could not be analysed ({type(exc).__name__}: {exc})", file=sys.stderr)
            status = EXIT_INPUT_ERROR
            continue
        if args.json:
            print(json.dumps(report, ensure_ascii=False), flush=True)
        else:
            print(format_table_row(report), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
