"""kvsaga.engine.cpu_threads under a container's CPU limit: the cgroup CFS quota read from
v1 and v2 hierarchies, the team kept within its cores rounded up at the start and by the
governor, and the same read on a real cgroup where this machine lets a test make one."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvsaga.engine import cpu_threads
from kvsaga.engine.cpu_threads import (
    CpuQuota,
    ThreadGovernor,
    cgroup_cpu_dirs,
    quota_threads,
    threads_for,
)

V1_CGROUP = "12:pids:/docker/abc\n4:cpu,cpuacct:/docker/abc/web\n1:name=systemd:/docker/abc\n"
V2_CGROUP = "0::/kubepods/pod1/ctr\n"


def mountinfo(*mounts: tuple[str, str, str, str]) -> str:
    """/proc/self/mountinfo lines for (root, mount point, fstype, super options)."""
    return "".join(f"{30 + i} 20 0:{40 + i} {root} {point} rw,nosuid shared:{i} - {fstype} "
                   f"{fstype} {opts}\n" for i, (root, point, fstype, opts) in enumerate(mounts))


def test_v1_dirs_run_from_the_process_cgroup_up_to_the_mount():
    """A container without a cgroup namespace sees its own cgroup bind-mounted at the
    hierarchy's top (mount root /docker/abc): the process's path below that root, then each
    parent up to the mount. Mounts of other controllers are not read."""
    info = mountinfo(("/", "/proc", "proc", "rw"),
                     ("/docker/abc", "/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
                     ("/docker/abc", "/sys/fs/cgroup/pids", "cgroup", "rw,pids"))
    assert cgroup_cpu_dirs(V1_CGROUP, info) == [
        ("v1", Path("/sys/fs/cgroup/cpu,cpuacct/web")), ("v1", Path("/sys/fs/cgroup/cpu,cpuacct"))]


def test_v2_and_a_hybrid_host_and_escaped_mount_points():
    """cgroup v2 (the "0::" line, fstype cgroup2) under a namespace root; on a hybrid host
    both hierarchies are read; a space in a mount point comes as \\040."""
    info = mountinfo(("/", "/sys/fs/cgroup", "cgroup2", "rw"))
    assert cgroup_cpu_dirs(V2_CGROUP, info) == [
        ("v2", Path("/sys/fs/cgroup/kubepods/pod1/ctr")),
        ("v2", Path("/sys/fs/cgroup/kubepods/pod1")), ("v2", Path("/sys/fs/cgroup/kubepods")),
        ("v2", Path("/sys/fs/cgroup"))]
    hybrid = mountinfo(("/", r"/sys/fs/cg\040v1/cpu", "cgroup", "rw,cpu"),
                       ("/", "/sys/fs/cgroup/unified", "cgroup2", "rw"))
    assert cgroup_cpu_dirs("4:cpu:/a\n0::/b\n", hybrid) == [
        ("v1", Path("/sys/fs/cg v1/cpu/a")), ("v1", Path("/sys/fs/cg v1/cpu")),
        ("v2", Path("/sys/fs/cgroup/unified/b")), ("v2", Path("/sys/fs/cgroup/unified"))]


def test_a_path_outside_the_mount_root_reads_nothing_of_that_hierarchy():
    """A process moved out of its cgroup namespace's root (a path with ".."), or a mount
    showing a sibling's part of the hierarchy (/docker/abc, not /docker/abcdef's): no
    directory the mount shows is known to be an ancestor, so none is read."""
    info = mountinfo(("/", "/sys/fs/cgroup", "cgroup2", "rw"))
    assert cgroup_cpu_dirs("0::/../../other\n", info) == []
    info = mountinfo(("/docker/abc", "/sys/fs/cgroup", "cgroup2", "rw"))
    assert cgroup_cpu_dirs("0::/docker/xyz\n", info) == []
    assert cgroup_cpu_dirs("0::/docker/abcdef\n", info) == []
    assert cgroup_cpu_dirs("0::/docker/abc/x\n", info) == [
        ("v2", Path("/sys/fs/cgroup/x")), ("v2", Path("/sys/fs/cgroup"))]
    assert cgroup_cpu_dirs("garbage\n0::/\n", "no dash here\n") == []


class FakeHost:
    """A /proc/self (cgroup, mountinfo) and a cgroup v2 tree under `tmp`."""

    def __init__(self, tmp: Path) -> None:
        self.proc = tmp / "proc"
        self.proc.mkdir()
        self.fs = tmp / "cg"
        self.fs.mkdir()
        (self.proc / "mountinfo").write_text(mountinfo(("/", str(self.fs), "cgroup2", "rw")))
        self.move("/pod/ctr")

    def move(self, path: str) -> None:
        (self.fs / path.strip("/")).mkdir(parents=True, exist_ok=True)
        (self.proc / "cgroup").write_text(f"0::{path}\n")

    def limit(self, path: str, text: str) -> None:
        (self.fs / path.strip("/") / "cpu.max").write_text(text + "\n")


def test_the_least_limit_of_the_cgroup_and_its_ancestors(tmp_path: Path):
    host = FakeHost(tmp_path)
    quota = CpuQuota(host.proc)
    assert quota.read() is None  # no cpu.max anywhere: the controller is not enabled
    host.limit("/pod/ctr", "max 100000")
    assert quota.read() is None
    host.limit("/pod", "350000 100000")
    assert quota.read() == pytest.approx(3.5)  # the pod's limit binds its container
    host.limit("/pod/ctr", "150000 100000")
    assert quota.read() == pytest.approx(1.5)  # re-read every call: resized in place
    host.move("/other")  # moved to an unlimited cgroup: the directories are found again
    assert quota.read() is None
    host.limit("/other", "50000 100000")
    assert quota.read() == pytest.approx(0.5)
    host.limit("/other", "lots 100000")
    with pytest.raises(ValueError):
        quota.read()
    host.move("/pod/ctr")  # an ancestor's file this process may not read: the rest count
    if os.geteuid() != 0:  # root reads a file of mode 0
        (host.fs / "pod" / "cpu.max").chmod(0)
        assert quota.read() == pytest.approx(1.5)


def test_v1_limit_files(tmp_path: Path):
    proc, fs = tmp_path / "proc", tmp_path / "cpu"
    (fs / "job").mkdir(parents=True)
    proc.mkdir()
    (proc / "cgroup").write_text("3:cpu,cpuacct:/job\n")
    (proc / "mountinfo").write_text(mountinfo(("/", str(fs), "cgroup", "rw,cpu,cpuacct")))
    for d, quota in ((fs, "-1"), (fs / "job", "-1")):
        (d / "cpu.cfs_quota_us").write_text(quota + "\n")
        (d / "cpu.cfs_period_us").write_text("100000\n")
    assert CpuQuota(proc).read() is None  # -1: no limit
    (fs / "job" / "cpu.cfs_quota_us").write_text("250000\n")
    (fs / "job" / "cpu.cfs_period_us").write_text("50000\n")
    assert CpuQuota(proc).read() == pytest.approx(5.0)
    (fs / "job" / "cpu.cfs_period_us").write_text("0\n")
    with pytest.raises(ValueError, match="not a limit"):
        CpuQuota(proc).read()


@pytest.mark.parametrize(("quota", "want"), [
    (None, None), (0.3, 1), (1.0, 1), (1.0000000001, 1), (1.05, 2), (1.5, 2), (2.0, 2),
    (7.65, 8), (64.0, 64)])
def test_a_quota_bounds_the_team_at_its_cores_rounded_up(quota, want):
    assert quota_threads(quota) == want


def test_the_team_stays_within_the_quota_and_the_cores_others_leave():
    assert threads_for(16, 0.0, 16, quota=4.0) == 4
    assert threads_for(16, 14.0, 16, quota=4.0) == 2  # the cores left bind first
    assert threads_for(16, 0.0, 2, quota=4.0) == 2  # and the start count
    assert threads_for(2, 0.0, 2, quota=0.5) == 1
    assert threads_for(16, 0.0, 16, quota=3.2) == 4


class FixedQuota:
    """A CpuQuota whose limit is `cores` (None: none), at any path."""

    cores: float | None = None

    def read(self) -> float | None:
        return self.cores


def quota_of(monkeypatch: pytest.MonkeyPatch, cores: float | None) -> None:
    """Every CpuQuota reads `cores` from now on."""
    monkeypatch.setattr(cpu_threads, "CpuQuota", type("Q", (FixedQuota,), {"cores": cores}))


class QuietLoad:
    """A load reader on `cpus` cores that reads `foreign` cores at every window."""

    window_s = 1.0

    def __init__(self, cpus: int, foreign: float = 0.0) -> None:
        self.cpus = frozenset(range(cpus))
        self.foreign = foreign

    def sample(self) -> float:
        return self.foreign


def test_the_governor_follows_a_quota_that_changes():
    """Lowered: the team shrinks at the first window that reads it. Raised: it grows back
    after two windows that agree, as for any ask for more, up to the start count."""
    quota: list[float | None] = [None]
    sets: list[int] = []
    now = [0.0]
    gov = ThreadGovernor(QuietLoad(8), 8, sets.append, clock=lambda: now[0],
                         read_quota=lambda: quota[0])

    def window() -> int | None:
        now[0] += 1.0
        return gov.poll()

    assert window() is None and gov.quota_cores is None
    quota[0] = 2.5
    assert window() == 3 and gov.quota_cores == 2.5 and sets == [3]
    quota[0] = 5.4
    assert [window(), window()] == [None, 6]
    quota[0] = None
    assert [window(), window()] == [None, 8]
    assert sets == [3, 6, 8] and gov.changes == 3
    gov.load.foreign = 3.0  # others hold 3 of the 8 cores, and the quota falls to 7
    quota[0] = 7.0
    assert [window(), window(), window()] == [7, None, 5]  # the quota at once, the load in two
    with pytest.raises(ValueError, match="threads must be in"):
        ThreadGovernor(QuietLoad(8), 8, sets.append, threads=9)


@contextlib.contextmanager
def torch_threads() -> Iterator[int]:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def test_the_engine_starts_within_the_quota_unless_omp_num_threads_is_set(
        monkeypatch: pytest.MonkeyPatch):
    import torch

    with torch_threads():
        torch.set_num_threads(4)
        quota_of(monkeypatch, 2.0)
        monkeypatch.delenv("KVSAGA_CPU_THREADS", raising=False)
        monkeypatch.setenv("OMP_NUM_THREADS", "4")
        assert cpu_threads.governor_for("cpu") == (None, None)
        assert torch.get_num_threads() == 4
        monkeypatch.setenv("KVSAGA_CPU_THREADS", "adaptive")  # the governor leaves it too
        gov, bound = cpu_threads.governor_for("cpu")
        assert torch.get_num_threads() == 4 and bound is None
        if gov is not None:
            assert gov.quota_cores is None and gov._read_quota is None
            assert gov.max_threads == 4  # OMP_NUM_THREADS
        monkeypatch.delenv("KVSAGA_CPU_THREADS")
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert cpu_threads.governor_for("cuda") == (None, None)
        assert torch.get_num_threads() == 4
        # fixed: capped once, not governed
        assert cpu_threads.governor_for("cpu") == (None, 2)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(4)
        monkeypatch.setenv("KVSAGA_CPU_THREADS", "adaptive")
        gov, bound = cpu_threads.governor_for("cpu")
        assert torch.get_num_threads() == 2 and bound == 2
        if gov is not None:  # Linux: torch's count, above the ceiling here, is the most
            assert (gov.max_threads, gov.threads, gov.quota_cores) == (
                max(4, cpu_threads.team_ceiling()), 2, 2.0)


CHILD = textwrap.dedent("""
    import json, torch
    from kvsaga.engine import cpu_threads
    before = torch.get_num_threads()
    cpu_threads.governor_for("cpu")
    print(json.dumps([cpu_threads.cpu_quota(), cpu_threads.usable_cores(), before,
                      torch.get_num_threads()]))
