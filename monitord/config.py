"""monitord.yaml → one validated, frozen Config; every mistake is reported with its YAML path and line.

The same loader serves `monitord check`, start-up and reload. Reads the provider registry for defaults only.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin
from urllib.parse import SplitResult, urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from monitord.model import DEFAULT_CANARY_PROMPT, CanarySpec, ProviderSpec, Secret
from monitord.providers import ADAPTERS
from monitord.text import redact_url

Loc = tuple[str | int, ...]

# ---------------------------------------------------------------------------------------------- errors


class ConfigError(Exception):
    """The config cannot be used. `problems` holds (dotted YAML path, message) pairs, one per mistake."""

    def __init__(
        self,
        problems: Sequence[tuple[str, str]],
        *,
        lines: Sequence[int | None] | None = None,
        source: str = "<string>",
    ) -> None:
        self.problems: list[tuple[str, str]] = list(problems)
        self.lines: list[int | None] = list(lines) if lines is not None else [None] * len(self.problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        rendered = []
        for (path, message), line in zip(self.problems, self.lines, strict=True):
            text = f"{path or self.source}: {message}"
            rendered.append(f"{text} (line {line})" if line is not None else text)
        return "\n".join(rendered)


class _FieldProblems(ValueError):
    """Raised by cross-field validators to report at the offending key(s), not at the section."""

    def __init__(self, *problems: tuple[Loc, str]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


def _render_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(loc: Loc, lines: Mapping[Loc, int]) -> int | None:
    """Line of the key at loc, or of its nearest ancestor the file has (missing keys, merged keys)."""
    for end in range(len(loc), 0, -1):
        line = lines.get(loc[:end])
        if line is not None:
            return line
    return None


def _config_error(problems: list[tuple[Loc, str]], lines: Mapping[Loc, int], source: str) -> ConfigError:
    located = sorted(
        ((loc, message, _line_of(loc, lines)) for loc, message in problems),
        key=lambda item: item[2] if item[2] is not None else math.inf,
    )
    return ConfigError(
        [(_render_path(loc), message) for loc, message, _ in located],
        lines=[line for _, _, line in located],
        source=source,
    )


# ---------------------------------------------------------------------------------------------- YAML


def _load_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML keeping the line of every key and list item; duplicate keys are errors."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[Loc, int] = {}
        duplicates: list[tuple[Loc, str, int]] = []
        _index_node(loader, node, (), lines, duplicates, set())
        if duplicates:
            raise ConfigError([(_render_path(loc), message) for loc, message, _ in duplicates],
                              lines=[line for _, _, line in duplicates], source=source)
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([("", f"invalid YAML: {what}")], lines=[line], source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"invalid YAML: {exc}")], source=source) from None
    finally:
        loader.dispose()


def _index_node(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    loc: Loc,
    lines: dict[Loc, int],
    duplicates: list[tuple[Loc, str, int]],
    seen: set[int],
) -> None:
    if id(node) in seen:  # an alias: indexed where its anchor is (and no exponential walk)
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            _index_node(loader, item, (*loc, index), lines, duplicates, seen)
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if (*loc, key) in lines:
                first = lines[(*loc, key)]
                duplicates.append(((*loc, key), f"duplicate key '{key}' (first given on line {first})", line))
                continue
            lines[(*loc, key)] = line
            _index_node(loader, value_node, (*loc, key), lines, duplicates, seen)


# ---------------------------------------------------------------------------------------------- ${ENV}

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME_AND_DEFAULT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def _interpolate(data: Any, env: Mapping[str, str], loc: Loc, problems: list[tuple[Loc, str]]) -> Any:
    """Expand ${VAR} and ${VAR:-default} in string values (never in keys); `$${` is a literal `${`."""
    if isinstance(data, str):
        return _expand(data, env, loc, problems) if "${" in data else data
    if isinstance(data, dict):
        return {key: _interpolate(value, env, (*loc, key), problems) for key, value in data.items()}
    if isinstance(data, list):
        return [_interpolate(item, env, (*loc, index), problems) for index, item in enumerate(data)]
    return data


def _expand(text: str, env: Mapping[str, str], loc: Loc, problems: list[tuple[Loc, str]]) -> str:
    def replace(match: re.Match[str]) -> str:
        token, inner = match.group(0), match.group(1)
        if token == "$${":
            return "${"
        if inner is None:
            problems.append((loc, "'${' without a closing '}' (write '$${' for a literal '${')"))
            return token
        reference = _NAME_AND_DEFAULT.fullmatch(inner)
        if reference is None or "${" in (reference.group(2) or ""):
            problems.append((loc, f"invalid reference '${{{inner}}}': use ${{NAME}} or ${{NAME:-default}}"))
            return token
        name, default = reference.group(1), reference.group(2)
        value = env.get(name)
        if default is not None:
            return value or default  # like the shell: unset or empty takes the default
        if value is None:
            problems.append((loc, f"environment variable {name} is not set (use ${{{name}:-default}} "
                                  "to give a default)"))
            return ""
        return value

    return _REFERENCE.sub(replace, text)


# ---------------------------------------------------------------------------------------------- value types

_DURATION_HELP = "use seconds (30, 0.5) or a number with a unit: 500ms, 15s, 2m, 1h, 7d"
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*)+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")


def _seconds(value: object) -> float:
    """A duration in seconds from a YAML number or a string such as '500ms', '15s', '1h30m'."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration: {_DURATION_HELP}")
    if isinstance(value, str):
        text = value.strip().lower()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-").strip()
        if _PLAIN_NUMBER.fullmatch(text):
            seconds = float(text)
        elif body and _DURATION.fullmatch(body):
            seconds = sign * sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(body))
        else:
            raise ValueError(f"invalid duration '{value}': {_DURATION_HELP}")
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError("must be a finite duration")
    if abs(seconds) > MAX_DURATION_S:
        raise ValueError(f"must be at most {_human(MAX_DURATION_S)}, got {_human(abs(seconds))}")
    return seconds


