"""The OpenAI chat-completions wire format: request checking and reply bodies.

Requests are read by hand rather than through a pydantic model so that every error is an
OpenAI-style body (``{"error": {"message", "type", "param", "code"}}``) naming the offending
field, as OpenAI's and vLLM's clients expect; unknown fields are ignored, as OpenAI does.

The scenario is the ``model``: ``disrouter`` with the scenario in the extra field ``alpha``
(default ``ServeConfig.default_alpha``), or one of :data:`SCENARIO_MODELS`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid
from collections.abc import Mapping

from disrouter_jax.cascade.serving.config import ServeConfig
from disrouter_jax.tasks.prompts import SCENARIOS, SUPPORTED_ALPHAS, resolve_alpha

BASE_MODEL = "disrouter"
SCENARIO_MODELS = {"disrouter-performance-first": 0.2, "disrouter-balance": 0.5, "disrouter-cost-first": 0.8}
assert set(SCENARIO_MODELS.values()) == set(SUPPORTED_ALPHAS)
MODEL_IDS = (BASE_MODEL,) + tuple(SCENARIO_MODELS)
ROLES = ("system", "developer", "user", "assistant")
MAX_STOP_SEQUENCES = 4
# The engine's finish reasons as OpenAI names them: a refusal stopped early is a complete reply.
FINISH_REASONS = {"stop": "stop", "early_stop": "stop", "length": "length"}


class RequestError(Exception):
    """A request the server will not run: HTTP ``status`` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 error_type: str = "invalid_request_error", headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.error_type = error_type
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return error_body(self.message, self.error_type, self.param, self.code)


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def bad(message: str, param: str | None, code: str | None = None) -> RequestError:
    return RequestError(400, message, param, code)


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A checked request. ``messages``: role/content string pairs (content parts joined)."""

    model: str
    alpha: float
    messages: tuple[tuple[str, str], ...]
    stream: bool
    include_usage: bool
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    stop: tuple[str, ...]

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad(f"the request body is not valid JSON ({err})", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}", None, "invalid_json")
    return body


def _number(body: Mapping, name: str, default: float, low: float, high: float, *, open_low: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"'{name}' must be a number, got {value!r}", name)
    if value < low or value > high or (open_low and value == low):
        bracket = "(" if open_low else "["
        raise bad(f"'{name}' must be in {bracket}{low}, {high}], got {value!r}", name)
    return float(value)


def _integer(body: Mapping, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"'{name}' must be an integer, got {value!r}", name)
    return value


def _alpha(body: Mapping, model, config: ServeConfig) -> float:
    if not isinstance(model, str) or not model:
        raise bad(f"'model' must be one of {list(MODEL_IDS)}, got {model!r}", "model")
    if model not in MODEL_IDS:
        raise RequestError(404, f"the model {model!r} does not exist; available: {list(MODEL_IDS)}", "model",
                           "model_not_found")
    given = body.get("alpha")
    if given is not None:
        try:
            given = resolve_alpha(given)
        except ValueError as err:
            raise bad(str(err), "alpha", "unsupported_alpha") from None
    if model == BASE_MODEL:
        return config.default_alpha if given is None else given
    named = SCENARIO_MODELS[model]
    if given is not None and given != named:
        raise bad(f"'alpha'={given} contradicts the model {model!r} (alpha {named}); send one of them", "alpha",
                  "unsupported_alpha")
    return named


def _content(content, where: str) -> str:
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):  # content parts: text only
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"'{where}.content[{j}]' must be a text part {{'type': 'text', 'text': ...}}; "
                          f"only text is supported, got {part!r}", f"{where}.content")
            parts.append(part["text"])
        text = "".join(parts)
    else:
        raise bad(f"'{where}.content' must be a string or a list of text parts, got {content!r}", f"{where}.content")
    if not text.strip():
        raise bad(f"'{where}.content' is empty", f"{where}.content")
    return text


def _messages(body: Mapping) -> tuple[tuple[str, str], ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad(f"'messages' must be a non-empty list of messages, got {messages!r}", "messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise bad(f"'{where}' must be an object with 'role' and 'content', got {message!r}", where)
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"'{where}.role' must be one of {list(ROLES)}, got {role!r}", f"{where}.role")
        # OpenAI's newer name for the system message.
        out.append(("system" if role == "developer" else role, _content(message.get("content"), where)))
    if out[-1][0] != "user":
        raise bad(f"the last message must be the user's, got role {out[-1][0]!r}", f"messages[{len(out) - 1}].role")
    return tuple(out)


def _stop(body: Mapping) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stops, list) or len(stops) > MAX_STOP_SEQUENCES
            or not all(isinstance(s, str) and s for s in stops)):
        raise bad(f"'stop' must be a non-empty string or a list of at most {MAX_STOP_SEQUENCES} of them, "
                  f"got {stop!r}", "stop")
    return tuple(stops)


def parse_chat_request(body: Mapping, config: ServeConfig) -> ChatRequest:
    """A checked :class:`ChatRequest`; :class:`RequestError` naming the field otherwise."""
    model = body.get("model")
    alpha = _alpha(body, model, config)
    messages = _messages(body)
    n = _integer(body, "n")
    if n is not None and n != 1:
        raise bad(f"'n'={n}: only n=1 is supported (one answer per request)", "n", "unsupported_n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad(f"'stream' must be a boolean, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, Mapping) or not isinstance(options.get("include_usage", False), bool):
        raise bad(f"'stream_options' must be an object with a boolean 'include_usage', got {options!r}",
                  "stream_options")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, name)
    if max_tokens is not None and not 1 <= max_tokens <= config.max_new_tokens:
        raise bad(f"'{name}' must be in [1, {config.max_new_tokens}], got {max_tokens}", name)
    seed = _integer(body, "seed")
    return ChatRequest(
        model=model, alpha=alpha, messages=messages, stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        temperature=_number(body, "temperature", config.default_temperature, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, open_low=True),
        max_tokens=config.max_new_tokens if max_tokens is None else max_tokens,
        seed=seed, stop=_stop(body),
    )


# ----------------------------------------------------------------------------- replies


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def models_body(created: int) -> dict:
    data = [{"id": BASE_MODEL, "object": "model", "created": created, "owned_by": "disrouter",
             "alpha": None, "scenario": "alpha in the request body"}]
    data += [{"id": name, "object": "model", "created": created, "owned_by": "disrouter", "alpha": alpha,
              "scenario": SCENARIOS[alpha].name} for name, alpha in SCENARIO_MODELS.items()]
    return {"object": "list", "data": data}


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(cid: str, model: str, content: str, finish_reason: str, usage: dict, routing: dict) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage, "disrouter": routing}


def chunk_body(cid: str, model: str, delta: dict, finish_reason: str | None = None, **extra) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]} | extra


def sse(data) -> str:
    """One server-sent event (``data: <json>``; ``[DONE]`` ends the stream, as OpenAI's does)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
