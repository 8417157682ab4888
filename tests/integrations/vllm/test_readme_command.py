"""The vLLM command lines of README.md ("In vLLM") and docs/integrations.md parse with vLLM's
own server parser (the one `python -m vllm.entrypoints.openai.api_server` and `vllm serve`
build), to the connector and scheduler the text names: a flag vLLM renames or drops fails
here, not in a user's shell (session 55, lane docswalk). `vllm serve MODEL` is read as
`--model MODEL`, the module form's spelling of the same command."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MODULE = ["python", "-m", "vllm.entrypoints.openai.api_server"]


def _vllm_commands(text: str) -> list[list[str]]:
    """Each vLLM server command of the text's bash blocks, as argv after the program."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line)
            if argv[:3] == MODULE:
                out.append(argv[3:])
            elif argv[:2] == ["vllm", "serve"]:
                out.append(["--model", argv[2], *argv[3:]])
    return out


def _parse(argv: list[str]):
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser()).parse_args(argv)


@pytest.mark.parametrize("doc, count", [("README.md", 1), ("docs/integrations.md", 2)])
def test_doc_vllm_commands_parse_with_vllms_parser(doc, count):
    commands = _vllm_commands((ROOT / doc).read_text(encoding="utf-8"))
    assert len(commands) == count, commands  # the pattern still finds them
    for argv in commands:
        args = _parse(argv)
        assert args.model == argv[1] and args.enable_prefix_caching is True
        config = args.kv_transfer_config
        assert config.kv_connector == "KVSagaConnector"
        assert config.kv_connector_module_path == "kvsaga.integrations.vllm.connector"
        assert config.kv_connector_extra_config == json.loads(
            argv[argv.index("--kv-transfer-config") + 1])["kv_connector_extra_config"]
        if "--scheduler-cls" in argv:
            assert args.scheduling_policy == "priority"
            assert args.scheduler_cls == "kvsaga.integrations.vllm.scheduler.KVSagaScheduler"
        else:
            assert args.kv_cache_memory_bytes == 1 << 30
            assert args.enable_prompt_tokens_details is True
