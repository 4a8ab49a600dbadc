"""FORMATS: how an AlertEvent becomes a webhook body, one pure renderer per target service.

Pure: no I/O, no clock. Only alerts/delivery.py sends; a new format is one function and one FORMATS entry.
"""

from __future__ import annotations

import enum
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from monitord.model import AlertEvent, AlertType, Status

JSON_CONTENT_TYPE = "application/json"

# Service limits (characters). Over them Slack and Discord answer 400 and the alert would be lost.
SLACK_HEADER_MAX = 150
SLACK_TEXT_MAX = 3000  # section text
SLACK_FIELD_MAX = 2000
SLACK_FIELDS_MAX = 10
SLACK_FALLBACK_MAX = 3000  # top-level `text`, shown in notifications
_SLACK_VALUE_MAX = SLACK_FIELD_MAX // 2  # room for the label and for &amp;-style escapes to grow the text
DISCORD_CONTENT_MAX = 2000
DISCORD_TITLE_MAX = 256
DISCORD_DESCRIPTION_MAX = 4096
DISCORD_FIELD_NAME_MAX = 256
DISCORD_FIELD_VALUE_MAX = 1024
DISCORD_FIELDS_MAX = 25
DISCORD_FOOTER_MAX = 2048
DISCORD_USERNAME_MAX = 80
DISCORD_EMBED_TOTAL_MAX = 6000  # title + description + fields + footer, over all embeds of a message
DISCORD_EMBEDS_MAX = 10


@dataclass(frozen=True, slots=True)
class FormatOptions:
    """What a renderer may add besides the event. `source` names this monitord (sender name, footer)."""

    source: str = "monitord"
    link_url: str | None = None  # e.g. the API base URL, linked from chat messages when set


@dataclass(frozen=True, slots=True)
class Rendered:
    content_type: str
    body: bytes


Render = Callable[[AlertEvent, FormatOptions], Rendered]
RenderGroup = Callable[[Sequence[AlertEvent], FormatOptions], Rendered]  # several events, one message


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    OK = "ok"
    INFO = "info"


_SEVERITY: Mapping[AlertType, Severity] = {
    AlertType.PROVIDER_DOWN: Severity.CRITICAL,
    AlertType.PROVIDER_UP: Severity.OK,
    AlertType.PROVIDER_DEGRADED: Severity.WARNING,
    AlertType.PROVIDER_LOADING: Severity.WARNING,
    AlertType.PROVIDER_STALLED: Severity.CRITICAL,
    AlertType.PROVIDER_MISCONFIGURED: Severity.CRITICAL,
    AlertType.PROVIDER_FLAPPING: Severity.WARNING,
    AlertType.MODEL_ADDED: Severity.INFO,
    AlertType.MODEL_REMOVED: Severity.WARNING,
    AlertType.RANKING_BEST_CHANGED: Severity.INFO,
    AlertType.TEST: Severity.INFO,
}
_COLOR: Mapping[Severity, int] = {
    Severity.CRITICAL: 0xD92D20,
    Severity.WARNING: 0xF79009,
    Severity.OK: 0x17B26A,
    Severity.INFO: 0x2E90FA,
}


@dataclass(frozen=True, slots=True)
class Fact:
    """One labelled value of a message. `at` marks a time, which chat services show in the reader's zone."""

    label: str
    value: str
    at: datetime | None = None
    code: bool = False  # machine text (URLs, errors, ids): shown verbatim in a code span


@dataclass(frozen=True, slots=True)
class Message:
    """The service-neutral reading of an event that the chat formats lay out."""

    title: str
    severity: Severity
    facts: tuple[Fact, ...]


def severity_of(event: AlertEvent) -> Severity:
    return _SEVERITY[event.type]


