"""Provider doubles: real aiohttp servers on 127.0.0.1 that answer like the real LLM servers, switchable at run time.

The framework owns what every server does the same way (down, slow, hang, html, huge, flapping, the request log);
each family app (`tests/doubles/<family>.py`) owns what only its server does (loading, auth, empty, error).

Writing a family app::

    def vllm_app(control: DoubleControl) -> web.Application:
        app = new_app(control, refuses_while_loading=True)   # vLLM does not listen while it loads
        app.router.add_get("/v1/models", models)
        return app

    async def models(request: web.Request) -> web.StreamResponse:
        control = control_of(request)
        if not bearer_matches(request, control.expected_key):  # auth only when a key is configured
            return json_response({"error": "Unauthorized"}, status=401)
        match scenario_of(request):          # only UP, LOADING, EMPTY or ERROR ever reach a family handler
            case Scenario.EMPTY: ...

The factory is called again each time the double starts listening (after `down`), so keep all state on the
`DoubleControl`, never on the app. Register the factory in `tests.doubles.DOUBLES` under the provider type.
"""

from __future__ import annotations

import asyncio
import enum
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures"
DEFAULT_API_KEY = "sk-double-test-key"
HUGE_BODY_BYTES = (1 << 20) + (512 << 10)  # 1.5 MiB: over monitord's default 1 MiB cap


class Scenario(enum.StrEnum):
    """How a double behaves. Framework-level ones are handled before the family app sees the request."""

    UP = "up"  # normal answers (family)
    DOWN = "down"  # connection refused; comes back on the same port (framework)
    SLOW = "slow"  # `delay_s` before the headers, then UP (framework)
    HANG = "hang"  # accepts, never answers (framework)
    LOADING = "loading"  # the server's own loading behaviour (family; refused when it does not listen)
    UNAUTHORIZED = "unauthorized"  # UP, but with an api key configured: protected routes need it (family)
    HTML = "html"  # 200 text/html on every route (framework)
    HUGE = "huge"  # 200 JSON over 1 MiB, chunked (framework)
    EMPTY = "empty"  # no model, in the server's own shape (family)
    FLAPPING = "flapping"  # alternates UP / `flap_to` on successive probes (framework picks, family answers)
    ERROR = "error"  # 500 (or the server's own failure status) with its error shape (family)


# The scenarios a family handler can see from `scenario_of(request)`.
FAMILY_SCENARIOS = frozenset({Scenario.UP, Scenario.LOADING, Scenario.EMPTY, Scenario.ERROR})


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request a double received, for assertions on what a probe sent (paths, auth header, Host)."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # lower-cased names; the last value wins for repeated headers
    scenario: Scenario  # the scenario in force when it arrived

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class DoubleControl:
    """The mutable state of one double. Tests and family handlers read it; `ProviderDouble.set` changes it.

    `api_key`: when set, the double behaves as if the server had that key configured, in every scenario.
    The UNAUTHORIZED scenario enforces `api_key or DEFAULT_API_KEY`; read `expected_key` for the one in force.
    `models`: when set, families list these ids instead of their fixture models (families that honour it say so).
    `options`: family-specific knobs, documented in each family module (e.g. LM Studio `jit`).
    """

    scenario: Scenario = Scenario.UP
    api_key: str | None = None
    delay_s: float = 2.0  # SLOW: delay before the response headers
    loading_refuses: bool | None = None  # LOADING: None = the server's own behaviour; True/False forces it
    flap_to: Scenario = Scenario.ERROR  # FLAPPING: the failing phase (a request-level family scenario)
    huge_bytes: int = HUGE_BODY_BYTES
    models: tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    # FLAPPING bookkeeping: a path asked twice means a new probe started.
    _flap_failing: bool = field(default=False, repr=False)
    _flap_seen: set[str] = field(default_factory=set, repr=False)
    _flap_dropped: set[str] = field(default_factory=set, repr=False)

    @property
    def expected_key(self) -> str | None:
        """The api key the double enforces right now, or None when its routes are open."""
        if self.api_key is not None:
            return self.api_key
        return DEFAULT_API_KEY if self.scenario is Scenario.UNAUTHORIZED else None

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def clear_requests(self) -> None:
        self.requests.clear()

    def reset_flapping(self) -> None:
        self._flap_failing = False
        self._flap_seen.clear()
        self._flap_dropped.clear()

    def _flap_phase(self, path: str) -> tuple[Scenario, bool]:
        """The phase for a request on `path`, and whether it is the client's retry of a dropped request.

        The double cannot see probe boundaries; a path requested again marks the next probe. Adapters ask each
        path once per attempt, so with probe retries off this alternates probe by probe. aiohttp itself resends
        a request once when the connection closed unanswered: that resend belongs to the same probe.
        """
        if path in self._flap_dropped:
            self._flap_dropped.discard(path)
            return (self.flap_to if self._flap_failing else Scenario.UP), True
        if path in self._flap_seen:
            self._flap_failing = not self._flap_failing
            self._flap_seen.clear()
        self._flap_seen.add(path)
        return (self.flap_to if self._flap_failing else Scenario.UP), False


