"""The web dashboard: server-rendered pages over the store (``loopml ui``, or ``loopml serve --ui`` at /ui)."""
