"""`kvsaga`: generate, chat and simulate from the command line.

kvsaga generate "What is the capital of France?" --temperature 0 --stats
kvsaga chat
kvsaga sim --workload swe --sessions 40 --policy lru,graph,belady
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from kvsaga import __version__, envs
from kvsaga._validate import check_unicode
from kvsaga.ascii_numbers import hint, is_plain
from kvsaga.errors import InvalidRequest
from kvsaga.logs import logging_to_stderr

log = logging.getLogger("kvsaga.cli")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and shows each flag's default, unless its help
    already says what the default is, "(default...)", or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def accept_negative_values(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let `parser` take a value that starts with "-" and a digit ("-1G", "-.5") as a flag's
    argument, so that its type names what is wrong ("cannot be negative") instead of argparse
    saying the flag "expected one argument". Python 3.13's argparse does this itself; the
    parser must define no flag that looks like a negative number (none of kvsaga's do)."""
    if hasattr(parser, "_negative_number_matcher"):
        parser._negative_number_matcher = re.compile(r"^-\.?\d")
    return parser


def checked(kind: Callable[[str], Any], ok: Callable[[Any], bool], what: str):
    """An argparse type: parse with `kind` (int or float: ASCII digits only, as
    kvsaga.ascii_numbers says why), reject (naming the rule) what fails `ok`."""

    def parse(text: str) -> Any:
        try:
            if not is_plain(text):  # int() and float() take any Unicode digit
                raise ValueError(text)
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}"
                                             f"{hint(text)}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


def add_version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Flags that choose and place the model; shared with kvsaga-serve."""
    p.add_argument("--model", default=None,
                   help="HF directory or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="auto",
                   choices=["auto", "float32", "bfloat16", "float16"],
                   help="compute dtype; auto: float32 on CPU, bfloat16 (or float16) on CUDA")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="debug also prints the traceback of a failure")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=checked(int, lambda v: v >= 1, ">= 1"), default=None,
                   help="most tokens per answer (default: the model's generation_config, else "
                   "256)")
    p.add_argument("--temperature", type=checked(float, lambda v: 0 <= v < float("inf"), ">= 0"),
                   default=None,
                   help="0 for greedy (default: the model's generation_config, else 1.0)")
    p.add_argument("--top-p", type=checked(float, lambda v: 0 < v <= 1, "in (0, 1]"),
                   default=None, help="nucleus sampling mass (default: the model's, else 1.0)")
    p.add_argument("--top-k", type=checked(int, lambda v: v >= -1, ">= -1"), default=None,
                   help="keep the k most likely tokens; 0 or -1: all (default: the model's, "
                   "else all)")
    p.add_argument("--seed", type=checked(int, lambda v: -(2**63) <= v < 2**63, "an int64"),
                   default=None, help="seed for sampling (default: none, a fresh random one)")
    p.add_argument("--stats", action="store_true",
                   help="after each answer, print time to first token, tokens/s and cached "
                   "prompt tokens to stderr")


def _sampling_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_tokens": args.max_tokens, "temperature": args.temperature,
            "top_p": args.top_p, "top_k": args.top_k, "seed": args.seed}


def load_llm(args: argparse.Namespace):
    """Load the model the flags name, after checking the device (cheap) first.

    The weight-loading bar shows only on a terminal: piped into a log it would print one
    line per update. A bad KVSAGA_* variable exits 2 before the load (most are read as the
    model loads or runs: until session 52 a typo cost the whole load, then exited 1).
    """
    try:
        envs.check()
    except ValueError as e:
        print(f"kvsaga: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        from kvsaga.engine.llm import LLM, resolve_device
    except ImportError as e:  # installed without the extra
        print(f"kvsaga: error: {e}; install the model's dependencies: pip install "
              "'kvsaga[model]'", file=sys.stderr)
        raise SystemExit(2) from None
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    llm = LLM(args.model, device=device, dtype=args.dtype, progress=sys.stderr.isatty())
    log.info("loaded %s on %s in %.1f s", llm.engine.model_path.name, llm.engine.device,
             time.perf_counter() - t0)
    return llm


class _Printer:
    """Streams one answer to stdout and, with --stats, its timing to stderr."""

    def __init__(self, stats: bool) -> None:
        self.stats = stats
        self.start = time.perf_counter()
        self.first: float | None = None

    def __call__(self, out) -> None:
        if self.first is None and out.token_ids:
            self.first = time.perf_counter()
        if out.delta:
            sys.stdout.write(out.delta)
            sys.stdout.flush()

    def done(self, out) -> None:
        sys.stdout.write("\n")
        sys.stdout.flush()
        if self.stats:
            print(format_stats(out, self.start, self.first, time.perf_counter()), file=sys.stderr)


def format_stats(out, start: float, first: float | None, end: float) -> str:
    """One line: time to first token, decode rate, prompt tokens served from the cache."""
    n = len(out.token_ids)
    ttft = (first or end) - start
    decode = end - (first or end)
    rate = f"{(n - 1) / decode:.1f} tokens/s" if n > 1 and decode > 0 else "n/a tokens/s"
    return (f"[stats] ttft {ttft:.2f} s, {n} tokens in {end - start:.2f} s ({rate} after the "
            f"first), {out.num_cached_tokens}/{out.num_prompt_tokens} prompt tokens cached")


def _raw(args: argparse.Namespace, llm) -> bool:
    """Whether to go without the chat template: --raw, or a model that has none (said once,
    since the answers then continue the text rather than answer it)."""
    if not args.raw and llm.tokenizer.chat_template is None:
        log.warning("this model has no chat template: the text is completed as is (--raw)")
        return True
    return args.raw


def cmd_generate(args: argparse.Namespace) -> int:
    check_unicode("the prompt", args.prompt, InvalidRequest)  # before the model loads
    if args.raw and not args.prompt:  # (the chat template gives an empty one a turn)
        raise InvalidRequest("the prompt is empty: --raw completes the text as is, so give "
                             "some")
    llm = load_llm(args)
    params = llm.default_params(**_sampling_fields(args))
    printer = _Printer(args.stats)
    if _raw(args, llm):
        out = llm.generate(args.prompt, params, on_output=printer)[0]
    else:
        out = llm.chat([{"role": "user", "content": args.prompt}], params, on_output=printer)
    printer.done(out)
    return 0


def _read_line(interactive: bool) -> str | None:
    """One input line; the `> ` prompt goes to stderr and only to a terminal, so piped
    output holds nothing but answers."""
    if interactive:
        print("> ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


RESET = "/reset"  # a chat line that starts a new conversation
CHAT_HELP = f"""\
Interactive chat: one line per turn, the conversation's KV cache kept across turns; an
empty line or Ctrl-D ends.

