"""Which int8 library for CPU inference: torch.ao's dynamic quantisation vs torchao's, on SmolLM2-135M's
MLP shapes (6 pairs of Linear 576→1536 and 1536→576, random weights), one thread, eager mode.

It times a decoding step's shape (8 rows) and a prefill's (480 rows): the median of 7 repeats of 5 calls
each, per variant, and prints each variant's time and its output's relative L2 error against float32.
torchao is not a dependency of omnifuse; install it beside it to run this (it has no torch requirement
of its own, so no CUDA torch is pulled in):

    .venv/bin/python -m pip install --no-deps --target /tmp/torchao-site torchao==0.18.0
    PYTHONPATH=/tmp/torchao-site .venv/bin/python benchmarks/int8_kernels.py
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch
from torch import nn


def mlp_stack() -> nn.Module:
    torch.manual_seed(0)
    pairs = [
        nn.Sequential(nn.Linear(576, 1536, bias=False), nn.Linear(1536, 576, bias=False)) for _ in range(6)
    ]
    return nn.Sequential(*pairs).eval()


def variants() -> dict[str, nn.Module]:
    import torch.ao.quantization as tq

    out = {
        "float32": mlp_stack(),
        "torch.ao dynamic int8 (per channel)": tq.quantize_dynamic(
            mlp_stack(), {nn.Linear: tq.per_channel_dynamic_qconfig}
        ),
    }
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError:
        print("torchao is not installed: only torch.ao is measured (see the docstring)")
        return out
    for name, config in [
        ("torchao int8 dynamic activation + weight", Int8DynamicActivationInt8WeightConfig()),
        ("torchao int8 weight only", Int8WeightOnlyConfig()),
    ]:
        model = mlp_stack()
        quantize_(model, config)
        out[name] = model
    return out


def main() -> None:
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = variants()
    ref_model = models["float32"]
    for rows in (8, 480):
        x = torch.randn(rows, 576, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            ref = ref_model(x)
            for name, model in models.items():
                y = model(x)
                times = []
                for _ in range(7):
                    t0 = time.perf_counter()
                    for _ in range(5):
                        model(x)
                    times.append((time.perf_counter() - t0) / 5)
                err = ((y - ref).norm() / ref.norm()).item()
                print(
                    f"{rows:4d} rows  {name:42s} {statistics.median(times) * 1e3:8.2f} ms   rel. error {err:.4f}"
                )


if __name__ == "__main__":
    main()