MAX_DURATION_S = 3650 * 86400.0  # ten years: anything longer is a typo, and overflows date arithmetic
PROBE_INTERVAL_RANGE_S = (0.1, 7 * 86400.0)  # 100 ms to a week between probes of one provider
TIMEOUT_RANGE_S = (0.01, 600.0)  # 10 ms to 10 min for one probe, delivery or batch


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


def _within(low_s: float, high_s: float) -> AfterValidator:
    def check(seconds: float) -> float:
        if not low_s <= seconds <= high_s:
            raise ValueError(f"must be between {_human(low_s)} and {_human(high_s)}, got {_human(seconds)}")
        return seconds

    return AfterValidator(check)


def _positive_seconds(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError(f"must be a positive duration, got {seconds:g}s")
    return seconds


def _non_negative_seconds(seconds: float) -> float:
    if seconds < 0:
        raise ValueError(f"must not be negative, got {seconds:g}s")
    return seconds


PositiveSeconds = Annotated[float, BeforeValidator(_seconds), AfterValidator(_positive_seconds)]
NonNegativeSeconds = Annotated[float, BeforeValidator(_seconds), AfterValidator(_non_negative_seconds)]
ProbeIntervalSeconds = Annotated[PositiveSeconds, _within(*PROBE_INTERVAL_RANGE_S)]
TimeoutSeconds = Annotated[PositiveSeconds, _within(*TIMEOUT_RANGE_S)]


def _secret_or_none(value: object) -> object:
    """Text becomes a Secret at once so no repr, str or dump can show it; empty text means no secret."""
    if value is None or isinstance(value, Secret):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("expected text")
    return Secret(value) if value else None


def _required_secret(value: object) -> object:
    secret = _secret_or_none(value)
    if secret is None:
        raise ValueError("must not be empty")
    return secret


def _dump_secret(secret: Secret | None) -> str | None:
    return None if secret is None else "***"


OptionalSecret = Annotated[Secret | None, BeforeValidator(_secret_or_none), PlainSerializer(_dump_secret)]
SecretText = Annotated[Secret, BeforeValidator(_required_secret), PlainSerializer(_dump_secret)]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"invalid name '{value}': use up to 64 letters, digits, '-', '_' and '.', "
                         "starting with a letter or digit")
    return value


def _header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"invalid HTTP header name '{value}'")
    return value


def _as_list(value: object) -> object:
    """`models: llama3` means a list of one; an empty YAML value means an empty list."""
    if value is None:
        return []
    return [value] if isinstance(value, str | int | float) and not isinstance(value, bool) else value


def _empty_if_null_list(value: object) -> object:
    return [] if value is None else value


def _empty_if_null_mapping(value: object) -> object:
    return {} if value is None else value


def _unique_words(values: tuple[str, ...]) -> tuple[str, ...]:
    words = []
    for value in values:
        word = value.strip().lower()
        if not _NAME.fullmatch(word):
            raise ValueError(f"invalid entry '{value}': use letters, digits, '-', '_' and '.'")
        if word not in words:
            words.append(word)
    return tuple(words)


def _unique_ids(values: tuple[str, ...]) -> tuple[str, ...]:
    ids = []
    for value in values:
        if not value.strip():
            raise ValueError("model ids must not be empty")
        if value not in ids:
            ids.append(value)
    return tuple(ids)


def _path(value: str | None) -> str | None:
    """A path override such as /v1/models; a missing leading slash is added."""
    if value is None:
        return None
    text = value.strip()
    if "://" in text:
        raise ValueError(f"expected a path such as /v1/models, not a URL ('{redact_url(text)}')")
    if not text or any(c.isspace() for c in text):
        raise ValueError("expected a path such as /v1/models")
    return text if text.startswith("/") else f"/{text}"


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


Names = Annotated[tuple[str, ...], BeforeValidator(_as_list), AfterValidator(_unique_words)]
ModelIds = Annotated[tuple[str, ...], BeforeValidator(_as_list), AfterValidator(_unique_ids)]
PathOverride = Annotated[str | None, AfterValidator(_path)]
Headers = Annotated[
    Mapping[Annotated[str, AfterValidator(_header_name)], SecretText],
    BeforeValidator(_empty_if_null_mapping),
]

# ---------------------------------------------------------------------------------------------- URLs


def _http_url(value: str) -> SplitResult:
    text = value.strip()
    shown = redact_url(text)
    if not text:
        raise ValueError("must not be empty")
    if any(c.isspace() for c in text):
        raise ValueError(f"'{shown}' is not a valid URL: it contains spaces")
    other_scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):(?!\d)", text)  # "host:8000" is no scheme
    if "://" not in text and other_scheme:
        raise ValueError(f"uses {other_scheme.group(1)}: but only http:// and https:// URLs are supported")
    if "://" not in text:
        raise ValueError(f"'{shown}' is not a URL: it must start with http:// or https:// "
                         f"(e.g. http://{shown})")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"'{shown}' uses {parts.scheme or 'no'}://: only http:// and https:// are supported")
    if not parts.hostname:
        raise ValueError(f"'{shown}' has no host")
    try:
        parts.port  # noqa: B018 - urllib checks the port only when asked
    except ValueError:
        raise ValueError(f"'{shown}' has an invalid port") from None
    return parts


def _endpoint(value: str | None) -> str | None:
    """Base URL of a server: http(s), host, optional path prefix; a trailing /v1 is dropped."""
    if value is None:
        return None
    parts = _http_url(value)
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment (put credentials in api_key or "
                         "parameters.headers)")
    path = parts.path.rstrip("/")
    if path.lower().endswith("/v1"):
        path = path[:-3].rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc}{path}"


def _webhook_url(value: str) -> str:
    _http_url(value)
    return value.strip()


def _storage_url(value: str) -> str:
    match = re.match(r"([A-Za-z0-9_]+)(\+[A-Za-z0-9_]+)?://", value.strip())
    if match is None:
        raise ValueError(f"'{redact_url(value)}' is not a database URL: use sqlite+aiosqlite:///monitord.db "
                         "or postgresql+asyncpg://user@host/db")
    if match.group(1).lower() not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database '{match.group(1)}': use sqlite or postgresql")
    return value.strip()


