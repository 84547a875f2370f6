"""What every page handler gets: the store, the settings, the templates — per app, no global state.

A page is a function in ``loopml/ui/pages/<page>.py`` on that module's ``router``; it takes
``ctx: UIContext = Depends(get_ctx)`` and returns ``render(request, "page.html", **values)``.
``render`` adds what the layout needs (the base URL under a mount, whether the visitor is the admin,
the CSRF token for forms). Jinja2 autoescapes every value: a template never uses ``|safe`` on
anything that came from a user, a logged input or the store.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

#: what a dashboard server (``loopml ui``, ``serve --ui``) lets the labelling page wait for a first ranking
SERVER_RANK_WAIT_S = 0.3
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


@dataclass
class UISettings:
    store: str | None = None
    artifacts: str | None = None
    #: the admin token: promote, rollback and labelling need it (None: the dashboard is read-only)
    admin_token: str | None = None
    #: API keys (``serve --api-key``, ``ui --api-key``): when any is set, only a visitor logged in with one (a
    #: read-only session) or with the admin token sees the pages; none: the pages are public (read-only)
    api_keys: list[str] = field(default_factory=list)
    #: seconds a login lasts
    session_s: float = 12 * 3600.0
    #: who the audit log names for an action taken from the dashboard
    actor: str = "ui"
    #: the folder logged image inputs are relative to (``serve --media-root``): the labelling queue shows
    #: thumbnails of files inside it; None: image inputs show as their text
    media_root: str | None = None
    #: seconds the labelling page waits for its first ranking (model load + scoring, done in the background)
    #: before it answers "ranking…" and reloads itself; ``loopml ui`` / ``serve --ui`` wait a fraction of a second
    rank_wait_s: float = 30.0


#: a host's loaded model, to reuse rather than load again: ``name`` → ``(version, loopml model)`` when the host
#: has that model's version in memory (``loopml serve --ui``: the version it serves), else None
ServedModel = Callable[[str], "tuple[int, Any] | None"]


@dataclass
class UIContext:
    store: Any
    settings: UISettings
    templates: Jinja2Templates
    #: small per-app caches a page may keep (e.g. a ranked labelling queue), keyed by the page
    caches: dict = field(default_factory=dict)
    #: the model the host already serves (the labelling queue ranks with it when it is name@production)
    served_model: ServedModel | None = None


def get_ctx(request: Request) -> UIContext:
    return request.app.state.ui


def base_url(request: Request) -> str:
    """The dashboard's own prefix ("" for ``loopml ui``, "/ui" when mounted in ``loopml serve``)."""
    return request.scope.get("root_path", "").rstrip("/")


def render(request: Request, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    from loopml.ui.auth import csrf_token, is_admin, session_role

    ctx = get_ctx(request)
    admin = is_admin(request)
    return ctx.templates.TemplateResponse(
        request, template, {"base": base_url(request), "is_admin": admin, "admin_enabled": bool(ctx.settings.admin_token),
                            "session_role": session_role(request), "keys_enabled": bool(ctx.settings.api_keys),
                            "csrf": csrf_token(request), **values}, status_code=status_code)


def png_uri(png: bytes) -> str:
    """A figure from ``loopml.evaluate.plots`` (PNG bytes) as an ``<img src>``: drawn by the report's code,
    and an image cannot run script, whatever text (column names, labels) it shows."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.autoescape = True
    env.filters["when"] = when
    env.filters["when_text"] = when_text
    env.filters["num"] = num
    env.filters["short"] = short
    return templates


def when_text(ts: float | None) -> str:
    """A store timestamp as plain text, zone included (``2026-12-01 19:46:27 UTC``); for attributes."""
    if ts is None or not isinstance(ts, int | float) or not math.isfinite(ts):
        return "—"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "—"


def when(ts: float | None) -> Markup | str:
    """A store timestamp as a ``<time>`` element (machine-readable ``datetime``, the zone shown, kept on one line)."""
    text = when_text(ts)
    if text == "—":
        return text
    iso = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[arg-type]
    return Markup(f'<time datetime="{iso}">{text}</time>')  # digits, '-', ':' and 'UTC' only: nothing to escape


def num(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return "—" if x is None else str(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) >= 1e5 or (x and abs(x) < 1e-3) else f"{x:.{digits}f}".rstrip("0").rstrip(".")


def short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
