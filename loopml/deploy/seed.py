"""``python -m loopml.deploy.seed MODEL_DIR NAME``: register an image's baked bundle as NAME and point production
at it, once. A registry where NAME@production already exists is left alone, so restarts are no-ops."""

from __future__ import annotations

import sys

from loopml.errors import LoopmlError


def seed(folder: str, name: str, alias: str = "production", store: str | None = None) -> str:
    """What was done, in one line."""
    from loopml.registry import Store

    registry = Store(store)
    try:
        current = registry.resolve(f"{name}@{alias}")
        return f"{name}@{alias} is already version {current['version']}: nothing to seed"
    except LoopmlError:
        pass  # no such model or alias yet: seed it
    version = registry.register(name, path=folder, description="seeded from the image's bundle (loopml package)")
    registry.promote(name, version["version"], alias, reason="seeded from the image's bundle")
    return f"registered {name}:{version['version']} and pointed {alias} at it"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m loopml.deploy.seed MODEL_DIR NAME", file=sys.stderr)
        return 2
    try:
        print(seed(argv[0], argv[1]))
    except LoopmlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
