"""One module per page, each with its ``router``; ``PAGE_ROUTERS`` is what the app includes."""

from loopml.ui.pages import decisions, feedback, models, monitor, overview, runs, session

PAGE_ROUTERS = [session.router, overview.router, runs.router, models.router, monitor.router, feedback.router,
                decisions.router]
