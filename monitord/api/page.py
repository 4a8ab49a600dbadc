"""The status page: HTML shells for / and /providers/{name}, and the script and stylesheet that fill them.

The HTML carries no data and no secret, so it is served without the bearer token: the script reads the JSON API
(sending the token the tab was given when api.token is set) and builds every element with textContent and SVG.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

STATIC_TYPES = {"page.js": "text/javascript", "page.css": "text/css"}
OPEN_PATHS = frozenset({"/", *(f"/ui/{name}" for name in STATIC_TYPES)})  # no data behind these
OPEN_PREFIXES = ("/providers/",)  # the detail page's shell; its data comes from /v1/providers/{name}
# The page runs only its own script and talks only to its own origin; nothing inline can run.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}

SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/page.css">
<script src="/ui/page.js" defer></script>
</head>
<body data-view="{view}">
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<a class="brand" href="/">monitord</a>
<span id="summary" class="summary" aria-live="polite"></span>
<span id="connection" class="connection" role="status" aria-live="polite">connecting</span>
</header>
<form id="auth" class="auth" hidden>
<label for="auth-token">This monitord wants its API token (kept for this tab only)</label>
<input id="auth-token" name="token" type="password" autocomplete="current-password" required>
<button type="submit">Use token</button>
<p id="auth-error" class="error" role="alert"></p>
</form>
<main id="main" tabindex="-1"><noscript>This page needs JavaScript; the same data is at /v1/providers.</noscript>
</main>
</body>
</html>
"""


def _shell(title: str, view: str) -> bytes:
    return SHELL.format(title=title, view=view).encode()


OVERVIEW = _shell("monitord", "overview")
DETAIL = _shell("monitord: provider", "provider")


def add_page_routes(app: web.Application) -> None:
    files = {name: (resources.files("monitord.api") / "static" / name).read_bytes() for name in STATIC_TYPES}

    async def overview(request: web.Request) -> web.Response:
        return web.Response(body=OVERVIEW, content_type="text/html", charset="utf-8", headers=HEADERS)

    async def detail(request: web.Request) -> web.Response:
        # The same shell for any name: the script asks the API, which answers 404 for an unknown one, so the
        # page itself tells nobody without the token which providers exist.
        return web.Response(body=DETAIL, content_type="text/html", charset="utf-8", headers=HEADERS)

    def static(name: str) -> web.RouteDef:
        body, content_type = files[name], STATIC_TYPES[name]

        async def serve(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type=content_type, charset="utf-8", headers=HEADERS)

        return web.get(f"/ui/{name}", serve)

    app.router.add_routes([
        web.get("/", overview),
        web.get("/providers/{name}", detail),
        *(static(name) for name in STATIC_TYPES),
    ])
