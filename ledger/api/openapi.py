"""The generated OpenAPI schema, corrected to say exactly what is accepted."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ledger.api.schemas import STORABLE_JSON_VALUE


def refine_openapi(app: FastAPI) -> None:
    """Two corrections to the generated schema, so that it says exactly what is accepted.

    * ``data`` refers to a recursive ``StorableJson`` schema, added here.
    * An optional header or query parameter is either absent or a string: FastAPI renders
      it as "string or null", which tools then send as the literal text ``null``.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        schema.setdefault("components", {}).setdefault("schemas", {})
        schema["components"]["schemas"].setdefault("StorableJson", STORABLE_JSON_VALUE)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                for parameter in operation.get("parameters", []):
                    variants = parameter.get("schema", {}).get("anyOf", [])
                    concrete = [v for v in variants if v.get("type") != "null"]
                    if parameter.get("in") in ("header", "query") and len(concrete) == 1 < len(
                        variants
                    ):
                        title = parameter["schema"].get("title")
                        parameter["schema"] = {**concrete[0], **({"title": title} if title else {})}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
