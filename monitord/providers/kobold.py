"""KoboldCpp and the older KoboldAI Client, which share the KoboldAI `/api/v1` API but differ around it.

KoboldCpp identifies itself at `/api/extra/version` (feature flags, build version) and tells its context size
at `/api/extra/true_max_context_length`; KoboldAI Client has neither (404) and only names its model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from monitord.model import Capacity, ErrorClass, Identity, ModelInfo, ModelKind, ProviderSpec, Status
from monitord.providers.base import (
    HttpResponse,
    Observation,
    ProbeError,
    ProbeHttp,
    TypeDefaults,
    expect_ok,
    models_or_unknown,
    models_path,
    openai_model_cards,
    optional_get,
)
from monitord.providers.capacity import read_kobold_perf

KOBOLDCPP, KOBOLDAI = "KoboldCpp", "KoboldAI"
_NO_MODEL = frozenset({"inactive", "ReadOnly"})  # KoboldCpp without a text model; KoboldAI Client without any
_PROTECTED = "koboldcpp/protected-model"  # answered with HTTP 200 when --password is set and ours is wrong

# /api/extra/version feature flags in monitord's vocabulary; "llm" is absent (true) before v1.8x
_FLAGS: Mapping[str, str] = {"vision": "vision", "audio": "audio", "embeddings": "embeddings"}


@dataclass(frozen=True, slots=True)
class KoboldCppVersion:
    """What `/api/extra/version` says about the build."""

    version: str | None
    protected: bool
    llm: bool
    capabilities: frozenset[str]


def read_extra_version(response: HttpResponse) -> KoboldCppVersion:
    body = response.json()
    if not isinstance(body, dict) or body.get("result") != KOBOLDCPP:
        raise ProbeError(ErrorClass.BAD_PAYLOAD, f"{response.path}: not a KoboldCpp version answer")
    llm = body.get("llm") is not False
    capabilities = {"chat", "completion", "streaming"} if llm else set()
    capabilities.update(ours for flag, ours in _FLAGS.items() if body.get(flag) is True)
    version = body.get("version")
    return KoboldCppVersion(
        version=version if isinstance(version, str) and version else None,
        protected=body.get("protected") is True,
        llm=llm,
        capabilities=frozenset(capabilities),
    )


def read_result(response: HttpResponse) -> str:
    """The `result` string of `{"result": ...}` answers (model name, API spec version)."""
    body = response.json()
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, str):
        raise ProbeError(ErrorClass.BAD_PAYLOAD, f"{response.path}: expected {{\"result\": <string>}}")
    return result


def read_model_name(response: HttpResponse) -> str | None:
    """The loaded model's name from `/api/v1/model` (or an OpenAI list at a configured path); None: no model.

    Raises AUTH for KoboldCpp's `protected-model` placeholder: the server is up but hides its model from us.
    """
    body = response.json()
    if isinstance(body, dict) and "data" in body:
        cards = openai_model_cards(body, response.path)
        name: str | None = cards[0]["id"] if cards else None
    else:
        name = read_result(response)
    if name == _PROTECTED:
        raise ProbeError(ErrorClass.AUTH, f"{response.path}: KoboldCpp hides its model (password missing or "
                         "wrong)", response.status)
    return None if name is None or name in _NO_MODEL or not name.strip() else name


def read_context(response: HttpResponse) -> int | None:
    """`{"value": <tokens>}` of the context-length routes."""
    body = response.json()
    value = body.get("value") if isinstance(body, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def is_reloading(response: HttpResponse) -> bool:
    """KoboldCpp's admin/router proxy answers 502 with an HTML page while the backend (re)loads a model."""
    return response.status == 502 and response.body.lstrip()[:1] == b"<"


def server_identity(build: KoboldCppVersion | None, api_version: str | None) -> Identity:
    """KoboldCpp names itself at /api/extra/version; KoboldAI Client is the Kobold API without that route."""
    if build is not None:
        return Identity(looks_like="koboldcpp", version=build.version, evidence="/api/extra/version: result KoboldCpp")
    return Identity(looks_like="koboldai", version=None,
                    evidence=f"/api/v1/info/version: KoboldAI API {api_version} without /api/extra/version")


def describe(name: str | None, build: KoboldCppVersion | None, context_length: int | None,
             api_version: str | None = None, load: Capacity | None = None) -> Observation:
    """The observation for a Kobold server that named its model (or said it has none).

    `build` is None for KoboldAI Client, which reports only the KoboldAI API spec version, not its own.
    """
    identity = server_identity(build, api_version)
    version = build.version if build else None
    if name is None:
        what = "no text model loaded" + (" (image/audio-only launch)" if build and not build.llm else "")
        return Observation(status=Status.DEGRADED, server_version=version, error_class=ErrorClass.EMPTY_MODELS,
                           message=what, identity=identity, capacity=load)
    # KoboldAI Client speaks only the completion-style /api/v1/generate
    capabilities = build.capabilities if build else frozenset({"completion"})
    model = ModelInfo(
        id=name,
        kind=ModelKind.VISION if "vision" in capabilities else ModelKind.LLM,
        context_length=context_length,
        loaded=True,  # both servers load the model before they answer HTTP
        capabilities=capabilities,
        owned_by="koboldcpp" if build else None,
    )
    return Observation(models=(model,), server_version=version, identity=identity, capacity=load)


def _reloading(response: HttpResponse) -> Observation:
    return Observation(status=Status.LOADING, error_class=ErrorClass.LOADING,
                       message=f"{response.path}: HTTP 502 page while KoboldCpp reloads its model")


@dataclass(frozen=True, slots=True)
class Kobold:
    """KoboldCpp: version flags, model name, true context (3 requests). KoboldAI Client: API version, model."""

    defaults: TypeDefaults

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        identity = await http.get(spec.health_endpoint or self.defaults.health_path or "/api/extra/version")
        if is_reloading(identity):
            return _reloading(identity)
        model_path = models_path(spec, self.defaults)
        if identity.status == 404:
            return await self._observe_koboldai(http, model_path)
        build = read_extra_version(expect_ok(identity))
        model = await http.get(model_path)
        if is_reloading(model):
            return _reloading(model)
        try:
            name = read_model_name(expect_ok(model))
        except ProbeError as exc:  # /api/extra/version answered: a misbehaving model route leaves it unknown
            return replace(models_or_unknown(exc, identity), server_version=build.version,
                           identity=server_identity(build, None))
        context_length = None
        if name is not None:
            context = await http.get("/api/extra/true_max_context_length")
            # older builds lack the route (404): the context is then simply unknown
            context_length = read_context(context) if context.status == 200 else None
        # one generation at a time: /api/extra/perf says whether it is busy and how many wait
        load = read_kobold_perf(await optional_get(http, "/api/extra/perf", spec))
        return describe(name, build, context_length, load=load)

    async def _observe_koboldai(self, http: ProbeHttp, model_path: str) -> Observation:
        api_version = read_result(expect_ok(await http.get("/api/v1/info/version")))
        name = read_model_name(expect_ok(await http.get(model_path)))
        return describe(name, None, None, api_version)
