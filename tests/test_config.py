"""Config loading: the sample and good configs load, every broken config says what and where, secrets stay hidden."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from monitord.config import Config, ConfigError, load_config, parse_config
from monitord.model import Secret
from monitord.providers import ADAPTERS

REPO = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
GOOD = sorted((CONFIGS / "good").glob("*.yaml"))
BAD = sorted((CONFIGS / "bad").glob("*.yaml"))
GOOD_ENV = {"VLLM_API_KEY": "sk-vllm-from-env", "GPU_A_PASSWORD": "gpu-a-password"}


def one_provider(extra: str = "", provider: str = "") -> str:
    """A config with one vllm provider named 'p'; `provider` lines go under it, `extra` at the top."""
    return f"providers:\n  p:\n    type: vllm\n{provider}{extra}"


def problems_of(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=env or {})
    return caught.value


# ---------------------------------------------------------------------------------------------- files


def test_sample_config_loads_and_lists_every_provider_type() -> None:
    config = load_config(REPO / "monitord.yaml", env={})

    specs = config.provider_specs()
    assert {spec.type for spec in specs} == set(ADAPTERS)
    assert len({spec.name for spec in specs}) == len(specs)
    assert config.storage.url == "sqlite+aiosqlite:///monitord.db"
    assert all(spec.api_key is None for spec in specs)  # ${..._API_KEY:-} with nothing set
    assert config.api.token is None


def test_sample_config_takes_api_keys_from_the_environment() -> None:
    config = load_config(REPO / "monitord.yaml", env={"VLLM_API_KEY": "sk-sample"})

    vllm = next(spec for spec in config.provider_specs() if spec.name == "vllm")
    assert vllm.api_key == Secret("sk-sample")
    assert vllm.base_url == "http://127.0.0.1:8000"


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_configs_load(path: Path) -> None:
    config = load_config(path, env=GOOD_ENV)

    assert config.provider_specs()
    json.dumps(config.redacted())  # plain data all the way down


def test_the_users_existing_providers_block_loads_verbatim() -> None:
    config = load_config(CONFIGS / "good" / "seed_format.yaml", env=GOOD_ENV)

    vllm, localai, ollama = config.provider_specs()
    assert vllm.base_url == "http://localhost:8000"
    assert vllm.api_key == Secret("sk-vllm-from-env")
    assert vllm.models == ("meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-Coder-7B-Instruct")
    assert (vllm.timeout_s, vllm.max_retries, vllm.streaming_support) == (30.0, 3, True)
    assert vllm.headers == (("X-Request-Source", Secret("monitord")),)
    assert (vllm.model_endpoint, vllm.chat_endpoint) == ("/v1/models", "/v1/chat/completions")
    assert localai.api_key is None  # "" means no key
    assert localai.models == ("gpt-4",)  # a single string is a list of one
    assert localai.enabled is False
    assert localai.model_endpoint == "/v1/models"  # leading slash added
    assert "streaming" not in localai.capabilities
    assert (ollama.timeout_s, ollama.max_retries) == (120.0, 2)


def test_every_key_of_the_full_config_arrives() -> None:
    config = load_config(CONFIGS / "good" / "full.yaml", env=GOOD_ENV)

    gpu, tgi = config.provider_specs()
    assert gpu.name == "gpu-a.vllm" and gpu.type == "vllm"
    assert gpu.base_url == "https://admin:gpu-a-password@gpu-a.lan:8443/proxy"
    assert gpu.api_key == Secret("sk-local")
    assert gpu.headers == (("X-Team", Secret("${NOT_INTERPOLATED}")),)
    assert (gpu.timeout_s, gpu.retry_backoff_s, gpu.probe_interval_s) == (2.5, 0.1, 60.0)
    assert gpu.capabilities == {"chat", "completion", "streaming", "tools", "code_generation", "vision"}
    assert (gpu.priority, gpu.weight, gpu.max_body_bytes) == (5, 2.5, 2 * 1024 * 1024)
    assert (gpu.health_endpoint, gpu.ca_file, gpu.verify_tls) == ("/health", "/etc/ssl/internal-ca.pem", True)
    assert tgi.verify_tls is False
    assert (tgi.timeout_s, tgi.probe_interval_s) == (5.0, 60.0)  # monitor's values
    assert (config.monitor.interval_s, config.monitor.jitter_s, config.monitor.concurrency) == (60.0, 5.0, 8)
    assert config.storage.url == "postgresql+asyncpg://monitord:secret@127.0.0.1:5432/monitord"
    assert (config.storage.batch_size, config.storage.flush_interval_s, config.storage.buffer_limit) == (
        100, 0.25, 5000)
    assert (config.api.host, config.api.port, config.api.token) == ("::1", 9000, Secret("api-token"))
    ops, discord = config.alerts.webhooks
    assert (ops.name, ops.format, ops.secret, ops.timeout_s) == ("ops", "slack", Secret("hook-secret"), 3.0)
    assert ops.events == ("down", "recovered") and ops.providers == ("gpu-a.vllm", "lab_*")
    assert discord.name == "discord.com"  # derived from the URL
    first, second = config.alerts.silences
    assert first.start is not None and first.end.utcoffset() is not None and first.start < first.end
    assert second.start is None
    assert (config.alerts.failure_threshold, config.alerts.success_threshold) == (5, 1)
    assert config.ranking.window_s == 3600.0
    assert (config.logging.level, config.logging.format) == ("debug", "json")


def test_anchors_merge_and_empty_sections() -> None:
    config = load_config(CONFIGS / "good" / "anchors.yaml", env={})

    box1, box2 = config.provider_specs()
    assert (box1.timeout_s, box1.max_retries) == (5.0, 1)
    assert (box2.timeout_s, box2.max_retries) == (8.0, 1)
    assert config.alerts.webhooks == () and config.monitor.interval_s == 30.0


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_configs_say_what_is_wrong_and_where(path: Path) -> None:
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# expect: "), "each bad config starts with '# expect: <message>'"
    expected = first_line.removeprefix("# expect: ")

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"API_TOKEN": "unused"})

    assert expected in str(caught.value)


def test_the_bad_corpus_covers_many_mistakes() -> None:
    assert len(BAD) >= 30


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")

    assert str(caught.value) == f"{tmp_path / 'nope.yaml'}: no such file"


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(tmp_path)


# ---------------------------------------------------------------------------------------------- defaults


def test_a_config_of_only_providers_gets_every_default() -> None:
    config = parse_config("providers:\n  o:\n    type: ollama\n", env={})

    assert (config.monitor.interval_s, config.monitor.jitter_s) == (30.0, 0.0)
    assert (config.monitor.concurrency, config.monitor.timeout_s) == (64, 10.0)
    assert config.storage.url == "sqlite+aiosqlite:///monitord.db"
    assert (config.storage.batch_size, config.storage.flush_interval_s, config.storage.buffer_limit) == (
        500, 1.0, 100_000)
    assert (config.api.host, config.api.port, config.api.token) == ("127.0.0.1", 8765, None)
    assert (config.alerts.failure_threshold, config.alerts.success_threshold) == (3, 2)
    assert config.alerts.webhooks == () and config.alerts.silences == ()
    assert config.ranking.window_s == 900.0
    assert (config.logging.level, config.logging.format) == ("info", "auto")


@pytest.mark.parametrize("provider_type", sorted(ADAPTERS))
def test_each_type_gets_its_own_defaults(provider_type: str) -> None:
    defaults = ADAPTERS[provider_type].defaults

    (spec,) = parse_config(f"providers:\n  p:\n    type: {provider_type}\n", env={}).provider_specs()

    assert spec.base_url == f"{defaults.scheme}://127.0.0.1:{defaults.port}"
    assert spec.capabilities == defaults.capabilities
    assert spec.streaming_support is defaults.streaming
    assert (spec.timeout_s, spec.probe_interval_s, spec.max_retries) == (10.0, 30.0, 2)
    assert (spec.max_body_bytes, spec.weight, spec.priority, spec.verify_tls) == (1 << 20, 1.0, 0, True)
    assert spec.enabled and spec.api_key is None and spec.models == ()


def test_provider_timeout_and_interval_fall_back_to_monitor() -> None:
    config = parse_config(
        "providers:\n"
        "  own: {type: vllm, parameters: {timeout: 3s, probe_interval: 5s}}\n"
        "  inherits: {type: vllm}\n"
        "monitor: {interval: 2m, timeout: 7s}\n",
        env={},
    )

    own, inherits = config.provider_specs()
    assert (own.timeout_s, own.probe_interval_s) == (3.0, 5.0)
    assert (inherits.timeout_s, inherits.probe_interval_s) == (7.0, 120.0)


def test_retry_interval_defaults_to_the_smaller_of_the_interval_and_5s() -> None:
    config = parse_config(
        "providers:\n"
        "  slow: {type: vllm}\n"
        "  quick: {type: vllm, parameters: {probe_interval: 2s}}\n"
        "  own: {type: vllm, parameters: {retry_interval: 1500ms}}\n"
        "  capped: {type: vllm, parameters: {probe_interval: 3s, retry_interval: 10s}}\n",
        env={},
    )
    assert [s.retry_interval_s for s in config.provider_specs()] == [5.0, 2.0, 1.5, 3.0]
    assert "retry_interval" in str(problems_of(one_provider(provider="    parameters: {retry_interval: 0}\n")))


@pytest.mark.parametrize(
    ("provider_lines", "expected"),
    [
        ("", {"chat", "completion", "streaming"}),
        ("    capabilities: [vision]\n", {"chat", "completion", "streaming", "vision"}),
        ("    capabilities: Tools\n    parameters: {capabilities: [code_generation, tools]}\n",
         {"chat", "completion", "streaming", "tools", "code_generation"}),
        ("    parameters: {streaming_support: false}\n", {"chat", "completion"}),
    ],
)
def test_capabilities_are_type_defaults_plus_configured(provider_lines: str, expected: set[str]) -> None:
    (spec,) = parse_config(one_provider(provider=provider_lines), env={}).provider_specs()

    assert spec.capabilities == expected


def test_streaming_support_true_adds_streaming_to_a_type_without_it() -> None:
    text = "providers:\n  g:\n    type: gpt4all\n    parameters: {streaming_support: true}\n"

    (spec,) = parse_config(text, env={}).provider_specs()

    assert spec.streaming_support is True and "streaming" in spec.capabilities


def test_disabled_providers_are_kept_in_order() -> None:
    text = "providers:\n  b: {type: vllm}\n  a: {type: ollama, enabled: false}\n  c: {type: tgi}\n"

    specs = parse_config(text, env={}).provider_specs()

    assert [(s.name, s.enabled) for s in specs] == [("b", True), ("a", False), ("c", True)]


def test_unnamed_webhooks_get_unique_names_from_their_host() -> None:
    text = one_provider(
        "alerts:\n  webhooks:\n"
        "    - url: https://hooks.example.com/a\n"
        "    - {name: hooks.example.com-2, url: https://x.example.com/}\n"
        "    - url: https://hooks.example.com/b\n"
    )

    hooks = parse_config(text, env={}).alerts.webhooks

    assert [hook.name for hook in hooks] == ["hooks.example.com", "hooks.example.com-2", "hooks.example.com-3"]


def test_top_level_x_keys_hold_anchors_and_are_ignored() -> None:
    text = "x-defaults: &d {timeout: 4s}\nproviders:\n  p: {type: vllm, parameters: *d}\n"

    (spec,) = parse_config(text, env={}).provider_specs()

    assert spec.timeout_s == 4.0


def test_config_objects_are_frozen() -> None:
    config = parse_config(one_provider(), env={})

    with pytest.raises(ValidationError):
        config.monitor.concurrency = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("30", 30.0),
        ("30.0", 30.0),
        ("0.5", 0.5),
        ("500ms", 0.5),
        ("15s", 15.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1.5h", 5400.0),
        ("1h30m", 5400.0),
        ("'45'", 45.0),
        ("' 10 s '", 10.0),
        ("2M", 120.0),
    ],
)
def test_durations(written: str, seconds: float) -> None:
    config = parse_config(one_provider(f"monitor:\n  interval: {written}\n"), env={})

    assert config.monitor.interval_s == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("0", "must be a positive duration, got 0s"),
        ("-1", "must be a positive duration, got -1s"),
        ("-2m", "must be a positive duration, got -120s"),
        ("10 minutes", "invalid duration '10 minutes'"),
        ("1w", "invalid duration '1w'"),
        ("ms", "invalid duration 'ms'"),
        ("true", "expected a duration"),
        ("[1]", "expected a duration"),
        (".nan", "must be a finite duration"),
    ],
)
def test_bad_durations(written: str, message: str) -> None:
    error = problems_of(one_provider(f"monitor:\n  interval: {written}\n"))

    assert error.problems == [("monitor.interval", error.problems[0][1])]
    assert message in error.problems[0][1]


def test_zero_jitter_and_retry_backoff_are_allowed() -> None:
    text = one_provider("monitor: {jitter: 0}\n", provider="    parameters: {retry_backoff: 0}\n")

    config = parse_config(text, env={})

    assert config.monitor.jitter_s == 0.0 and config.provider_specs()[0].retry_backoff_s == 0.0


# ---------------------------------------------------------------------------------------------- ${ENV}


@pytest.mark.parametrize(
    ("written", "env", "value"),
    [
        ("${KEY}", {"KEY": "abc"}, "abc"),
        ("${KEY}", {"KEY": ""}, ""),
        ("${KEY:-fallback}", {}, "fallback"),
        ("${KEY:-fallback}", {"KEY": ""}, "fallback"),
        ("${KEY:-fallback}", {"KEY": "set"}, "set"),
        ("${KEY:-}", {}, ""),
        ("${KEY:-a:b-c}", {}, "a:b-c"),
        ("pre-${A}-${B:-b}-post", {"A": "a"}, "pre-a-b-post"),
        ("$${KEY}", {"KEY": "abc"}, "${KEY}"),
        ("$$${KEY}", {"KEY": "abc"}, "$${KEY}"),
        ("cost $5 and $HOME", {}, "cost $5 and $HOME"),
        ("${KEY}", {"KEY": "${OTHER}"}, "${OTHER}"),  # values are not expanded again
    ],
)
def test_env_interpolation(written: str, env: dict[str, str], value: str) -> None:
    silence = f"{{provider: p, end: 2030-01-01T00:00:00Z, reason: '{written}'}}"
    text = one_provider(f"alerts:\n  silences:\n    - {silence}\n")

    config = parse_config(text, env=env)

    assert config.alerts.silences[0].reason == value


def test_env_interpolation_reaches_numbers_and_booleans() -> None:
    text = one_provider(provider="    enabled: ${ON:-true}\n    parameters: {max_retries: '${R}', timeout: '${T}'}\n")

    (spec,) = parse_config(text, env={"R": "4", "T": "1500ms"}).provider_specs()

    assert (spec.enabled, spec.max_retries, spec.timeout_s) == (True, 4, 1.5)


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITORD_TEST_KEY", "from-os-environ")

    (spec,) = parse_config(one_provider(provider="    api_key: ${MONITORD_TEST_KEY}\n")).provider_specs()

    assert spec.api_key == Secret("from-os-environ")


def test_every_unset_variable_is_reported_with_its_path_and_line() -> None:
    text = (
        "providers:\n"
        "  p:\n"
        "    type: vllm\n"
        "    api_key: ${MISSING_KEY}\n"
        "    models: [a, '${MISSING_MODEL}']\n"
        "api:\n"
        "  token: ${MISSING_TOKEN:-ok}\n"
    )

    error = problems_of(text)

    assert str(error) == (
        "providers.p.api_key: environment variable MISSING_KEY is not set "
        "(use ${MISSING_KEY:-default} to give a default) (line 4)\n"
        "providers.p.models[1]: environment variable MISSING_MODEL is not set "
        "(use ${MISSING_MODEL:-default} to give a default) (line 5)"
    )


def test_keys_are_not_interpolated() -> None:
    error = problems_of("providers:\n  ${NAME}: {type: vllm}\n", env={"NAME": "ok"})

    assert error.problems[0][0] == "providers.${NAME}"


# ---------------------------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    ("endpoint", "base_url"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000"),
        ("HTTP://Gpu.lan:8000/V1", "http://Gpu.lan:8000"),
        ("https://gpu.lan", "https://gpu.lan"),
        ("https://gpu.lan/proxy/llm/v1", "https://gpu.lan/proxy/llm"),
        ("https://gpu.lan/proxy/llm", "https://gpu.lan/proxy/llm"),
        ("https://gpu.lan/v1beta", "https://gpu.lan/v1beta"),
        ("http://[::1]:8080/v1", "http://[::1]:8080"),
        ("  http://localhost:11434  ", "http://localhost:11434"),
        ("http://user:pass@gpu.lan:8000/v1", "http://user:pass@gpu.lan:8000"),
    ],
)
def test_endpoint_normalisation(endpoint: str, base_url: str) -> None:
    (spec,) = parse_config(one_provider(provider=f"    endpoint: '{endpoint}'\n"), env={}).provider_specs()

    assert spec.base_url == base_url


def test_endpoint_userinfo_is_kept_for_probing_but_redacted_everywhere_else() -> None:
    config = parse_config(one_provider(provider="    endpoint: http://user:hunter2@gpu.lan:8000/v1\n"), env={})

    assert config.provider_specs()[0].base_url == "http://user:hunter2@gpu.lan:8000"
    assert config.redacted()["providers"]["p"]["endpoint"] == "http://***@gpu.lan:8000"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config)
    assert "hunter2" not in json.dumps(config.model_dump(mode="json"))


# ---------------------------------------------------------------------------------------------- secrets

SECRET_CONFIG = """\
providers:
  p:
    type: vllm
    endpoint: https://user:endpoint-password@gpu.lan/v1
    api_key: provider-api-key
    parameters:
      headers: {X-Token: provider-header-value}
