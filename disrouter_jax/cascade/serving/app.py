"""The HTTP layer: a FastAPI app over a :class:`service.CascadeService`.

``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health`` (503 until warm-up is done),
``GET /metrics`` (Prometheus text). The app starts the service's worker and warm-up on start-up
and drains it on shutdown (uvicorn, on SIGTERM, stops accepting, lets in-flight requests finish,
then runs the shutdown).

A request waits for its job with the deadline's time left while watching for the client going
away; either way the job is cancelled (dropped at its next stage boundary, or from the queue at
once). ``stream=true`` replies as soon as the answering agent is known — its first tokens that
can no longer be a refusal (the refusals before it are never streamed) — and sends one
server-sent event per token as the agent generates it; an error after that (a failing agent,
the deadline) ends the stream with an OpenAI-style ``error`` event, and a client that leaves
mid-stream has its request cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from disrouter_jax.cascade.serving import protocol
from disrouter_jax.cascade.serving.batcher import CANCELLED, DONE, QueueFull, Stopped
from disrouter_jax.cascade.serving.protocol import RequestError
from disrouter_jax.cascade.serving.service import CascadeService

logger = logging.getLogger(__name__)
CLIENT_CLOSED = 499  # nginx's code for a client that left; logged and counted, never sent


def error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the request body was read already, so the next ASGI
    message is the disconnect: no polling)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(service: CascadeService, *, warm_in_background: bool = True) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start(warm_in_background=warm_in_background)
        yield
        # Uvicorn has finished the in-flight requests; the queue is empty unless a client left.
        await asyncio.to_thread(service.stop)

    app = FastAPI(title="DiSRouter cascade", lifespan=lifespan)
    created = int(time.time())
    metrics = service.metrics

    @app.get("/health")
    async def health():
        if not service.ready.is_set():
            return JSONResponse({"status": "warming_up"}, status_code=503, headers={"Retry-After": "1"})
        return {"status": "ok", "agents": service.names, "queue_depth": service.batcher.queue_depth,
                "in_flight": service.batcher.in_flight, "warmup_error": service.warmup_error or None}

    @app.get("/metrics")
    async def metrics_endpoint():
        metrics.in_flight.set(service.batcher.in_flight)
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models():
        return protocol.models_body(created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        started = time.perf_counter()
        model = "unknown"
        try:
            body = protocol.parse_json(await request.body())
            model = body.get("model") if isinstance(body.get("model"), str) else "unknown"
            chat = protocol.parse_chat_request(body, service.config)
            if not service.ready.is_set():
                raise RequestError(503, "the server is warming up", None, "warming_up", "server_error",
                                   {"Retry-After": "1"})
            job = service.make_job(chat)
            status, response = await _run(request, chat, job)
        except RequestError as err:
            if err.param == "model" and err.status == 404:
                model = "unknown"  # keep the label set bounded
            status, response = err.status, error_response(err)
        metrics.request(model if model in protocol.MODEL_IDS else "unknown", status,
                        time.perf_counter() - started if status == 200 else None)
        return response

    async def _run(request: Request, chat, job):
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        job.add_done_callback(lambda j: loop.call_soon_threadsafe(
            lambda: finished.done() or finished.set_result(j)))
        tokens_q: asyncio.Queue | None = None
        streaming = None
        if chat.stream:
            tokens_q, streaming = asyncio.Queue(), loop.create_future()

            def put(stage, tokens):  # on the loop, in the order the worker sent them (before its finish)
                tokens_q.put_nowait((stage, tokens))
                if not streaming.done():
                    streaming.set_result(stage)

            job.on_tokens = lambda stage, tokens: loop.call_soon_threadsafe(put, stage, list(tokens))
        try:
            service.batcher.submit(job)
        except QueueFull as err:
            retry = str(service.config.retry_after_s)
            raise RequestError(429, f"the server is at capacity ({err}); retry after {retry} s", None,
                               "rate_limit_exceeded", "rate_limit_error", {"Retry-After": retry}) from None
        except Stopped as err:
            raise RequestError(503, str(err), None, "shutting_down", "server_error") from None
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            left = max(0.0, job.deadline - time.monotonic())
            await asyncio.wait({finished, watcher} | ({streaming} if streaming else set()), timeout=left,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if streaming is not None and streaming.done() and not finished.done():
            # The answering agent is generating: 200 now, the rest (errors too) in the stream.
            return 200, StreamingResponse(_live_events(protocol.completion_id(), chat, job, finished, tokens_q,
                                                       streaming.result()),
                                          media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        if not finished.done():
            if watcher.done() and not watcher.cancelled():
                service.batcher.cancel(job, "disconnect")
                logger.info("client went away; request cancelled")
                return CLIENT_CLOSED, Response(status_code=CLIENT_CLOSED)
            service.batcher.cancel(job, "deadline")
            raise _deadline_error()
        _check_done(job)
        answer = service.answer(chat, job)
        cid = protocol.completion_id()
        if not chat.stream:
            return 200, JSONResponse(protocol.completion_body(cid, chat.model, answer.content, answer.finish_reason,
                                                              answer.usage, answer.routing))
        return 200, StreamingResponse(_events(cid, chat, answer), media_type="text/event-stream",
                                      headers={"Cache-Control": "no-cache"})

    def _deadline_error(why: str = "") -> RequestError:
        return RequestError(504, f"no answer within the deadline of {service.config.request_timeout_s} s"
                            f"{f' ({why})' if why else ''}; the request was cancelled", None, "timeout",
                            "timeout_error")

    def _check_done(job) -> None:
        if job.status == CANCELLED:  # the worker saw the deadline first
            raise _deadline_error(job.error)
        if job.status != DONE:
            logger.error("request failed: %s", job.error)
            raise RequestError(500, f"the cascade failed on this request: {job.error}", None, "agent_failed",
                               "server_error")

    def _closing_events(cid, chat, answer):
        yield protocol.sse(protocol.chunk_body(cid, chat.model, {}, answer.finish_reason, disrouter=answer.routing))
        if chat.include_usage:
            yield protocol.sse({"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                                "model": chat.model, "choices": [], "usage": answer.usage})
        yield protocol.sse("[DONE]")

    async def _events(cid, chat, answer):
        yield protocol.sse(protocol.chunk_body(cid, chat.model, {"role": "assistant", "content": ""}))
        for piece in service.text_deltas(answer):
            yield protocol.sse(protocol.chunk_body(cid, chat.model, {"content": piece}))
        for event in _closing_events(cid, chat, answer):
            yield event

    async def _live_events(cid, chat, job, finished, tokens_q, stage):
        """Agent ``stage``'s tokens as they come, then the closing events (or an error)."""
        text = service.text_stream(stage, chat)
        try:
            yield protocol.sse(protocol.chunk_body(cid, chat.model, {"role": "assistant", "content": ""}))
            while True:
                # Checked before draining: the worker queues its tokens before it finishes, so
                # once finished, what the queue holds is all that is left.
                last = finished.done()
                while not tokens_q.empty():
                    for piece in text.feed(tokens_q.get_nowait()[1]):
                        yield protocol.sse(protocol.chunk_body(cid, chat.model, {"content": piece}))
                if last:
                    break
                getter = asyncio.ensure_future(tokens_q.get())
                left = max(0.0, job.deadline - time.monotonic())
                done, _ = await asyncio.wait({getter, finished}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    for piece in text.feed(getter.result()[1]):
                        yield protocol.sse(protocol.chunk_body(cid, chat.model, {"content": piece}))
                    continue
                getter.cancel()
                if not done:
                    service.batcher.cancel(job, "deadline")
                    raise _deadline_error()
            _check_done(job)
            answer = service.answer(chat, job)
            for piece in text.finish(answer.content):
                yield protocol.sse(protocol.chunk_body(cid, chat.model, {"content": piece}))
            for event in _closing_events(cid, chat, answer):
                yield event
        except RequestError as err:  # the status line is sent: the error ends the stream
            logger.error("stream ended by an error (%d): %s", err.status, err.message)
            yield protocol.sse(err.body())
        finally:
            if not job.done:  # the client left mid-stream (the response task was cancelled)
                service.batcher.cancel(job, "disconnect")
                logger.info("client went away mid-stream; request cancelled")

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return JSONResponse(protocol.error_body(f"no route {request.method} {request.url.path}",
                                                "invalid_request_error", None, "not_found"), status_code=404)

    @app.exception_handler(405)
    async def wrong_method(request: Request, exc):
        return JSONResponse(protocol.error_body(f"{request.method} is not allowed on {request.url.path}",
                                                "invalid_request_error", None, "method_not_allowed"),
                            status_code=405)

    app.state.service = service
    return app

