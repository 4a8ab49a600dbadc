"""Generators for the README's cog blocks: CLI help, config reference, provider types.

Run `make docs` to rewrite README.md; `make lint` runs `cog --check` so the README never drifts from the code.
"""

from __future__ import annotations

import io
import os
import types
import typing
from contextlib import redirect_stdout, suppress
from typing import Any

from pydantic import BaseModel

from monitord.cli import build_parser
from monitord.config import Config
from monitord.providers import ADAPTERS


def cli_help(*command: str) -> str:
    """`monitord [command] --help` as the user sees it."""
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: pin it so the README is reproducible
    buffer = io.StringIO()
    with redirect_stdout(buffer), suppress(SystemExit):
        build_parser().parse_args([*command, "--help"])
    return "```\n" + buffer.getvalue().rstrip() + "\n```"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " | ".join(names)
    if origin is tuple and typing.get_args(annotation)[-1:] == (Ellipsis,):
        return f"list[{_type_name(typing.get_args(annotation)[0])}]"
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def config_rows(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every config key, depth first."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        default = "" if field.is_required() else repr(field.get_default(call_default_factory=True))
        nested = _models_in(field.annotation)
        if nested:
            sub = nested[0]
            container = typing.get_origin(field.annotation)
            is_list = container in (list, tuple) or "Sequence" in str(field.annotation) or "list" in str(
                field.annotation)
            is_map = "Mapping" in str(field.annotation) or "dict" in str(field.annotation)
            key_part = f"{key}.NAME." if is_map else f"{key}[]." if is_list else f"{key}."
            if field.description:
                rows.append((key, "mapping" if is_map else "list" if is_list else "section", "",
                             field.description))
            rows += config_rows(sub, key_part)
        else:
            if len(default) > 40:
                default = default[:37] + "..."
            type_name = "duration" if name.endswith("_s") else _type_name(field.annotation)
            rows.append((key, type_name, default, field.description or ""))
    return rows


def config_reference() -> str:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, type_name, default, description in config_rows():
        cell = default.replace("|", "\\|")
        lines.append(f"| `{key}` | {type_name.replace('|', 'or')} | {f'`{cell}`' if cell else ''} | {description} |")
    return "\n".join(lines)


def restart_only() -> str:
    """The keys a reload refuses to change, with why (monitord/reload.py)."""
    from monitord.reload import RESTART_ONLY

    return "\n".join(f"- `{key}`: {why}" for key, why in sorted(RESTART_ONLY.items()))


def provider_types() -> str:
    lines = ["| type | server | default endpoint | health / models | capabilities |", "| --- | --- | --- | --- | --- |"]
    for name, adapter in ADAPTERS.items():
        d = adapter.defaults
        paths = " + ".join(p for p in (d.health_path, d.models_path) if p)
        lines.append(f"| `{name}` | {d.summary} | `{d.scheme}://127.0.0.1:{d.port}` | `{paths}` | "
                     f"{', '.join(sorted(d.capabilities))} |")
    return "\n".join(lines)


def _example_events() -> list[Any]:
    """One representative event of every type, as the rules build them (fixed ids and times for the docs)."""
    from datetime import UTC, datetime

    from monitord.model import AlertEvent, AlertProvider, AlertType, ErrorClass, Status

    at = datetime(2025, 1, 31, 22, 0, 5, tzinfo=UTC)
    since = datetime(2025, 1, 31, 21, 58, 2, tzinfo=UTC)
    gpu = AlertProvider("gpu-box", "vllm", "http://10.0.0.7:8000")
    common: dict[str, Any] = {"at": at, "provider": gpu}
    examples = {
        AlertType.PROVIDER_DOWN: dict(previous_status=Status.UP, status=Status.DOWN, since=at, failures_in_a_row=3,
                                      error_class=ErrorClass.REFUSED, error="connection refused (10.0.0.7:8000)"),
        AlertType.PROVIDER_UP: dict(previous_status=Status.DOWN, status=Status.UP, since=at, down_for_s=123.0),
        AlertType.PROVIDER_DEGRADED: dict(previous_status=Status.UP, status=Status.DEGRADED, since=at,
                                          error_class=ErrorClass.MODEL_MISSING,
                                          error="configured model(s) not served: qwen2.5-7b"),
        AlertType.PROVIDER_LOADING: dict(previous_status=Status.DOWN, status=Status.LOADING, since=at,
                                         error_class=ErrorClass.LOADING, error="/health: HTTP 503 Loading model"),
        AlertType.PROVIDER_STALLED: dict(previous_status=Status.UP, status=Status.STALLED, since=at,
                                         error_class=ErrorClass.GENERATION_TIMEOUT,
                                         error="meta-llama/Llama-3.1-8B-Instruct: no first token within 10s"),
        AlertType.PROVIDER_MISCONFIGURED: dict(
            previous_status=Status.UNKNOWN, status=Status.MISCONFIGURED, since=at, error_class=ErrorClass.WRONG_SERVER,
            error="configured as vllm, but the server looks like llamacpp (Server: llama.cpp header): use `type: "
                  "llamacpp` (or `type: auto`)"),
        AlertType.PROVIDER_FLAPPING: dict(previous_status=Status.DOWN, status=Status.UP, since=since,
                                          details={"transitions": 6, "window_s": 1800.0}),
        AlertType.MODEL_ADDED: dict(status=Status.UP, models=("qwen2.5-7b",)),
        AlertType.MODEL_REMOVED: dict(status=Status.UP, models=("llama-3.1-8b",)),
        AlertType.RANKING_BEST_CHANGED: dict(status=Status.UP, details={"previous_best": "laptop-ollama"}),
        AlertType.TEST: dict(provider=None),
    }
    return [AlertEvent(id=f"0f8c2f9e-4b1a-4c55-9d2e-{i:012d}", type=kind, **{**common, **fields})
            for i, (kind, fields) in enumerate(examples.items(), 1)]


def alert_examples() -> str:
    """Every event type with its `json` body, as a receiver gets it."""
    import json

    from monitord.alerts.formats import FORMATS, FormatOptions

    out = []
    for event in _example_events():
        rendered = FORMATS["json"](event, FormatOptions())
        body = json.dumps(json.loads(rendered.body), indent=2)
        out.append(f"<details><summary><code>{event.type.value}</code></summary>\n\n```json\n{body}\n```\n</details>\n")
    return "\n".join(out)


def chat_example(name: str) -> str:
    """The Slack or Discord body of a provider.down event."""
    import json

    from monitord.alerts.formats import FORMATS, FormatOptions

    rendered = FORMATS[name](_example_events()[0], FormatOptions())
    return "```json\n" + json.dumps(json.loads(rendered.body), indent=2) + "\n```"
