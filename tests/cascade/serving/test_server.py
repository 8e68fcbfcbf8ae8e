"""The real server (``python -m disrouter_jax.serve`` in a subprocess on 127.0.0.1) over the
scripted ladder, through the official ``openai`` client: replies, streaming, scenarios, routing,
models / health / metrics, 64 concurrent clients against the offline engine, bad requests,
a client that leaves, and the SIGTERM drain (last: it stops the server).

The server runs with a 50 ms pause before each stage (``serve.stage_delay_s``), so that requests
are still in flight when a client leaves or SIGTERM arrives.
"""

import asyncio
import collections
import re
import threading
import time

import httpx
import openai
import pytest

from disrouter_jax.cascade import engine
from tests.cascade import scripted_agents as sa
from tests.cascade.serving.conftest import ServerProcess, openai_client

ALPHAS = (0.2, 0.5, 0.8)
MODELS = {0.2: "disrouter-performance-first", 0.5: "disrouter-balance", 0.8: "disrouter-cost-first"}
QUERY_LEVELS = [(level, "42") for level in (0, 1, 2, 3, 0, 2, 1, 3)]
STREAM_STEP_DELAY_S = 0.3


@pytest.fixture(scope="module")
def servers(ladder_pool, tmp_path_factory, request):
    """The module's two servers, over one persistent compilation cache: the shared one, then, once
    it is up (its programs in the cache), the SIGTERM test's own, which loads them while the other
    tests run. Every stage of that one takes a second, so that eight requests are surely in flight
    together before it is told to stop (the shared one answers in ~0.15 s: on a loaded machine
    the eight never overlapped)."""
    config_path, _ = ladder_pool
    cache = tmp_path_factory.mktemp("served_xla_cache")
    procs = {}

    def start(name: str, stage_delay_s: float, *overrides: str) -> ServerProcess:
        procs[name] = ServerProcess(config_path, tmp_path_factory.mktemp(f"served_{name}"),
                                    f"--config.serve.stage_delay_s={stage_delay_s}", *overrides,
                                    compilation_cache=cache)
        return procs[name]

    try:
        start("shared", 0.05)
        request.getfixturevalue("offline")  # while the server starts
        procs["shared"].wait_ready()
        # Its streamed calls also pause after every decode step (the streaming test's drill).
        start("slow", 1.0, f"--config.serve.stream_step_delay_s={STREAM_STEP_DELAY_S}")
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers["shared"]


@pytest.fixture(scope="module")
def examples():
    return sa.make_queries(QUERY_LEVELS)


@pytest.fixture(scope="module")
def offline(ladder_agents, examples):
    """``{alpha: [RoutingRecord per example]}`` from the offline cascade engine, greedy."""
    cascade = engine.Cascade(ladder_agents, engine.EngineConfig(max_new_tokens=12, max_batch_size=8))
    queries = [engine.Query(e) for e in examples]
    return {alpha: cascade.run(queries, alpha).records for alpha in ALPHAS}


def user_messages(example):
    return sa.scripted_task().messages(example, None)  # the plain prompt: what a client sends


def test_models_health_and_metrics(server):
    client = openai_client(server.base_url)
    assert [m.id for m in client.models.list()] == ["disrouter", *MODELS.values()]
    health = httpx.get(f"{server.base_url}/health").json()
    assert health["status"] == "ok" and health["agents"] == ["agent0", "agent1", "agent2"]
    text = httpx.get(f"{server.base_url}/metrics").text
    for name in ("disrouter_requests_total", "disrouter_queue_depth", "disrouter_agent_answers_total",
                 "disrouter_agent_refusals_total", "TYPE disrouter_request_latency_seconds histogram",
                 "disrouter_ready 1.0"):
        assert name in text


