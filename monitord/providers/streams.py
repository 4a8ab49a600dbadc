"""Pure readers of the generation streams servers send: SSE (OpenAI chunks, KoboldCpp, TGI) and NDJSON (Ollama).

A reader turns body bytes, fed in whatever pieces the network delivers, into StreamEvents; `StreamTally` folds the
events and their arrival times into what a canary sample records. No I/O and no clock: times are arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import orjson

_MAX_LINE_BYTES = 256 * 1024  # one SSE line or NDJSON object; a server that sends more is not streaming tokens


class StreamEvent(NamedTuple):
    """One parsed chunk of a generation stream. A named tuple: a canary makes one per token, and a tuple is built
    in a third of the time a frozen dataclass takes (the reader is most of a canary's own CPU)."""

    content: str = ""  # reply text in this chunk
    reasoning: str = ""  # reasoning text in this chunk (`reasoning_content`, `reasoning`, Ollama `thinking`)
    tokens: int | None = None  # tokens this chunk stands for when the server says (KoboldCpp, TGI: one per event)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    server_tokens_per_s: float | None = None  # the server's own decode rate (llama.cpp `timings`, Ollama eval_*)
    done: bool = False  # the terminal marker: `[DONE]`, `"done": true`, TGI's `generated_text`, Kobold's finish
    error: str | None = None  # an error the server put inside a stream that had started with 200


class StreamFormatError(ValueError):
    """A chunk that is not what the dialect sends (not JSON, wrong shape, an endless line)."""


class StreamReader(Protocol):
    def feed(self, data: bytes) -> list[StreamEvent]: ...

    def close(self) -> list[StreamEvent]:
        """The body ended: whatever the last unterminated line held (old KoboldCpp ends on `data: [DONE]`)."""
        ...


Decode = Callable[[bytes], StreamEvent]  # one event's data (SSE) or one line (NDJSON), as UTF-8 bytes


class _Lines:
    """Splits bytes into lines on LF, CRLF or CR, keeping a partial line for the next feed."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._pending + data if self._pending else data
        if b"\r" in buffer:
            # a CR at the very end may be the first half of CRLF: keep it for the next piece
            cut = len(buffer) - 1 if buffer.endswith(b"\r") else len(buffer)
            head, rest = buffer[:cut], buffer[cut:]
            lines = head.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            self._pending = lines.pop() + rest
        else:  # LF only, what most servers send: one split
            lines = buffer.split(b"\n")
            self._pending = lines.pop()
        if len(self._pending) > _MAX_LINE_BYTES:
            raise StreamFormatError(f"a line longer than {_MAX_LINE_BYTES} bytes")
        return lines

    @property
    def empty(self) -> bool:
        """No partial line is waiting for the next piece."""
        return not self._pending

    def close(self) -> bytes:
        rest, self._pending = self._pending.rstrip(b"\r"), b""
        return rest


class SseReader:
    """Server-sent events: `data:` lines joined until a blank line; comments (`: ping`) and other fields ignored."""

    __slots__ = ("_data", "_decode", "_lines")

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._lines = _Lines()
        self._data: list[bytes] = []

    def feed(self, data: bytes) -> list[StreamEvent]:
        if (not self._data and data.startswith(b"data: ") and data.find(b"\n") == len(data) - 2
                and data.endswith(b"\n\n") and b"\r" not in data and self._lines.empty):
            return [self._decode(data[6:-2])]  # the usual read: exactly one event of one `data: ` line
        events: list[StreamEvent] = []
        pending = self._data
        for raw in self._lines.feed(data):
            if not raw:  # a blank line ends the event
                if pending:
                    events.append(self._decode(pending[0] if len(pending) == 1 else b"\n".join(pending)))
                    pending.clear()
            elif raw.startswith(b"data: "):  # the usual spelling, without the partition below
                pending.append(raw[6:])
            else:
                self._line(raw)
        return events

    def close(self) -> list[StreamEvent]:
        last = self._lines.close()
        if last:
            self._line(last)
        if not self._data:
            return []
        data, self._data = b"\n".join(self._data), []
        return [self._decode(data)]

    def _line(self, raw: bytes) -> None:
        """A line that is not blank: a comment (`: ping`), a `data` field, or another field (ignored)."""
        if raw.startswith(b":"):
            return  # comment / keep-alive
        name, _, value = raw.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)


class NdjsonReader:
    """One JSON object per line (Ollama's `application/x-ndjson`)."""

    __slots__ = ("_decode", "_lines")

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._lines = _Lines()

    def feed(self, data: bytes) -> list[StreamEvent]:
        return [self._decode(line) for line in self._lines.feed(data) if line.strip()]

    def close(self) -> list[StreamEvent]:
        last = self._lines.close()
        return [self._decode(last)] if last.strip() else []


def _object(data: bytes) -> dict[str, Any]:
    """One chunk's JSON object. orjson reads the bytes and checks their UTF-8 itself."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise StreamFormatError(f"a chunk that is not JSON: {_clip(_text(data))!r}") from None
    if type(value) is not dict:  # orjson makes plain dicts
        raise StreamFormatError(f"a chunk that is not a JSON object: {_clip(_text(data))!r}")
    return value


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StreamFormatError("a chunk that is not UTF-8") from None


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        error = error.get("message") or error.get("msg") or error
    return " ".join(str(error).split())[:200]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


# -- dialects --------------------------------------------------------------------------------------------------


def openai_chunk(data: bytes) -> StreamEvent:
    """A chat.completion.chunk (or a legacy completion chunk); `[DONE]` ends the stream.

    Written for the common chunk (one choice, a delta with content, no usage yet): a canary reads one per token.
    """
    if not data.startswith(b"{") and data.strip() == b"[DONE]":
        return _DONE
    chunk = _object(data)
    if chunk.get("error"):
        return StreamEvent(error=_error_text(chunk["error"]))
    if chunk.get("error_code"):  # FastChat's worker error inside a stream
        return StreamEvent(error=_error_text(chunk.get("text") or chunk["error_code"]))
    choices = chunk.get("choices")
    if type(choices) is not list:
        raise StreamFormatError("a chunk without 'choices'")
    content = reasoning = ""
    finish: str | None = None
    if choices:
        choice = choices[0]
        if type(choice) is not dict:
            raise StreamFormatError("a chunk whose choice is not an object")
        delta = choice.get("delta")
        if type(delta) is dict:
            content = delta.get("content") or ""
            if type(content) is not str:
                content = ""
            if len(delta) > 1 or "content" not in delta:  # not only the content: reasoning may be there
                reasoning = _str(delta.get("reasoning_content")) or _str(delta.get("reasoning"))
        else:
            content = _str(choice.get("text"))
        finish = choice.get("finish_reason")
        if type(finish) is not str:
            finish = None
    usage, timings = chunk.get("usage"), chunk.get("timings")
    if not usage and not timings:  # every chunk but the last one or two
        return StreamEvent(content, reasoning, None, finish)
    usage, timings = _dict(usage), _dict(timings)
    rate = timings.get("predicted_per_second")
    return StreamEvent(
        content=content, reasoning=reasoning, finish_reason=finish,
        prompt_tokens=_int(usage.get("prompt_tokens")) if usage else _int(timings.get("prompt_n")),
        completion_tokens=_int(usage.get("completion_tokens")) if usage else _int(timings.get("predicted_n")),
        server_tokens_per_s=float(rate) if isinstance(rate, int | float) and rate > 0 else None,
    )


_DONE = StreamEvent(done=True)


def kobold_event(data: bytes) -> StreamEvent:
    """KoboldCpp `/api/extra/generate/stream`: `{"token", "finish_reason"}` per token, no `[DONE]`."""
    event = _object(data)
    if "token" not in event:
        if event.get("detail") or event.get("error"):
            return StreamEvent(error=_error_text(event.get("detail") or event.get("error")))
        raise StreamFormatError("a KoboldCpp event without 'token'")
    finish = event.get("finish_reason") if isinstance(event.get("finish_reason"), str) else None
    return StreamEvent(content=_str(event["token"]), tokens=1, finish_reason=finish, done=finish is not None)


def tgi_event(data: bytes) -> StreamEvent:
    """TGI `/generate_stream`: one token per event; the last carries `generated_text` and `details`."""
    event = _object(data)
    if event.get("error"):
        return StreamEvent(error=_error_text(event["error"]))
    token = event.get("token")
    if not isinstance(token, dict):
        raise StreamFormatError("a TGI event without 'token'")
    special = bool(token.get("special"))
    details = _dict(event.get("details"))
    done = event.get("generated_text") is not None
    finish = details.get("finish_reason") if isinstance(details.get("finish_reason"), str) else None
    return StreamEvent(content="" if special else _str(token.get("text")), tokens=0 if special else 1,
                       finish_reason=finish, completion_tokens=_int(details.get("generated_tokens")),
                       prompt_tokens=_int(details.get("prompt_tokens")), done=done)


def ollama_line(data: bytes) -> StreamEvent:
    """Ollama `/api/chat` or `/api/generate` NDJSON; the last line has `"done": true` and the counts."""
    return ollama_object(_object(data))


def ollama_object(line: dict[str, Any]) -> StreamEvent:
    """One Ollama chat/generate object (a stream line, or the whole reply when not streamed)."""
    if line.get("error"):
        return StreamEvent(error=_error_text(line["error"]))
    message = _dict(line.get("message"))
    content = _str(message.get("content")) if message else _str(line.get("response"))
    reasoning = _str(message.get("thinking")) if message else _str(line.get("thinking"))
    done = line.get("done") is True
    rate = None
    eval_count, eval_ns = _int(line.get("eval_count")), _int(line.get("eval_duration"))
    if eval_count and eval_ns:
        rate = eval_count / (eval_ns / 1e9)
    finish = line.get("done_reason") if isinstance(line.get("done_reason"), str) else None
    return StreamEvent(content=content, reasoning=reasoning, done=done, finish_reason=finish,
                       prompt_tokens=_int(line.get("prompt_eval_count")), completion_tokens=eval_count,
                       server_tokens_per_s=rate)


# -- folding events into a sample ------------------------------------------------------------------------------

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


class StreamTally:
    """What the events of one stream add up to. `add` takes each event with its arrival time in seconds."""

    __slots__ = ("_in_think", "completion_tokens", "content_chars", "counted_tokens", "done", "error", "events",
                 "finish_reason", "first_token_at", "last_token_at", "prompt_tokens", "reasoning_chars",
                 "server_tokens_per_s", "token_chunks")

    def __init__(self) -> None:
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.token_chunks = 0  # chunks that carried text (or a server-counted token)
        self.counted_tokens = 0  # tokens the server counted per event, where it does
        self.content_chars = 0  # reply text outside <think>
        self.reasoning_chars = 0
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.server_tokens_per_s: float | None = None
        self.done = False
        self.error: str | None = None
        self.events = 0
        self._in_think = False

    def add(self, event: StreamEvent, at: float) -> bool:
        """Fold one event; True when it carried a token (it moves the stall clock)."""
        content, reasoning, tokens, finish, prompt, completion, rate, done, error = event
        self.events += 1
        if (finish is not None or prompt is not None or completion is not None or rate is not None
                or error is not None):
            self._take_ends(finish, prompt, completion, rate, error)  # the last chunks only
        if done:
            self.done = True
        if reasoning:
            self.reasoning_chars += len(reasoning)
        if content:
            if self._in_think or _THINK_OPEN in content:
                reply, thought = self._split_think(content)
                self.content_chars += reply
                self.reasoning_chars += thought
            elif not content.isspace():  # blank reply text is not counted as reply (it is still a token)
                self.content_chars += len(content)
        if tokens or content or reasoning:
            self.token_chunks += 1
            if tokens:
                self.counted_tokens += tokens
            if self.first_token_at is None:
                self.first_token_at = at
            self.last_token_at = at
            return True
        return False

    def _take_ends(self, finish: str | None, prompt: int | None, completion: int | None, rate: float | None,
                   error: str | None) -> None:
        if error is not None:
            self.error = error
        if finish is not None:
            self.finish_reason = finish
        if prompt is not None:
            self.prompt_tokens = prompt
        if completion is not None:
            self.completion_tokens = completion
        if rate is not None:
            self.server_tokens_per_s = rate

    def _split_think(self, text: str) -> tuple[int, int]:
        """(reply chars, reasoning chars) of a content piece, following `<think>` ... `</think>` across chunks."""
        reply = reasoning = 0
        while text:
            marker = _THINK_CLOSE if self._in_think else _THINK_OPEN
            before, found, text = text.partition(marker)
            if self._in_think:
                reasoning += len(before)
            else:
                reply += len(before) if before.strip() else 0
            if found:
                self._in_think = not self._in_think
        return reply, reasoning

    @property
    def generated(self) -> bool:
        """Any reply or reasoning text at all."""
        return self.content_chars > 0 or self.reasoning_chars > 0 or self.counted_tokens > 0

    @property
    def completion(self) -> int | None:
        """Generated tokens: the server's count, else its per-event tokens, else the chunks that carried text."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        if self.counted_tokens:
            return self.counted_tokens
        return self.token_chunks or None

    def tokens_per_s(self) -> float | None:
        """Decode rate after the first token, from chunk timing; the server's own figure when timing cannot tell
        (every token arrived in one read)."""
        tokens = self.completion
        if tokens is not None and tokens > 1 and self.first_token_at is not None and self.last_token_at is not None:
            span = self.last_token_at - self.first_token_at
            if span > 0.0005 and self.token_chunks > 1:
                return (tokens - 1) / span
        return self.server_tokens_per_s
