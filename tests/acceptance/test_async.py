"""Awaitable producer calls: astart, asend, aget_event, aresult and astatus
keep the event loop running while they wait (a web handler's loop), with
the same outcome as the synchronous calls; inside a workflow they are
refused."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from dbos_celery import InvalidArgumentError
from tests.apps.messaging import build
from tests.support import Env, WorkerProcess, app_fixture, start_worker

ns = app_fixture(build)


def test_an_async_producer_runs_a_workflow_without_blocking_its_loop(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    start_worker(env, workers, "tests.apps.messaging")

    async def producer() -> None:
        ticks: list[int] = []

        async def ticker() -> None:  # the rest of the web server
            while True:
                ticks.append(1)
                await asyncio.sleep(0.005)

        beat = asyncio.create_task(ticker())
        handle = await ns.events.astart(workflow_id="aio")
        assert await ns.durable.aget_event("aio", "stage", timeout=30) == "started"
        waiting = asyncio.create_task(handle.aresult(timeout=30))
        before = len(ticks)
        await asyncio.sleep(0.3)  # the workflow waits in recv, and so does aresult
        assert not waiting.done()
        assert len(ticks) > before  # the loop ran meanwhile
        await ns.durable.asend("aio", "go", "go")
        assert await waiting == "go"
        assert (await handle.astatus()).status == "SUCCESS"
        beat.cancel()

    asyncio.run(producer())


def test_the_async_forms_are_refused_inside_a_workflow(ns: SimpleNamespace) -> None:
    durable = ns.durable
    refused: list[Any] = []

    @durable.workflow(name="aio.inside")
    def inside() -> None:
        try:
            asyncio.run(durable.asend("nowhere", 1))
        except InvalidArgumentError as exc:
            refused.append(exc)

    inside()
    assert refused and "asend is for producers on an event loop" in str(refused[0])
    with pytest.raises(Exception):  # noqa: B017 - nothing was written: no such workflow
        durable.retrieve("nowhere").status()
