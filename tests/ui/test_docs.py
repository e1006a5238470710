"""``/docs`` and ``/redoc`` without internet: their HTML names no other host, the scripts and
styles they load come from the gateway with 200, and in Chromium, with every request to another
host refused, Swagger UI draws the API (its title and an operation)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.ui.conftest import Gateway

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = sync_api.expect

_REFERENCES = re.compile(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""")


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_html_loads_everything_from_the_gateway(gateway: Gateway, path: str) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30.0) as client:
        page = client.get(path)
        assert page.status_code == 200
        assert "cdn" not in page.text.lower()
        references = _REFERENCES.findall(page.text)
        assert references, page.text
        for reference in references:
            url = urljoin(gateway.url + path, reference)
            assert urlsplit(url).netloc == urlsplit(gateway.url).netloc, reference
            asset = client.get(url)
            assert asset.status_code == 200, (reference, asset.status_code)
            assert asset.content


def test_swagger_ui_draws_the_api_with_the_internet_cut_off(gateway: Gateway, page: Page) -> None:
    refused: list[str] = []
    own = urlsplit(gateway.url).netloc

    def only_the_gateway(route: Route) -> None:
        if urlsplit(route.request.url).netloc == own:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_gateway)
    page.goto(gateway.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Mandate")
    expect(page.locator(".opblock-summary-path", has_text="/v1/actions").first).to_be_visible()
    assert refused == []
