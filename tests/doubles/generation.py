"""Generation as the real servers stream it: frames written one by one at a set pace, and the ways it goes wrong.

Each family builds its frames in its own shape (OpenAI SSE chunks, Ollama NDJSON lines, KoboldCpp `event: message`
SSE, TGI `/generate_stream`); `send_generation` writes them and applies the generation scenario, read from
`control.options` (set with `await double.set("up", generation="stall_mid_stream", token_interval_s=0.05)`):

  generation          a Generation value (default normal)
  token_interval_s    pause before each token frame (default 0.01: a 100 tokens/s server)
  reply_tokens        tokens in a normal reply (default 6, capped by the request's max tokens)

Stalls hold the request open until the scenario changes, the client goes away or the double stops.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.doubles.base import DoubleControl, control_of

WORDS = ("Hello", " there", ",", " friend", ".", " Ok", " then", "!")


class Generation(enum.StrEnum):
    NORMAL = "normal"
    STALL_BEFORE_FIRST = "stall_before_first"  # headers sent, then no token at all
    STALL_MID_STREAM = "stall_mid_stream"  # a few tokens, then nothing
    HANG = "hang"  # the request is accepted and never answered (health keeps answering 200)
    REASONING_ONLY = "reasoning_only"  # every token is reasoning; stops on length
    MALFORMED = "malformed"  # a chunk that is not JSON mid-stream
    NO_TERMINAL = "no_terminal"  # the stream ends without its terminal marker
    CUT = "cut"  # the connection drops mid-stream


def generation_of(control: DoubleControl) -> Generation:
    return Generation(control.options.get("generation", Generation.NORMAL))


def token_interval_s(control: DoubleControl) -> float:
    return float(control.options.get("token_interval_s", 0.01))


def reply_texts(control: DoubleControl, max_tokens: Any) -> list[str]:
    count = int(control.options.get("reply_tokens", 6))
    if isinstance(max_tokens, int) and max_tokens > 0:
        count = min(count, max_tokens)
    return [WORDS[i % len(WORDS)] for i in range(max(count, 1))]


@dataclass(frozen=True, slots=True)
class Frames:
    """One reply in a family's wire shape: a prelude (role chunk), token frames, the end, and a broken frame."""

    tokens: list[bytes]
    terminal: list[bytes]  # what ends a complete stream (finish chunk, usage, [DONE]; Ollama's done line)
    malformed: bytes
    prelude: list[bytes]
    content_type: str


async def hold(request: web.Request, control: DoubleControl, scenario: Generation) -> None:
    """Keep the request open while `scenario` is in force and the client is still there."""
    while generation_of(control) is scenario:
        if request.transport is None or request.transport.is_closing():
            return
        await asyncio.sleep(0.05)


async def hang_unanswered(request: web.Request) -> bool:
    """HANG: never answer while it lasts. True when the request was held (the caller then answers 503)."""
    control = control_of(request)
    if generation_of(control) is not Generation.HANG:
        return False
    await hold(request, control, Generation.HANG)
    return True


