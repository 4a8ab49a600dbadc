"""Alert formats: pure renderers, checked against our JSON schema and Slack's and Discord's documented payloads.

The Slack and Discord schemas below encode the services' incoming-webhook rules (block and embed shapes, lengths,
counts); a body that breaks one would be answered 400 by the service and the alert lost.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import orjson
import pytest

from monitord.alerts.formats import FORMATS, FormatOptions, describe, duration_text, render_discord, render_slack
from monitord.model import AlertEvent, AlertProvider, AlertType, ErrorClass, Status

AT = datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)
GPU = AlertProvider("gpu-box", "vllm", "http://***@10.0.0.5:8000")


def event(kind: AlertType, **changes: Any) -> AlertEvent:
    base: dict[str, Any] = {"id": "6f1c2d9e-0000-4000-8000-000000000001", "type": kind, "at": AT, "provider": GPU}
    return AlertEvent(**{**base, **changes})


SAMPLES: dict[AlertType, AlertEvent] = {
    AlertType.PROVIDER_DOWN: event(
        AlertType.PROVIDER_DOWN, previous_status=Status.UP, status=Status.DOWN, since=AT, failures_in_a_row=3,
        error_class=ErrorClass.REFUSED, error="connection refused"),
    AlertType.PROVIDER_UP: event(
        AlertType.PROVIDER_UP, previous_status=Status.DOWN, status=Status.UP, since=AT, down_for_s=192.0),
    AlertType.PROVIDER_DEGRADED: event(
        AlertType.PROVIDER_DEGRADED, previous_status=Status.UP, status=Status.DEGRADED, since=AT,
        error_class=ErrorClass.EMPTY_MODELS, error="no model listed"),
    AlertType.PROVIDER_STALLED: event(
        AlertType.PROVIDER_STALLED, previous_status=Status.UP, status=Status.STALLED, since=AT,
        error_class=ErrorClass.GENERATION_TIMEOUT, error="llama3: no first token within 10s"),
    AlertType.PROVIDER_MISCONFIGURED: event(
        AlertType.PROVIDER_MISCONFIGURED, previous_status=Status.UP, status=Status.MISCONFIGURED, since=AT,
        error_class=ErrorClass.WRONG_SERVER, error="configured as vllm, but the server looks like llamacpp"),
    AlertType.PROVIDER_LOADING: event(
        AlertType.PROVIDER_LOADING, previous_status=Status.UP, status=Status.LOADING, since=AT,
        failures_in_a_row=1, error_class=ErrorClass.LOADING, error="Loading model"),
    AlertType.PROVIDER_FLAPPING: event(
        AlertType.PROVIDER_FLAPPING, previous_status=Status.UP, status=Status.DOWN, since=AT,
        details={"transitions": 6, "window_s": 600.0}),
    AlertType.MODEL_ADDED: event(AlertType.MODEL_ADDED, status=Status.UP, models=("llama3:8b",)),
    AlertType.MODEL_REMOVED: event(AlertType.MODEL_REMOVED, status=Status.UP, models=("a", "b")),
    AlertType.RANKING_BEST_CHANGED: event(
        AlertType.RANKING_BEST_CHANGED, status=Status.UP, details={"previous_best": "cpu-box"}),
    AlertType.TEST: event(AlertType.TEST, provider=None),
}

# -- service schemas -----------------------------------------------------------------------------------------

_SLACK_TEXT = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"enum": ["mrkdwn", "plain_text"]}, "text": {"type": "string", "minLength": 1}},
}
SLACK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": 3000},
        "attachments": {"type": "array", "maxItems": 20, "items": {
            "type": "object",
            "properties": {
                "color": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
                "fallback": {"type": "string"},
                "blocks": {"$ref": "#/$defs/blocks"},
            },
        }},
        "blocks": {"$ref": "#/$defs/blocks"},
    },
    "$defs": {
        "blocks": {"type": "array", "maxItems": 50, "items": {"oneOf": [
            {"type": "object", "required": ["type", "text"], "additionalProperties": False, "properties": {
                "type": {"const": "header"},
                "text": {"type": "object", "required": ["type", "text"], "properties": {
                    "type": {"const": "plain_text"}, "text": {"type": "string", "minLength": 1, "maxLength": 150}}},
            }},
            {"type": "object", "required": ["type"], "additionalProperties": False, "properties": {
                "type": {"const": "section"},
                "text": {**_SLACK_TEXT, "properties": {**_SLACK_TEXT["properties"],
                                                      "text": {"type": "string", "maxLength": 3000}}},
                "fields": {"type": "array", "minItems": 1, "maxItems": 10, "items": {
                    **_SLACK_TEXT, "properties": {**_SLACK_TEXT["properties"],
                                                  "text": {"type": "string", "maxLength": 2000}}}},
            }, "anyOf": [{"required": ["text"]}, {"required": ["fields"]}]},
            {"type": "object", "required": ["type", "elements"], "additionalProperties": False, "properties": {
                "type": {"const": "context"},
                "elements": {"type": "array", "minItems": 1, "maxItems": 10, "items": _SLACK_TEXT},
            }},
        ]}},
    },
}
DISCORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "anyOf": [{"required": ["content"]}, {"required": ["embeds"]}],
    "properties": {
        "content": {"type": "string", "maxLength": 2000},
        "username": {"type": "string", "minLength": 1, "maxLength": 80, "not": {"pattern": "(?i)discord|clyde"}},
        "allowed_mentions": {"type": "object", "properties": {"parse": {"type": "array"}}},
        "embeds": {"type": "array", "minItems": 1, "maxItems": 10, "items": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "title": {"type": "string", "maxLength": 256},
                "description": {"type": "string", "maxLength": 4096},
                "url": {"type": "string"},
                "color": {"type": "integer", "minimum": 0, "maximum": 0xFFFFFF},
                "timestamp": {"type": "string", "format": "date-time"},
                "footer": {"type": "object", "required": ["text"], "properties": {
                    "text": {"type": "string", "maxLength": 2048}}},
                "fields": {"type": "array", "maxItems": 25, "items": {
                    "type": "object", "required": ["name", "value"], "additionalProperties": False,
                    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 256},
                                   "value": {"type": "string", "minLength": 1, "maxLength": 1024},
                                   "inline": {"type": "boolean"}}}},
            },
        }},
    },
}


def discord_embed_chars(payload: dict[str, Any]) -> int:
    """Discord's 6000-character budget: titles, descriptions, field names and values, footers of all embeds."""
    total = 0
    for embed in payload.get("embeds", []):
        total += len(embed.get("title", "")) + len(embed.get("description", ""))
        total += len(embed.get("footer", {}).get("text", ""))
        total += sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", []))
    return total


