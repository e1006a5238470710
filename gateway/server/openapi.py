"""``python -m gateway.server.openapi``: print the API's OpenAPI document (``make openapi``
saves it)."""

from __future__ import annotations

import json
import sys
from typing import Any

from gateway.server.app import create_app

__all__ = ["openapi_document", "render"]


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the app, built without starting it."""
    return create_app().openapi()


def render() -> str:
    """The document as committed in openapi/openapi.json."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
