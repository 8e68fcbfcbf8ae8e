"""The HTTP layer over stand-in stages (uvicorn in a thread): overload, deadline, a failing agent,
readiness, streaming and routing bodies, through the official ``openai`` client where it applies."""

import concurrent.futures
import json
import threading
import time

import httpx
import openai
import pytest

from disrouter_jax.cascade.serving.app import create_app
from disrouter_jax.cascade.serving.config import ServeConfig
from disrouter_jax.cascade.serving.service import CascadeService
from tests.cascade.serving.conftest import InProcessServer, openai_client
from tests.cascade.serving.stub_stages import StubStage, stub_pool


def serve(config: ServeConfig, *names, wait_health=True):
    stages = stub_pool(*(names or ("a", "b")))
    service = CascadeService(stages, config)
    return InProcessServer(create_app(service), wait_health=wait_health), stages, service


def ask(base_url, text, **body):
    return httpx.post(f"{base_url}/v1/chat/completions", timeout=30,
                      json={"model": "disrouter", "messages": [{"role": "user", "content": text}]} | body)


def test_reply_path_cost_stream_and_usage():
    server, stages, _ = serve(ServeConfig(cost_mode="cumulative"))
    with server:
        client = openai_client(server.base_url)
        reply = client.chat.completions.create(model="disrouter-cost-first", messages=[
            {"role": "user", "content": "refuse:a hello"}])
        assert reply.choices[0].message.content == "b: refuse:a hello"
        routing = reply.model_extra["disrouter"]
        assert routing["answering_agent"] == "b" and routing["alpha"] == 0.8 and routing["scenario"] == "Cost First"
        assert [(p["agent"], p["decision"]) for p in routing["path"]] == [("a", "refuse"), ("b", "answer")]
        assert routing["cost"] == pytest.approx(1.0)  # cumulative: 0.5 + 0.5
        assert reply.usage.completion_tokens == len("b: refuse:a hello") + 1  # the stop token paid
        chunks = list(client.chat.completions.create(
            model="disrouter", messages=[{"role": "user", "content": "hi"}], stream=True, stop=[":"],
            stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "a"  # cut before the stop string
        finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        assert [c.choices[0].finish_reason for c in finals] == ["stop"]
        assert finals[0].model_extra["disrouter"]["answering_agent"] == "a"
        assert chunks[-1].usage.prompt_tokens == 2 and chunks[-1].choices == []


def test_overload_gets_429_with_retry_after():
    server, _, _ = serve(ServeConfig(max_queue=2, retry_after_s=3, batch_window_ms=0.0))
    with server, concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = [pool.submit(ask, server.base_url, "slow:1.0") for _ in range(2)]
        time.sleep(0.3)
        over = ask(server.base_url, "one too many")
        assert over.status_code == 429 and over.headers["retry-after"] == "3"
        assert over.json()["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):  # what the official client makes of it
            openai_client(server.base_url).chat.completions.create(
                model="disrouter", messages=[{"role": "user", "content": "x"}])
        assert [f.result().status_code for f in slow] == [200, 200]
        assert ask(server.base_url, "room again").status_code == 200


def test_deadline_gets_504_and_the_work_is_dropped():
    server, stages, service = serve(ServeConfig(request_timeout_s=0.3, batch_window_ms=0.0))
    with server:
        late = ask(server.base_url, "slow:0.6 refuse:a")
        assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
        time.sleep(0.5)
        assert "slow:0.6 refuse:a" not in stages[1].rows_seen  # cancelled at the stage boundary
        assert service.batcher.in_flight == 0
        assert ask(server.base_url, "quick").status_code == 200
        metrics = httpx.get(f"{server.base_url}/metrics").text
        assert 'disrouter_requests_cancelled_total{reason="deadline"} 1.0' in metrics
        assert 'disrouter_requests_total{model="disrouter",status="504"} 1.0' in metrics


def test_a_failing_agent_fails_its_requests_with_500_and_the_server_keeps_serving(caplog):
    server, _, _ = serve(ServeConfig(batch_window_ms=0.0))
    with server, concurrent.futures.ThreadPoolExecutor(4) as pool:
        blocker = pool.submit(ask, server.base_url, "slow:0.5")  # the next three queue behind it: one batch
        time.sleep(0.2)
        futures = [pool.submit(ask, server.base_url, text) for text in ("refuse:a fail:b", "refuse:a ok", "fine")]
        broken, held, fine = (f.result() for f in futures)
        assert blocker.result().status_code == 200
        assert broken.status_code == held.status_code == 500  # both were in agent b's batch
        assert "agent 'b' failed: RuntimeError: b is broken" in broken.json()["error"]["message"]
        assert fine.status_code == 200  # answered by a, never in b's batch
        assert ask(server.base_url, "refuse:a after").json()["choices"][0]["message"]["content"] == "b: refuse:a after"
        assert 'disrouter_stage_failures_total{agent="b"} 1.0' in httpx.get(f"{server.base_url}/metrics").text
    assert any("agent b failed" in r.getMessage() for r in caplog.records)


def test_health_and_requests_wait_for_warm_up():
    gate = threading.Event()
    server, stages, service = serve(ServeConfig(), wait_health=False)
    stages[0].warm = lambda *args, **kwargs: gate.wait(10)
    with server:
        assert httpx.get(f"{server.base_url}/health").status_code == 503
        early = ask(server.base_url, "too early")
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        gate.set()
        service.ready.wait(10)
        health = httpx.get(f"{server.base_url}/health")
        assert health.status_code == 200 and health.json()["agents"] == ["a", "b"]


def test_http_errors_are_openai_shaped():
    server, _, _ = serve(ServeConfig())
    with server:
        raw = httpx.post(f"{server.base_url}/v1/chat/completions", content=b"{oops",
                         headers={"content-type": "application/json"})
        assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
        assert httpx.get(f"{server.base_url}/v1/nothing").json()["error"]["code"] == "not_found"
        assert httpx.get(f"{server.base_url}/v1/chat/completions").status_code == 405
        with pytest.raises(openai.NotFoundError):
            openai_client(server.base_url).chat.completions.create(model="gpt-4", messages=[
                {"role": "user", "content": "x"}])


def test_an_agent_failing_after_streaming_began_ends_the_stream_with_an_error_event():
    received = threading.Event()  # the client has the first tokens: the agent breaks only then

    class SpeaksThenFails(StubStage):
        def run(self, rows, listeners=None):
            for listener in listeners or ():
                if listener is not None:
                    listener(list(b"par"))  # what a generating agent streams before it breaks
                    received.wait(10)
            raise RuntimeError("broken mid-reply")

    service = CascadeService([SpeaksThenFails("a", last=True)], ServeConfig(batch_window_ms=0.0))
    with InProcessServer(create_app(service)) as server:
        events = []
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", timeout=30, json={
                "model": "disrouter", "stream": True, "messages": [{"role": "user", "content": "q"}]}) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: {"):
                    events.append(json.loads(line[len("data: "):]))
                    if events[-1].get("choices") and events[-1]["choices"][0]["delta"].get("content"):
                        received.set()
        assert reply.status_code == 200  # sent with the first tokens
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "par"
        assert events[-1]["error"]["code"] == "agent_failed" and "broken mid-reply" in events[-1]["error"]["message"]
        assert ask(server.base_url, "after").status_code == 500  # still serving (this agent always fails)