def _listen(value: str) -> str:
    text = value.strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^\s:\[\]/]+):(\d+)", text)
    if match is None:
        raise ValueError(f"'{text}' is not host:port (e.g. 127.0.0.1:8765, 0.0.0.0:8765, [::1]:8765)")
    if int(match.group(2) or match.group(4)) > 65535:
        raise ValueError(f"'{text}': the port must be between 0 and 65535")
    return text


Endpoint = Annotated[str | None, AfterValidator(_endpoint)]

# ---------------------------------------------------------------------------------------------- sections


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        coerce_numbers_to_str=True,  # `api_key: 12345`, `X-Version: 2` are text to the user
        hide_input_in_errors=True,  # inputs may be secrets
        allow_inf_nan=False,
    )
    # fields holding URLs that may carry credentials: redacted in repr (True: hide the path as well)
    _url_fields: ClassVar[Mapping[str, bool]] = {}

    @model_validator(mode="before")
    @classmethod
    def _null_section_means_defaults(cls, data: Any) -> Any:
        # `monitor:` with every line commented out is YAML null
        return {} if data is None else data

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name is not None and name in self._url_fields and isinstance(value, str):
                value = redact_url(value, hide_path=self._url_fields[name])
            yield name, value


def _prompt(value: str | None) -> str | None:
    if value is not None and (not value.strip() or len(value) > 2000):
        raise ValueError("must be 1 to 2000 characters of text")
    return value


CanaryPrompt = Annotated[str | None, AfterValidator(_prompt)]
DEFAULT_RETRY_INTERVAL_S = 5.0  # a failing provider is probed again this soon (at most its interval)
_CANARY_MAX_TOKENS = 1024
_CANARY_MIN_INTERVAL_S = 1.0


def _canary_shorthand(value: object) -> object:
    """`canary: true` / `canary: false` stand for `canary: {enabled: true|false}`."""
    if isinstance(value, bool):
        return {"enabled": value}
    return value


class CanaryConfig(_Section):
    """A provider's generation canary (`parameters.canary`); unset keys take monitor.canary's."""

    enabled: bool | None = Field(None, description="Run the canary for this provider (default true once the block "
                                                   "is written; `canary: true` is short for `{enabled: true}`).")
    interval_s: PositiveSeconds | None = Field(None, alias="interval", description="Time between canaries of a model.")
    models: ModelIds | None = Field(
        None, description="Models to test (default: the provider's models, else the first chat model it lists).")
    max_tokens: int | None = Field(None, ge=1, le=_CANARY_MAX_TOKENS,
                                   description="Tokens a canary may generate, reasoning tokens included.")
    deadline_s: PositiveSeconds | None = Field(
        None, alias="deadline", description="Time allowed to the first token, and between two chunks of a stream.")
    timeout_s: PositiveSeconds | None = Field(None, alias="timeout", description="Time allowed to the whole request.")
    prompt: CanaryPrompt = Field(None, description="The user message sent (or the text embedded).")
    stream: bool | None = Field(None, description="Stream the reply (default: the provider's streaming_support).")
    max_tokens_per_day: int | None = Field(
        None, ge=1, description="Tokens a model's canaries may spend in a UTC day; past it they pause and say so.")
    load: bool | None = Field(None, description="Test models the server does not hold in memory (loads them); "
                                                "otherwise they are skipped as not_loaded.")


class CanaryDefaults(_Section):
    """Defaults of every provider's generation canary (`monitor.canary`), and their shared concurrency cap."""

    enabled: bool = Field(False, description="Run canaries for every provider that does not say otherwise.")
    interval_s: PositiveSeconds = Field(300.0, alias="interval", description="Time between canaries of a model.")
    models: ModelIds = Field((), description="Models to test where a provider names none (default: the "
                                             "provider's models, else the first chat model it lists).")
    max_tokens: int = Field(8, ge=1, le=_CANARY_MAX_TOKENS,
                            description="Tokens a canary may generate, reasoning tokens included.")
    deadline_s: PositiveSeconds = Field(
        10.0, alias="deadline", description="Time allowed to the first token, and between two chunks of a stream.")
    timeout_s: PositiveSeconds = Field(30.0, alias="timeout", description="Time allowed to the whole request.")
    prompt: Annotated[str, AfterValidator(_prompt)] = Field(
        DEFAULT_CANARY_PROMPT, description="The user message sent (or the text embedded).")
    stream: bool | None = Field(None, description="Stream the reply (default: each provider's streaming_support).")
    max_tokens_per_day: int = Field(
        5000, ge=1, description="Tokens a model's canaries may spend in a UTC day; past it they pause and say so.")
    load: bool = Field(False, description="Test models the server does not hold in memory (loads them); "
                                          "otherwise they are skipped as not_loaded.")
    concurrency: int = Field(2, ge=1, description="Most canaries running at once (apart from health probes).")


_CANARY_KEYS = ("enabled", "interval_s", "models", "max_tokens", "deadline_s", "timeout_s", "prompt", "stream",
                "max_tokens_per_day", "load")


def resolve_canary(own: CanaryConfig | None, defaults: CanaryDefaults, streaming_support: bool) -> CanarySpec:
    """One provider's canary: its own keys, else monitor.canary's; `stream` falls back to streaming_support."""
    values: dict[str, Any] = {}
    for key in _CANARY_KEYS:
        value = getattr(own, key) if own is not None else None
        values[key] = getattr(defaults, key) if value is None else value
    if own is not None and own.enabled is None:
        values["enabled"] = True  # writing a provider's canary block turns it on unless it says enabled: false
    if values["stream"] is None or not streaming_support:
        values["stream"] = streaming_support and values["stream"] is not False
    return CanarySpec(**values)


def canary_problems(canary: CanarySpec, loc: Loc) -> list[tuple[Loc, str]]:
    """Checks across canary keys once defaults are merged, reported at `loc` (where the provider's block is)."""
    problems: list[tuple[Loc, str]] = []
    if canary.timeout_s < canary.deadline_s:
        problems.append(((*loc, "timeout"), f"must be at least deadline ({canary.deadline_s:g}s)"))
    if canary.interval_s < _CANARY_MIN_INTERVAL_S:
        problems.append(((*loc, "interval"), f"must be at least {_CANARY_MIN_INTERVAL_S:g}s"))
    if canary.max_tokens_per_day < canary.max_tokens:
        problems.append(((*loc, "max_tokens_per_day"), f"must be at least max_tokens ({canary.max_tokens}): "
                                                        "no canary could ever run"))
    return problems