CONTROL_KEY = web.AppKey("double_control", DoubleControl)
REFUSES_WHILE_LOADING_KEY = web.AppKey("double_refuses_while_loading", bool)
_SCENARIO_REQUEST_KEY = web.RequestKey("double_scenario", Scenario)

DoubleFactory = Callable[[DoubleControl], web.Application]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_app(control: DoubleControl, *, refuses_while_loading: bool = False) -> web.Application:
    """An empty family app bound to `control`.

    `refuses_while_loading`: the real server does not accept connections while its model loads (vLLM, TGI,
    TabbyAPI start-up), so LOADING is served as connection refused, like DOWN.
    """
    app = web.Application()
    app[CONTROL_KEY] = control
    app[REFUSES_WHILE_LOADING_KEY] = refuses_while_loading
    return app


def control_of(request: web.Request) -> DoubleControl:
    return request.app[CONTROL_KEY]


def scenario_of(request: web.Request) -> Scenario:
    """The scenario this request must be answered in: one of FAMILY_SCENARIOS."""
    scenario = request.get(_SCENARIO_REQUEST_KEY)
    return scenario if isinstance(scenario, Scenario) else control_of(request).scenario


# -- responses -------------------------------------------------------------------------------------------------


def json_response(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """JSON exactly as given (orjson bytes), `application/json` like every server in the reference."""
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers=headers)


def text_response(text: str, *, status: int = 200, content_type: str = "text/plain") -> web.Response:
    return web.Response(status=status, text=text, content_type=content_type)


def empty_response(status: int = 200) -> web.Response:
    """No body and no content type: vLLM/SGLang/TGI health, TGI 401, GPT4All 401."""
    return web.Response(status=status)


@cache
def fixture_bytes(server: str, name: str) -> bytes:
    """A stored example body from tests/fixtures/<server>/<name>."""
    return (FIXTURES_DIR / server / name).read_bytes()


def fixture(server: str, name: str) -> Any:
    """A stored JSON example body, parsed afresh (callers may mutate it)."""
    return orjson.loads(fixture_bytes(server, name))


def cards_with_ids(cards: list[dict[str, Any]], ids: Iterable[str] | None) -> list[dict[str, Any]]:
    """The fixture's card shape repeated for `ids` (DoubleControl.models), or the cards unchanged."""
    if ids is None:
        return cards
    template = cards[0] if cards else {"object": "model"}
    return [{**template, "id": model_id} for model_id in ids]


