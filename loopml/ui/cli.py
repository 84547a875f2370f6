"""``loopml ui``: the dashboard on its own (``loopml serve --ui`` mounts the same app at /ui)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loopml.registry.cli import ArtifactsOpt, StoreOpt


def ui_command(
    host: Annotated[str, typer.Option(help="Address to bind (non-loopback needs --admin-token).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
    admin_token: Annotated[str | None, typer.Option(
        envvar="LOOPML_ADMIN_TOKEN", help="Token for promote, rollback and labelling (without it: read-only).")] = None,
    api_key: Annotated[list[str] | None, typer.Option(
        help="API key for a read-only login (repeatable); with any, the pages need a login (as serve --api-key).")] = None,
    store: StoreOpt = None, artifacts: ArtifactsOpt = None,
    media_root: Annotated[str | None, typer.Option(
        help="Folder that logged image paths are relative to (and confined to): the labelling queue shows their "
             "thumbnails (as `loopml serve --media-root`).")] = None,
) -> None:
    """The web dashboard: runs, models, monitor, feedback (labelling), decisions.

    Read-only without --admin-token; with it, log in on the page to promote, roll back and label."""
    import uvicorn

    from loopml.cli import _check_port_free, check_bind
    from loopml.errors import LoopmlError
    from loopml.registry.cli import existing_store
    from loopml.ui.app import create_ui_app, warm_up
    from loopml.ui.context import SERVER_RANK_WAIT_S, UISettings

    if media_root and not Path(media_root).expanduser().is_dir():
        raise LoopmlError(f"--media-root is not a folder: {media_root}")
    loopback = check_bind(host, port, admin_token)
    _check_port_free(host, port)
    shared = existing_store(store, artifacts)
    shared.engine  # noqa: B018  a bad URL or an unreachable server is one line now, not on the first page
    application = create_ui_app(UISettings(store=store, artifacts=artifacts, admin_token=admin_token or None,
                                           api_keys=[k for k in api_key or [] if k], media_root=media_root,
                                           rank_wait_s=SERVER_RANK_WAIT_S), store=shared)
    warm_up(application)  # the first page answers in milliseconds, not the seconds of first imports
    if loopback:  # DNS rebinding: a web page whose name resolves to 127.0.0.1 must not read the pages
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        application.add_middleware(TrustedHostMiddleware,
                                   allowed_hosts=sorted({"127.0.0.1", "localhost", "::1", "[::1]", host.strip("[]")}))
    mode = "admin actions need the token" if admin_token else \
        "read-only: start with --admin-token to promote, roll back, label"
    mode += "; pages need a login with an API key" if api_key else ""
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"dashboard on http://{shown}:{port}/ ({mode})", err=True)
    uvicorn.run(application, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)