def test_replies_routing_and_streaming_match_the_offline_engine(server, examples, offline):
    client = openai_client(server.base_url)
    for i in (0, 1, 3):
        record = offline[0.2][i]
        reply = client.chat.completions.create(model="disrouter", messages=user_messages(examples[i]),
                                               temperature=0, extra_body={"alpha": 0.2})
        routing = reply.model_extra["disrouter"]
        assert reply.choices[0].message.content == record.response
        assert routing["answering_agent"] == record.final_agent and routing["cost"] == pytest.approx(record.cost)
        assert [(p["agent"], p["decision"]) for p in routing["path"]] == [(v.agent, v.decision) for v in record.visited]
        assert routing["forced_refusal"] == record.forced_refusal and routing["scenario"] == "Performance First"
        assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens > 0
        # Streamed: the same text, token by token, the refusals before it never sent.
        chunks = list(client.chat.completions.create(model=MODELS[0.2], messages=user_messages(examples[i]),
                                                     stream=True))
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert "".join(pieces) == record.response
        # One event per token; the stop token (not an early-stopped refusal) is paid but not sent.
        assert len(pieces) == reply.usage.completion_tokens - (routing["path"][-1]["finish_reason"] == "stop")
        assert chunks[-1].model_extra["disrouter"]["path"] == routing["path"]


def test_max_tokens_and_stop_are_honoured(server, examples):
    client = openai_client(server.base_url)
    # Level 3 at the last agent: "I don't know!" is 5 tokens; 3 tokens are not a refusal.
    cut = client.chat.completions.create(model="disrouter", messages=user_messages(examples[3]), max_tokens=3)
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == "I don't"  # not a refusal: agent0 answered it
    assert cut.model_extra["disrouter"]["answering_agent"] == "agent0"
    stopped = client.chat.completions.create(model="disrouter", messages=user_messages(examples[1]), stop=["2"])
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == ("4", "stop")


def test_sampling_is_reproducible_per_seed(server, examples):
    client = openai_client(server.base_url)
    ask = lambda seed: client.chat.completions.create(  # noqa: E731
        model="disrouter", messages=user_messages(examples[0]), temperature=1.0, top_p=0.9, seed=seed)
    assert ask(5).choices[0].message.content == ask(5).choices[0].message.content


def test_64_concurrent_clients_each_get_the_offline_answer_once(server, examples, offline):
    per_client = 3

    async def client_run(client, c):
        out = []
        for r in range(per_client):
            i, alpha = (c + r) % len(examples), ALPHAS[(c * per_client + r) % 3]
            reply = await client.chat.completions.create(model=MODELS[alpha], messages=user_messages(examples[i]),
                                                         temperature=0)
            out.append((i, alpha, reply))
        return out

    async def main():
        async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0,
                                      timeout=60) as client:
            return await asyncio.gather(*(client_run(client, c) for c in range(64)))

    before = metric_values(server)
    results = [item for per in asyncio.run(main()) for item in per]
    assert len(results) == 64 * per_client and len({reply.id for _, _, reply in results}) == len(results)
    answers = collections.Counter()
    for i, alpha, reply in results:
        record = offline[alpha][i]
        assert reply.choices[0].message.content == record.response
        path = reply.model_extra["disrouter"]["path"]
        assert [(p["agent"], p["decision"]) for p in path] == [(v.agent, v.decision) for v in record.visited]
        answers[record.final_agent] += 1
    after = metric_values(server)
    # Each request was answered once: the server counted exactly these, no more.
    assert after['disrouter_requests_total{model="*",status="200"}'] - before.get(
        'disrouter_requests_total{model="*",status="200"}', 0) == len(results)
    for agent, count in answers.items():
        key = f'disrouter_agent_answers_total{{agent="{agent}"}}'
        refused_last = sum(1 for i, a, _ in results if offline[a][i].forced_refusal) if agent == "agent2" else 0
        assert after.get(key, 0) - before.get(key, 0) == count - refused_last
    # Dynamic batching happened: some stage batch held many rows.
    assert after['disrouter_stage_batch_rows_sum{agent="agent0"}'] - before.get(
        'disrouter_stage_batch_rows_sum{agent="agent0"}', 0) == len(results)
    assert after['disrouter_stage_batch_rows_count{agent="agent0"}'] - before.get(
        'disrouter_stage_batch_rows_count{agent="agent0"}', 0) < len(results) / 4


