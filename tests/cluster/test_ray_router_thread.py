"""The gateway tells the router a session ended from the gateway's thread; Ray Serve runs
the router's own calls on the router's loop, in another thread. The router's state has no
lock, so `KvsagaRequestRouter.session_ended` runs the work on the router's loop (review
repro ended_thread_race: `remove_replica` raised half-way while sessions ended)."""

from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("ray.serve")

from tests.cluster.ray_fakes import StatsReplica, make_router, pending  # noqa: E402


def test_session_ended_from_another_thread_runs_on_the_router_loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        async def first_step():  # as Ray Serve: the router is made and runs on its loop
            router = make_router([StatsReplica("a", total_blocks=100, free_blocks=100)])
            call = {"kvsaga": 1, "session": "t/s1", "tenant": "t"}
            await router.choose_replicas(list(router.curr_replicas.values()),
                                         pending(call, "r1"))
            return router

        router = asyncio.run_coroutine_threadsafe(first_step(), loop).result(10)
        assert router.kv_router.home("t/s1") == "a"
        ran_on = []
        forget = router.kv_router.session_ended

        def recorded(session: str) -> None:
            ran_on.append(threading.current_thread())
            forget(session)

        router.kv_router.session_ended = recorded
        router.session_ended("t/s1")  # from this (the gateway's) thread
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(10)  # a loop turn
        assert ran_on == [thread]
        assert router.kv_router.home("t/s1") is None
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_session_ended_on_the_router_loop_runs_at_once():
    async def go():
        router = make_router([StatsReplica("a", total_blocks=100, free_blocks=100)])
        call = {"kvsaga": 1, "session": "t/s1", "tenant": "t"}
        await router.choose_replicas(list(router.curr_replicas.values()), pending(call, "r1"))
        router.session_ended("t/s1")
        assert router.kv_router.home("t/s1") is None

    asyncio.run(go())
