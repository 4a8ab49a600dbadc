"""Reload as a diff: every documented config key is either reloadable or restart-only.

A reload (SIGHUP) loads and validates the new file, compares it key by key with the running config, and refuses
it whole when a restart-only key changed (the message names the key). Otherwise the daemon runs the steps that
can fail first (the database) and then applies each changed key where it is used: see `Daemon.reload`.

Keys are the dotted names of the README's generated reference (docs/gen.py): `providers.NAME.x` for a key of
every provider, `alerts.webhooks[].x` for a key of every list entry. tests/test_reload.py fails when a key of the
reference is in neither set, so a new setting has to say how it reloads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from monitord.config import Config

_PROVIDER = "providers.NAME."
_PARAMETERS = _PROVIDER + "parameters."
_CANARY_KEYS = ("enabled", "interval", "models", "max_tokens", "deadline", "timeout", "prompt", "stream",
                "max_tokens_per_day", "load")

# Applied by replacing the provider specs: added providers start, removed ones stop, a changed one is probed with
# its new spec from its next run (rescheduled when its interval changed); rankings and the API see the new specs.
PROVIDER_KEYS = frozenset({
    "providers", *(_PROVIDER + k for k in ("type", "endpoint", "api_key", "models", "enabled", "capabilities")),
    *(_PARAMETERS + k for k in (
        "timeout", "max_retries", "retry_backoff", "streaming_support", "headers", "model_endpoint",
        "chat_endpoint", "health_endpoint", "probe_interval", "capabilities", "priority", "weight",
        "max_body_bytes", "verify_tls", "insecure", "ca_file", "canary", "retry_interval")),
    *(_PARAMETERS + "canary." + k for k in _CANARY_KEYS),
    # defaults that end up in every provider's spec
    "monitor.interval", "monitor.timeout", *("monitor.canary." + k for k in (*_CANARY_KEYS, "concurrency")),
})

RELOADABLE: frozenset[str] = PROVIDER_KEYS | frozenset({
    "monitor.jitter", "monitor.concurrency",  # the scheduler: next run / next probe to start
    "monitor.stall_window", "alerts.failure_threshold", "alerts.success_threshold", "ranking.window",  # live state
    "storage.batch_size", "storage.flush_interval", "storage.buffer_limit", "storage.write_timeout",  # the writer
    "storage.forget_models_after", "monitor.max_models",  # the writer's model rows (and max_models the specs)
    "storage.retention.raw", "storage.retention.minute_rollups", "storage.retention.hour_rollups",
    "storage.retention.prune_interval", "storage.retention.batch_size", "storage.retention.alerts",  # next run
    "api.token",  # the auth middleware reads the token in force on every request
    "alerts.webhooks", *("alerts.webhooks[]." + k for k in (
        "name", "url", "format", "secret", "headers", "events", "providers", "timeout", "concurrency", "batch")),
    "alerts.group_wait",  # a new dispatcher (events still in the writer are planned for it)
    "alerts.alert_never_up", "alerts.repeat_interval",  # the rules' policy, from the next probe
    "alerts.silences", *("alerts.silences[]." + k for k in ("provider", "start", "end", "reason")),
    "logging.level", "logging.format",
})

# key -> why it cannot change while the daemon runs
RESTART_ONLY: Mapping[str, str] = {
    "storage.url": "the database holds the daemon's history, outbox and leases",
    "api.listen": "the API's socket is bound at start",
    "api.max_connections": "the API server's connection limit is set when it starts",
    "api.idle_timeout": "the API server's keep-alive timeout is set when it starts",
    "cluster.enabled": "leases are taken at start",
    "cluster.instance_id": "the instance's leases are held under this id",
    "cluster.lease": "the other instances time this instance's leases by it",
}

DECLARED = RELOADABLE | frozenset(RESTART_ONLY)


class ReloadRefused(Exception):
    """The new config changes a restart-only key."""

    def __init__(self, keys: Sequence[str]) -> None:
        reasons = "; ".join(f"{key} cannot change on reload ({RESTART_ONLY[key]})" for key in keys)
        super().__init__(f"{reasons}: restart the daemon to apply it")
        self.keys = tuple(keys)


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    changed: tuple[str, ...]  # declared keys whose value differs, sorted

    def any(self, keys: Iterable[str]) -> bool:
        return any(key in self.changed for key in keys)

    def under(self, prefix: str) -> bool:
        return any(key == prefix or key.startswith(prefix + ".") or key.startswith(prefix + "[")
                   for key in self.changed)


def plan(old: Config, new: Config) -> ReloadPlan:
    """The declared keys that differ; raises ReloadRefused naming every restart-only key that changed."""
    changed = sorted(key for key in DECLARED if value_at(old, key) != value_at(new, key))
    refused = [key for key in changed if key in RESTART_ONLY]
    if refused:
        raise ReloadRefused(refused)
    return ReloadPlan(tuple(changed))


def value_at(config: BaseModel, key: str) -> Any:
    """The value of a reference key: a dict by provider name below `NAME`, a tuple over entries below `[]`."""
    return _walk(config, key.replace("[]", ".[]").split("."))


def _walk(value: Any, parts: list[str]) -> Any:
    if not parts:
        return value
    head, rest = parts[0], parts[1:]
    if head == "NAME":
        return {name: _walk(item, rest) for name, item in (value or {}).items()}
    if head == "[]":
        return tuple(_walk(item, rest) for item in (value or ()))
    if value is None:
        return None
    if isinstance(value, BaseModel):
        return _walk(getattr(value, _attribute(type(value), head)), rest)
    raise KeyError(f"no config key {head!r} under {type(value).__name__}")


def _attribute(model: type[BaseModel], alias: str) -> str:
    for name, field in model.model_fields.items():
        if (field.alias or name) == alias:
            return name
    raise KeyError(f"no config key {alias!r} in {model.__name__}")
