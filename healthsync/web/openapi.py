"""``GET /api/schema/`` (the OpenAPI 3.1 document) and ``GET /api/docs/`` (its reader).

Both are public: they describe the API and contain no patient data.  The
docs page is ``static/docs.html`` with its own script and stylesheet, all
served by this box (nothing from the internet).
"""

from __future__ import annotations

from ..openapi import schema_for
from .base import BaseHandler
from .files import STATIC_DIR

DOCS_HTML = STATIC_DIR / "docs.html"


class SchemaHandler(BaseHandler):
    public = True  # the API's description, no patient data

    async def get(self) -> None:
        self.write_json(schema_for(self.ctx.settings))


class DocsHandler(BaseHandler):
    public = True

    async def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(DOCS_HTML.read_bytes())