async def send_generation(request: web.Request, frames: Frames,
                          headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """Write `frames` at the control's pace, in the control's generation scenario. A client that goes away
    mid-reply ends it quietly, as real servers do."""
    try:
        return await _send(request, frames, headers)
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError: the canary hung up (a stall, a cut)
        return web.Response(status=499)


async def _send(request: web.Request, frames: Frames, headers: Mapping[str, str] | None) -> web.StreamResponse:
    control = control_of(request)
    scenario = generation_of(control)
    pace = token_interval_s(control)
    response = web.StreamResponse(headers={"Content-Type": frames.content_type, "Cache-Control": "no-cache",
                                           **(headers or {})})
    await response.prepare(request)
    for frame in frames.prelude:
        await response.write(frame)
    if scenario is Generation.STALL_BEFORE_FIRST:
        await hold(request, control, scenario)
        return response
    for index, frame in enumerate(frames.tokens):
        await asyncio.sleep(pace)
        await response.write(frame)
        if index == min(1, len(frames.tokens) - 1):
            if scenario is Generation.STALL_MID_STREAM:
                await hold(request, control, scenario)
                return response
            if scenario is Generation.MALFORMED:
                await response.write(frames.malformed)
            if scenario is Generation.CUT:
                assert request.transport is not None
                request.transport.close()
                return response
    if scenario is not Generation.NO_TERMINAL:
        await asyncio.sleep(pace)  # KoboldCpp's and TGI's last token rides on the terminal frame
        for frame in frames.terminal:
            await response.write(frame)
    await response.write_eof()
    return response


# -- family shapes -----------------------------------------------------------------------------------------------


def sse(payload: Any, *, separator: bytes = b"\n\n", event: str | None = None) -> bytes:
    head = f"event: {event}".encode() + separator[: len(separator) // 2] if event else b""
    return head + b"data: " + orjson.dumps(payload) + separator


def openai_frames(model: str, control: DoubleControl, payload: Mapping[str, Any], *, separator: bytes = b"\n\n",
                  timings: bool = False) -> Frames:
    """vLLM-style chunks: a role chunk, one chunk per token, the finish chunk, usage when asked, `[DONE]`."""
    texts = reply_texts(control, payload.get("max_tokens"))
    reasoning = generation_of(control) is Generation.REASONING_ONLY
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        body = {"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
        return sse(body, separator=separator)

    key = "reasoning_content" if reasoning else "content"
    usage = {"prompt_tokens": 12, "completion_tokens": len(texts), "total_tokens": 12 + len(texts)}
    finish_extra: dict[str, Any] = {}
    if timings:  # llama.cpp puts its own measures on the last chunk
        finish_extra["timings"] = {"prompt_n": 12, "prompt_ms": 3.1, "predicted_n": len(texts),
                                   "predicted_ms": 1000.0 * token_interval_s(control) * len(texts),
                                   "predicted_per_second": 1 / max(token_interval_s(control), 1e-3)}
    terminal = [chunk({}, "length" if reasoning or len(texts) == payload.get("max_tokens") else "stop",
                      **finish_extra)]
    if _dict(payload.get("stream_options")).get("include_usage"):
        terminal.append(sse({"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": created,
                             "model": model, "choices": [], "usage": usage}, separator=separator))
    terminal.append(b"data: [DONE]" + separator)
    return Frames(tokens=[chunk({key: text}) for text in texts], terminal=terminal,
                  malformed=b'data: {"choices": [{"delta": {"content": "x"' + separator,
                  prelude=[chunk({"role": "assistant", "content": ""})],
                  content_type="text/event-stream; charset=utf-8")


def openai_completion(model: str, control: DoubleControl, payload: Mapping[str, Any]) -> dict[str, Any]:
    texts = reply_texts(control, payload.get("max_tokens"))
    reasoning = generation_of(control) is Generation.REASONING_ONLY
    message = {"role": "assistant", "content": None if reasoning else "".join(texts)}
    if reasoning:
        message["reasoning_content"] = "".join(texts)
    return {"id": "chatcmpl-double", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": len(texts), "total_tokens": 12 + len(texts)}}


def ollama_frames(model: str, control: DoubleControl, payload: Mapping[str, Any]) -> Frames:
    options = _dict(payload.get("options"))
    texts = reply_texts(control, options.get("num_predict"))
    reasoning = generation_of(control) is Generation.REASONING_ONLY

    def line(content: str, **extra: Any) -> bytes:
        message = {"role": "assistant", "content": "" if reasoning else content}
        if reasoning and content:
            message["thinking"] = content
        return orjson.dumps({"model": model, "created_at": "2025-11-25T00:00:01.100Z", "message": message,
                             **extra}) + b"\n"

    pace_ns = int(token_interval_s(control) * 1e9)
    last = line("", done=True, done_reason="length" if reasoning else "stop", total_duration=pace_ns * 9,
                load_duration=1_000_000, prompt_eval_count=26, prompt_eval_duration=2_000_000,
                eval_count=len(texts), eval_duration=pace_ns * len(texts))
    return Frames(tokens=[line(text, done=False) for text in texts], terminal=[last],
                  malformed=b'{"model": "x", "message": {"content": "x"\n', prelude=[],
                  content_type="application/x-ndjson")


def kobold_frames(control: DoubleControl, payload: Mapping[str, Any]) -> Frames:
    texts = reply_texts(control, payload.get("max_length"))
    tokens = [sse({"token": text, "finish_reason": None}, event="message") for text in texts]
    return Frames(tokens=tokens[:-1], terminal=[sse({"token": texts[-1], "finish_reason": "length"},
                                                    event="message")],
                  malformed=b"event: message\ndata: {\"token\": \n\n", prelude=[],
                  content_type="text/event-stream")


def tgi_frames(control: DoubleControl, payload: Mapping[str, Any]) -> Frames:
    texts = reply_texts(control, _dict(payload.get("parameters")).get("max_new_tokens"))

    def event(index: int, text: str, last: bool = False) -> bytes:
        return b"data:" + orjson.dumps({
            "index": index, "token": {"id": 100 + index, "text": text, "logprob": -0.25, "special": False},
            "top_tokens": None, "generated_text": "".join(texts) if last else None,
            "details": {"finish_reason": "length", "generated_tokens": len(texts), "seed": None} if last else None,
        }) + b"\n\n"

    return Frames(tokens=[event(i + 1, t) for i, t in enumerate(texts[:-1])],
                  terminal=[event(len(texts), texts[-1], last=True)],
                  malformed=b"data:{\"token\": {\"text\n\n", prelude=[], content_type="text/event-stream")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
