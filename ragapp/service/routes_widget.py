"""The chat widget: a page of its own, and a script that adds a chat box to any page."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

router = APIRouter(tags=["widget"])


def widget_file(name: str) -> str:
    return resources.files("ragapp.service").joinpath("widget", name).read_text(encoding="utf-8")


@router.get("/widget", response_class=HTMLResponse)
def widget_page() -> HTMLResponse:
    """A chat page over the API (`?collection=NAME&key=KEY`); the same UI as `/widget.js`."""
    return HTMLResponse(widget_file("index.html"))


@router.get("/widget.js", response_class=Response, responses={200: {"content": {"text/javascript": {}}}})
def widget_script() -> Response:
    """`<script src=".../widget.js" data-collection="NAME" data-key="KEY"></script>` adds a chat box to a page."""
    return Response(widget_file("widget.js"), media_type="text/javascript")
