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


def provider_types() -> str:
    lines = ["| type | server | default endpoint | health / models | capabilities |", "| --- | --- | --- | --- | --- |"]
    for name, adapter in ADAPTERS.items():
        d = adapter.defaults
        paths = " + ".join(p for p in (d.health_path, d.models_path) if p)
        lines.append(f"| `{name}` | {d.summary} | `{d.scheme}://127.0.0.1:{d.port}` | `{paths}` | "
                     f"{', '.join(sorted(d.capabilities))} |")
    return "\n".join(lines)