class ProviderParameters(_Section):
    """Per-provider probe settings (the `parameters:` block)."""

    timeout_s: TimeoutSeconds | None = Field(
        None, alias="timeout", description="Whole probe budget, retries included (default: monitor.timeout).")
    max_retries: int | None = Field(None, ge=0, description="Retries after a failed attempt (default 2).")
    retry_backoff_s: NonNegativeSeconds | None = Field(
        None, alias="retry_backoff", description="Pause before the first retry, doubled each time (default 0.25s).")
    streaming_support: bool | None = Field(
        None, description="Whether the server streams; default per type. false removes the 'streaming' capability.")
    headers: Headers = Field(
        default_factory=dict, description="Extra HTTP headers sent with every probe; values are kept secret.")
    model_endpoint: PathOverride = Field(None, description="Path of the model list (default per type).")
    chat_endpoint: PathOverride = Field(None, description="Path of chat completions (default per type).")
    health_endpoint: PathOverride = Field(None, description="Path of the health check (default per type).")
    probe_interval_s: ProbeIntervalSeconds | None = Field(
        None, alias="probe_interval", description="Time between probes (default: monitor.interval).")
    retry_interval_s: PositiveSeconds | None = Field(
        None, alias="retry_interval",
        description="Time before the next probe after a failed one, until the provider is down (default: the "
                    "smaller of the probe interval and 5s): down is confirmed in seconds.")
    capabilities: Names = Field((), description="Capabilities added to the type's defaults.")
    priority: int = Field(0, description="Higher ranks first among otherwise equal providers.")
    weight: float = Field(1.0, gt=0, description="Multiplies the provider's ranking score.")
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest response body a probe reads.")
    verify_tls: bool | None = Field(None, description="Verify the server's TLS certificate (default true).")
    insecure: bool | None = Field(None, description="Same as verify_tls: false.")
    ca_file: str | None = Field(None, min_length=1, description="CA bundle (PEM) to verify the server with.")
    canary: Annotated[CanaryConfig | None, BeforeValidator(_canary_shorthand)] = Field(
        None, description="Generation canary: a tiny real request that proves the server can generate "
                          "(`true` turns it on with monitor.canary's settings).")

    @model_validator(mode="after")
    def _check(self) -> ProviderParameters:
        if self.verify_tls is not None and self.insecure is not None and self.verify_tls == self.insecure:
            raise _FieldProblems((("insecure",), "contradicts verify_tls: give only one of them"))
        if self.ca_file is not None and not self.tls_verified:
            raise _FieldProblems((("ca_file",), "is set but certificate verification is turned off"))
        return self

    @property
    def tls_verified(self) -> bool:
        if self.verify_tls is not None:
            return self.verify_tls
        return not self.insecure