def metric_values(server) -> dict[str, float]:
    """Sample lines of /metrics by name{labels}; requests summed over models as model="*"."""
    values: dict[str, float] = collections.defaultdict(float)
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith("#") or not line:
            continue
        key, value = line.rsplit(" ", 1)
        values[key] += float(value)
        if key.startswith("disrouter_requests_total"):
            values[re.sub(r'model="[^"]*"', 'model="*"', key)] += float(value)
    return values


@pytest.mark.parametrize("body, status, param", [
    ({"model": "gpt-4o"}, 404, "model"),
    ({"alpha": 0.35}, 400, "alpha"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": 7}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x" * 600}]}, 400, "messages"),
    ({"n": 3}, 400, "n"),
])
def test_bad_requests_get_a_4xx_naming_the_field(server, examples, body, status, param):
    body = {"model": "disrouter", "messages": user_messages(examples[0])} | body
    reply = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == status and reply.json()["error"]["param"] == param
    assert reply.json()["error"]["message"]


def test_non_json_body_is_a_400(server):
    reply = httpx.post(f"{server.base_url}/v1/chat/completions", content=b"model=disrouter",
                       headers={"content-type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_json"


def test_a_client_that_leaves_frees_its_request(server, examples):
    before = metric_values(server).get('disrouter_requests_cancelled_total{reason="disconnect"}', 0)
    body = {"model": "disrouter", "messages": user_messages(examples[3])}  # three stages: >= 150 ms
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=0.05)
    deadline = time.monotonic() + 10
    while metric_values(server).get('disrouter_requests_cancelled_total{reason="disconnect"}', 0) <= before:
        assert time.monotonic() < deadline, "the server never noticed the client leaving"
        time.sleep(0.05)
    assert httpx.get(f"{server.base_url}/health").json()["in_flight"] == 0


@pytest.fixture(scope="module")
def slow_server(servers):
    """The SIGTERM test's server (see `servers`); that test stops it."""
    return servers["slow"].wait_ready()


def test_streaming_sends_the_answering_agents_tokens_while_it_generates_them(slow_server, examples):
    # Level 3: agents 0 and 1 refuse (never streamed); the last agent's forced refusal is streamed
    # token by token. This server pauses after every decode step of a streamed call, so on the
    # server its five tokens are >= 4 pauses apart; sent only at the end, they would arrive together.
    client = openai_client(slow_server.base_url, timeout=60)
    arrivals = []
    for chunk in client.chat.completions.create(model="disrouter", messages=user_messages(examples[3]), stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append((time.monotonic(), chunk.choices[0].delta.content))
        elif chunk.choices and chunk.choices[0].finish_reason:
            routing = chunk.model_extra["disrouter"]
    assert [p for _, p in arrivals] == ["I", " don", "'t", " know", "!"]
    assert routing["answering_agent"] == "agent2" and routing["forced_refusal"]
    # The arrival times are when this process read each piece: on a loaded 2-core CI machine it
    # can be held up for a few tenths of a second and read several at once (a 0.1 s pause once
    # gave a 57 ms spread), so the bound is half the pauses the server made.
    assert arrivals[-1][0] - arrivals[0][0] >= 2 * STREAM_STEP_DELAY_S


def test_sigterm_finishes_in_flight_requests_then_exits_cleanly(slow_server, examples):
    server = slow_server
    results = []
    body = {"model": "disrouter", "messages": user_messages(examples[3])}

    def one():
        results.append(httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.base_url}/health").json()["in_flight"] < 8:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    server.terminate()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200] * 8
    assert all(r.json()["choices"][0]["message"]["content"] == "I don't know!" for r in results)
    assert server.process.wait(30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base_url}/health", timeout=2)
