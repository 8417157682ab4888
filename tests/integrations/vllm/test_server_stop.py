"""kvsaga-serve against the real vLLM (0.32, CPU) on the same SmolLM2 weights, greedy: stop
strings and stop tokens end both servers' answers alike, field by field (text,
finish_reason, stop_reason, usage), streamed and not, chat and completions. The cases are
those measured in findings/s57/servestop.md: two stop strings completing in one token
(the first to complete wins), at the same character (the first listed), in different
tokens, a stop string spanning tokens, a stop token (its id is the stop reason, its text
left out), an EOS (stop_reason null); and with `include_stop_str_in_output`."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm")
httpx = pytest.importorskip("httpx")

from kvsaga.integrations.vllm.launch import VLLMServer  # noqa: E402
from tests.serve_process import ServeProcess  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
NAME = "smol"
PROMPT = "The capital of France is"  # greedy: " Paris.\n\nThe answer is: 2018-..."
CHAT = [{"role": "user", "content": "Say hi."}]  # greedy: "Hello there! I'm here to ..."
NEWLINE = 198  # SmolLM2's "\n"
COMPLETION_CASES = [
    {},
    {"stop": [" answer", "swe"]},  # one token (" answer") holds both: "swe" completes first
    {"stop": ["swe", " answer"]},
    {"stop": ["wer", "er"]},  # both complete at the "r": the first listed
    {"stop": ["er", "wer"]},
    {"stop": ["answer", "Paris"]},  # in different tokens
    {"stop": ["s.\n", "is: 2"]},  # spanning tokens
    {"stop_token_ids": [NEWLINE]},
    {"stop": ["\n"], "stop_token_ids": [NEWLINE]},  # the token ends it by its id
    # include_stop_str_in_output: cut after the stop string; a stop token's text kept
    {"stop": [" answer", "swe"], "include_stop_str_in_output": True},
    {"stop": ["ans"], "include_stop_str_in_output": True},  # (inside the token " answer")
    {"stop_token_ids": [NEWLINE], "include_stop_str_in_output": True},
]
CHAT_CASES = [
    {},  # ends with the EOS: stop_reason null
    {"stop": ["!"]},
    {"stop": [" there", "her"]},
    {"stop_token_ids": [2], "ignore_eos": True},  # the EOS id as a stop token
    {"stop": [" there", "!"], "include_stop_str_in_output": True},
]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "kvsaga-serve exited"
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health",
                                                                  timeout=2) as r:
            if r.status == 200:
                return
        assert time.monotonic() < deadline, "kvsaga-serve did not become healthy"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def servers(hf_model_dir, tmp_path_factory):
    """(vLLM's base url, kvsaga-serve's), both serving the same weights in float32."""
    log = tmp_path_factory.mktemp("stop") / "vllm.log"
    vllm = VLLMServer(hf_model_dir, 64 * 32 * 46_080, served_name=NAME, max_model_len=1024,
                      max_num_seqs=4, log=log)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    kv = ServeProcess([sys.executable, "-m", "kvsaga.serve.cli", "--model", str(hf_model_dir),
                       "--served-model-name", NAME, "--device", "cpu", "--max-model-len",
                       "1024", "--kv-memory", "64M", "--log-level", "info"],
                      env=env, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{kv.port(600)}"
        _wait_healthy(url, kv.proc, 600)
        with vllm:
            yield vllm.base_url, url
    finally:
        kv.stop()


def _ask(base: str, path: str, body: dict) -> dict:
    """The one choice of a response, with its usage; streamed: the choices' text joined,
    the last chunk's finish and stop reasons, and the stop reasons of the chunks before."""
    if not body.get("stream"):
        r = httpx.post(base + path, json=body, timeout=600)
        assert r.status_code == 200, r.text
        out = r.json()
        (choice,) = out["choices"]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        return {"text": text, "finish_reason": choice["finish_reason"],
                "stop_reason": choice["stop_reason"], "usage": _counts(out["usage"])}
    chunks = []
    with httpx.stream("POST", base + path, json=body, timeout=600) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    choices = [c for chunk in chunks for c in chunk["choices"]]
    *running, last = choices
    return {
        "text": "".join(c["delta"].get("content") or "" if "delta" in c else c["text"]
                        for c in choices),
        "finish_reason": last["finish_reason"], "stop_reason": last["stop_reason"],
        # completions: null on every chunk before the last; chat: on none of them
        "before": sorted({json.dumps(c.get("stop_reason", "absent")) for c in running}),
        "usage": _counts(chunks[-1]["usage"]),
    }


def _counts(usage: dict) -> dict:
    return {k: usage[k] for k in ("prompt_tokens", "completion_tokens")}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_stop_ends_answers_as_vllm_does(servers, chat, stream):
    vllm, kvsaga = servers
    path = "/v1/chat/completions" if chat else "/v1/completions"
    base = ({"messages": CHAT, "max_tokens": 40} if chat else
            {"prompt": PROMPT, "max_tokens": 12})
    base.update(model=NAME, temperature=0, stream=stream)
    if stream:
        base["stream_options"] = {"include_usage": True}
    seen = []
    for case in CHAT_CASES if chat else COMPLETION_CASES:
        body = {**base, **case}
        want, got = _ask(vllm, path, body), _ask(kvsaga, path, body)
        assert got == want, case
        seen.append(want["stop_reason"])
    # The cases did stop on strings and on ids (not all ran to their length).
    assert any(isinstance(s, str) for s in seen) and any(isinstance(s, int) for s in seen)