storage:
  url: postgresql+asyncpg://monitord:database-password@db.lan/monitord
api:
  token: api-token-value
alerts:
  webhooks:
    - url: https://hooks.slack.com/services/T0/B0/webhook-url-token
      format: slack
      secret: webhook-secret-value
      headers: {Authorization: webhook-header-value}
"""
SECRETS = ["endpoint-password", "provider-api-key", "provider-header-value", "database-password",
           "api-token-value", "webhook-url-token", "webhook-secret-value", "webhook-header-value"]


def test_secrets_never_show_in_repr_str_dump_or_redacted() -> None:
    config = parse_config(SECRET_CONFIG, env={})
    outputs = {
        "repr": repr(config),
        "str": str(config),
        "redacted": json.dumps(config.redacted()),
        "dump": json.dumps(config.model_dump(mode="json")),
        "python dump": repr(config.model_dump()),
        "sections": repr([config.providers, config.api, config.alerts.webhooks, config.storage]),
    }

    for name, text in outputs.items():
        leaked = [secret for secret in SECRETS if secret in text]
        assert not leaked, f"{name} shows {leaked}"


def test_specs_keep_secrets_behind_secret_values() -> None:
    (spec,) = parse_config(SECRET_CONFIG, env={}).provider_specs()

    assert spec.api_key is not None and spec.api_key.reveal() == "provider-api-key"
    assert spec.headers[0][1].reveal() == "provider-header-value"
    assert "provider-api-key" not in repr(spec) and "provider-header-value" not in repr(spec)


def test_redacted_marks_secrets_and_keeps_the_rest() -> None:
    out = parse_config(SECRET_CONFIG, env={}).redacted()

    provider = out["providers"]["p"]
    assert provider["api_key"] == "***" and provider["parameters"]["headers"] == {"X-Token": "***"}
    assert out["api"]["token"] == "***"
    assert out["storage"]["url"] == "postgresql+asyncpg://***@db.lan/monitord"
    hook = out["alerts"]["webhooks"][0]
    assert (hook["url"], hook["secret"], hook["headers"]) == (
        "https://hooks.slack.com/***", "***", {"Authorization": "***"})
    assert out["monitor"] == {
        "interval": 30.0, "jitter": 0.0, "concurrency": 64, "max_models": 1000, "timeout": 10.0, "stall_window": 60.0,
        "canary": {"enabled": False, "interval": 300.0, "models": [], "max_tokens": 8, "deadline": 10.0,
                   "timeout": 30.0, "prompt": "Reply with one word: ok", "stream": None, "max_tokens_per_day": 5000,
                   "load": False, "concurrency": 2}}
    assert provider["parameters"]["canary"]["enabled"] is False


def test_errors_do_not_echo_secret_values() -> None:
    text = SECRET_CONFIG.replace("api_key: provider-api-key", "api_key: provider-api-key\n    enabled: maybe")
    text = text.replace("https://user:endpoint-password@gpu.lan/v1", "ftp://user:endpoint-password@gpu.lan")

    error = problems_of(text)

    assert len(error.problems) == 2
    assert not [secret for secret in SECRETS if secret in str(error)]


# ---------------------------------------------------------------------------------------------- errors


def test_error_lists_every_problem_in_file_order_with_lines() -> None:
    text = (
        "providers:\n"  # 1
        "  p:\n"  # 2
        "    type: vllm\n"  # 3
        "    parameters:\n"  # 4
        "      max_retries: -1\n"  # 5
        "      timout: 3\n"  # 6
        "monitor:\n"  # 7
        "  interval: soon\n"  # 8
        "logging:\n"  # 9
        "  level: loud\n"  # 10
    )

    error = problems_of(text)

    assert error.problems == [
        ("providers.p.parameters.max_retries", "must be at least 0, got -1"),
        ("providers.p.parameters.timout", "unknown key 'timout' (did you mean 'timeout'?)"),
        ("monitor.interval", "invalid duration 'soon': use seconds (30, 0.5) or a number with a unit: "
                             "500ms, 15s, 2m, 1h, 7d"),
        ("logging.level", "must be one of 'debug', 'info', 'warning' or 'error', got 'loud'"),
    ]
    assert error.lines == [5, 6, 8, 10]
    assert str(error).splitlines()[0] == "providers.p.parameters.max_retries: must be at least 0, got -1 (line 5)"


def test_a_missing_key_points_at_its_parent_line() -> None:
    error = problems_of("providers:\n  a: {type: vllm}\n\n\n  b:\n    models: [x]\n")

    assert str(error) == "providers.b.type: required key is missing (line 5)"


def test_errors_from_text_name_the_source_for_file_level_problems() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("providers: [", source="/etc/monitord.yaml", env={})

    assert str(caught.value).startswith("/etc/monitord.yaml: invalid YAML:")
    assert caught.value.problems[0][0] == ""


def test_config_error_renders_problems_without_lines() -> None:
    error = ConfigError([("api.listen", "bad"), ("", "whole file")], source="x.yaml")

    assert str(error) == "api.listen: bad\nx.yaml: whole file"


def test_config_is_reachable_as_a_type() -> None:
    assert isinstance(parse_config(one_provider(), env={}), Config)


@pytest.mark.parametrize(
    ("canary_lines", "expected"),
    [
        ("", dict(enabled=False, stream=True, max_tokens=8, deadline_s=10.0, timeout_s=30.0, interval_s=300.0)),
        ("canary: true", dict(enabled=True, stream=True, max_tokens_per_day=5000, load=False)),
        ("canary: false", dict(enabled=False)),
        ("canary: {interval: 10s}", dict(enabled=True, interval_s=10.0)),  # a block turns it on
        ("canary: {enabled: false, interval: 10s}", dict(enabled=False, interval_s=10.0)),
        ("canary: {stream: false, models: qwen}", dict(stream=False, models=("qwen",))),
        ("streaming_support: false\n      canary: {stream: true}", dict(stream=False)),  # cannot stream: never asked
    ],
)
def test_canary_keys_fall_back_to_monitor_canary(canary_lines: str, expected: dict[str, object]) -> None:
    text = f"""