# -- capacity: the load a double reports, changeable while a test runs -------------------------------------------
#
# Options (`await double.set("up", busy=2, queue=1)`) read by every double that publishes load:
#   slots     slot count (llama.cpp `/slots` and `/props` total_slots; KoboldCpp always has one)
#   busy      busy slots / requests running (llama.cpp `/slots`, vLLM/TGI/SGLang running gauges, KoboldCpp `idle`)
#   queue     requests waiting (vLLM waiting, TGI queue, SGLang queue, llama.cpp deferred, KoboldCpp `queue`)
#   kv_cache  KV-cache share 0..1 (vLLM, SGLang)
#   tokens    generated-token counter (vLLM, SGLang, TGI, llama.cpp)
# Unset, a double reports an idle server (nothing busy, nothing queued).


def load_option(control: DoubleControl, name: str, default: float = 0) -> float:
    value = control.options.get(name, default)
    return float(value) if isinstance(value, int | float) else default


@cache
def _fixture_text(server: str, name: str) -> str:
    return fixture_bytes(server, name).decode()


def prometheus_text(server: str, name: str, values: Mapping[str, float]) -> str:
    """A stored Prometheus exposition (tests/fixtures/<server>/<name>) with the named metrics' sample values
    replaced on every label set, so a double's `/metrics` follows the load a test sets."""
    lines = []
    for line in _fixture_text(server, name).splitlines():
        if line and not line.startswith("#"):
            metric = line.split("{", 1)[0].split(" ", 1)[0]
            if metric in values:
                head = line.rsplit(" ", 1)[0]
                line = f"{head} {values[metric]:g}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def prometheus_response(text: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """`text/plain; version=0.0.4` as prometheus_client and the Rust exporters send it."""
    return web.Response(body=text.encode(), headers={
        **(headers or {}), "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


# -- auth helpers ----------------------------------------------------------------------------------------------


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme matched case-insensitively)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def bearer_matches(request: web.Request, key: str | None) -> bool:
    """True when no key is configured or the Bearer token equals it."""
    return key is None or bearer_token(request) == key


def exact_authorization(request: web.Request, key: str | None) -> bool:
    """Servers that compare the whole header to `Bearer <key>` byte for byte (text-generation-webui, Jan)."""
    return key is None or request.headers.get("Authorization") == f"Bearer {key}"


def any_key_header(request: web.Request, key: str | None, names: Iterable[str]) -> bool:
    """True when no key is configured, or the Bearer token or any header in `names` carries it."""
    if key is None or bearer_token(request) == key:
        return True
    return any(request.headers.get(name) == key for name in names)


# -- framework-level scenarios ---------------------------------------------------------------------------------

_HTML_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>Welcome</title></head>"
    "<body><h1>It works!</h1><p>A web server answered where an API was expected.</p></body></html>\n"
)


def _record(control: DoubleControl, request: web.Request) -> None:
    headers = {name.lower(): value for name, value in request.headers.items()}
    control.requests.append(
        RecordedRequest(request.method, request.path, request.query_string, headers, control.scenario))


async def _huge(request: web.Request, size_bytes: int) -> web.StreamResponse:
    """A valid JSON model list bigger than the cap, sent chunked so only a reader with a cap notices."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b'{"object":"list","data":[')
    card = b'{"id":"model-%08d","object":"model","owned_by":"double","padding":"' + b"x" * 900 + b'"}'
    written, index = 0, 0
    while written < size_bytes:
        chunk = b",".join(card % (index + i) for i in range(64))
        await response.write((b"," if index else b"") + chunk)
        written += len(chunk)
        index += 64
    await response.write(b"]}")
    await response.write_eof()
    return response


class _Gate:
    """Releases hung and slow handlers when the scenario changes or the double stops."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def release(self) -> None:
        self.event.set()
        self.event = asyncio.Event()

    async def wait(self, timeout_s: float | None = None) -> bool:
        """True when released before `timeout_s`."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


