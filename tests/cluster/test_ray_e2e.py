"""kvsaga-serve on a local Ray cluster: two tiny-model replicas behind one endpoint, driven
through the official openai client. One cluster for the module (its start-up dominates)."""

from __future__ import annotations

import functools
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from kvsaga.engine.engine import LLMEngine  # noqa: E402
from kvsaga.integrations.ray.deployment import ENGINE_DEPLOYMENT, build_application  # noqa: E402
from kvsaga.serve.app import build_app  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402
from tests.helpers_models import build_tiny_model  # noqa: E402
from tests.serve.conftest import LiveServer  # noqa: E402

MODEL = "tiny"
SYSTEM = {"role": "system", "content": "You are a careful agent."}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("llama_gqa4_untied", tmp_path_factory.mktemp("ray-tiny"))


ENGINE_KWARGS = {"device": "cpu", "progress": False, "kv_memory_bytes": 4 * 2**20,
                 "max_num_seqs": 4}


def factory(path: Path):
    return functools.partial(LLMEngine, str(path), **ENGINE_KWARGS)


class HeldEngine(LLMEngine):
    """The tiny model's engine on a Ray replica, which steps nothing while a file named
    after the replica exists in `hold_dir`: steps sent there wait in its queue, and the
    load the router reads (its queue depth, the steps it has in flight) stays put until
    the test lets go. Long steps would finish at whatever speed the machine's load allows,
    and the home would not look busy when the step to steal is routed. Commands (routing
    stats, session exports) still run between the held steps."""

    def __init__(self, *args, hold_dir: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._hold = Path(hold_dir) / serve.get_replica_context().replica_id.unique_id

    def step(self):
        if self._hold.exists():
            time.sleep(0.01)
            return []
        return super().step()


SETTINGS = ServerSettings(served_model_name=MODEL, max_num_seqs=4)


@pytest.fixture(scope="module")
def hold_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a file named after a replica holds its engine (`HeldEngine`)."""
    return tmp_path_factory.mktemp("ray-hold")


def start_serve(attempts: int = 3) -> int:
    """Ray Serve's HTTP proxy on a free loopback port; its port. A port found free can be
    taken before the proxy binds it (Ray's own processes bind ports as they start: CI saw
    "Failed to bind to address" once), so a bind failure is retried on another port."""
    for attempt in range(attempts):
        port = free_port()
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            return port
        except Exception as e:  # the proxy's bind error arrives wrapped in a RayTaskError
            if "Failed to bind" not in str(e) or attempt == attempts - 1:
                raise
            serve.shutdown()
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def cluster(tiny_dir: Path, hold_dir: Path):
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parents[2])}})
    try:
        port = start_serve()
        app = build_application(
            SETTINGS, 2, torch_threads=1,
            factory=functools.partial(HeldEngine, str(tiny_dir), hold_dir=str(hold_dir),
                                      **ENGINE_KWARGS),
            ray_actor_options={"num_cpus": 0.5},
            # Steal at 2 steps of difference: routing stats lag (a step that just ended
            # may still count as running), so 1 would move steps of an idle session. No
            # weight on predicted resumes: the paused session must not push the busy
            # steps below off its home. No balance steal: the sticky session's home is
            # the only replica that has worked, and a lagging report can still show its
            # last step running, which would move it at its next step (the balance
            # steal itself is tested on fake replicas, test_ray_router.py).
            router_kwargs={"steal_min_waiting": 0, "steal_margin": 2, "prefix_slack": 2,
                           "resume_weight": 0.0, "migrate_latency_s": 0.0,
                           "busy_balance": 0.0},
            stats_period_s=0.2,
        )
        serve.run(app, name="kvsaga", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_dir: Path):
    """The same model behind the single-node server: what every answer must equal."""
    with LiveServer(build_app(factory(tiny_dir)(), SETTINGS)) as s:
        yield s


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)


def step(c: openai.OpenAI, sid: str, messages: list, max_tokens: int = 6):
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0,
        extra_body={"session_id": sid, "ignore_eos": True},
    )
    r = raw.parse()
    return r, raw.headers.get("x-kvsaga-replica"), raw.headers.get("x-kvsaga-route")


def conversation(c: openai.OpenAI, sid: str, turns: int, during=None) -> list:
    """Chat `turns` steps; `during(i)` runs before step i (to load a replica)."""
    messages, out = [SYSTEM], []
    for i in range(turns):
        messages.append({"role": "user", "content": f"step {i}: list the files"})
        if during is not None:
            during(i)
        r, replica, reason = step(c, sid, messages)
        text = r.choices[0].message.content
        messages.append({"role": "assistant", "content": text})
        out.append((text, replica, reason, r.usage.prompt_tokens_details.cached_tokens))
    return out


def cache_states(url: str) -> list[dict]:
    handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, "kvsaga")
    live = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if ENGINE_DEPLOYMENT in a["name"]]
    states = []
    for name in live:
        rid = name.rsplit("#", 1)[-1]
        st = handle.options(method_name="cache_state").remote({"kvsaga": 1, "pin": rid})
        got = st.result(timeout_s=60)
        if got is not None:
            states.append(got)
    return states


def steps_on(url: str, replica: str) -> int | None:
    """Steps queued or running on a replica (None when it does not answer)."""
    return next((st["steps"] for st in cache_states(url) if st["replica"] == replica), None)


def wait_idle(url: str, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        states = cache_states(url)
        if states and all(s["used_blocks"] == 0 and not s["busy"] for s in states):
            return states
        assert time.monotonic() < deadline, f"replicas still busy: {states}"
        time.sleep(0.2)


def test_affinity_stealing_migration_and_no_leaks(cluster: str, reference: LiveServer,
                                                  hold_dir: Path):
    c = client(cluster)
    sticky = conversation(c, "sticky", 3)
    assert len({replica for _, replica, _, _ in sticky}) == 1  # affinity holds
    assert [reason for *_, reason, _ in sticky] == ["new", "affinity", "affinity"]
    assert all(cached > 0 for *_, cached in sticky[1:])
    ref = conversation(reference.client(), "sticky", 3)
    assert [t for t, *_ in sticky] == [t for t, *_ in ref]

    # Load the session's home with three long steps that stay queued there (its engine is
    # held, `HeldEngine`), then continue the session: the idle replica steals it and its KV
    # migrates; the greedy answer does not change. The long steps share the session's
    # system prompt, so prefix-aware placement (prefix_slack 2) sends all three home. The
    # hold makes the load the router reads stand still (its own count of steps in flight
    # there, and the replica's reports) instead of racing the long steps' end.
    home = sticky[0][1]
    hold = hold_dir / home
    placed: list[str | None] = []  # where the long steps ran

    def long_step() -> None:
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[SYSTEM, {"role": "user", "content": "busy"}],
            max_tokens=200, temperature=0, extra_body={"ignore_eos": True})
        placed.append(raw.headers.get("x-kvsaga-replica"))

    messages = [SYSTEM]
    for i, (text, *_rest) in enumerate(sticky):
        messages += [{"role": "user", "content": f"step {i}: list the files"},
                     {"role": "assistant", "content": text}]
    messages.append({"role": "user", "content": "step 3: list the files"})
    hold.touch()
    with ThreadPoolExecutor(4) as pool:
        try:
            busy = [pool.submit(long_step) for _ in range(3)]
            deadline = time.monotonic() + 180
            while steps_on(cluster, home) != 3:
                assert time.monotonic() < deadline, (
                    f"the long steps never all queued on the home: {cache_states(cluster)}")
                time.sleep(0.05)
            moved = pool.submit(step, c, "sticky", messages)
            # Stolen, it runs on the other replica while the home holds; kept home (no
            # steal), it queues there behind the hold as a fourth step: let go then.
            while not moved.done() and steps_on(cluster, home) != 4:
                assert time.monotonic() < deadline + 120, "the session's step went nowhere"
                time.sleep(0.05)
        finally:
            hold.unlink()
        r, replica, reason = moved.result()
        for f in busy:
            f.result()
    assert placed == [home] * 3
    assert replica != home and reason == "steal", (
        f"the step went to {replica} ({reason}) while its home {home} held 3 steps")
    assert r.usage.prompt_tokens_details.cached_tokens > 0  # the KV came along
    ref = conversation(reference.client(), "sticky-ref", 4)
    assert r.choices[0].message.content == ref[3][0]

    states = wait_idle(cluster)
    assert len(states) == 2
    # The session lives in one place only: the replica it moved to.
    holders = [s["replica"] for s in states if any(x.endswith("/sticky") for x in s["sessions"])]
    assert holders == [replica]


def test_bad_input_and_metrics(cluster: str):
    c = client(cluster)
    # A session no replica knows is simply new wherever it lands (as on one node).
    r, _, reason = step(c, "never-seen", [{"role": "user", "content": "hi"}])
    assert reason == "new" and r.choices[0].message.content is not None
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.post("/sessions/unknown-session/end", cast_to=object, body={})
    bad = httpx.post(f"{cluster}/v1/chat/completions", content=b"{not json",
                     headers={"content-type": "application/json"}, timeout=60)
    assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]["message"]
    metrics = httpx.get(f"{cluster}/metrics", timeout=60).text
    replicas = {line.split('replica="')[1].split('"')[0]
                for line in metrics.splitlines() if 'replica="' in line}
    assert len(replicas) == 2
    wait_idle(cluster)


def test_a_replica_that_dies_mid_session(cluster: str, reference: LiveServer):
    c = client(cluster)
    first = conversation(c, "doomed", 1)
    home = first[0][1]
    actor = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].endswith(home))
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
    messages = [SYSTEM, {"role": "user", "content": "step 0: list the files"},
                {"role": "assistant", "content": first[0][0]},
                {"role": "user", "content": "step 1: list the files"}]
    deadline = time.monotonic() + 120
    while True:  # a clear 503 while the router learns of the death, then an answer
        try:
            r, replica, reason = step(c, "doomed", messages)
            break
        except openai.APIStatusError as e:
            assert e.status_code == 503, e
            assert e.body["code"] == "replica_unavailable"
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert replica != home and reason in ("lost", "new")
    ref = conversation(reference.client(), "doomed-ref", 2)
    assert r.choices[0].message.content == ref[1][0]  # recomputed, same greedy answer
    wait_idle(cluster, timeout=120)