def duration_text(seconds: float) -> str:
    """`3d 4h`, `2h 5m`, `4m 12s`, `9s`: the two largest units, for people."""
    total = max(0, round(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size or (unit == "s" and not parts):
            parts.append(f"{total // size}{unit}")
            total %= size
    return " ".join(parts[:2])


def utc_text(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


_PLAIN_TITLES: Mapping[AlertType, str] = {
    AlertType.PROVIDER_DOWN: "{name} is down",
    AlertType.PROVIDER_DEGRADED: "{name} is degraded",
    AlertType.PROVIDER_LOADING: "{name} is loading a model",
    AlertType.PROVIDER_STALLED: "{name} answers but cannot generate (stalled)",
    AlertType.PROVIDER_MISCONFIGURED: "{name} is another type of server than configured",
    AlertType.TEST: "Test alert from monitord",
}


def _title(event: AlertEvent) -> str:
    name = event.provider.name if event.provider else "?"
    details = event.details
    match event.type:
        case AlertType.PROVIDER_UP:
            if event.down_for_s is not None:
                return f"{name} recovered after {duration_text(event.down_for_s)}"
            return f"{name} is up"
        case AlertType.PROVIDER_FLAPPING:
            changes, window_s = details.get("transitions"), details.get("window_s")
            if isinstance(changes, int) and isinstance(window_s, int | float):
                return f"{name} is flapping ({changes} status changes in {duration_text(window_s)})"
            return f"{name} is flapping"
        case AlertType.MODEL_ADDED | AlertType.MODEL_REMOVED:
            verb = "now serves" if event.type is AlertType.MODEL_ADDED else "no longer serves"
            if len(event.models) == 1:
                return f"{name} {verb} {event.models[0]}"
            return f"{name} {verb} {len(event.models)} models"
        case AlertType.RANKING_BEST_CHANGED:
            if event.provider is None:
                return "No provider is eligible for the default ranking any more"
            previous = details.get("previous_best")
            return f"Best provider is now {name}" + (f" (was {previous})" if previous else "")
    return _PLAIN_TITLES[event.type].format(name=name)


def describe(event: AlertEvent) -> Message:
    """Title, severity and the facts worth showing, in the order a person reads them."""
    facts: list[Fact] = []
    if event.provider is not None:
        facts.append(Fact("Provider", f"{event.provider.name} ({event.provider.type})"))
        facts.append(Fact("Endpoint", event.provider.endpoint, code=True))
    if event.status is not None:
        status = event.status.value
        if event.previous_status is not None and event.previous_status is not event.status:
            status = f"{event.previous_status.value} → {status}"
        facts.append(Fact("Status", status))
    if event.since is not None:
        facts.append(Fact("Since", utc_text(event.since), at=event.since))
    if event.down_for_s is not None:
        facts.append(Fact("Down for", duration_text(event.down_for_s)))
    if event.failures_in_a_row and event.status not in (Status.UP, None):
        facts.append(Fact("Failures in a row", str(event.failures_in_a_row)))
    if event.error_class is not None or event.error:
        cls = event.error_class.value if event.error_class else "error"
        facts.append(Fact("Error", f"{cls}: {event.error}" if event.error else cls, code=True))
    if event.models:
        facts.append(Fact("Models", ", ".join(event.models), code=True))
    previous_best = event.details.get("previous_best")
    if event.type is AlertType.RANKING_BEST_CHANGED and previous_best:
        facts.append(Fact("Previous best", str(previous_best)))
    facts.append(Fact("At", utc_text(event.at), at=event.at))
    return Message(_title(event), severity_of(event), tuple(facts))


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, ending in an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def code_span(text: str, limit: int) -> str:
    """`text` as an inline code span of at most `limit` characters; a backtick inside would end it early."""
    inner = clip(text.replace("`", "'"), limit - 2)
    return f"`{inner}`"


# -- json --------------------------------------------------------------------------------------------------


def render_json(event: AlertEvent, options: FormatOptions) -> Rendered:
    """Our documented schema: AlertEvent.to_dict() plus `summary` (the title) and `source`."""
    body = {**event.to_dict(), "summary": describe(event).title, "source": options.source}
    body.pop("silenced_by", None)  # delivered events are never silenced; the field is for the outbox record
    return Rendered(JSON_CONTENT_TYPE, orjson.dumps(body))


# -- slack -------------------------------------------------------------------------------------------------


def slack_escape(text: str) -> str:
    """Slack mrkdwn treats &, < and > as control characters; everything else shows as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_value(fact: Fact, limit: int) -> str:
    if fact.at is not None:
        # Slack shows this in the reader's time zone; the text after | is the fallback.
        return f"<!date^{int(fact.at.timestamp())}^{{date_short_pretty}} {{time_secs}}|{fact.value}>"
    if fact.code:
        return slack_escape(code_span(fact.value, limit))
    return clip(slack_escape(fact.value), limit)


def render_slack(event: AlertEvent, options: FormatOptions) -> Rendered:
    """Incoming-webhook payload: `text` for notifications, blocks inside a coloured attachment."""
    message = describe(event)
    fields = [
        {"type": "mrkdwn", "text": f"*{fact.label}*\n{_slack_value(fact, _SLACK_VALUE_MAX)}"}
        for fact in message.facts[:SLACK_FIELDS_MAX]
    ]
    context = f"{slack_escape(options.source)} · event `{event.id}`"
    if options.link_url:
        context += f" · <{options.link_url}|status>"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": clip(message.title, SLACK_HEADER_MAX)}},
        {"type": "section", "fields": fields},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(context, SLACK_TEXT_MAX)}]},
    ]
    fallback = clip(f"[{message.severity.value}] {slack_escape(message.title)}", SLACK_FALLBACK_MAX)
    payload = {
        "text": fallback,
        "attachments": [{"color": f"#{_COLOR[message.severity]:06x}", "fallback": fallback, "blocks": blocks}],
    }
    return Rendered(JSON_CONTENT_TYPE, orjson.dumps(payload))


# -- discord -----------------------------------------------------------------------------------------------

_DISCORD_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\*_~`|>[]"})
# Discord refuses (400) a webhook username containing these words.
_DISCORD_RESERVED_NAMES = ("discord", "clyde")


def discord_escape(text: str) -> str:
    """Provider names and server errors shown literally, not as Discord markdown."""
    return text.translate(_DISCORD_MARKDOWN)


def _discord_value(fact: Fact) -> str:
    if fact.at is not None:
        return f"<t:{int(fact.at.timestamp())}:f>"  # shown in the reader's time zone
    if fact.code:
        return code_span(fact.value, DISCORD_FIELD_VALUE_MAX)
    return clip(discord_escape(fact.value), DISCORD_FIELD_VALUE_MAX)


def render_discord(event: AlertEvent, options: FormatOptions) -> Rendered:
    """Execute-webhook payload: one embed (coloured, with fields), mentions disabled, within Discord's limits."""
    message = describe(event)
    title = clip(message.title, DISCORD_TITLE_MAX)
    footer = clip(f"{options.source} · event {event.id}", DISCORD_FOOTER_MAX)
    fields: list[dict[str, Any]] = [
        {
            "name": clip(fact.label, DISCORD_FIELD_NAME_MAX),
            "value": _discord_value(fact),
            "inline": len(fact.value) <= 40,
        }
        for fact in message.facts[:DISCORD_FIELDS_MAX]
    ]
    # The 6000-character budget is shared by every text of the embed: drop trailing fields until it fits.
    while fields and len(title) + len(footer) + sum(len(f["name"]) + len(f["value"]) for f in fields) > (
        DISCORD_EMBED_TOTAL_MAX
    ):
        fields.pop()
    embed: dict[str, Any] = {
        "title": title,
        "color": _COLOR[message.severity],
        "fields": fields,
        "footer": {"text": footer},
        "timestamp": event.at.isoformat(),
    }
    if options.link_url:
        embed["url"] = options.link_url
    payload: dict[str, Any] = {
        "embeds": [embed],
        "allowed_mentions": {"parse": []},  # an error text containing @everyone must not ping anyone
    }
    if not any(word in options.source.lower() for word in _DISCORD_RESERVED_NAMES):
        payload["username"] = clip(options.source, DISCORD_USERNAME_MAX)
    return Rendered(JSON_CONTENT_TYPE, orjson.dumps(payload))


# -- groups: several events in one message ------------------------------------------------------------------

GROUP_LINES_MAX = 25  # events listed one per line; the rest are counted ("... and 175 more")
_GROUP_NAMES_MAX = 5  # provider names in the title
_GROUP_NAMESPACE = uuid.UUID("6f1c2d0e-8f43-5b7a-9c1e-3d2b4a5f6e70")
_GROUP_PHRASES: Mapping[AlertType, tuple[str, str]] = {  # (one, several)
    AlertType.PROVIDER_DOWN: ("provider down", "providers down"),
    AlertType.PROVIDER_UP: ("provider recovered", "providers recovered"),
    AlertType.PROVIDER_DEGRADED: ("provider degraded", "providers degraded"),
    AlertType.PROVIDER_LOADING: ("provider loading", "providers loading"),
    AlertType.PROVIDER_FLAPPING: ("provider flapping", "providers flapping"),
    AlertType.PROVIDER_STALLED: ("provider stalled", "providers stalled"),
    AlertType.MODEL_ADDED: ("model change (added)", "model changes (added)"),
    AlertType.MODEL_REMOVED: ("model change (removed)", "model changes (removed)"),
    AlertType.RANKING_BEST_CHANGED: ("best provider change", "best provider changes"),
    AlertType.TEST: ("test alert", "test alerts"),
}


def group_id(events: Sequence[AlertEvent]) -> str:
    """The delivery id of a grouped message: the same events give the same id, so a retry keeps it."""
    return str(uuid.uuid5(_GROUP_NAMESPACE, ",".join(sorted(e.id for e in events))))


def group_title(events: Sequence[AlertEvent]) -> str:
    """`5 providers down: a, b, c, d, e; 1 provider recovered: f`, the largest kind first."""
    by_type: dict[AlertType, list[str]] = {}
    for event in events:
        by_type.setdefault(event.type, []).append(event.provider.name if event.provider else "-")
    counts = Counter({kind: len(names) for kind, names in by_type.items()})
    parts = []
    for kind, count in counts.most_common():
        one, several = _GROUP_PHRASES[kind]
        names = list(dict.fromkeys(by_type[kind]))
        shown = ", ".join(names[:_GROUP_NAMES_MAX]) + (", ..." if len(names) > _GROUP_NAMES_MAX else "")
        parts.append(f"{count} {one if count == 1 else several}: {shown}")
    return "; ".join(parts)


def group_severity(events: Sequence[AlertEvent]) -> Severity:
    order = (Severity.CRITICAL, Severity.WARNING, Severity.OK, Severity.INFO)
    return min((severity_of(e) for e in events), key=order.index)


def _group_lines(events: Sequence[AlertEvent]) -> list[str]:
    lines = [f"{describe(event).title} ({utc_text(event.at)})" for event in events[:GROUP_LINES_MAX]]
    if len(events) > GROUP_LINES_MAX:
        lines.append(f"... and {len(events) - GROUP_LINES_MAX} more")
    return lines


def render_json_batch(events: Sequence[AlertEvent], options: FormatOptions) -> Rendered:
    """`batch: true`: {"version", "id" (the group's delivery id), "summary", "source", "events": [each as json]}."""
    bodies = [orjson.loads(render_json(event, options).body) for event in events]
    body = {"version": bodies[0]["version"] if bodies else 1, "id": group_id(events), "type": "batch",
            "summary": group_title(events), "source": options.source, "events": bodies}
    return Rendered(JSON_CONTENT_TYPE, orjson.dumps(body))


def render_slack_group(events: Sequence[AlertEvent], options: FormatOptions) -> Rendered:
    """One Slack message for several events: the summary as header, one line per event."""
    if len(events) == 1:
        return render_slack(events[0], options)
    severity = group_severity(events)
    title = group_title(events)
    text = "\n".join(f"• {slack_escape(line)}" for line in _group_lines(events))
    context = f"{slack_escape(options.source)} · {len(events)} events"
    if options.link_url:
        context += f" · <{options.link_url}|status>"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": clip(title, SLACK_HEADER_MAX)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, SLACK_TEXT_MAX)}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(context, SLACK_TEXT_MAX)}]},
    ]
    fallback = clip(f"[{severity.value}] {slack_escape(title)}", SLACK_FALLBACK_MAX)
    payload = {"text": fallback,
               "attachments": [{"color": f"#{_COLOR[severity]:06x}", "fallback": fallback, "blocks": blocks}]}
    return Rendered(JSON_CONTENT_TYPE, orjson.dumps(payload))


def render_discord_group(events: Sequence[AlertEvent], options: FormatOptions) -> Rendered:
    """One Discord message for several events: the summary as title, one line per event as description."""
    if len(events) == 1:
        return render_discord(events[0], options)
    severity = group_severity(events)
    description = "\n".join(f"- {discord_escape(line)}" for line in _group_lines(events))
    embed: dict[str, Any] = {
        "title": clip(group_title(events), DISCORD_TITLE_MAX),
        "description": clip(description, DISCORD_DESCRIPTION_MAX),
        "color": _COLOR[severity],
        "footer": {"text": clip(f"{options.source} · {len(events)} events", DISCORD_FOOTER_MAX)},
        "timestamp": events[-1].at.isoformat(),
    }
    if options.link_url:
        embed["url"] = options.link_url
    payload: dict[str, Any] = {"embeds": [embed], "allowed_mentions": {"parse": []}}
    if not any(word in options.source.lower() for word in _DISCORD_RESERVED_NAMES):
        payload["username"] = clip(options.source, DISCORD_USERNAME_MAX)
    return Rendered(JSON_CONTENT_TYPE, orjson.dumps(payload))


FORMATS: Mapping[str, Render] = {
    "json": render_json,
    "slack": render_slack,
    "discord": render_discord,
}
GROUP_FORMATS: Mapping[str, RenderGroup] = {  # the same names as FORMATS
    "json": render_json_batch,
    "slack": render_slack_group,
    "discord": render_discord_group,
}
