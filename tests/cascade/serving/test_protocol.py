"""Request checking: scenarios, sampling fields, and a 4xx naming the field for every bad input."""

import pytest

from disrouter_jax.cascade.serving.config import ServeConfig
from disrouter_jax.cascade.serving.protocol import RequestError, parse_chat_request, parse_json, sse
from disrouter_jax.cascade.serving.service import cut_at_stop

CONFIG = ServeConfig(max_new_tokens=32, default_alpha=0.5)
USER = [{"role": "user", "content": "Question: 2 + 2?"}]


def parse(**body):
    return parse_chat_request({"model": "disrouter", "messages": USER} | body, CONFIG)


@pytest.mark.parametrize("model, alpha, expected", [
    ("disrouter", None, 0.5), ("disrouter", 0.2, 0.2), ("disrouter", 0.8000000001, 0.8),
    ("disrouter-performance-first", None, 0.2), ("disrouter-balance", 0.5, 0.5), ("disrouter-cost-first", None, 0.8),
])
def test_the_scenario_comes_from_the_model_or_alpha(model, alpha, expected):
    body = {"model": model} | ({} if alpha is None else {"alpha": alpha})
    assert parse(**body).alpha == expected


def test_defaults_and_sampling_fields():
    req = parse()
    assert (req.temperature, req.top_p, req.max_tokens, req.seed, req.stop, req.stream) == (0.0, 1.0, 32, None, (), False)
    req = parse(temperature=0.7, top_p=0.9, max_tokens=5, seed=3, stop=["\n", "."], stream=True,
                stream_options={"include_usage": True}, user="ignored", frequency_penalty=0)
    assert (req.temperature, req.top_p, req.max_tokens, req.seed, req.stop) == (0.7, 0.9, 5, 3, ("\n", "."))
    assert req.stream and req.include_usage
    assert parse(max_completion_tokens=7).max_tokens == 7
    assert parse(stop="END").stop == ("END",)


def test_messages_keep_roles_and_join_text_parts():
    req = parse(messages=[{"role": "developer", "content": "Be brief."}, {"role": "assistant", "content": "ok"},
                          {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert req.message_dicts() == [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "ok"},
                                   {"role": "user", "content": "ab"}]


@pytest.mark.parametrize("body, status, param", [
    ({"model": "gpt-4"}, 404, "model"),
    ({"model": None}, 400, "model"),
    ({"alpha": 0.3}, 400, "alpha"),
    ({"alpha": "high"}, 400, "alpha"),
    ({"model": "disrouter-cost-first", "alpha": 0.2}, 400, "alpha"),
    ({"messages": []}, 400, "messages"),
    ({"messages": "hello"}, 400, "messages"),
    ({"messages": ["hello"]}, 400, "messages[0]"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "  "}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, "messages[0].content"),
    ({"messages": USER + [{"role": "assistant", "content": "x"}]}, 400, "messages[1].role"),
    ({"n": 2}, 400, "n"),
    ({"temperature": -1}, 400, "temperature"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 33}, 400, "max_tokens"),
    ({"max_tokens": 2.5}, 400, "max_tokens"),
    ({"seed": "x"}, 400, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"stop": [""]}, 400, "stop"),
    ({"stream": "yes"}, 400, "stream"),
    ({"stream_options": {"include_usage": "y"}}, 400, "stream_options"),
])
def test_bad_fields_are_named(body, status, param):
    with pytest.raises(RequestError) as info:
        parse(**body)
    err = info.value
    assert (err.status, err.param) == (status, param)
    assert err.body()["error"]["param"] == param and err.body()["error"]["type"] == "invalid_request_error"
    assert err.message


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_a_400(raw):
    with pytest.raises(RequestError, match="JSON") as info:
        parse_json(raw)
    assert info.value.status == 400


def test_stop_strings_cut_the_content_and_events_are_sse():
    assert cut_at_stop("The answer is 4.\nDone", ["\n", "is"]) == ("The answer ", True)
    assert cut_at_stop("4", ["\n"]) == ("4", False)
    assert sse("[DONE]") == "data: [DONE]\n\n" and sse({"a": 1}) == 'data: {"a": 1}\n\n'


def test_serve_config_checks_name_the_field():
    assert ServeConfig(max_batch_size=48).batch_buckets() == (1, 2, 4, 8, 16, 32, 48)
    assert ServeConfig(max_batch_size=1).batch_buckets() == (1,)
    for field, value in (("max_batch_size", 0), ("port", 70000), ("warmup", "some"), ("request_timeout_s", 0),
                         ("cost_mode", "total"), ("batch_window_ms", -1), ("max_batch_wait_ms", -1),
                         ("prompt_buckets", (64, 32)), ("prompt_buckets", ()), ("pipeline", 1),
                         ("warmup_streaming", "yes"), ("stream_step_delay_s", -0.5)):
        with pytest.raises(ValueError, match=f"config.serve.{field}"):
            ServeConfig(**{field: value})
    assert ServeConfig.from_mapping({"max_queue": 3, "train_agents": False}).max_queue == 3
    assert ServeConfig(prompt_buckets=[16, 64]).prompt_buckets == (16, 64)  # a list from the command line
