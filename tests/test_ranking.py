"""Ranking: every criterion, exclusion reasons, status tiers, recency, ties, preferences. Pure tables."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitord.model import (
    Capacity,
    Criteria,
    ErrorClass,
    Evidence,
    GenerationStats,
    ModelInfo,
    ModelKind,
    ProviderSpec,
    ProviderState,
    QualityPreference,
    ResidentModel,
    ServedModel,
    Status,
    TaskType,
)
from monitord.providers import provider_urls
from monitord.ranking import (
    COLD_LOAD_FACTOR,
    UNKNOWN_HEADROOM,
    Ranker,
    headroom,
    model_quality,
    parameter_billions,
    rank,
    warm_factor,
    wilson_lower_bound,
)

NOW = datetime(2025, 1, 1, 12, tzinfo=UTC)
CHAT = frozenset({"chat", "completion", "streaming"})


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def served(*models: ModelInfo | str) -> tuple[ServedModel, ...]:
    infos = [m if isinstance(m, ModelInfo) else ModelInfo(m) for m in models]
    return tuple(ServedModel(i.id, i, ago(3600), NOW) for i in infos)


def state(name: str, status: Status = Status.UP, *, samples: int = 90, ok: int | None = None,
          latency_ms: float | None = 50.0, failed_s_ago: float | None = None,
          models: tuple[ServedModel, ...] = ()) -> ProviderState:
    return ProviderState(
        name=name, type="ollama", status=status, since=ago(7200), samples=samples,
        samples_ok=samples if ok is None else ok, latency_ewma_ms=latency_ms, latency_p50_ms=latency_ms,
        last_failure_at=ago(failed_s_ago) if failed_s_ago is not None else None, models=models,
        last_error_class=ErrorClass.REFUSED if status is Status.DOWN else None,
        last_error="connection refused" if status is Status.DOWN else None,
    )


def spec(name: str, **kwargs: Any) -> ProviderSpec:
    kwargs.setdefault("capabilities", CHAT)
    return ProviderSpec(name=name, type="ollama", base_url=f"http://{name}:11434", **kwargs)


def world(*states: ProviderState, **spec_kwargs: dict[str, Any]) -> tuple[dict[str, ProviderState],
                                                                          dict[str, ProviderSpec]]:
    return ({s.name: s for s in states},
            {s.name: spec(s.name, **spec_kwargs.get(s.name, {})) for s in states})


def order(criteria: Criteria, *states: ProviderState, **spec_kwargs: dict[str, Any]) -> list[str]:
    return [e.provider for e in rank(*world(*states, **spec_kwargs), criteria, NOW).entries]


LLAMA = ModelInfo("llama3.1:8b", parameter_size="8.0B", context_length=8192, capabilities=frozenset({"completion"}))
LLAVA = ModelInfo("llava:13b", parameter_size="13B", context_length=4096,
                  capabilities=frozenset({"completion", "vision"}))
QWEN_VL = ModelInfo("Qwen/Qwen2-VL-7B-Instruct", capabilities=frozenset({"multimodal"}))
EMBED = ModelInfo("nomic-embed-text", kind=ModelKind.EMBEDDING, context_length=8192)
EMBED_CAPS = ModelInfo("bge-m3", capabilities=frozenset({"embedding"}))
CODER = ModelInfo("qwen2.5-coder:32b", parameter_size="32.8B", context_length=32768)
BIG = ModelInfo("llama3.1:70b", parameter_size="70.6B", context_length=131072)


def test_default_ranks_healthy_and_explains_the_rest() -> None:
    states, specs = world(
        state("up", models=served(LLAMA)),
        state("down", Status.DOWN, models=served(LLAMA)),
        state("off"),
        state("loading", Status.LOADING),
    )
    specs["off"] = spec("off", enabled=False)
    specs["never"] = spec("never")
    ranking = rank(states, specs, Criteria(), NOW)
    assert [(e.provider, e.status) for e in ranking.entries] == [("up", Status.UP), ("loading", Status.LOADING)]
    assert ranking.entries[0].models == ("llama3.1:8b",)
    assert ranking.excluded == {
        "down": ("status down since 2025-01-01T10:00:00+00:00 (refused: connection refused)",),
        "off": ("disabled in config",),
        "never": ("status unknown (not probed yet)",),
    }
    assert ranking.best is ranking.entries[0] and ranking.generated_at == NOW


@pytest.mark.parametrize(("statuses", "expected"), [
    # a degraded or loading provider sinks below every up one, however good its numbers
    ({"a": (Status.DEGRADED, 10.0), "b": (Status.UP, 900.0)}, ["b", "a"]),
    ({"a": (Status.LOADING, 10.0), "b": (Status.UP, 900.0), "c": (Status.DEGRADED, 900.0)}, ["b", "c", "a"]),
    ({"a": (Status.LOADING, 10.0), "b": (Status.LOADING, 900.0)}, ["a", "b"]),
])
def test_loading_and_degraded_sink_below_up(statuses: dict[str, tuple[Status, float]], expected: list[str]) -> None:
    states = [state(name, status, latency_ms=latency_ms) for name, (status, latency_ms) in statuses.items()]
    assert order(Criteria(), *states) == expected


def test_status_factor_is_visible() -> None:
    ranking = rank(*world(state("a", Status.DEGRADED), state("b", Status.LOADING)), Criteria(), NOW)
    assert [e.components["status_factor"] for e in ranking.entries] == [0.5, 0.25]


@pytest.mark.parametrize(("model", "expected", "excluded"), [
    ("llava:13b", {"vis": ("llava:13b",)}, "model 'llava:13b' not served"),
    ("LLaVA:13B", {"vis": ("llava:13b",)}, "model 'LLaVA:13B' not served"),  # ids match case-insensitively
    ("llama3.1:*", {"txt": ("llama3.1:8b",), "vis": ("llama3.1:8b",)}, None),
    ("llama*", {"txt": ("llama3.1:8b",), "vis": ("llama3.1:8b",)}, None),
    ("*:13b", {"vis": ("llava:13b",)}, "model '*:13b' not served"),
    ("ll?va*", {"vis": ("llava:13b",)}, "model 'll?va*' not served"),
    ("[lq]*", {"txt": ("llama3.1:8b",), "vis": ("llama3.1:8b", "llava:13b")}, None),
    ("mistral", {}, "model 'mistral' not served"),
])
def test_model_criterion(model: str, expected: dict[str, tuple[str, ...]], excluded: str | None) -> None:
    ranking = rank(*world(state("txt", models=served(LLAMA)), state("vis", models=served(LLAVA, LLAMA))),
                   Criteria(model=model), NOW)
    assert {e.provider: e.models for e in ranking.entries} == expected
    if excluded is not None:
        assert excluded in next(iter(ranking.excluded.values()))


def test_model_without_a_list_falls_back_to_the_config() -> None:
    states, specs = world(state("listless"), state("configured"))
    specs["configured"] = spec("configured", models=("mlx-community/Qwen2.5-7B",))
    ranking = rank(states, specs, Criteria(model="mlx-community/*"), NOW)
    assert [(e.provider, e.models) for e in ranking.entries] == [("configured", ("mlx-community/Qwen2.5-7B",))]
    assert ranking.excluded == {"listless": ("model 'mlx-community/*' not served (no model list yet)",)}


@pytest.mark.parametrize(("capabilities", "expected", "reasons"), [
    ({"vision"}, ["llava", "qwenvl"],
     {"text": "missing capabilities: vision", "embed": "missing capabilities: vision"}),
    ({"embeddings"}, ["embed"], {"text": "missing capabilities: embeddings"}),
    ({"embedding"}, ["embed"], {}),  # Ollama's spelling is understood
    ({"tools"}, ["text"], {"llava": "missing capabilities: tools"}),  # text's config says tools
    ({"streaming"}, ["llava", "qwenvl", "text"], {"embed": "missing capabilities: streaming"}),
    ({"code_generation"}, ["llava", "qwenvl", "text"], {"embed": "missing capabilities: code_generation"}),
    ({"vision", "tools"}, [], {"llava": "missing capabilities: tools", "text": "missing capabilities: vision"}),
    ({"rerank"}, [], {"text": "missing capabilities: rerank"}),
])
def test_required_capabilities(capabilities: set[str], expected: list[str], reasons: dict[str, str]) -> None:
    states, specs = world(
        state("text", models=served(LLAMA)),
        state("llava", models=served(LLAVA)),
        state("qwenvl", models=served(QWEN_VL)),
        state("embed", models=served(EMBED, EMBED_CAPS)),  # the type's chat capability does not make it chat
        text={"capabilities": CHAT | {"tools"}},
    )
    ranking = rank(states, specs, Criteria.from_mapping({"required_capabilities": sorted(capabilities)}), NOW)
    assert sorted(e.provider for e in ranking.entries) == expected
    for name, reason in reasons.items():
        assert ranking.excluded[name] == (reason,)


def test_capabilities_must_meet_on_one_model() -> None:
    # vision on one model and tools on another do not make a vision+tools model
    tooly = ModelInfo("tooly", capabilities=frozenset({"tools"}))
    ranking = rank(*world(state("mixed", models=served(LLAVA, tooly))),
                   Criteria(required_capabilities=frozenset({"vision", "tools"})), NOW)
    assert ranking.entries == () and ranking.excluded["mixed"] in {("missing capabilities: tools",),
                                                                    ("missing capabilities: vision",)}


def test_streaming_support_off_removes_streaming() -> None:
    states, specs = world(state("a"), a={"streaming_support": False})
    ranking = rank(states, specs, Criteria(required_capabilities=frozenset({"streaming"})), NOW)
    assert ranking.excluded == {"a": ("missing capabilities: streaming",)}


@pytest.mark.parametrize(("task", "expected", "excluded"), [
    (TaskType.CHAT, ["text", "llava", "coder"], {"embed": "missing capabilities: chat"}),
    (TaskType.EMBEDDING, ["embed"], {"text": "missing capabilities: embeddings"}),
    (TaskType.VISION, ["llava"],
     {"text": "missing capabilities: vision", "embed": "missing capabilities: chat, vision"}),
    (TaskType.CODE_GENERATION, ["coder", "text", "llava"], {"embed": "missing capabilities: chat or completion"}),
    (TaskType.CODE_ANALYSIS, ["coder", "text", "llava"], {}),
    (TaskType.TOOLS, [], {"text": "missing capabilities: tools"}),
    (TaskType.RERANK, [], {"text": "missing capabilities: rerank"}),
])
def test_task_type(task: TaskType, expected: list[str], excluded: dict[str, str]) -> None:
    # latencies make the order without task_fit: text, llava, coder
    ranking = rank(*world(
        state("text", models=served(LLAMA), latency_ms=10.0),
        state("llava", models=served(LLAVA), latency_ms=20.0),
        state("coder", models=served(CODER), latency_ms=30.0),
        state("embed", models=served(EMBED), latency_ms=5.0),
    ), Criteria(task_type=task), NOW)
    assert [e.provider for e in ranking.entries] == expected
    for name, reason in excluded.items():
        assert ranking.excluded[name] == (reason,)


def test_task_fit_from_config_or_model_id() -> None:
    states, specs = world(state("plain"), state("declared"), state("named", models=served("deepseek-coder:6.7b")),
                          declared={"capabilities": CHAT | {"code_generation"}})
    ranking = rank(states, specs, Criteria(task_type=TaskType.CODE_GENERATION), NOW)
    assert {e.provider: e.components["task_fit"] for e in ranking.entries} == {
        "declared": 1.0, "named": 1.0, "plain": 0.0}
    assert ranking.entries[-1].provider == "plain"
    untasked = rank(states, specs, Criteria(), NOW)
    assert {e.components["task_fit"] for e in untasked.entries} == {1.0}


@pytest.mark.parametrize(("max_tokens", "expected", "excluded"), [
    (4096, {"small": ("llava:13b",), "mixed": ("llama3.1:70b", "llava:13b"), "unknown": ("mystery",)}, {}),
    (8192, {"mixed": ("llama3.1:70b",), "unknown": ("mystery",)},
     {"small": "context too small for max_tokens: largest known is 4096"}),
    (200_000, {"unknown": ("mystery",)}, {"mixed": "context too small for max_tokens: largest known is 131072",
                                          "small": "context too small for max_tokens: largest known is 4096"}),
])
def test_max_tokens(max_tokens: int, expected: dict[str, tuple[str, ...]], excluded: dict[str, str]) -> None:
    ranking = rank(*world(
        state("small", models=served(LLAVA)),
        state("mixed", models=served(LLAVA, BIG)),
        state("unknown", models=served("mystery")),  # unknown context never excludes
    ), Criteria(max_tokens=max_tokens), NOW)
    assert {e.provider: e.models for e in ranking.entries} == expected
    assert {name: reasons[0] for name, reasons in ranking.excluded.items()} == excluded


def test_criteria_combine_on_the_same_model() -> None:
    # llava has vision but only 4k; the 70b has 128k but no vision: nothing fits both
    ranking = rank(*world(state("mixed", models=served(LLAVA, BIG))),
                   Criteria(required_capabilities=frozenset({"vision"}), max_tokens=8192), NOW)
    assert ranking.excluded == {"mixed": ("context too small for max_tokens: largest known is 4096",)}


def test_allow_list() -> None:
    states, specs = world(state("a"), state("b"), state("c", Status.DOWN))
    ranking = rank(states, specs, Criteria.from_mapping({"providers": "b,c,ghost"}), NOW)
    assert [e.provider for e in ranking.entries] == ["b"]
    assert set(ranking.excluded) == {"c", "ghost"} and ranking.excluded["ghost"] == ("not configured",)


def test_excluded_lists_every_reason() -> None:
    ranking = rank(*world(state("a", Status.DOWN, models=served(LLAMA))), Criteria(model="gpt-4o"), NOW)
    assert ranking.excluded["a"][0].startswith("status down") and ranking.excluded["a"][1] == (
        "model 'gpt-4o' not served")


@pytest.mark.parametrize(("failed_s_ago", "below_steady"), [
    (10.0, True),  # just recovered
    (600.0, True),
    (86400.0, False),  # a day ago: recency has decayed to nothing
])
def test_just_recovered_ranks_below_steady(failed_s_ago: float, below_steady: bool) -> None:
    # "recovered" is named to win the name tie-break, so only recency can put it second
    ranking = rank(*world(state("recovered", failed_s_ago=failed_s_ago), state("steady")), Criteria(), NOW)
    assert [e.provider for e in ranking.entries] == (["steady", "recovered"] if below_steady
                                                     else ["recovered", "steady"])
    if below_steady:
        assert ranking.entries[1].components["recency"] < ranking.entries[0].components["recency"] == 1.0


def test_few_samples_count_less_than_many() -> None:
    ranking = rank(*world(state("fresh", samples=3), state("known", samples=90)), Criteria(), NOW)
    assert [e.provider for e in ranking.entries] == ["known", "fresh"]
    assert ranking.entries[1].components["availability"] < ranking.entries[0].components["availability"]


def test_availability_orders_providers() -> None:
    assert order(Criteria(), state("flaky", samples=90, ok=60), state("solid", samples=90, ok=89)) == [
        "solid", "flaky"]


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, ["a", "b", "c"]),  # all equal: name ascending
    ({"c": {"priority": 1}}, ["c", "a", "b"]),
    ({"b": {"priority": -1}}, ["a", "c", "b"]),
    ({"b": {"weight": 2.0}}, ["b", "a", "c"]),
    ({"a": {"weight": 0.5}}, ["b", "c", "a"]),
])
def test_ties_priority_and_weight(kwargs: dict[str, dict[str, Any]], expected: list[str]) -> None:
    assert order(Criteria(), state("c"), state("a"), state("b"), **kwargs) == expected


def test_priority_breaks_exact_score_ties() -> None:
    states, specs = world(state("a"), state("b"))
    specs["a"] = spec("a", priority=1, weight=0.0)  # weight 0: both score exactly 0
    specs["b"] = spec("b", priority=3, weight=0.0)
    ranking = rank(states, specs, Criteria(), NOW)
    assert [(e.provider, e.score) for e in ranking.entries] == [("b", 0.0), ("a", 0.0)]


@pytest.mark.parametrize(("preference", "expected"), [
    (QualityPreference.FAST, ["quick", "large"]),
    (QualityPreference.BALANCED, ["quick", "large"]),
    (QualityPreference.QUALITY, ["large", "quick"]),
])
def test_quality_preference(preference: QualityPreference, expected: list[str]) -> None:
    ranking = rank(*world(state("quick", models=served(LLAMA), latency_ms=20.0),
                          state("large", models=served(BIG), latency_ms=400.0)),
                   Criteria(quality_preference=preference), NOW)
    assert [e.provider for e in ranking.entries] == expected
    assert ranking.entries[0].components["quality"] != ranking.entries[1].components["quality"]


def test_latency_is_relative_to_the_best_candidate() -> None:
    ranking = rank(*world(state("a", latency_ms=100.0), state("b", latency_ms=250.0), state("c", latency_ms=None)),
                   Criteria(), NOW)
    assert {e.provider: e.components["latency"] for e in ranking.entries} == {"a": 1.0, "b": 0.5, "c": 0.0}


def test_components_and_json() -> None:
    ranking = rank(*world(state("a", models=served(LLAMA))), Criteria(model="llama*"), NOW)
    entry = ranking.entries[0]
    assert set(entry.components) == {"availability", "reported_availability", "speed", "reported_speed", "latency",
                                     "recency", "priority", "quality", "task_fit", "weight", "status_factor",
                                     "headroom", "warm"}
    assert set(entry.evidence) == set(entry.components)
    assert 0.0 < entry.score <= 1.0
    body = ranking.to_dict()
    assert body["criteria"]["model"] == "llama*" and body["entries"][0]["models"] == ["llama3.1:8b"]
    assert body["generated_at"] == "2025-01-01T12:00:00+00:00" and body["excluded"] == {}


def test_limit() -> None:
    states, specs = world(*(state(f"p{i}", latency_ms=10.0 * (i + 1)) for i in range(5)))
    assert [e.provider for e in rank(states, specs, Criteria(), NOW, limit=2).entries] == ["p0", "p1"]
    assert rank(states, specs, Criteria(), NOW, limit=0).entries == ()
    assert len(rank(states, specs, Criteria(), NOW, limit=10).entries) == 5


def test_ranker_reuses_preparation_until_a_state_changes() -> None:
    ranker = Ranker()
    states, specs = world(state("a"), state("b", latency_ms=500.0))
    first = ranker.rank(states, specs, Criteria(), NOW)
    again = ranker.rank(dict(reversed(states.items())), specs, Criteria(), NOW)
    assert first == again  # same inputs, same answer, whatever the mapping order
    states["a"] = state("a", Status.DOWN)
    assert [e.provider for e in ranker.rank(states, specs, Criteria(), NOW).entries] == ["b"]
    del specs["b"]
    ranking = ranker.rank(states, specs, Criteria(), NOW)
    assert ranking.entries == () and set(ranking.excluded) == {"a"}


def test_nothing_configured() -> None:
    ranking = rank({}, {}, Criteria(), NOW)
    assert ranking.entries == () and ranking.excluded == {} and ranking.best is None


@pytest.mark.parametrize(("successes", "samples", "expected"), [
    (0, 0, 0.0),
    (3, 3, 0.4385),
    (90, 90, 0.9591),
    (45, 90, 0.3988),
    (0, 10, 0.0),
])
def test_wilson_lower_bound(successes: int, samples: int, expected: float) -> None:
    assert wilson_lower_bound(successes, samples) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("text", "billions"), [
    ("7B", 7.0), ("8.0B", 8.0), ("137M", 0.137), ("1.5T", 1500.0), ("", None), (None, None),
    ("llama3.1:70b-instruct-q4_K_M", 70.0), ("mixtral-8x7b", 56.0), ("Qwen/Qwen2.5-7B-Instruct", 7.0),
    ("deepseek-r1:1.5b", 1.5), ("phi-3-mini-4k-instruct", None), ("gpt-4o", None),
])
def test_parameter_billions(text: str | None, billions: float | None) -> None:
    assert parameter_billions(text) == billions


def test_model_quality_prefers_size_and_context() -> None:
    assert model_quality(BIG, BIG.id) > model_quality(CODER, CODER.id) > model_quality(LLAMA, LLAMA.id)
    assert model_quality(None, "mystery") == 0.25


@pytest.mark.parametrize(("raw", "expected"), [
    ({}, Criteria()),
    ({"task_type": "Code_Generation"}, Criteria(task_type=TaskType.CODE_GENERATION)),
    ({"required_capabilities": "vision, tools"}, Criteria(required_capabilities=frozenset({"vision", "tools"}))),
    ({"required_capabilities": ["Embedding"]}, Criteria(required_capabilities=frozenset({"embeddings"}))),
    ({"max_tokens": "8192"}, Criteria(max_tokens=8192)),
    ({"max_tokens": 100}, Criteria(max_tokens=100)),
    ({"quality_preference": "FAST"}, Criteria(quality_preference=QualityPreference.FAST)),
    ({"model": " llama3* "}, Criteria(model="llama3*")),
    ({"providers": ["a", "b"]}, Criteria(providers=frozenset({"a", "b"}))),
    ({"model": None, "task_type": None}, Criteria()),
])
def test_criteria_from_mapping(raw: dict[str, Any], expected: Criteria) -> None:
    parsed = Criteria.from_mapping(raw)
    assert parsed == expected
    assert Criteria.from_mapping({k: v for k, v in parsed.to_dict().items() if v not in (None, [])}) == parsed


@pytest.mark.parametrize(("raw", "message"), [
    ({"modle": "x"}, "unknown criteria field(s): modle; expected any of task_type, required_capabilities"),
    ({"task_type": "poetry"}, "task_type: 'poetry' is not one of chat, completion, code_generation"),
    ({"task_type": 3}, "task_type: expected a string, got int"),
    ({"quality_preference": "best"}, "quality_preference: 'best' is not one of fast, balanced, quality"),
    ({"max_tokens": "-5"}, "max_tokens: expected a positive integer, got '-5'"),
    ({"max_tokens": 0}, "max_tokens: expected a positive integer, got 0"),
    ({"max_tokens": True}, "max_tokens: expected a positive integer, got True"),
    ({"max_tokens": "lots"}, "max_tokens: expected a positive integer, got 'lots'"),
    ({"model": ""}, "model: must not be empty"),
    ({"model": 5}, "model: expected a string, got int"),
    ({"required_capabilities": "vision,,tools"}, "required_capabilities: every entry must be a non-empty string"),
    ({"required_capabilities": "vi sion"}, "required_capabilities: 'vi sion' is not a capability name"),
    ({"required_capabilities": 7}, "required_capabilities: expected a list of strings"),
    ({"providers": []}, "providers: must name at least one entry"),
    ({"providers": ["a", 1]}, "providers: every entry must be a non-empty string, got 1"),
])
def test_criteria_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        Criteria.from_mapping(raw)


def test_criteria_to_dict() -> None:
    criteria = Criteria(task_type=TaskType.CHAT, required_capabilities=frozenset({"vision", "tools"}),
                        providers=frozenset({"b", "a"}))
    assert criteria.to_dict() == {"task_type": "chat", "required_capabilities": ["tools", "vision"],
                                  "max_tokens": None, "quality_preference": "balanced", "model": None,
                                  "providers": ["a", "b"], "max_queue": None}


def test_criteria_built_in_code_are_normalised_too() -> None:
    ranking = rank(*world(state("e", models=served(EMBED))), Criteria(required_capabilities=frozenset({"embedding"})),
                   NOW)
    assert [e.provider for e in ranking.entries] == ["e"]


def test_a_new_max_tokens_reuses_the_cached_fit_when_it_changes_nothing() -> None:
    """Selection code sends a different max_tokens nearly every request: fits are keyed on what it decides."""
    from monitord.ranking import Ranker

    now = datetime(2025, 1, 1, tzinfo=UTC)
    spec = ProviderSpec(name="p", type="vllm", base_url="http://127.0.0.1:8000")
    state = ProviderState(name="p", type="vllm", status=Status.UP, samples=10, samples_ok=10,
                          models=(ServedModel("m", ModelInfo(id="m", context_length=8192), now, now),))
    ranker = Ranker()
    for max_tokens in (100, 2000, 8000, 8192):
        assert ranker.rank({"p": state}, {"p": spec}, Criteria(max_tokens=max_tokens), now).entries
    assert len(ranker._prepared["p"].fits) == 1
    assert ranker.rank({"p": state}, {"p": spec}, Criteria(max_tokens=8193), now).excluded["p"]
    assert len(ranker._prepared["p"].fits) == 2


# --- where to send the request ---


@pytest.mark.parametrize(("provider_type", "base_url", "chat_endpoint", "expected"), [
    ("llamacpp", "http://127.0.0.1:8080", None,
     ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1/chat/completions")),
    ("vllm", "https://user:pw@gpu.lan:8443/llm", None,
     ("https://gpu.lan:8443/llm", "https://gpu.lan:8443/llm/v1", "https://gpu.lan:8443/llm/v1/chat/completions")),
    ("openai", "http://[::1]:9000", "/openai/v1/chat/completions",
     ("http://[::1]:9000", "http://[::1]:9000/openai/v1", "http://[::1]:9000/openai/v1/chat/completions")),
    ("ollama", "http://127.0.0.1:11434", "/api/chat",
     ("http://127.0.0.1:11434", "http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/api/chat")),
    ("koboldai", "http://127.0.0.1:5000", None, ("http://127.0.0.1:5000", None, None)),
    ("tgi", "http://u:pa/ss@127.0.0.1:3000", None,  # a password with a slash is still userinfo
     ("http://127.0.0.1:3000", "http://127.0.0.1:3000/v1", "http://127.0.0.1:3000/v1/chat/completions")),
    ("koboldcpp", "http://127.0.0.1:5001", None,
     ("http://127.0.0.1:5001", "http://127.0.0.1:5001/v1", "http://127.0.0.1:5001/v1/chat/completions")),
])
def test_urls_name_the_openai_base_and_never_the_userinfo(provider_type: str, base_url: str,
                                                          chat_endpoint: str | None,
                                                          expected: tuple[str, str | None, str | None]) -> None:
    urls = provider_urls(ProviderSpec("p", provider_type, base_url, chat_endpoint=chat_endpoint))
    assert (urls.endpoint, urls.api_base, urls.chat_url) == expected


def test_each_entry_names_the_model_that_best_fits() -> None:
    coder = ModelInfo("qwen2.5-coder:7b", parameter_size="7B")
    big = ModelInfo("llama3.1:70b", parameter_size="70B")
    states, specs = world(state("a", models=served(coder, big)))
    assert rank(states, specs, Criteria(), NOW).entries[0].model == "llama3.1:70b"
    assert rank(states, specs, Criteria(task_type=TaskType.CODE_GENERATION), NOW).entries[0].model == coder.id
    assert rank(states, specs, Criteria(model="QWEN*"), NOW).entries[0].model == coder.id
    states, specs = world(state("b"))
    entry = rank(states, specs, Criteria(), NOW).entries[0]
    assert entry.model is None and entry.api_base == "http://b:11434/v1"


# -- speed: canary TTFT and tokens/s where samples exist, control-plane latency per request otherwise ------------

def measured(provider: str, model: str, ttft_ms: float | None, tps: float | None, *, ok: int = 12,
             last_ok_s_ago: float = 30.0, total_ms: float | None = None) -> GenerationStats:
    return GenerationStats(provider=provider, model=model, samples=ok, samples_ok=ok, ttft_p50_ms=ttft_ms,
                           ttft_p95_ms=ttft_ms, tokens_per_s_p50=tps, total_p50_ms=total_ms,
                           last_sample_at=ago(last_ok_s_ago), last_ok_at=ago(last_ok_s_ago))


def test_speed_ranks_by_what_users_wait_for_not_by_the_control_plane() -> None:
    # "quick" answers its health routes in 5 ms but takes 2 s to the first token; "steady" is the reverse.
    states, specs = world(state("quick", models=served(LLAMA), latency_ms=5.0),
                          state("steady", models=served(LLAMA), latency_ms=300.0))
    generation = {"quick": {LLAMA.id: measured("quick", LLAMA.id, 2000.0, 20.0)},
                  "steady": {LLAMA.id: measured("steady", LLAMA.id, 150.0, 60.0)}}
    blind = rank(states, specs, Criteria(quality_preference=QualityPreference.FAST), NOW)
    assert [e.provider for e in blind.entries] == ["quick", "steady"]
    seen = rank(states, specs, Criteria(quality_preference=QualityPreference.FAST), NOW, generation=generation)
    assert [e.provider for e in seen.entries] == ["steady", "quick"]
    steady, quick = seen.entries
    assert steady.components["speed"] == 1.0
    assert quick.components["speed"] == pytest.approx(0.6 * 200 / 2050 + 0.4 * 20 / 60)  # fast: TTFT weighs 0.6
    assert quick.components["latency"] == 1.0  # still reported, no longer in the score
    assert steady.evidence["speed"] == Evidence(12, 30.0, "canary", LLAMA.id)


def test_speed_rests_on_the_model_the_criteria_ask_for() -> None:
    states, specs = world(state("a", models=served("small-1b", "big-70b")), state("b", models=served("big-70b")))
    generation = {"a": {"small-1b": measured("a", "small-1b", 40.0, 200.0),
                        "big-70b": measured("a", "big-70b", 900.0, 8.0)},
                  "b": {"big-70b": measured("b", "big-70b", 300.0, 16.0)}}
    ranking = rank(states, specs, Criteria(model="big-70b", quality_preference=QualityPreference.FAST), NOW,
                   generation=generation)
    assert [e.provider for e in ranking.entries] == ["b", "a"]
    assert ranking.entries[1].evidence["speed"].model == "big-70b"
    small = rank(states, specs, Criteria(model="small-1b"), NOW, generation=generation)
    assert small.entries[0].evidence["speed"].model == "small-1b" and small.entries[0].components["speed"] == 1.0


def test_without_samples_speed_falls_back_to_the_control_plane_and_says_so() -> None:
    plain = ProviderState(name="a", type="ollama", status=Status.UP, samples=20, samples_ok=20,
                          latency_ewma_ms=90.0, request_latency_ms=30.0, request_samples=20, last_probe_at=ago(4))
    restarted = ProviderState(name="b", type="ollama", status=Status.UP, samples=5, samples_ok=5,
                              latency_ewma_ms=60.0, last_probe_at=ago(2))
    specs = {"a": spec("a"), "b": spec("b")}
    ranking = rank({"a": plain, "b": restarted}, specs, Criteria(), NOW,
                   generation={"a": {"other": measured("a", "other", 10.0, 99.0)}})  # "other" is not listed by "a"
    by_name = {e.provider: e for e in ranking.entries}
    a, b = by_name["a"], by_name["b"]
    assert a.components["latency"] == 1.0 and b.components["latency"] == pytest.approx(80 / 110)
    assert b.components["speed"] == b.components["latency"]
    assert a.evidence["latency"] == Evidence(20, 4.0, "requests")
    assert b.evidence["speed"] == b.evidence["latency"] == Evidence(5, 2.0, "probes")  # no request timings yet
    assert a.evidence["availability"] == Evidence(20, 4.0, "probes") and a.evidence["priority"].source == "config"
    assert a.to_dict()["evidence"]["latency"] == {"samples": 20, "age_s": 4.0, "source": "requests",
                                                     "model": None}


def test_a_model_with_only_failed_or_skipped_canaries_has_no_speed() -> None:
    states, specs = world(state("a", models=served(LLAMA)))
    failing = GenerationStats(provider="a", model=LLAMA.id, samples=3, samples_ok=0, skipped=2, last_sample_at=ago(5),
                              last_error_class=ErrorClass.GENERATION_TIMEOUT, last_error_at=ago(5))
    entry = rank(states, specs, Criteria(), NOW, generation={"a": {LLAMA.id: failing}}).entries[0]
    assert entry.evidence["speed"].source != "canary"


def test_an_embedding_model_is_timed_by_its_whole_answer() -> None:
    states, specs = world(state("a", models=served(EMBED)), state("b", models=served(EMBED)),
                          a={"capabilities": frozenset({"embeddings"})}, b={"capabilities": frozenset({"embeddings"})})
    generation = {name: {EMBED.id: measured(name, EMBED.id, None, None, total_ms=ms)}
                  for name, ms in (("a", 80.0), ("b", 20.0))}
    ranking = rank(states, specs, Criteria(task_type=TaskType.EMBEDDING), NOW, generation=generation)
    assert [(e.provider, e.components["speed"]) for e in ranking.entries] == [("b", 1.0), ("a", 70 / 130)]


def test_ranker_prepares_again_when_a_providers_statistics_change() -> None:
    ranker = Ranker()
    states, specs = world(state("a", models=served(LLAMA)), state("b", models=served(LLAMA)))
    slow_a = {"a": {LLAMA.id: measured("a", LLAMA.id, 900.0, 5.0)},
              "b": {LLAMA.id: measured("b", LLAMA.id, 100.0, 50.0)}}
    fast = Criteria(quality_preference=QualityPreference.FAST)
    assert ranker.rank(states, specs, fast, NOW, generation=slow_a).best.provider == "b"  # type: ignore[union-attr]
    fast_a = {**slow_a, "a": {LLAMA.id: measured("a", LLAMA.id, 50.0, 80.0)}}
    assert ranker.rank(states, specs, fast, NOW, generation=fast_a).best.provider == "a"  # type: ignore[union-attr]


def test_a_misconfigured_provider_is_excluded_with_the_hint() -> None:
    hint = "configured as vllm, but the server looks like llamacpp (Server: llama.cpp header): use `type: llamacpp`"
    states = {"a": replace(state("a", status=Status.MISCONFIGURED), last_error=hint), "b": state("b")}
    ranking = rank(states, {"a": spec("a"), "b": spec("b")}, Criteria(), NOW)
    assert [e.provider for e in ranking.entries] == ["b"]
    assert ranking.excluded["a"] == (f"status misconfigured ({hint})",)


# -- capacity: headroom, saturation, cold loads, max_queue ---------------------------------------------------------

def loaded(base: ProviderState, **load: Any) -> ProviderState:
    return replace(base, capacity=Capacity(**load))


@pytest.mark.parametrize(("load", "expected"), [
    (None, UNKNOWN_HEADROOM),
    (Capacity(), UNKNOWN_HEADROOM),
    (Capacity(slots_total=4, slots_busy=1), 0.75),
    (Capacity(slots_total=2, slots_busy=2), 0.0),
    (Capacity(queue_depth=0), 1.0),
    (Capacity(queue_depth=3), 0.25),
    (Capacity(queue_depth=0, kv_cache_usage=0.9), pytest.approx(0.1)),
    (Capacity(slots_total=4, slots_busy=0, queue_depth=1), 0.5),  # the tightest part wins
])
def test_headroom(load: Capacity | None, expected: Any) -> None:
    assert headroom(load) == expected


def test_an_idle_server_ranks_above_a_busy_twin_and_a_saturated_one_below_every_unsaturated() -> None:
    base = state("x", models=served(LLAMA))
    idle = loaded(replace(base, name="idle"), slots_total=2, slots_busy=0)
    busy = loaded(replace(base, name="busy"), slots_total=2, slots_busy=1)
    full = loaded(replace(base, name="full", latency_ewma_ms=5.0, request_latency_ms=5.0), slots_total=1,
                  slots_busy=1)  # the fastest, but every slot is taken
    silent = replace(base, name="silent")  # publishes nothing
    ranking = rank(*world(idle, busy, full, silent), Criteria(), NOW)
    assert [e.provider for e in ranking.entries] == ["idle", "busy", "silent", "full"]
    by_name = {e.provider: e for e in ranking.entries}
    assert [by_name[n].components["headroom"] for n in ("idle", "busy", "silent", "full")] == [1.0, 0.5, 0.5, 0.0]
    assert by_name["full"].evidence["headroom"].source == "capacity"


def test_a_degraded_server_stays_below_a_saturated_up_one() -> None:
    full = loaded(state("full", models=served(LLAMA)), queue_depth=4)
    degraded = state("degraded", Status.DEGRADED, models=served(LLAMA))
    assert order(Criteria(), full, degraded) == ["full", "degraded"]


def test_max_queue_excludes_known_queues_over_it_with_the_reason() -> None:
    short = loaded(state("short", models=served(LLAMA)), queue_depth=1)
    long = loaded(state("long", models=served(LLAMA)), queue_depth=5)
    silent = state("silent", models=served(LLAMA))
    ranking = rank(*world(short, long, silent), Criteria(max_queue=2), NOW)
    assert {e.provider for e in ranking.entries} == {"short", "silent"}  # a queue nobody publishes is kept
    assert ranking.excluded == {"long": ("queue of 5 waiting request(s) is over max_queue 2",)}
    strict = rank(*world(short, long, silent), Criteria(max_queue=0), NOW)
    assert set(strict.excluded) == {"short", "long"}


def test_max_queue_parses_and_refuses_bad_values() -> None:
    assert Criteria.from_mapping({"max_queue": "0"}).max_queue == 0
    assert Criteria.from_mapping({"max_queue": 3}).to_dict()["max_queue"] == 3
    for bad in (-1, "x", 1.5, True):
        with pytest.raises(ValueError, match="max_queue"):
            Criteria.from_mapping({"max_queue": bad})


def test_a_model_that_must_be_loaded_first_costs_the_cold_load_factor() -> None:
    warm = loaded(state("warm", models=served(LLAMA)), resident_models=(ResidentModel(LLAMA.id),))
    cold = loaded(state("cold", models=served(LLAMA)), resident_models=())
    unsaid = state("unsaid", models=served(LLAMA))  # no word on what is resident: no penalty
    ranking = rank(*world(cold, unsaid, warm), Criteria(model=LLAMA.id), NOW)
    by_name = {e.provider: e for e in ranking.entries}
    assert [by_name[n].components["warm"] for n in ("warm", "cold", "unsaid")] == [1.0, COLD_LOAD_FACTOR, 1.0]
    assert by_name["cold"].score == pytest.approx(by_name["unsaid"].score * COLD_LOAD_FACTOR)
    assert ranking.entries[-1].provider == "cold"
    assert by_name["cold"].evidence["warm"] == Evidence(1, None, "capacity", LLAMA.id)
    assert warm_factor(frozenset({"a"}), "b") == COLD_LOAD_FACTOR and warm_factor(None, "b") == 1.0


# --- suspect and reported outcomes ---


def test_a_suspect_ranks_below_every_healthy_provider_and_above_the_degraded() -> None:
    states, specs = world(state("fast", latency_ms=5.0), state("slow", latency_ms=900.0, samples=10, ok=6),
                          state("meh", Status.DEGRADED))
    states["fast"] = replace(states["fast"], suspect=True)
    ranking = rank(states, specs, Criteria(), NOW)
    assert [(e.provider, e.suspect) for e in ranking.entries] == [("slow", False), ("fast", True), ("meh", False)]
    assert ranking.entries[1].to_dict()["suspect"] is True


def test_reports_count_apart_from_probes_and_pull_the_score() -> None:
    states, specs = world(state("a"), state("b"))
    without = rank(states, specs, Criteria(), NOW).entries
    assert [e.components["reported_availability"] for e in without] == [e.components["availability"]
                                                                         for e in without]
    assert [e.components["reported_speed"] for e in without] == [e.components["latency"] for e in without]
    # a's real requests fail half the time and take 4 s to a first token; b's are fine and quick
    states["a"] = replace(states["a"], reports=40, reports_ok=20, report_ttft_p50_ms=4000.0)
    states["b"] = replace(states["b"], reports=40, reports_ok=40, report_ttft_p50_ms=300.0)
    entries = {e.provider: e for e in rank(states, specs, Criteria(), NOW).entries}
    a, b = entries["a"], entries["b"]
    assert a.components["availability"] == b.components["availability"]  # probes saw no difference
    assert a.components["reported_availability"] < 0.6 < 0.95 < b.components["reported_availability"]
    assert b.components["reported_speed"] == 1.0 and a.components["reported_speed"] < 0.1
    assert b.score > a.score
    # few good reports never cost a provider against one nobody used
    states["a"] = replace(states["a"], reports=2, reports_ok=2, report_ttft_p50_ms=None)
    states["b"] = replace(states["b"], reports=0, reports_ok=0, report_ttft_p50_ms=None)
    entries = {e.provider: e for e in rank(states, specs, Criteria(), NOW).entries}
    assert entries["a"].score >= entries["b"].score
