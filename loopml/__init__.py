"""loopml: from a table to a served, versioned model that keeps improving from feedback."""

__version__ = "0.1.0"

from loopml.api import Model, load  # noqa: E402
from loopml.errors import LoopmlError  # noqa: E402

__all__ = ["LoopmlError", "Model", "__version__", "load"]