providers:
  p:
    type: vllm
    parameters:
      {canary_lines or 'priority: 0'}
monitor:
  canary: {{max_tokens: 8}}
"""
    (spec,) = parse_config(text, env={}).provider_specs()
    for key, value in expected.items():
        assert getattr(spec.canary, key) == value, key


def test_monitor_canary_enables_every_provider_that_does_not_opt_out() -> None:
    text = """
providers:
  a: {type: vllm}
  b: {type: ollama, parameters: {canary: false}}
  c: {type: gpt4all}
monitor:
  canary: {enabled: true, interval: 1m, stream: true}
"""
    specs = {s.name: s.canary for s in parse_config(text, env={}).provider_specs()}
    assert (specs["a"].enabled, specs["b"].enabled, specs["c"].enabled) == (True, False, True)
    assert (specs["a"].stream, specs["c"].stream) == (True, False)  # GPT4All cannot stream
    assert specs["a"].interval_s == 60.0


def test_sample_config_enables_at_most_one_type_per_port() -> None:
    config = load_config(REPO / "monitord.yaml", env={})
    enabled = [spec for spec in config.provider_specs() if spec.enabled]
    ports = [urlsplit(spec.base_url).port for spec in enabled]
    assert len(ports) == len(set(ports)), sorted(ports)
    assert config.warnings() == ()
    assert {"auto", "fastchat", "localai", "mlx", "tabbyapi", "mistralrs"} <= {
        spec.type for spec in config.provider_specs() if not spec.enabled}


def test_warns_when_enabled_providers_share_an_endpoint() -> None:
    config = parse_config(
        "providers:\n"
        "  a: {type: llamacpp, endpoint: 'http://localhost:8080/'}\n"
        "  b: {type: mlx, endpoint: 'http://127.0.0.1:8080/v1'}\n"
        "  c: {type: localai, endpoint: 'http://127.0.0.1:8080', enabled: false}\n"
        "  d: {type: vllm, endpoint: 'http://127.0.0.1:8000'}\n"
        "  e: {type: fastchat, endpoint: 'http://10.0.0.2:8000'}\n", env={})
    [warning] = config.warnings()
    assert "a (llamacpp), b (mlx)" in warning and "share the endpoint" in warning and "type: auto" in warning
    assert "c (localai)" not in warning and "d (vllm)" not in warning


async def test_config_check_prints_the_warning_and_still_passes(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("providers:\n  a: {type: llamacpp}\n  b: {type: localai}\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitord", "config", "check", "-c", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err
    assert b"warning: providers: a (llamacpp), b (localai) share the endpoint http://127.0.0.1:8080" in err
    assert b"valid (2 providers)" in out