def body(rendered: Any) -> Any:
    assert rendered.content_type == "application/json"
    return orjson.loads(rendered.body)


# -- tests ---------------------------------------------------------------------------------------------------


def test_formats_registry_is_exactly_the_documented_three() -> None:
    assert set(FORMATS) == {"json", "slack", "discord"}


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(AlertType)


@pytest.mark.parametrize("kind", list(AlertType))
def test_json_is_the_event_schema_plus_summary(kind: AlertType) -> None:
    sample = SAMPLES[kind]
    payload = body(FORMATS["json"](sample, FormatOptions(source="lab-monitord")))
    assert payload["summary"] == describe(sample).title
    assert payload["source"] == "lab-monitord"
    assert payload["version"] == 1
    assert payload["type"] == kind.value
    assert "silenced_by" not in payload
    assert AlertEvent.from_dict(payload) == sample  # nothing lost on the wire


@pytest.mark.parametrize("kind", list(AlertType))
def test_slack_body_is_a_valid_incoming_webhook_payload(kind: AlertType) -> None:
    payload = body(render_slack(SAMPLES[kind], FormatOptions(link_url="http://monitor.lan:8765")))
    jsonschema.validate(payload, SLACK_SCHEMA)
    assert describe(SAMPLES[kind]).title in payload["text"]


@pytest.mark.parametrize("kind", list(AlertType))
def test_discord_body_is_a_valid_execute_webhook_payload(kind: AlertType) -> None:
    payload = body(render_discord(SAMPLES[kind], FormatOptions()))
    jsonschema.validate(payload, DISCORD_SCHEMA)
    assert discord_embed_chars(payload) <= 6000
    assert payload["allowed_mentions"] == {"parse": []}
    assert payload["embeds"][0]["title"] == describe(SAMPLES[kind]).title


HUGE = "x" * 20_000


@pytest.mark.parametrize("render, schema", [(render_slack, SLACK_SCHEMA), (render_discord, DISCORD_SCHEMA)],
                         ids=["slack", "discord"])