A line that is just {RESET} starts a new conversation. A turn that would outgrow the
model's context is refused with a message saying how many tokens it needs and how many the
context holds; the conversation stays as it was: send a shorter line, or {RESET}. So is a
line that is not UTF-8, naming where."""


def _refused_turn(e, resumable: bool) -> str:
    """What `kvsaga chat` says when a turn would outgrow the context (`e`: ContextTooLong);
    `resumable`: there is an earlier conversation that the turn was to continue."""
    fix = (f"send a shorter line to continue it, or {RESET} to start a new conversation"
           if resumable else "send a shorter line")
    return (f"kvsaga: turn refused: it needs {e.prompt_tokens + 1} tokens (the conversation "
            f"with this line, and one to answer) but the model's context holds "
            f"{e.max_model_len}; nothing was sent and the conversation is as it was: {fix}")


def _raw_turn(session, line: str) -> str:
    """What a --raw line adds to the running text: the line and a newline, after a newline
    when the text so far (the last answer) does not end with one: the terminal shows the
    answer's line ended, and the model sees the same."""
    glue = "\n" if session.context is not None and not session.context.text.endswith("\n") else ""
    return f"{glue}{line}\n"


def cmd_chat(args: argparse.Namespace) -> int:
    from kvsaga.engine.engine import ContextTooLong

    llm = load_llm(args)
    params = llm.default_params(**_sampling_fields(args))
    raw = _raw(args, llm)
    session = llm.session()
    interactive = sys.stdin.isatty()
    if hasattr(sys.stdin, "reconfigure"):  # a line that is not UTF-8 is refused, not fatal
        sys.stdin.reconfigure(errors="surrogateescape")
    if interactive:
        print(f"kvsaga chat: one line per turn; {RESET} starts a new conversation; an empty "
              "line or Ctrl-D ends.", file=sys.stderr)
    while (line := _read_line(interactive)) and line.strip():
        if line.strip() == RESET:
            session.end()
            session = llm.session()
            print("kvsaga: new conversation", file=sys.stderr)
            continue
        printer = _Printer(args.stats)
        try:
            check_unicode("the line", line, InvalidRequest)
            if raw:
                out = session.generate(_raw_turn(session, line), params, on_output=printer)
            else:
                out = session.chat(line, params, on_output=printer)
        except ContextTooLong as e:  # refused before it ran: the session is unchanged
            print(_refused_turn(e, session.context is not None), file=sys.stderr)
            continue
        except InvalidRequest as e:  # e.g. a line that is not UTF-8; also refused unchanged
            print(f"kvsaga: turn refused: {e}; nothing was sent and the conversation is as "
                  "it was", file=sys.stderr)
            continue
        printer.done(out)
        if out.num_prompt_tokens + len(out.token_ids) >= llm.engine.max_model_len:
            print(f"kvsaga: the answer stopped at the model's context limit of "
                  f"{llm.engine.max_model_len} tokens; {RESET} starts a new conversation",
                  file=sys.stderr)
    session.end()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvsaga", description=__doc__,
                                     formatter_class=HelpFormatter)
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="answer one prompt, streamed, and exit",
                       formatter_class=HelpFormatter)
    g.add_argument("prompt", help="the prompt text")
    g.add_argument("--raw", action="store_true",
                   help="complete the text as is, without the chat template (what a model "
                   "without one does anyway)")
    add_engine_args(g)
    _add_sampling_args(g)
    g.set_defaults(func=cmd_generate)
    c = sub.add_parser("chat", help="interactive chat, one line per turn, cache kept across turns",
                       description=CHAT_HELP,
                       formatter_class=HelpFormatter)
    c.add_argument("--raw", action="store_true",
                   help="no chat template: each line and a newline are appended to the running "
                   "text (after a newline, if the last answer did not end with one) and "
                   "completed; what a model without a chat template does anyway")
    add_engine_args(c)
    _add_sampling_args(c)
    c.set_defaults(func=cmd_chat)
    try:
        from kvsaga.sim import cli as sim_cli
    except ImportError:
        sim_cli = None
    if sim_cli is not None and hasattr(sim_cli, "add_parser"):
        sim_cli.add_parser(sub)
    for each in (parser, *sub.choices.values()):
        accept_negative_values(each)
    return parser