class ProviderConfig(_Section):
    """One server to monitor, in the users' existing `providers:` format."""

    _url_fields = {"endpoint": False}

    type: str = Field(description="Provider type: " + ", ".join(ADAPTERS) + ".")
    endpoint: Endpoint = Field(
        None, description="Base URL, with or without /v1 (default http://127.0.0.1:<type's port>).")
    api_key: OptionalSecret = Field(None, description="Bearer token sent to the server; kept secret.")
    models: ModelIds = Field((), description="Model ids this provider is expected to serve.")
    enabled: bool = Field(True, description="false keeps the provider in the config but never probes it.")
    capabilities: Names = Field((), description="Capabilities added to the type's defaults.")
    parameters: ProviderParameters = Field(default_factory=ProviderParameters)

    @field_validator("type", mode="before")
    @classmethod
    def _lower_type(cls, value: object) -> object:
        return _lower(value)

    @field_validator("type")
    @classmethod
    def _known_type(cls, name: str) -> str:
        if name not in ADAPTERS:
            close = difflib.get_close_matches(name, list(ADAPTERS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown provider type '{name}'{hint}; known types: {', '.join(sorted(ADAPTERS))}")
        return name

    @model_validator(mode="after")
    def _check(self) -> ProviderConfig:
        configured = {*self.capabilities, *self.parameters.capabilities}
        if self.parameters.streaming_support is False and "streaming" in configured:
            raise _FieldProblems(
                (("parameters", "streaming_support"), "is false but 'streaming' is listed in capabilities"))
        return self

    @field_serializer("endpoint")
    def _dump_endpoint(self, endpoint: str | None) -> str | None:
        return None if endpoint is None else redact_url(endpoint)

    def spec(self, name: str, monitor: MonitorConfig) -> ProviderSpec:
        """The fully resolved provider: type defaults and monitor-wide fallbacks applied."""
        defaults = ADAPTERS[self.type].defaults
        params = self.parameters
        streaming = defaults.streaming if params.streaming_support is None else params.streaming_support
        capabilities = set(defaults.capabilities) - {"streaming"} | ({"streaming"} if streaming else set())
        optional: dict[str, Any] = {}  # absent here: ProviderSpec's own defaults apply
        if params.max_retries is not None:
            optional["max_retries"] = params.max_retries
        if params.retry_backoff_s is not None:
            optional["retry_backoff_s"] = params.retry_backoff_s
        return ProviderSpec(
            name=name,
            type=self.type,
            base_url=self.endpoint or f"{defaults.scheme}://127.0.0.1:{defaults.port}",
            api_key=self.api_key,
            models=self.models,
            enabled=self.enabled,
            timeout_s=params.timeout_s or monitor.timeout_s,
            streaming_support=streaming,
            headers=tuple(params.headers.items()),
            model_endpoint=params.model_endpoint,
            chat_endpoint=params.chat_endpoint,
            health_endpoint=params.health_endpoint,
            probe_interval_s=params.probe_interval_s or monitor.interval_s,
            retry_interval_s=min(params.retry_interval_s or DEFAULT_RETRY_INTERVAL_S,
                                 params.probe_interval_s or monitor.interval_s),
            capabilities=frozenset(capabilities | {*self.capabilities, *params.capabilities}),
            priority=params.priority,
            weight=params.weight,
            max_body_bytes=params.max_body_bytes,
            max_models=monitor.max_models,
            verify_tls=params.tls_verified,
            ca_file=params.ca_file,
            canary=resolve_canary(params.canary, monitor.canary, streaming),
            **optional,
        )


class MonitorConfig(_Section):
    """How often and how many probes run."""

    interval_s: ProbeIntervalSeconds = Field(30.0, alias="interval", description="Time between probes of a provider.")
    jitter_s: NonNegativeSeconds = Field(
        0.0, alias="jitter", description="Random delay added to each probe (start offsets already spread them).")
    concurrency: int = Field(64, ge=1, description="Most probes running at once.")
    max_models: int = Field(
        1000, ge=1, le=100_000,
        description="Most models kept per provider: a longer listing is cut to its first this many, and the store "
                    "forgets the least recently seen past it (a server inventing model ids cannot grow the database).")
    timeout_s: TimeoutSeconds = Field(
        10.0, alias="timeout", description="Probe budget for providers without their own timeout.")
    stall_window_s: PositiveSeconds = Field(
        60.0, alias="stall_window",
        description="A server that reports requests running but no new generated token for this long is stalled.")
    canary: CanaryDefaults = Field(default_factory=CanaryDefaults)

    @model_validator(mode="after")
    def _check(self) -> MonitorConfig:
        if self.jitter_s >= self.interval_s:
            raise _FieldProblems((("jitter",), f"must be smaller than interval ({self.interval_s:g}s)"))
        return self


def _at_least_an_hour(seconds: float) -> float:
    if seconds < 3600:
        raise ValueError(f"must be at least 1h (rollups need whole hours), got {seconds:g}s")
    return seconds


RetentionSeconds = Annotated[PositiveSeconds, AfterValidator(_at_least_an_hour)]


def _days_or_seconds(seconds: float) -> str:
    return f"{seconds / 86400:g}d" if seconds % 86400 == 0 else f"{seconds:g}s"


class RetentionConfig(_Section):
    """How long probe history is kept: raw rows, then per-minute and per-hour rollups of them."""

    raw_s: RetentionSeconds = Field(7 * 86400.0, alias="raw", description="Raw probe rows are kept this long.")
    minute_rollups_s: RetentionSeconds = Field(
        30 * 86400.0, alias="minute_rollups",
        description="Per-minute rollups (count, ok count, latency sum/min/max, p95 estimate) are kept this long.")
    hour_rollups_s: RetentionSeconds = Field(
        365 * 86400.0, alias="hour_rollups", description="Per-hour rollups are kept this long (365d is a year).")
    alerts_s: RetentionSeconds = Field(
        30 * 86400.0, alias="alerts",
        description="Alert events and their delivery records are kept this long (pending ones until they end).")
    prune_interval_s: PositiveSeconds = Field(
        60.0, alias="prune_interval", description="Time between runs of the rollup and pruning job.")
    batch_size: int = Field(5000, ge=1, description="Most rows deleted per transaction (keeps locks short).")

    @model_validator(mode="after")
    def _check(self) -> RetentionConfig:
        if self.minute_rollups_s < self.raw_s:
            raw = _days_or_seconds(self.raw_s)
            raise _FieldProblems((("minute_rollups",), f"must be at least raw ({raw}): minutes whose raw rows are "
                                                       "kept would have no rollup"))
        if self.hour_rollups_s < self.minute_rollups_s:
            raise _FieldProblems((("hour_rollups",), "must be at least minute_rollups "
                                                      f"({_days_or_seconds(self.minute_rollups_s)})"))
        return self


class StorageConfig(_Section):
    """Where probe results are kept."""

    _url_fields = {"url": False}

    url: Annotated[str, AfterValidator(_storage_url)] = Field(
        "sqlite+aiosqlite:///monitord.db", description="SQLAlchemy URL: SQLite file or PostgreSQL database.")
    batch_size: int = Field(500, ge=1, description="Rows written per insert.")
    flush_interval_s: PositiveSeconds = Field(
        1.0, alias="flush_interval", description="Longest time a result waits before it is written.")
    buffer_limit: int = Field(100_000, ge=1, description="Results held in memory while the database is down.")
    write_timeout_s: TimeoutSeconds = Field(
        15.0, alias="write_timeout",
        description="Longest time one batch may take; past it the connection is cut and the batch retried.")
    forget_models_after_s: PositiveSeconds = Field(
        7 * 86400.0, alias="forget_models_after",
        description="A model not listed by its provider for this long is dropped from the stored sightings.")
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    @model_validator(mode="after")
    def _check(self) -> StorageConfig:
        if self.buffer_limit < self.batch_size:
            raise _FieldProblems((("buffer_limit",), f"must be at least batch_size ({self.batch_size})"))
        return self

    @field_serializer("url")
    def _dump_url(self, url: str) -> str:
        return redact_url(url)


def _instance_id(value: str | None) -> str | None:
    if value is not None and (not value.strip() or len(value) > 200 or any(c.isspace() for c in value)):
        raise ValueError("must be 1 to 200 characters without spaces")
    return value


class ClusterConfig(_Section):
    """Several monitord instances on one PostgreSQL database: each provider is probed by one of them."""

    enabled: bool = Field(False, description="Share providers with the other instances on storage.url.")
    instance_id: Annotated[str | None, AfterValidator(_instance_id)] = Field(
        None, description="This instance's name in the cluster (default: hostname-pid).")
    lease_s: PositiveSeconds = Field(
        10.0, alias="lease",
        description="How long a provider stays with an instance that stops renewing (renewed every third of it).")


class ApiConfig(_Section):
    """The query API."""

    listen: Annotated[str, AfterValidator(_listen)] = Field(
        "127.0.0.1:8765", description="host:port the API listens on ([::1]:8765 for IPv6).")
    token: OptionalSecret = Field(None, description="Bearer token clients must send; kept secret.")
    max_connections: int = Field(
        1000, ge=8, le=100_000,
        description="Most open API connections; past it the oldest idle one is closed (keep well under the "
                    "process's file limit, LimitNOFILE in the unit).")
    idle_timeout_s: TimeoutSeconds = Field(
        15.0, alias="idle_timeout",
        description="A connection that sends no complete request head (or idles between requests) this long is "
                    "closed.")

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class WebhookConfig(_Section):
    """One alert destination."""

    _url_fields = {"url": True}

    name: Annotated[str, AfterValidator(_name)] = Field(description="Defaults to the URL's host.")
    url: Annotated[str, AfterValidator(_webhook_url)] = Field(description="http(s) URL the alerts are POSTed to.")
    format: Literal["json", "slack", "discord"] = Field("json", description="Body format: json, slack or discord.")
    secret: OptionalSecret = Field(None, description="HMAC key for the signature header; kept secret.")
    headers: Headers = Field(default_factory=dict, description="Extra HTTP headers; values are kept secret.")
    events: Names = Field((), description="Event kinds to send (empty: all).")
    providers: Annotated[tuple[str, ...], BeforeValidator(_as_list)] = Field(
        (), description="Provider names or globs to alert on (empty: all).")
    timeout_s: TimeoutSeconds = Field(10.0, alias="timeout", description="Time allowed for one delivery.")
    concurrency: int = Field(
        10, ge=1, le=256,
        description="Most requests in flight to this webhook at once (events of one provider still go in order).")
    batch: bool = Field(
        False, description="json format: send the events raised within alerts.group_wait as one request "
                           "(`events` list) instead of one request each. Slack and Discord always group.")

    @field_validator("format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return _lower(value)

    @property
    def groups(self) -> bool:
        """Several events per message: the chat formats always, json when `batch` is set."""
        return self.format != "json" or self.batch

    @model_validator(mode="after")
    def _check(self) -> WebhookConfig:
        parts = urlsplit(self.url)
        auth = next((name for name in self.headers if name.lower() == "authorization"), None)
        if auth is not None and (parts.username is not None or parts.password is not None):
            raise _FieldProblems((("headers", auth), "conflicts with the user:password@ in url (both set the "
                                                     "Authorization header): keep one of them"))
        return self

    @field_serializer("url")
    def _dump_url(self, url: str) -> str:
        return redact_url(url, hide_path=True)


class SilenceConfig(_Section):
    """A maintenance window: no alerts for matching providers between start and end."""

    provider: str = Field(min_length=1, description="Provider name or glob.")
    start: datetime | None = Field(None, description="Start (with a timezone); default: already started.")
    end: datetime = Field(description="End, with a timezone, e.g. 2025-01-31T22:00:00Z.")
    reason: str | None = Field(None, description="Shown with the silence.")

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("needs a timezone, e.g. 2025-01-31T22:00:00Z or 2025-01-31T23:00:00+01:00")
        return value

    @model_validator(mode="after")
    def _check(self) -> SilenceConfig:
        if self.start is not None and self.start >= self.end:
            raise _FieldProblems((("end",), "must be after start"))
        return self


class AlertsConfig(_Section):
    """When a provider's change of status is an alert, and where alerts go."""

    failure_threshold: int = Field(3, ge=1, description="Failed probes in a row before a provider is down.")
    success_threshold: int = Field(2, ge=1, description="Good probes in a row before it is up again.")
    webhooks: Annotated[tuple[WebhookConfig, ...], BeforeValidator(_empty_if_null_list)] = Field(
        (), description="Alert destinations.")
    silences: Annotated[tuple[SilenceConfig, ...], BeforeValidator(_empty_if_null_list)] = Field(
        (), description="Maintenance windows.")
    group_wait_s: NonNegativeSeconds = Field(
        10.0, alias="group_wait",
        description="Slack, Discord and `batch` webhooks wait this long after an event for others to send "
                    "with it in one message (\"5 providers down: ...\"); 0 sends what is pending at once.")
    repeat_interval_s: PositiveSeconds | None = Field(
        None, alias="repeat_interval",
        description="Remind receivers this often while a provider stays down, loading or degraded (default: off).")
    alert_never_up: bool = Field(
        False, description="Alert on a provider that has not been up since monitord first saw it (off: a "
                           "server that was never there does not page, e.g. on the first start).")

    @model_validator(mode="before")
    @classmethod
    def _name_webhooks(cls, data: Any) -> Any:
        """Unnamed webhooks are named after their URL's host (made unique); named ones keep theirs."""
        hooks = data.get("webhooks") if isinstance(data, dict) else None
        if not isinstance(hooks, list):
            return data
        taken = {hook.get("name") for hook in hooks if isinstance(hook, dict)}
        named = []
        for hook in hooks:
            if isinstance(hook, dict) and hook.get("name") is None:
                url = hook.get("url")
                host = (urlsplit(url).hostname if isinstance(url, str) and "://" in url else None) or "webhook"
                name, suffix = host, 1
                while name in taken:
                    suffix += 1
                    name = f"{host}-{suffix}"
                taken.add(name)
                hook = {**hook, "name": name}
            named.append(hook)
        return {**data, "webhooks": named}

    @model_validator(mode="after")
    def _check(self) -> AlertsConfig:
        seen: dict[str, int] = {}
        for index, hook in enumerate(self.webhooks):
            if hook.name in seen:
                raise _FieldProblems((("webhooks", index, "name"),
                                      f"'{hook.name}' is already the name of webhooks[{seen[hook.name]}]"))
            seen[hook.name] = index
        return self


class RankingConfig(_Section):
    """How providers are scored."""

    window_s: PositiveSeconds = Field(900.0, alias="window", description="History the scores look back on.")


class LoggingConfig(_Section):
    """Log output."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="json, console, or auto (console on a terminal, else json).")

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower_words(cls, value: object) -> object:
        return _lower(value)


ProviderName = Annotated[str, AfterValidator(_name)]


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def _endpoint_key(base_url: str) -> str:
    """Where a base URL points, with the spellings of one place made equal: case, default ports, loopback names,
    userinfo and a trailing slash."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    host = "loopback" if host in _LOOPBACK or host.startswith("127.") else host
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme.lower()}://{host}:{port}{parts.path.rstrip('/')}"


class Config(_Section):
    """The whole monitord configuration; only `providers` is required."""

    providers: Annotated[Mapping[ProviderName, ProviderConfig], BeforeValidator(_empty_if_null_mapping)] = Field(
        description="Servers to monitor, by name.")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    ranking: RankingConfig = Field(default_factory=RankingConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @field_validator("providers")
    @classmethod
    def _some_providers(cls, value: Mapping[str, ProviderConfig]) -> Mapping[str, ProviderConfig]:
        if not value:
            raise ValueError("no providers configured: add at least one (see the sample monitord.yaml)")
        return value

    @model_validator(mode="after")
    def _check(self) -> Config:
        problems: list[tuple[Loc, str]] = []
        for index, hook in enumerate(self.alerts.webhooks):
            for position, pattern in enumerate(hook.providers):
                problem = self._unknown_provider(pattern)
                if problem:
                    problems.append((("alerts", "webhooks", index, "providers", position), problem))
        for index, silence in enumerate(self.alerts.silences):
            problem = self._unknown_provider(silence.provider)
            if problem:
                problems.append((("alerts", "silences", index, "provider"), problem))
        problems += self._cluster_problems()
        problems += self._canary_problems()
        if problems:
            raise _FieldProblems(*problems)
        return self

    def _cluster_problems(self) -> list[tuple[Loc, str]]:
        if not self.cluster.enabled:
            return []
        if self.storage.url.strip().lower().startswith("sqlite"):
            return [(("cluster", "enabled"), "needs PostgreSQL in storage.url: a SQLite file serves one instance")]
        intervals = [p.parameters.probe_interval_s or self.monitor.interval_s
                     for p in self.providers.values() if p.enabled]
        shortest_s = min(intervals, default=self.monitor.interval_s)
        if self.cluster.lease_s > 0.75 * shortest_s:
            return [(("cluster", "lease"), f"must be at most 3/4 of the shortest probe interval ({shortest_s:g}s), "
                                           "so a dead instance's providers are probed again within two intervals")]
        return []

    def _canary_problems(self) -> list[tuple[Loc, str]]:
        """Merged canary settings that cannot work: at monitor.canary, or at the provider's block that broke them."""
        shared = canary_problems(resolve_canary(None, self.monitor.canary, True), ())
        problems: list[tuple[Loc, str]] = [(("monitor", "canary", *sub), message) for sub, message in shared]
        for name, provider in self.providers.items():
            if provider.parameters.canary is None:
                continue
            merged = resolve_canary(provider.parameters.canary, self.monitor.canary, True)
            problems += [(("providers", name, "parameters", "canary", *sub), message)
                         for sub, message in canary_problems(merged, ()) if (sub, message) not in shared]
        return problems

    def _unknown_provider(self, pattern: str) -> str | None:
        if any(c in pattern for c in "*?[") or pattern in self.providers:
            return None
        close = difflib.get_close_matches(pattern, list(self.providers), n=1)
        return f"no provider is named '{pattern}'" + (f" (did you mean '{close[0]}'?)" if close else "")

    def provider_specs(self) -> tuple[ProviderSpec, ...]:
        """Every provider (enabled or not), in config order, with defaults applied."""
        return tuple(provider.spec(name, self.monitor) for name, provider in self.providers.items())

    def warnings(self) -> tuple[str, ...]:
        """Valid but probably wrong: enabled providers that share an endpoint (one server probed as several
        types is listed several times and ranked against itself)."""
        by_endpoint: dict[str, list[ProviderSpec]] = {}
        for spec in self.provider_specs():
            if spec.enabled:
                by_endpoint.setdefault(_endpoint_key(spec.base_url), []).append(spec)
        found = []
        for specs in by_endpoint.values():
            if len(specs) > 1:
                names = ", ".join(f"{s.name} ({s.type})" for s in specs)
                found.append(f"providers: {names} share the endpoint {specs[0].redacted_endpoint}: one server "
                             "there would be probed and ranked once per provider; keep one enabled (`type: auto` "
                             "detects which server it is)")
        return tuple(found)

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain JSON-able data under the YAML keys; secrets are '***'."""
        out = self.model_dump(mode="json", by_alias=True)
        out["providers"] = {spec.name: _effective_provider(spec) for spec in self.provider_specs()}
        return out


def _effective_provider(spec: ProviderSpec) -> dict[str, Any]:
    return {
        "type": spec.type,
        "endpoint": spec.redacted_endpoint,
        "api_key": _dump_secret(spec.api_key),
        "models": list(spec.models),
        "enabled": spec.enabled,
        "capabilities": sorted(spec.capabilities),
        "parameters": {
            "timeout": spec.timeout_s,
            "max_retries": spec.max_retries,
            "retry_backoff": spec.retry_backoff_s,
            "streaming_support": spec.streaming_support,
            "headers": {name: "***" for name, _ in spec.headers},
            "model_endpoint": spec.model_endpoint,
            "chat_endpoint": spec.chat_endpoint,
            "health_endpoint": spec.health_endpoint,
            "probe_interval": spec.probe_interval_s,
            "retry_interval": spec.retry_interval_s,
            "priority": spec.priority,
            "weight": spec.weight,
            "max_body_bytes": spec.max_body_bytes,
            "verify_tls": spec.verify_tls,
            "ca_file": spec.ca_file,
            "canary": {
                "enabled": spec.canary.enabled,
                "interval": spec.canary.interval_s,
                "models": list(spec.canary.models),
                "max_tokens": spec.canary.max_tokens,
                "deadline": spec.canary.deadline_s,
                "timeout": spec.canary.timeout_s,
                "prompt": spec.canary.prompt,
                "stream": spec.canary.stream,
                "max_tokens_per_day": spec.canary.max_tokens_per_day,
                "load": spec.canary.load,
            },
        },
    }


# ---------------------------------------------------------------------------------------------- pydantic errors

_TYPE_MESSAGES: Mapping[str, str] = {
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected text",
    "dict_type": "expected a mapping (key: value lines)",
    "model_type": "expected a mapping (key: value lines)",
    "model_attributes_type": "expected a mapping (key: value lines)",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "iterable_type": "expected a list",
    "datetime_type": "expected a date and time such as 2025-01-31T22:00:00Z",
    "datetime_parsing": "expected a date and time such as 2025-01-31T22:00:00Z",
    "datetime_from_date_parsing": "expected a date and time such as 2025-01-31T22:00:00Z",
}
_BOUND_MESSAGES: Mapping[str, tuple[str, str]] = {
    "greater_than": ("must be greater than", "gt"),
    "greater_than_equal": ("must be at least", "ge"),
    "less_than": ("must be less than", "lt"),
    "less_than_equal": ("must be at most", "le"),
}
_PLAIN_MESSAGES: Mapping[str, str] = {
    "finite_number": "must be a finite number",
    "string_too_short": "must not be empty",
    "missing": "required key is missing",
}


def _describe(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = str(value)
    return f"'{text[:40]}...'" if len(text) > 40 else f"'{text}'" if isinstance(value, str) else text


def _problems_from(exc: ValidationError) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldProblems):
            problems.extend(((*loc, *sub), message) for sub, message in cause.problems)
            continue
        if loc and loc[-1] == "[key]":  # a bad mapping key: report it at the key itself
            loc = loc[:-1]
        problems.append((loc, _message(error, loc)))
    return problems


def _message(error: Mapping[str, Any], loc: Loc) -> str:
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if loc == ("providers",) and kind == "dict_type":
        return f"expected provider names, each with its settings (e.g. 'vllm: {{type: vllm}}'), got {_describe(value)}"
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {_describe(value)}"
    if kind in _TYPE_MESSAGES:
        return f"{_TYPE_MESSAGES[kind]}, got {_describe(value)}"
    if kind in _BOUND_MESSAGES:
        words, bound_key = _BOUND_MESSAGES[kind]
        bound = ctx[bound_key]
        return f"{words} {bound:g}, got {_describe(value)}" if isinstance(bound, float) else \
            f"{words} {bound}, got {_describe(value)}"
    return _PLAIN_MESSAGES.get(kind, str(error["msg"]))


def _unknown_key(loc: Loc) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    if model is None:
        return f"unknown key '{key}'"
    allowed = _keys_of(model)
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown key '{key}' (did you mean '{close[0]}'?)"
    for field_name, field in model.model_fields.items():  # a key written one level too high
        inner = _unwrap(field.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel) and key in _keys_of(inner):
            return f"unknown key '{key}' (did you mean '{field.alias or field_name}.{key}'?)"
    return f"unknown key '{key}'; allowed keys: {', '.join(allowed)}"


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _unwrap(annotation: Any) -> Any:
    """`X | None` → X."""
    if get_origin(annotation) in (Union, UnionType):
        inner = [arg for arg in get_args(annotation) if arg is not type(None)]
        return inner[0] if len(inner) == 1 else annotation
    return annotation


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The section model that validates the mapping at loc, found by walking the field types."""
    current: Any = Config
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {field.alias or name: field for name, field in current.model_fields.items()}
            if part not in fields:
                return None
            current = fields[str(part)].annotation
        elif get_origin(current) in (dict, Mapping, tuple, list):
            args = get_args(current)
            current = args[1] if get_origin(current) in (dict, Mapping) else args[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


# ---------------------------------------------------------------------------------------------- entry points


def parse_config(text: str, *, source: str = "<string>", env: Mapping[str, str] | None = None) -> Config:
    """Validate a config given as YAML text. Raises ConfigError listing every problem found."""
    data, lines = _load_yaml(text, source)
    if data is None:
        raise ConfigError([("", "the config is empty: it needs at least a 'providers:' section")], source=source)
    if not isinstance(data, dict):
        raise ConfigError([("", f"expected key: value lines at the top (starting with 'providers:'), "
                                f"got {_describe(data)}")], lines=[1], source=source)
    # `x-...` top-level keys hold YAML anchors to share (as in docker compose); they are not settings
    data = {key: value for key, value in data.items() if not (isinstance(key, str) and key.startswith("x-"))}
    problems: list[tuple[Loc, str]] = []
    expanded = _interpolate(data, os.environ if env is None else env, (), problems)
    if problems:
        raise _config_error(problems, lines, source)
    try:
        return Config.model_validate(expanded)
    except ValidationError as exc:
        raise _config_error(_problems_from(exc), lines, source) from None


def _read_regular_file(path: str | os.PathLike[str]) -> str:
    """The file's text, only if it is a regular file: opened without blocking, so a FIFO (or a device) in its place
    is refused at once instead of hanging the reader until something writes to it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NotARegularFile
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as raw:
            data = raw.read(MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise _TooLarge
    return data.decode("utf-8")


class _NotARegularFile(OSError):
    pass


class _TooLarge(OSError):
    pass


MAX_CONFIG_BYTES = 16 << 20


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError (never OSError or a YAML error)."""
    source = os.fspath(path)
    try:
        text = _read_regular_file(path)
    except FileNotFoundError:
        raise ConfigError([("", "no such file")], source=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"not UTF-8 text ({exc.reason})")], source=source) from None
    except _NotARegularFile:
        raise ConfigError([("", "not a regular file (a FIFO, device or directory cannot be a config)")],
                          source=source) from None
    except _TooLarge:
        raise ConfigError([("", f"larger than {MAX_CONFIG_BYTES >> 20} MiB: not a config file")],
                          source=source) from None
    except OSError as exc:
        raise ConfigError([("", f"cannot read the file: {exc.strerror or exc}")], source=source) from None
    return parse_config(text, source=source, env=env)


__all__ = [
    "AlertsConfig",
    "ApiConfig",
    "CanaryConfig",
    "CanaryDefaults",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "LoggingConfig",
    "MonitorConfig",
    "ProviderConfig",
    "ProviderParameters",
    "RankingConfig",
    "RetentionConfig",
    "SilenceConfig",
    "StorageConfig",
    "WebhookConfig",
    "load_config",
    "parse_config",
]
