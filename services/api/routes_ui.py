"""The web UI: static files (plain HTML, JS and CSS) served at /ui. The page itself is
public; every request it makes to the API carries the key the user entered."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

UI_DIR = Path(__file__).resolve().parent / "ui"
_FILES = {"index.html", "app.js", "style.css"}

router = APIRouter(include_in_schema=False)


@router.get("/ui")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/ui/")
async def ui_index() -> FileResponse:
    return FileResponse(UI_DIR / "index.html", media_type="text/html")


@router.get("/ui/{name}")
async def ui_file(name: str) -> FileResponse:
    if name not in _FILES:
        raise HTTPException(status_code=404, detail="not_found")
    return FileResponse(UI_DIR / name)
