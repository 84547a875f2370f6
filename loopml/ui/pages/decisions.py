"""The decisions page: every gate / rollout / watch / loop decision with its numbers, newest first."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from loopml.errors import LoopmlError, did_you_mean
from loopml.ui import queries_models as q
from loopml.ui.auth import UIError
from loopml.ui.context import UIContext, get_ctx, render
from loopml.ui.paging import Page, page_params

router = APIRouter()


def _choice(what: str, value: str | None, choices: tuple[str, ...]) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if value not in choices:
        raise UIError(400, f"{what} {value!r} is not one of {', '.join(choices)}{did_you_mean(value, choices)}")
    return value


@router.get("/decisions", response_class=HTMLResponse)
def decisions_page(request: Request, page: Page = Depends(page_params),
                   model: str | None = Query(None, max_length=200, description="Only this model."),
                   kind: str | None = Query(None, max_length=32, description=f"One of {', '.join(q.KINDS)}."),
                   outcome: str | None = Query(None, max_length=16, description="promoted | rejected."),
                   ctx: UIContext = Depends(get_ctx)) -> HTMLResponse:
    kind = _choice("kind", kind, q.KINDS)
    outcome = _choice("outcome", outcome, q.OUTCOMES)
    model = (model or "").strip() or None
    engine = ctx.store.engine
    if model is not None:
        try:
            q.get_model(engine, model)
        except LoopmlError as e:
            raise UIError(400, str(e)) from None
    rows, page = q.decisions(engine, page, model=model, kind=kind, outcome=outcome)
    for row in rows:
        row["number_rows"] = q.key_values(row["numbers"])
    query = {k: v for k, v in (("model", model), ("kind", kind), ("outcome", outcome)) if v}
    return render(request, "decisions.html", rows=rows, page=page, query=query, model=model or "", kind=kind or "",
                  outcome=outcome or "", kinds=q.KINDS, outcomes=q.OUTCOMES, names=q.model_names(engine))
