"""The OpenAPI 3.1 document of the HTTP API: ``responses`` (models), ``document`` (assembly)."""

from .document import build_schema, schema_for

__all__ = ["build_schema", "schema_for"]
