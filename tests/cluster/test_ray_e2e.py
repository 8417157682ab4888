"""kvsaga-serve on a local Ray cluster: two tiny-model replicas behind one endpoint, driven
through the official openai client. One cluster for the module (its start-up dominates)."""

from __future__ import annotations

import functools
import socket
import threading
import time
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


def factory(path: Path):
    return functools.partial(LLMEngine, str(path), device="cpu", progress=False,
                             kv_memory_bytes=4 * 2**20, max_num_seqs=4)


SETTINGS = ServerSettings(served_model_name=MODEL, max_num_seqs=4)


@pytest.fixture(scope="module")
def cluster(tiny_dir: Path):
    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parents[2])}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_application(
            SETTINGS, 2, factory=factory(tiny_dir), torch_threads=1,
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


def wait_idle(url: str, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        states = cache_states(url)
        if states and all(s["used_blocks"] == 0 and not s["busy"] for s in states):
            return states
        assert time.monotonic() < deadline, f"replicas still busy: {states}"
        time.sleep(0.2)


def test_affinity_stealing_migration_and_no_leaks(cluster: str, reference: LiveServer):
    c = client(cluster)
    sticky = conversation(c, "sticky", 3)
    assert len({replica for _, replica, _, _ in sticky}) == 1  # affinity holds
    assert [reason for *_, reason, _ in sticky] == ["new", "affinity", "affinity"]
    assert all(cached > 0 for *_, cached in sticky[1:])
    ref = conversation(reference.client(), "sticky", 3)
    assert [t for t, *_ in sticky] == [t for t, *_ in ref]

    # Keep the session's home busy with three long steps at a time, back to back, then
    # continue the session: the idle replica steals it and its KV migrates; the greedy
    # answer does not change. The long steps share the session's system prompt, so
    # prefix-aware placement (prefix_slack 2) sends them to the home replica. With fewer,
    # all can be between two requests when the session's step is routed (the tiny model is
    # fast, and 200 tokens are its context limit): the home would not look busy.
    home = sticky[0][1]
    stop = threading.Event()

    placed: list[str | None] = []  # where the long steps ran (for the failure message)

    def keep_home_busy() -> None:
        while not stop.is_set():
            raw = c.chat.completions.with_raw_response.create(
                model=MODEL, messages=[SYSTEM, {"role": "user", "content": "busy"}],
                max_tokens=200, temperature=0, extra_body={"ignore_eos": True})
            placed.append(raw.headers.get("x-kvsaga-replica"))

    busy = [threading.Thread(target=keep_home_busy, daemon=True) for _ in range(3)]
    for t in busy:
        t.start()
    deadline = time.monotonic() + 180
    while not any(st["steps"] >= 2 for st in cache_states(cluster) if st["replica"] == home):
        assert time.monotonic() < deadline, "the long steps never started on the home replica"
        time.sleep(0.05)
    messages = [SYSTEM]
    for i, (text, *_rest) in enumerate(sticky):
        messages += [{"role": "user", "content": f"step {i}: list the files"},
                     {"role": "assistant", "content": text}]
    messages.append({"role": "user", "content": "step 3: list the files"})
    r, replica, reason = step(c, "sticky", messages)
    stop.set()
    for t in busy:
        t.join(120)
    assert (replica != home, reason) == (True, "steal"), (
        f"{placed.count(home)} of {len(placed)} long steps had finished on the home")
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