""")


def _writable_cpu_hierarchy() -> tuple[str, Path] | None:
    """The top of this process's CPU controller hierarchy, where a child cgroup with a
    quota can be made (root on a host that mounts it read-write), else None."""
    try:
        dirs = cgroup_cpu_dirs(Path("/proc/self/cgroup").read_text(),
                               Path("/proc/self/mountinfo").read_text())
    except OSError:
        return None
    for version, d in dirs:
        controls = d / "cgroup.subtree_control"  # v2: children get cpu.max only if listed
        if os.access(d, os.W_OK) and (d / "cgroup.procs").exists() and (
                version == "v1" or "cpu" in controls.read_text().split()):
            return version, d
    return None


def test_a_real_cgroup_quota_caps_torch_threads_in_a_child():
    """A child process put in a cgroup with a 1-core quota on this machine reads it and
    starts torch's team within it; skipped where no cgroup can be made here."""
    pytest.importorskip("torch")
    found = _writable_cpu_hierarchy()
    if found is None:
        pytest.skip("no writable cgroup CPU hierarchy here")
    version, top = found
    cg = top / f"kvsaga-test-{os.getpid()}"
    try:
        cg.mkdir()
        if version == "v2":
            (cg / "cpu.max").write_text("100000 100000\n")
        else:
            (cg / "cpu.cfs_period_us").write_text("100000\n")
            (cg / "cpu.cfs_quota_us").write_text("100000\n")
    except OSError as e:
        with contextlib.suppress(OSError):
            cg.rmdir()
        pytest.skip(f"cannot make a cgroup with a quota here: {e}")
    procs = str(cg / "cgroup.procs")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                             "KVSAGA_CPU_THREADS")}
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120,
            preexec_fn=lambda: Path(procs).write_text(str(os.getpid())))
    finally:
        cg.rmdir()
    assert out.returncode == 0, out.stderr
    quota, usable, before, after = json.loads(out.stdout.splitlines()[-1])
    above = cpu_threads.cpu_quota()  # a limit on a cgroup above this one binds as well
    want = 1.0 if above is None else min(1.0, above)
    assert quota == pytest.approx(want) and usable == 1 and after == 1 and before >= 1
