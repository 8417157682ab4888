"""`kvsaga`: generate, chat and simulate from the command line.

kvsaga generate "What is the capital of France?"
kvsaga chat
kvsaga sim --workload swe --sessions 200 --policy lru,graph,belady
"""

from __future__ import annotations

import argparse
import sys


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None, help="HF directory or .gguf file (default: SmolLM2-135M-Instruct)"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="0 for greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument(
        "--raw", action="store_true", help="complete the text as is, without the chat template"
    )


def _llm_and_params(args):
    from kvsaga.engine.llm import LLM
    from kvsaga.engine.sampling import SamplingParams

    llm = LLM(args.model, device=args.device)
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    return llm, params


def cmd_generate(args) -> int:
    llm, params = _llm_and_params(args)
    if args.raw or llm.tokenizer.chat_template is None:
        out = llm.generate(args.prompt, params)[0]
    else:
        out = llm.chat([{"role": "user", "content": args.prompt}], params)
    print(out.text)
    return 0


def cmd_chat(args) -> int:
    llm, params = _llm_and_params(args)
    session = llm.session()
    print("kvsaga chat: one line per turn; an empty line or Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        out = session.chat(line, params)
        print(out.text)
        print(
            f"[{out.num_cached_tokens}/{out.num_prompt_tokens} prompt tokens from cache]",
            file=sys.stderr,
        )
    session.end()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvsaga", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="answer one prompt and exit")
    g.add_argument("prompt", help="the prompt text")
    _add_model_args(g)
    g.set_defaults(func=cmd_generate)
    c = sub.add_parser("chat", help="interactive chat, one line per turn, cache kept across turns")
    _add_model_args(c)
    c.set_defaults(func=cmd_chat)
    try:
        from kvsaga.sim import cli as sim_cli
    except ImportError:
        sim_cli = None
    if sim_cli is not None and hasattr(sim_cli, "add_parser"):
        sim_cli.add_parser(sub)
    args = parser.parse_args(argv)
    from kvsaga.errors import KVSagaError

    try:
        return args.func(args)
    except KVSagaError as e:
        print(f"kvsaga: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
