"""Where the network runs and in which precision: the one seam every stage goes through.

- ``resolve_device(setting)``: ``auto | cpu | cuda | cuda:N | mps`` -> a ``torch.device``, or a
  one-line LoopmlError when the machine has no such device;
- ``to_device(x, device)``: tensors and modules, inside dicts, lists and tuples, moved to ``device``
  (skorch's ``utils.to_device`` is the shape). A CPU tensor bound for CUDA goes through pinned
  memory and a non-blocking copy;
- ``autocast(device, precision)``: the one mixed-precision context (nanoGPT's ``ctx``), and
  ``grad_scaler`` for fp16;
- ``rng_state`` / ``set_rng_state``: the CPU and (on CUDA) the device generator, for checkpoints.

Config validation only checks the spelling (``check_device_setting``): a model trained on a GPU
must still load on a machine without one; availability is checked when something runs.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

import torch
from torch import nn

from loopml.errors import LoopmlError, did_you_mean

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_SETTING = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def check_device_setting(setting: str) -> str:
    """The setting, normalised (``CUDA`` -> ``cuda``), if it names a device kind; else a one-line error."""
    value = str(setting).strip().lower()
    if not _SETTING.match(value):
        raise LoopmlError(f"device '{setting}' is not one of {', '.join(DEVICE_CHOICES)}"
                          f"{did_you_mean(value, ('auto', 'cpu', 'cuda', 'cuda:0', 'mps'))}")
    return value


def resolve_device(setting: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` a setting names on this machine (auto: the first CUDA device, else the CPU)."""
    if isinstance(setting, torch.device):
        return setting
    value = check_device_setting(setting or "auto")
    if value == "auto":
        value = "cuda" if torch.cuda.is_available() else "cpu"
    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise LoopmlError(f"device '{value}' asked but CUDA is not available ({build}, torch {torch.__version__}); "
                              "use device cpu or auto")
        index = int(value.split(":")[1]) if ":" in value else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise LoopmlError(f"device '{value}' asked but this machine has {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
        # deterministic cuBLAS (resume bit-identical) needs this before the first cuBLAS call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        return torch.device("cuda", index)
    if value == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise LoopmlError("device 'mps' asked but Apple's MPS backend is not available here; use device cpu or auto")
        return torch.device("mps")
    return torch.device("cpu")


def to_device(x: Any, device: torch.device | str | None) -> Any:
    """``x`` with every tensor and module moved to ``device`` (dicts, lists and tuples recursed into;
    anything else returned as it is). ``device=None`` returns ``x`` unchanged."""
    if device is None:
        return x
    device = torch.device(device)
    if isinstance(x, torch.Tensor):
        return _tensor_to(x, device)
    if isinstance(x, nn.Module):
        return x.to(device)
    if isinstance(x, dict):
        return {key: to_device(value, device) for key, value in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple keeps its type
        return type(x)(*(to_device(value, device) for value in x))
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(value, device) for value in x)
    return x


def _tensor_to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        # a pinned source lets the copy run asynchronously; the host allocator keeps the pinned block
        # alive until the copy's event completes, so the temporary may be dropped right away
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)  # device -> host copies stay blocking: the host reads the result next


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def check_precision(precision: str, device: torch.device) -> None:
    """A one-line error for a precision the device cannot train in (fp16 on the CPU)."""
    if precision not in PRECISIONS:
        raise LoopmlError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}"
                          f"{did_you_mean(precision, PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise LoopmlError("precision fp16 needs a GPU (its gradient scaling is for CUDA); on the CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LoopmlError(f"precision bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or fp32")


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """The mixed-precision context for forward passes (and the loss): a no-op for fp32.

    Inference of a model trained in fp16 on a machine without a GPU runs in fp32 (the weights are
    fp32 either way); training checks ``check_precision`` first, so it never gets here with that."""
    if precision == "fp32" or (precision == "fp16" and device.type == "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16's loss scaling (gradients would underflow otherwise); a pass-through for bf16 and fp32."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators a training draws from: the CPU's, and the CUDA device's when it trains there."""
    state = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore ``rng_state``'s generators; a CUDA state is restored only when training on CUDA again
    (a checkpoint resumed on another kind of device resumes, but not bit-identically)."""
    torch.set_rng_state(state["rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)


def compile_network(network: nn.Module) -> nn.Module:
    """``torch.compile(network)`` behind a guard: a failure at the first call falls back to eager."""
    return CompiledForward(network)


class CompiledForward:
    """Calls the compiled network; on the first failure warns once and stays eager from then on.

    torch.compile is lazy: it compiles at the first call, so that is where it fails (no C compiler,
    an operator it cannot trace, an unsupported platform). The weights are the network's own, so
    checkpoints and bundles read ``network.state_dict()`` unchanged.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network
        self.compiled: Any = None
        self.failed: str | None = None
        if torch.are_deterministic_algorithms_enabled():  # a loopml training: generated kernels deterministic too
            from loopml.train.determinism import deterministic_for_compile

            deterministic_for_compile()
        try:
            self.compiled = torch.compile(network)
        except RuntimeError as e:  # e.g. "Dynamo is not supported on Python 3.x"
            self._fall_back(e)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.network(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001  compile errors come as many types (Inductor, Dynamo, a C compiler's)
            self._fall_back(e)
            return self.network(*args, **kwargs)  # a real error in the inputs raises again here, uncompiled

    def _fall_back(self, error: BaseException) -> None:
        import warnings

        self.compiled = None
        self.failed = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160] if str(error).strip() else ''}"
        warnings.warn(f"training.compile: torch.compile failed, training eagerly instead ({self.failed})",
                      RuntimeWarning, stacklevel=3)
