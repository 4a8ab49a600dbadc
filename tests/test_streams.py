"""Stream readers against the servers' reference streams (tests/fixtures), fed whole and split at every byte."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from monitord.providers.streams import (
    NdjsonReader,
    SseReader,
    StreamEvent,
    StreamFormatError,
    StreamReader,
    StreamTally,
    kobold_event,
    ollama_line,
    openai_chunk,
    tgi_event,
)
from tests.doubles.base import fixture_bytes

Reader = Callable[[], StreamReader]


def read_all(reader: StreamReader, body: bytes, piece: int | None = None) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    step = piece or len(body) or 1
    for start in range(0, len(body), step):
        events += reader.feed(body[start:start + step])
    return events + reader.close()


def tally(events: list[StreamEvent]) -> StreamTally:
    folded = StreamTally()
    for index, event in enumerate(events):
        folded.add(event, 0.1 * index)
    return folded


REFERENCE = [
    # fixture, reader, reply text, finish_reason, terminal marker seen
    (("vllm", "chat-stream.sse"), lambda: SseReader(openai_chunk), "Hello there", "length", True),
    (("llamacpp", "chat-stream.sse"), lambda: SseReader(openai_chunk), "Hello", "length", True),
    (("tabbyapi", "chat-stream.sse"), lambda: SseReader(openai_chunk), "Hello", "stop", True),  # CRLF, `: ping`
    (("koboldcpp", "chat-stream-old.sse"), lambda: SseReader(openai_chunk), " Hello there", "length", True),
    (("koboldcpp", "api-extra-generate-stream.sse"), lambda: SseReader(kobold_event), " Hello there!", "length",
     True),
    (("ollama", "api-chat-stream.ndjson"), lambda: NdjsonReader(ollama_line), "Hello there", "stop", True),
]


@pytest.mark.parametrize(("where", "reader", "text", "finish", "done"), REFERENCE, ids=lambda v: "/".join(v)
                         if isinstance(v, tuple) else None)
@pytest.mark.parametrize("piece", [None, 1, 7])
def test_reference_streams_read_the_same_however_they_are_cut(where: tuple[str, str], reader: Reader, text: str,
                                                              finish: str, done: bool, piece: int | None) -> None:
    events = read_all(reader(), fixture_bytes(*where), piece)

    assert "".join(e.content for e in events) == text
    folded = tally(events)
    assert (folded.finish_reason, folded.done, folded.error) == (finish, done, None)
    assert folded.generated and folded.first_token_at is not None


def test_llamacpp_stream_carries_its_own_counts_and_rate() -> None:
    folded = tally(read_all(SseReader(openai_chunk), fixture_bytes("llamacpp", "chat-stream.sse")))

    assert (folded.prompt_tokens, folded.completion_tokens, folded.server_tokens_per_s) == (31, 2, 1229.2)
    assert folded.completion == 2


def test_ollama_final_line_gives_counts_and_the_eval_rate() -> None:
    folded = tally(read_all(NdjsonReader(ollama_line), fixture_bytes("ollama", "api-chat-stream.ndjson")))

    assert (folded.prompt_tokens, folded.completion_tokens) == (26, 3)
    assert folded.server_tokens_per_s == pytest.approx(3 / 0.06)


def test_old_koboldcpp_done_without_a_blank_line_is_still_the_end() -> None:
    body = fixture_bytes("koboldcpp", "chat-stream-old.sse")
    assert body.endswith(b"data: [DONE]")  # the reference: no trailing newline at all

    reader = SseReader(openai_chunk)
    before_close = reader.feed(body)
    assert not any(e.done for e in before_close)
    assert [e.done for e in reader.close()] == [True]


def test_tgi_generate_stream_ends_with_generated_text_and_details() -> None:
    tokens = [" Hel", "lo", "</s>"]
    lines = []
    for index, text in enumerate(tokens):
        last = index == len(tokens) - 1
        lines.append(b"data:" + orjson.dumps({
            "index": index + 1, "token": {"id": 10 + index, "text": text, "logprob": -0.1, "special": last},
            "top_tokens": None, "generated_text": " Hello" if last else None,
            "details": {"finish_reason": "eos_token", "generated_tokens": 3, "seed": None} if last else None,
        }) + b"\n\n")
    body = b":\n\n" + b"".join(lines)  # axum keep-alive comment first

    folded = tally(read_all(SseReader(tgi_event), body, 5))

    assert (folded.content_chars, folded.counted_tokens, folded.completion) == (6, 2, 3)
    assert (folded.finish_reason, folded.done) == ("eos_token", True)


@pytest.mark.parametrize(
    ("deltas", "reply", "reasoning"),
    [
        ([{"reasoning_content": "The user wants"}, {"reasoning_content": " ok."}], 0, 18),  # vLLM / llama.cpp
        ([{"reasoning": "Thinking"}], 0, 8),  # newer vLLM field name
        ([{"content": "<think>\nThe user"}, {"content": " wants ok"}], 0, 18),  # no reasoning parser: inline tags
        # servers send the tag as one token, so a tag cut across chunks is taken as reply text
        ([{"content": "<thi"}, {"content": "nk>x</think>\n\nok"}], 20, 0),
        ([{"content": "<think>hmm</think>\n\n"}, {"content": "ok"}], 2, 3),
    ],
)
def test_reasoning_counts_apart_from_the_reply(deltas: list[dict[str, str]], reply: int, reasoning: int) -> None:
    body = b"".join(b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": d, "finish_reason": None}]})
                    + b"\n\n" for d in deltas) + b"data: [DONE]\n\n"

    folded = tally(read_all(SseReader(openai_chunk), body))

    assert (folded.content_chars, folded.reasoning_chars) == (reply, reasoning)
    assert folded.generated


def test_reasoning_only_reply_is_generated_text() -> None:
    body = (b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"Okay, the user"},"finish_reason":null}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}],'
            b'"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}\n\n'
            b"data: [DONE]\n\n")
    folded = tally(read_all(SseReader(openai_chunk), body))

    assert (folded.content_chars, folded.reasoning_chars, folded.finish_reason) == (0, 14, "length")
    assert folded.generated and folded.completion == 8 and folded.prompt_tokens == 12


def test_role_only_and_empty_chunks_are_not_tokens() -> None:
    body = (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{"content":null},"finish_reason":"stop"}]}\n\n'
            b"data: [DONE]\n\n")
    folded = tally(read_all(SseReader(openai_chunk), body))

    assert (folded.generated, folded.first_token_at, folded.completion, folded.done) == (False, None, None, True)


@pytest.mark.parametrize(
    ("reader", "body", "message"),
    [
        (lambda: SseReader(openai_chunk), b'data: {"choices": [{"delta": {"content": "x"\n\n', "not JSON"),
        (lambda: SseReader(openai_chunk), b'data: {"id": "x"}\n\n', "without 'choices'"),
        (lambda: SseReader(openai_chunk), b"data: [1, 2]\n\n", "not a JSON object"),
        (lambda: SseReader(kobold_event), b'event: message\ndata: {"text": "x"}\n\n', "without 'token'"),
        (lambda: NdjsonReader(ollama_line), b'{"message": {"content": "x"}, "done": fal\n', "not JSON"),
        (lambda: SseReader(openai_chunk), b"data: \xff\xfe\n\n", "not UTF-8"),
    ],
)
def test_malformed_chunks_raise(reader: Reader, body: bytes, message: str) -> None:
    with pytest.raises(StreamFormatError, match=message):
        read_all(reader(), body)


def test_an_endless_line_is_refused_before_it_fills_memory() -> None:
    reader = SseReader(openai_chunk)
    with pytest.raises(StreamFormatError, match="longer than"):
        for _ in range(100):
            reader.feed(b"data: " + b"x" * 8192)


@pytest.mark.parametrize(
    ("reader", "body", "error"),
    [
        (lambda: SseReader(openai_chunk), b'data: {"error": {"message": "llama_decode failed", "code": 500}}\n\n',
         "llama_decode failed"),
        (lambda: SseReader(openai_chunk), b'data: {"text": "NETWORK ERROR", "error_code": 50001}\n\n',
         "NETWORK ERROR"),
        (lambda: NdjsonReader(ollama_line), b'{"error": "llama runner process has terminated"}\n',
         "llama runner process has terminated"),
        (lambda: SseReader(tgi_event), b'data:{"error":"Request failed during generation","error_type":"generation"}'
                                       b"\n\n", "Request failed during generation"),
    ],
)
def test_errors_inside_a_started_stream_are_reported(reader: Reader, body: bytes, error: str) -> None:
    assert tally(read_all(reader(), body)).error == error


def test_decode_rate_comes_from_chunk_timing_else_the_servers_own() -> None:
    timed = StreamTally()
    for at in (1.0, 1.1, 1.2, 1.3, 1.4):
        timed.add(StreamEvent(content="x"), at)
    timed.add(StreamEvent(finish_reason="length", completion_tokens=5, server_tokens_per_s=999.0), 1.4)
    assert timed.tokens_per_s() == pytest.approx(10.0)  # 4 tokens after the first, over 0.4 s

    one_read = StreamTally()
    for _ in range(3):
        one_read.add(StreamEvent(content="x"), 2.0)
    one_read.add(StreamEvent(server_tokens_per_s=55.5), 2.0)
    assert one_read.tokens_per_s() == 55.5

    single = StreamTally()
    single.add(StreamEvent(content="x"), 3.0)
    assert single.tokens_per_s() is None



@pytest.mark.parametrize("where", [("vllm", "chat-stream.sse"), ("tabbyapi", "chat-stream.sse"),
                                   ("koboldcpp", "chat-stream-old.sse")], ids="/".join)
def test_one_event_per_read_reads_as_the_whole_body(where: tuple[str, str]) -> None:
    """Servers write an event per token, so most reads hold exactly one: the reader's shortcut for them must
    give what the general path gives (CRLF events, comments and a last event without its blank line too)."""
    body = fixture_bytes(*where)
    separator = b"\r\n\r\n" if b"\r\n\r\n" in body else b"\n\n"
    pieces = [piece + separator for piece in body.split(separator)]
    pieces[-1] = pieces[-1][:-len(separator)]  # the body's own ending, whatever it is
    assert b"".join(pieces) == body and len(pieces) >= 3

    reader = SseReader(openai_chunk)
    events = [event for piece in pieces for event in reader.feed(piece)] + reader.close()

    assert events == read_all(SseReader(openai_chunk), body)
    assert sum(1 for event in events if event.content) >= 1