@pytest.mark.parametrize("changes", [
    {"error": HUGE},
    {"models": tuple(f"model-{i}-{HUGE[:300]}" for i in range(40)), "type": AlertType.MODEL_REMOVED},
    {"provider": AlertProvider("p" * 64, "openai", "http://" + "h" * 3000 + ":1")},
], ids=["huge-error", "many-models", "long-endpoint"])
def test_oversized_values_are_clipped_to_the_service_limits(render: Any, schema: Any, changes: Any) -> None:
    payload = body(render(event(AlertType.PROVIDER_DOWN, status=Status.DOWN, **changes), FormatOptions()))
    jsonschema.validate(payload, schema)
    if render is render_discord:
        assert discord_embed_chars(payload) <= 6000


def test_slack_escapes_control_characters_in_server_text() -> None:
    sample = event(AlertType.PROVIDER_DOWN, status=Status.DOWN, error="<!channel> & <http://evil|click>")
    text = render_slack(sample, FormatOptions()).body.decode()
    assert "<!channel>" not in text
    assert "&lt;!channel&gt; &amp; &lt;http://evil|click&gt;" in text


def test_discord_never_pings_and_shows_server_text_verbatim() -> None:
    sample = event(AlertType.PROVIDER_DOWN, status=Status.DOWN, error="@everyone `boom` **bold**")
    payload = body(render_discord(sample, FormatOptions()))
    values = [f["value"] for f in payload["embeds"][0]["fields"]]
    assert "`error: @everyone 'boom' **bold**`" in values  # in a code span: no markdown, no mention
    assert payload["allowed_mentions"] == {"parse": []}


def test_discord_omits_a_username_discord_would_refuse() -> None:
    payload = body(render_discord(SAMPLES[AlertType.TEST], FormatOptions(source="discord-bridge")))
    assert "username" not in payload
    assert body(render_discord(SAMPLES[AlertType.TEST], FormatOptions(source="lab")))["username"] == "lab"


def test_times_are_shown_in_the_readers_zone_with_a_fallback() -> None:
    slack = render_slack(SAMPLES[AlertType.PROVIDER_DOWN], FormatOptions()).body.decode()
    assert f"<!date^{int(AT.timestamp())}^" in slack and "|2025-03-01 12:00:05 UTC>" in slack
    discord = render_discord(SAMPLES[AlertType.PROVIDER_DOWN], FormatOptions()).body.decode()
    assert f"<t:{int(AT.timestamp())}:f>" in discord


@pytest.mark.parametrize("kind, title", [
    (AlertType.PROVIDER_DOWN, "gpu-box is down"),
    (AlertType.PROVIDER_UP, "gpu-box recovered after 3m 12s"),
    (AlertType.PROVIDER_DEGRADED, "gpu-box is degraded"),
    (AlertType.PROVIDER_LOADING, "gpu-box is loading a model"),
    (AlertType.PROVIDER_FLAPPING, "gpu-box is flapping (6 status changes in 10m)"),
    (AlertType.MODEL_ADDED, "gpu-box now serves llama3:8b"),
    (AlertType.MODEL_REMOVED, "gpu-box no longer serves 2 models"),
    (AlertType.RANKING_BEST_CHANGED, "Best provider is now gpu-box (was cpu-box)"),
    (AlertType.TEST, "Test alert from monitord"),
])
def test_titles(kind: AlertType, title: str) -> None:
    assert describe(SAMPLES[kind]).title == title


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (9.4, "9s"), (60, "1m"), (192, "3m 12s"), (3600, "1h"), (3725, "1h 2m"),
    (90061, "1d 1h"), (-5, "0s"),
])
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_facts_leave_out_what_the_event_does_not_know() -> None:
    labels = [fact.label for fact in describe(SAMPLES[AlertType.TEST]).facts]
    assert labels == ["At"]
    up = [fact.label for fact in describe(SAMPLES[AlertType.PROVIDER_UP]).facts]
    assert "Failures in a row" not in up and "Down for" in up


def test_rendering_is_pure() -> None:
    sample = SAMPLES[AlertType.PROVIDER_DOWN]
    for render in FORMATS.values():
        assert render(sample, FormatOptions()) == render(sample, FormatOptions())


def test_event_dict_round_trip_keeps_times_aware() -> None:
    sample = SAMPLES[AlertType.PROVIDER_UP]
    again = AlertEvent.from_dict(orjson.loads(orjson.dumps(sample.to_dict())))
    assert again == sample and again.at.tzinfo is not None
    assert again.at - AT == timedelta(0)
