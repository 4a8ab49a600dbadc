"""The status page's shell and files: served without the token, holding no data, small, and locked down by CSP.

What the page does in a browser is tested in tests/browser/.
"""

from __future__ import annotations

import re

import pytest

from tests.plugins.api import SECRETS, TOKEN, ApiFactory, assert_error

PAGE_BUDGET_BYTES = 300 * 1024  # the ceiling for the whole overview


@pytest.mark.parametrize("path", ["/", "/providers/alpha", "/providers/no-such-one"])
async def test_the_shell_is_served_without_the_token_and_names_nothing(api_factory: ApiFactory, path: str) -> None:
    client, world = await api_factory(token=TOKEN)
    resp = await client.get(path)
    assert resp.status == 200 and resp.content_type == "text/html"
    html = await resp.text()
    for name in world.specs:
        assert f">{name}<" not in html and f'"{name}"' not in html
    for secret in SECRETS:
        assert secret not in html
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    await assert_error(await client.get("/v1/providers"), 401, "unauthorized")  # the data still needs it


async def test_the_whole_overview_stays_small(api_factory: ApiFactory) -> None:
    client, _ = await api_factory()
    html = await (await client.get("/")).read()
    files = [await (await client.get(f"/ui/{name}")).read() for name in ("page.js", "page.css")]
    assert b'src="/ui/page.js"' in html and b'href="/ui/page.css"' in html
    urls = set(re.findall(rb"https?://[^\s\"'`]+", b"".join([html, *files])))
    assert urls <= {b"http://www.w3.org/2000/svg"}, urls  # nothing from a CDN: only the SVG namespace
    total = len(html) + sum(len(f) for f in files)
    assert total < PAGE_BUDGET_BYTES, f"overview is {total} bytes"


async def test_the_script_never_writes_html(api_factory: ApiFactory) -> None:
    client, _ = await api_factory()
    script = await (await client.get("/ui/page.js")).text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, f"page.js uses {sink}"
