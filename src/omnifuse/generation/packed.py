"""oneDNN-packed linear weights for generating on the CPU.

A decoding step multiplies a few rows (one per prompt) by every weight matrix of the LLM. For so few
rows MKL's ``sgemm`` on the plain row-major weight runs far below the core's peak; oneDNN's matmul on
a weight reordered once into its blocked layout is much faster there (the engine's end-to-end gain is
in benchmarks/README.md, ``bench_llava.py``). These are the ops torch's own compiler emits for
``nn.Linear`` on the CPU (inductor's weight-prepacking pass under ``freezing``):
``mkldnn._reorder_linear_weight`` and ``mkldnn._linear_pointwise``. They are called directly here,
without compiling the model (inductor needs a C++ toolchain, compiles on first use and again when the
batch or the prompt length changes). Only the calls are written here; the kernels are torch's.

The packed copies are kept beside the model, one set per model whichever engine asks; they cost as
much memory as the LLM's float32 linear weights and live as long as the model, so they are made only
when they take under a quarter of the memory available at the time (else the engine decodes unpacked). A weight whose storage
or version changed since it was packed (training between two evaluations) is packed again. They are
used inside :meth:`PackedLinears.active` only, which sets each packed module's forward for the
duration of one forward pass: nothing of the model changes outside it. Results match the plain path
to float32 rounding (about 1e-6; the sums run in another order).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import psutil
import torch
from torch import nn
from torch.nn.utils import parametrize

# The row count the blocked layout is chosen for. One fixed value, so that the packed layout (and the
# order of the float sums) never depends on which batch came first; it serves 1 to a few hundred rows.
PACK_ROWS = 64
# The share of the available memory the packed copies may take (they double the linear weights' memory).
MEMORY_SHARE = 0.25


def packing_supported(module: nn.Module) -> bool:
    """True when ``module``'s weights are float32 on the CPU and torch has its oneDNN linear ops."""
    params = list(module.parameters())
    return (
        bool(params)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
        and (module in _BY_MODEL or _fits(module))
    )


def _fits(module: nn.Module) -> bool:
    """Whether the packed copies (as large as the linear weights) take under ``MEMORY_SHARE`` of the memory
    available now: a large LLM on a small machine decodes unpacked rather than risk running out."""
    need = sum(m.weight.numel() * m.weight.element_size() for m in module.modules() if _packable(m))
    return need < MEMORY_SHARE * psutil.virtual_memory().available


_BY_MODEL: weakref.WeakKeyDictionary[nn.Module, PackedLinears] = weakref.WeakKeyDictionary()


def packed_linears(module: nn.Module) -> PackedLinears:
    """The packed weights of ``module``'s linear layers, up to date: shared by every engine over it."""
    packed = _BY_MODEL.get(module)
    if packed is None:
        packed = _BY_MODEL[module] = PackedLinears()
    packed.refresh(module)
    return packed


def _packable(m: nn.Module) -> bool:
    # Exactly nn.Linear: subclasses (bitsandbytes, quantised or LoRA-merged variants) compute otherwise.
    return (
        type(m) is nn.Linear
        and not parametrize.is_parametrized(m)
        and m.weight.dtype == torch.float32
        and m.weight.device.type == "cpu"
    )


class PackedLinears:
    """Packed copies of the plain ``nn.Linear`` weights under one module, refreshed on demand."""

    def __init__(self) -> None:
        # module → (weight storage pointer, weight version, packed weight)
        self._packed: dict[nn.Linear, tuple[int, int, torch.Tensor]] = {}

    def refresh(self, module: nn.Module) -> None:
        """Pack every plain linear layer under ``module`` whose weight changed since it was packed."""
        live = {m for m in module.modules() if _packable(m)}
        for m in [m for m in self._packed if m not in live]:
            del self._packed[m]
        with torch.no_grad():
            for m in live:
                w = m.weight
                key = (w.data_ptr(), w._version)
                old = self._packed.get(m)
                if old is None or old[:2] != key:
                    self._packed[m] = (*key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACK_ROWS))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Route the packed modules' forward through oneDNN for the duration of the block."""
        # Set in the instance's __dict__ directly: nn.Module.__setattr__ checks its parameter, buffer and
        # module tables on every call, which costs ~1 ms per decoding step over a model's ~200 linears.
        patched = []
        try:
            for m, (_, _, packed) in self._packed.items():
                m.__dict__["forward"] = _packed_forward(packed, m.bias)
                patched.append(m)
            yield
        finally:
            for m in patched:
                del m.__dict__["forward"]  # back to the class's forward


def _packed_forward(packed: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward
