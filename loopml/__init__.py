"""loopml: from a table to a served, versioned model that keeps improving from feedback."""

__version__ = "0.1.0"

__all__ = ["LoopmlError", "Model", "__version__", "load"]


def __getattr__(name: str):
    # imported on first use, so `loopml --help` does not pay for torch and scikit-learn
    if name in ("Model", "load"):
        from loopml import api

        return getattr(api, name)
    if name == "LoopmlError":
        from loopml.errors import LoopmlError

        return LoopmlError
    raise AttributeError(f"module 'loopml' has no attribute {name!r}")
