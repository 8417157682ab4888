"""`kvsaga sim`'s outputs and sizes (review s48, diff review of the command-line fixes): the
output probe never removes a file under the target's name, --plot PGF needs its TeX program,
a writer's failure names the flag, and a KV size under one block names the flag given."""

from __future__ import annotations

import os

import pytest

from kvsaga.cli import main
from kvsaga.sim import cli_outputs

TINY = ["sim", "--workload", "swe", "--sessions", "3", "--scale", "0.05", "--arrival-rate", "1",
        "--policy", "lru", "--quiet", "--jobs", "1"]


def test_the_probe_leaves_a_file_another_writer_made_meanwhile(tmp_path, monkeypatch):
    """Another run writing the same --json between the probe's check and its clean-up lost
    its file: the probe created and removed the target name itself."""
    target = tmp_path / "r.json"
    exists = os.path.exists

    def exists_then_written(path):
        found = exists(path)
        if os.fspath(path) == str(target) and not found:
            target.write_text("{}")  # the other writer, right after the check
        return found

    monkeypatch.setattr(os.path, "exists", exists_then_written)
    cli_outputs._check_writable("--json", str(target))
    monkeypatch.undo()
    assert target.read_text() == "{}"
    assert os.listdir(tmp_path) == ["r.json"]  # the probe's own file is gone


def test_the_probe_of_a_dangling_symlink_uses_its_targets_folder(tmp_path):
    (tmp_path / "link.json").symlink_to(tmp_path / "nosuchdir" / "r.json")
    with pytest.raises(ValueError, match="--json .*link.json"):
        cli_outputs._check_writable("--json", str(tmp_path / "link.json"))
    (tmp_path / "ok.json").symlink_to(tmp_path / "r.json")
    cli_outputs._check_writable("--json", str(tmp_path / "ok.json"))
    assert sorted(os.listdir(tmp_path)) == ["link.json", "ok.json"]


def test_pgf_without_its_tex_program_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(cli_outputs.shutil, "which", lambda name: None)
    out = tmp_path / "out.json"
    assert main(TINY + ["--kv-memory", "1G", "--plot", str(tmp_path / "p.pgf"),
                        "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--plot" in err and "not installed" in err, err
    assert not out.exists()


def test_a_writer_error_of_any_type_names_the_flag():
    def failing(path):
        raise RuntimeError("'xelatex' not found")

    with pytest.raises(ValueError, match=r"--plot 'p.pgf': RuntimeError: 'xelatex' not found"):
        cli_outputs.save("--plot", "p.pgf", failing)


@pytest.mark.parametrize("flags, named", [
    (["--kv-memory", "1K"], "--kv-memory 1,024 B holds no KV block"),
    (["--kv-gib", "0.0001"], "--kv-gib 107,374 B holds no KV block"),
])
def test_a_kv_size_under_one_block_names_the_flag_given(flags, named, capsys):
    assert main(TINY + flags) == 2
    err = capsys.readouterr().err
    assert named in err and "kv_memory_bytes" not in err, err
