"""What the anti-aliased trunk (`--arch-arg anti_alias=1`) costs per batch (docs/performance.md, session 8).

    .venv/bin/python scripts/experiments/blur_cost.py [--model cnn_transformer|cross_attention|xception] [--batch 16] [--size 128]

Builds the model on the offline ImageNet trunk with and without the blur (random trunk weights
would shrink activations towards denormal floats and time those instead), exports each to ONNX as the app's fast runtime runs it, and prints the best of 3 means of 10
runs of one batch on two threads, in ONNX Runtime and in eager torch. Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from registry import get_spec  # noqa: E402


def best_mean_s(run, repeats: int = 3, calls: int = 10) -> float:
    run()                                              # warm-up
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        means.append((time.perf_counter() - start) / calls)
    return min(means)


def costs(model: torch.nn.Module, batch: torch.Tensor) -> dict[str, float]:
    buffer = io.BytesIO()
    torch.onnx.export(model, batch, buffer, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {"x": batch.numpy()}
    with torch.no_grad():
        eager = best_mean_s(lambda: model(batch))
    return {"onnx_ms": 1000 * best_mean_s(lambda: session.run(None, feed)), "eager_ms": 1000 * eager}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn_transformer", choices=["cnn_transformer", "cross_attention", "xception"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    batch = torch.rand(a.batch, 3, a.size, a.size)
    spec = get_spec(a.model)
    for label, args in (("plain", {}), ("anti_alias", {"anti_alias": 1})):
        if a.model == "xception":   # no offline ImageNet weights: the shipped ones (trained, not denormal)
            from safetensors.torch import load_file
            model = spec.build(a.size, **args).eval()
            model.load_state_dict({k: v.float() for k, v in
                                   load_file(ROOT / "converted_models" / "xception.safetensors").items()})
        else:
            model = spec.build(a.size, pretrained=True, **args).eval()
        found = costs(model, batch)
        print(f"{a.model} {label:>10}: ONNX Runtime {found['onnx_ms']:.1f} ms, eager torch {found['eager_ms']:.1f} ms "
              f"per batch of {a.batch} at {a.size} px, 2 threads")


if __name__ == "__main__":
    main()
