"""Deterministic kernels for a training, without paying for torch's compiler stack.

``torch.use_deterministic_algorithms`` imports ``torch._inductor.config`` (and with it
``torch._dynamo``: 2-5 s on this machine, every `loopml train` process) only to set
``inductor_config.deterministic``, which matters only to code that torch.compile generates. So the
inductor flag is set only when the compiler is already loaded (``training.compile``, or anyone
who imported it); a compile started later reads the flag ``deterministic_for_compile`` sets.
"""

from __future__ import annotations

import sys


def deterministic_algorithms() -> None:
    """Deterministic kernels (warn, not fail, where an op has none), inductor's flag only if it is loaded."""
    import torch

    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


def deterministic_for_compile() -> None:
    """Before ``torch.compile``: the full switch, so generated kernels are deterministic too."""
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