def command_logging(level: str) -> contextlib.AbstractContextManager[None]:
    """A command's logging, for the block it runs in: the root logger at `level`, its lines
    on stderr, and the root's handlers and level as they were once the block is left."""
    fmt = logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s", "%H:%M:%S")
    return logging_to_stderr(level, fmt, replace=True)


def report_failure(prog: str, e: BaseException, debug: bool, context: str = "",
                   can_debug: bool = True) -> int:
    """One line naming the problem (the traceback too under --log-level debug, which the
    line suggests when the command has that flag: `can_debug`); the exit code: 2 for bad
    input the user can fix, 1 for anything else."""
    from kvsaga.errors import KVSagaError

    if debug:
        logging.getLogger(prog).error("failed", exc_info=e)
    if isinstance(e, KVSagaError):
        print(f"{prog}: error: {context}{e}", file=sys.stderr)
        return 2
    print(f"{prog}: error: {context}{type(e).__name__}: {e}", file=sys.stderr)
    if not debug and can_debug:
        print(f"{prog}: (run with --log-level debug for the traceback)", file=sys.stderr)
    return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing what is still buffered at exit does not
    fail again on the closed pipe (Python prints that failure past any handler)."""
    with contextlib.suppress(OSError, ValueError):  # stdout has no file descriptor
        fd = sys.stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None)
    with command_logging(level) if level is not None else contextlib.nullcontext():
        return _run(args, level)


def _run(args: argparse.Namespace, level: str | None) -> int:
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, not at exit: a reader gone by then is also a quiet 141
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader left (`| head`): not a failure
        _silence_stdout()
        return 141  # what a shell reports for a process SIGPIPE ended
    except Exception as e:
        return report_failure("kvsaga", e, level == "debug", can_debug=level is not None)


if __name__ == "__main__":
    sys.exit(main())
