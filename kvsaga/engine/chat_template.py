"""Rendering a model's Jinja chat template, the way HF `apply_chat_template` does.

Templates come from untrusted model files, so they run in jinja2's immutable sandbox. The
environment offers what HF templates use: `raise_exception`, `strftime_now`, a `tojson` that
keeps non-ASCII text, `loopcontrols`, and a pass-through `{% generation %}` block.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from kvsaga.errors import InvalidRequest


class ChatTemplateError(InvalidRequest):
    """The template failed to render, or raised on purpose (`raise_exception`)."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template rejected the conversation: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja's built-in tojson escapes HTML characters and sorts keys; HF's does neither.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile(source: str) -> Any:
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for training masks;
        rendering only needs its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_render_body")
            return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _render_body(self, caller: Any) -> str:
            return caller()

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _names_read(env: Any, source: str) -> tuple[frozenset[str], frozenset[str]]:
    """What a template can read: its free variables (`tools`), and the keys it looks up
    (`message.tool_calls`, `message['tool_calls']`, `'tool_calls' in message`). Kept apart:
    a template that reads a message's `tools` key never sees the `tools` variable."""
    from jinja2 import meta, nodes

    ast = env.parse(source)
    variables = frozenset(meta.find_undeclared_variables(ast))
    keys = {n.attr for n in ast.find_all(nodes.Getattr)}
    keys.update(n.value for n in ast.find_all(nodes.Const) if isinstance(n.value, str))
    return variables, frozenset(keys)


class ChatTemplate:
    """A compiled chat template plus the special tokens it may refer to.

    Args:
        source: the Jinja source.
        special_tokens: e.g. {"bos_token": "<s>", "eos_token": "</s>"}; exposed to the template.

    Raises:
        ChatTemplateError: the source is not valid Jinja.
    """

    def __init__(self, source: str, special_tokens: Mapping[str, str | None] | None = None) -> None:
        from jinja2 import TemplateError

        self.source = source
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = _compile(source)
            self._variables, self._keys = _names_read(self._template.environment, source)
        except TemplateError as e:
            raise ChatTemplateError(f"invalid chat template: {e}") from e

    def reads_variable(self, name: str) -> bool:
        """Whether the template refers to the variable `name` (such as `tools`); a variable
        it never reads is silently dropped."""
        return name in self._variables

    def reads_key(self, name: str) -> bool:
        """Whether the template looks up the key or attribute `name` (such as a message's
        `tool_calls`); a key it never looks up is silently dropped."""
        return name in self._keys

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """Render a conversation.

        Args:
            messages: [{"role": ..., "content": ...}, ...].
            add_generation_prompt: end with the header of an assistant turn.
            tools: optional tool schemas, for templates that support them.
            **kwargs: extra template variables.

        Returns:
            The prompt text (special tokens spelled out, not yet tokenized).

        Raises:
            ChatTemplateError: no messages (as HF refuses them: a template renders nothing,
                or a lone generation prompt), or the template raised or failed.
        """
        from jinja2 import TemplateError

        if not messages:
            raise ChatTemplateError("cannot render an empty conversation: give at least "
                                    "one message")

        # As transformers' apply_chat_template: `tools` and `documents` always defined (None
        # when absent), and message keys set to None dropped (OpenAI-style `content: null`
        # with tool calls), which templates handle as missing but render as "None" otherwise.
        context = {
            **self.special_tokens,
            "documents": None,
            **kwargs,
            "messages": [{k: v for k, v in m.items() if v is not None} for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "tools": None if tools is None else list(tools),
        }
        try:
            return self._template.render(**context)
        except ChatTemplateError:
            raise
        except (TemplateError, TypeError, KeyError, AttributeError) as e:
            raise ChatTemplateError(f"chat template failed to render: {e}") from e