def _framework_middleware(control: DoubleControl, gate: _Gate) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        _record(control, request)
        scenario = control.scenario
        flap_retry: bool | None = None  # FLAPPING only: whether this request repeats a dropped one
        if scenario is Scenario.HANG:
            await gate.wait()  # released only when the scenario changes or the double stops
            return empty_response(503)
        if scenario is Scenario.SLOW:
            await gate.wait(control.delay_s)
            scenario = Scenario.UP
        elif scenario is Scenario.HTML:
            return text_response(_HTML_PAGE, content_type="text/html")
        elif scenario is Scenario.HUGE:
            return await _huge(request, control.huge_bytes)
        elif scenario is Scenario.FLAPPING:
            scenario, flap_retry = control._flap_phase(request.path)
        elif scenario in (Scenario.UNAUTHORIZED, Scenario.DOWN):
            scenario = Scenario.UP  # DOWN only reaches here on a connection accepted just before closing
        request[_SCENARIO_REQUEST_KEY] = scenario
        response = await handler(request)
        if flap_retry is False and (request.transport is None or request.transport.is_closing()):
            control._flap_dropped.add(request.path)
        return response

    return middleware


# -- the double ------------------------------------------------------------------------------------------------


class ProviderDouble:
    """One double on 127.0.0.1: `await start()`, point a provider at `url`, `await set(...)`, `await stop()`.

    The port is chosen once (ephemeral unless given) and kept across DOWN/LOADING-refused periods, so a
    provider configured with `url` sees the same server come back. Also an async context manager.
    """

    def __init__(self, provider_type: str, factory: DoubleFactory, control: DoubleControl | None = None, *,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.provider_type = provider_type
        self.control = control or DoubleControl()
        self._factory = factory
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._refuses_while_loading = False
        self._gate: _Gate | None = None
        self._started = False

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("double not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL without a trailing slash or /v1, as ProviderSpec.base_url wants it."""
        return f"http://{self._host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._runner is not None

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.control.requests

    async def start(self) -> ProviderDouble:
        if self._started:
            return self
        self._gate = _Gate()
        if not self._port:
            self._port = _free_port(self._host)
        self._started = True
        await self._apply()
        return self

    async def stop(self) -> None:
        """Stop listening and drop every connection; idempotent."""
        self._started = False
        if self._gate is not None:
            self._gate.release()
        await self._close()

    async def set(self, scenario: Scenario | str, **changes: Any) -> None:
        """Switch scenario (and any DoubleControl field, e.g. delay_s=0.5); takes effect for the next request.

        Unknown keyword names go to `control.options`. Hung and slow requests in flight are released.
        """
        control = self.control
        for name, value in changes.items():
            if name in DoubleControl.__dataclass_fields__ and not name.startswith("_"):
                setattr(control, name, value)
            else:
                control.options[name] = value
        control.scenario = Scenario(scenario)
        control.reset_flapping()
        if self._gate is not None:
            self._gate.release()
        if self._started:
            await self._apply()

    def _should_listen(self) -> bool:
        scenario = self.control.scenario
        if scenario is Scenario.DOWN:
            return False
        if scenario is Scenario.LOADING:
            refuses = self.control.loading_refuses
            return not (self._refuses_while_loading if refuses is None else refuses)
        return True

    async def _apply(self) -> None:
        if self._runner is None:
            await self._open()  # builds the app, which tells whether LOADING refuses
        if not self._should_listen():
            await self._close()

    async def _open(self) -> None:
        assert self._gate is not None
        app = self._factory(self.control)
        app[CONTROL_KEY] = self.control
        self._refuses_while_loading = app.get(REFUSES_WHILE_LOADING_KEY, False)
        app.middlewares.insert(0, _framework_middleware(self.control, self._gate))
        if not self._should_listen():
            return
        # A short shutdown timeout: hung handlers are released by the gate, anything else is cut.
        runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def _close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            if self._gate is not None:
                self._gate.release()
            await runner.cleanup()

    async def __aenter__(self) -> ProviderDouble:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        where = f"{self._host}:{self._port}" if self._port else "not started"
        return f"ProviderDouble({self.provider_type!r}, {where}, scenario={self.control.scenario.value})"


def _free_port(host: str) -> int:
    """An ephemeral port the double then keeps for its whole life (DOWN must come back on the same one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
