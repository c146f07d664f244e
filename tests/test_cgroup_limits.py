"""A container's CPU limit (cgroup v1 and v2) bounds the cores the service sizes itself for:
inference workers and ONNX Runtime threads (embedding_core/cgroup_limits.py,
settings.usable_cores); its memory limit, whether long inputs may run on OpenVINO and the image
limits' defaults (settings.usable_memory). The cgroup trees here are files laid out as the
kernel shows them."""

from __future__ import annotations

import os
import threading

import pytest

from embedding_core import settings as settings_module
from embedding_core.cgroup_limits import cgroup_cpu_limit, cgroup_memory_limit
from embedding_core.settings import Settings, usable_cores, usable_memory


def fake(tmp_path, memberships, mounts, files):
    """/proc/self/{cgroup,mountinfo} and cgroup files under tmp_path; "{root}" in a mount line
    is tmp_path."""
    proc = tmp_path / "proc"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text("\n".join(memberships) + "\n")
    (proc / "mountinfo").write_text("\n".join(m.format(root=tmp_path) for m in mounts) + "\n")
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return str(proc)


V2_MOUNT = "30 23 0:26 / {root}/cg rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw"
V1_MOUNT = "32 31 0:29 / {root}/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct"


@pytest.mark.parametrize("cpu_max, expected", [
    ("150000 100000", 1.5),          # docker run --cpus=1.5
    ("25000 100000", 0.25),
    ("max 100000", None),            # no limit
])
def test_cgroup_v2_container(tmp_path, cpu_max, expected):
    proc = fake(tmp_path, ["0::/"], [V2_MOUNT], {"cg/cpu.max": cpu_max})
    assert cgroup_cpu_limit(proc) == expected


def test_cgroup_v2_the_smallest_limit_of_the_cgroup_and_its_ancestors_applies(tmp_path):
    proc = fake(tmp_path, ["0::/kubepods/pod1/c1"], [V2_MOUNT], {
        "cg/kubepods/cpu.max": "400000 100000",
        "cg/kubepods/pod1/cpu.max": "50000 100000",
        "cg/kubepods/pod1/c1/cpu.max": "max 100000",
    })
    assert cgroup_cpu_limit(proc) == 0.5


@pytest.mark.parametrize("quota, expected", [("200000", 2.0), ("-1", None)])
def test_cgroup_v1(tmp_path, quota, expected):
    proc = fake(tmp_path, ["5:memory:/docker/abc", "4:cpu,cpuacct:/docker/abc", "0::/"],
                ["31 23 0:28 / {root} rw,relatime - tmpfs tmpfs rw,mode=755", V1_MOUNT], {
                    "cpu/docker/abc/cpu.cfs_quota_us": quota,
                    "cpu/docker/abc/cpu.cfs_period_us": "100000",
                    "cpu/cpu.cfs_quota_us": "-1",
                    "cpu/cpu.cfs_period_us": "100000",
                })
    assert cgroup_cpu_limit(proc) == expected


def test_cgroup_v1_in_a_cgroup_namespace(tmp_path):
    """Docker without a private cgroup namespace mounts the container's own cgroup (root
    /docker/abc) at the mount point."""
    proc = fake(tmp_path, ["4:cpu,cpuacct:/docker/abc"],
                ["32 31 0:29 /docker/abc {root}/cpu ro,relatime - cgroup cgroup rw,cpu,cpuacct"], {
                    "cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(proc) == 1.0


def test_mount_points_with_escaped_characters(tmp_path):
    """mountinfo writes a space in a path as \\040 (and tab, newline, backslash likewise)."""
    proc = fake(tmp_path, ["0::/a b"],
                ["30 23 0:26 / {root}/cg\\040mnt rw - cgroup2 cgroup2 rw"],
                {"cg mnt/a b/cpu.max": "50000 100000"})
    assert cgroup_cpu_limit(proc) == 0.5


def test_a_cgroup_outside_the_namespace_is_never_read_as_one_inside_it(tmp_path):
    """The kernel shows "/../c2" for a cgroup outside the reader's cgroup namespace; folding
    the ".." away would read cg/c2, an unrelated cgroup, whose limit (0.1) is not ours."""
    files = {"cg/c2/cpu.max": "10000 100000", "cg/cpu.max": "200000 100000",
             "cg/init/cpu.max": "10000 100000"}
    assert cgroup_cpu_limit(fake(tmp_path / "a", ["0::/../c2"], [V2_MOUNT], files)) is None
    # A host's tree bind-mounted into a container (mount root "/../.."): not our namespace's.
    bound = "30 23 0:26 /../.. {root}/cg rw - cgroup2 cgroup2 rw"
    assert cgroup_cpu_limit(fake(tmp_path / "b", ["0::/init"], [bound], files)) is None


def test_numbers_no_kernel_writes_count_as_no_limit_and_never_raise(tmp_path):
    huge = "1" + "0" * 400
    proc = fake(tmp_path / "a", ["0::/c"], [V2_MOUNT],
                {"cg/c/cpu.max": f"{huge} 100000", "cg/cpu.max": "200000 100000"})
    assert cgroup_cpu_limit(proc) == 2.0          # the overflow is skipped, the parent counts
    proc = fake(tmp_path / "b", ["0::/c"], [V2_MOUNT],
                {"cg/c/cpu.max": f"1 {huge}", "cg/cpu.max": "200000 100000"})
    assert cgroup_cpu_limit(proc) == 2.0          # 0.0 CPUs is not a limit
    proc = fake(tmp_path / "c", ["4:cpu,cpuacct:/"], [V1_MOUNT],
                {"cpu/cpu.cfs_quota_us": huge, "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(proc) is None


def test_lines_that_other_readers_accept(tmp_path):
    # A mount point that is not UTF-8 (paths are bytes to the kernel) on an unrelated line.
    proc = fake(tmp_path / "a", ["0::/"], [V2_MOUNT], {"cg/cpu.max": "50000 100000"})
    with open(os.path.join(proc, "mountinfo"), "ab") as fh:
        fh.write(b"40 23 0:30 / /mnt/caf\xe9 rw - tmpfs tmpfs rw\n")
    assert cgroup_cpu_limit(proc) == 0.5
    # An empty mount source ("- cgroup2  rw").
    proc = fake(tmp_path / "b", ["0::/"], ["30 23 0:26 / {root}/cg rw - cgroup2  rw"],
                {"cg/cpu.max": "50000 100000"})
    assert cgroup_cpu_limit(proc) == 0.5
    # An empty unified path beside a v1 cpu hierarchy with a limit: the v1 limit still counts.
    proc = fake(tmp_path / "c", ["0::", "4:cpu,cpuacct:/"], [V2_MOUNT, V1_MOUNT],
                {"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(proc) == 1.0


def test_a_garbled_mount_point_is_skipped_not_read_from_the_working_directory(
        tmp_path, monkeypatch):
    """The kernel writes absolute mount points only. A relative one (a garbled or hand-made
    mountinfo) is skipped: not read against the working directory, and never a climb that
    cannot reach its mount point (``a/..`` would climb to "" forever and hang start-up)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cg" / "c").mkdir(parents=True)
    (tmp_path / "cg" / "c" / "cpu.max").write_text("50000 100000\n")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cpu.max").write_text("50000 100000\n")
    for mount_point in ("a/..", "cg", "."):
        proc = fake(tmp_path / mount_point.replace("/", "_").replace(".", "dot"), ["0::/c"],
                    [f"30 23 0:26 / {mount_point} rw - cgroup2 cgroup2 rw"], {})
        result = []
        reader = threading.Thread(target=lambda: result.append(cgroup_cpu_limit(proc)),
                                  daemon=True)
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), f"the climb from {mount_point!r} never ended"
        assert result == [None], mount_point


@pytest.mark.parametrize("memberships, mounts, files", [
    ([], [], {}),                                                 # no cgroups at all
    (["0::/"], [V2_MOUNT], {}),                                  # no cpu controller file
    (["0::/"], [V2_MOUNT], {"cg/cpu.max": "garbage"}),
    (["0::"], [V2_MOUNT], {"cg/cpu.max": "50000 100000"}),        # an empty path
    (["4:cpu,cpuacct:/elsewhere"], ["32 31 0:29 /docker/abc {root}/cpu rw - cgroup cgroup rw,cpu"],
     {"cpu/cpu.cfs_quota_us": "100000"}),                        # our cgroup is not under the mount
])
def test_no_limit_that_can_be_read_is_no_limit(tmp_path, memberships, mounts, files):
    assert cgroup_cpu_limit(fake(tmp_path, memberships, mounts, files)) is None


def test_no_proc_files_is_no_limit(tmp_path):
    assert cgroup_cpu_limit(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("limit, expected", [(None, "all"), (0.25, 1), (1.0, 1), (1.2, 2),
                                             (10**6, "all")])
def test_workers_and_threads_follow_the_limit(monkeypatch, limit, expected):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(settings_module, "cgroup_cpu_limit", lambda: limit)
    want = cores if expected == "all" else min(cores, expected)
    assert usable_cores() == want
    settings = Settings.from_env({})
    assert settings.workers == want and settings.session_threads == 1


# -- memory ------------------------------------------------------------------------------------

V1_MEMORY_MOUNT = ("33 31 0:30 / {root}/memory rw,relatime shared:10 - cgroup cgroup "
                   "rw,memory")
MB = 1 << 20


@pytest.mark.parametrize("memory_max, expected", [
    (str(784 * MB), 784 * MB),       # a 512 MB Flex instance with its 272 MB, if it shows
    ("max", None),                   # no limit
    ("0", None), ("-5", None), ("garbage", None), ("", None),
])
def test_cgroup_v2_memory(tmp_path, memory_max, expected):
    proc = fake(tmp_path, ["0::/"], [V2_MOUNT], {"cg/memory.max": memory_max})
    assert cgroup_memory_limit(proc) == expected


def test_cgroup_v2_memory_the_smallest_of_the_ancestors_applies(tmp_path):
    proc = fake(tmp_path, ["0::/app/worker"], [V2_MOUNT],
                {"cg/memory.max": "max", "cg/app/memory.max": str(512 * MB),
                 "cg/app/worker/memory.max": str(2048 * MB),
                 "cg/app/worker/cpu.max": "max 100000"})
    assert cgroup_memory_limit(proc) == 512 * MB
    assert cgroup_cpu_limit(proc) is None     # the memory limit is no CPU limit


@pytest.mark.parametrize("limit, expected", [
    (str(1024 * MB), 1024 * MB),
    ("9223372036854771712", None),   # v1's "no limit"
    ("-1", None),
])
def test_cgroup_v1_memory(tmp_path, limit, expected):
    # The v1 memory controller has its own hierarchy; a cpu hierarchy's files do not count.
    proc = fake(tmp_path, ["5:memory:/docker/abc", "4:cpu,cpuacct:/docker/abc"],
                [V1_MEMORY_MOUNT.replace(" / ", " /docker/abc ", 1), V1_MOUNT],
                {"memory/memory.limit_in_bytes": limit,
                 "cpu/docker/abc/memory.limit_in_bytes": str(64 * MB)})
    assert cgroup_memory_limit(proc) == expected


def test_usable_memory_is_the_smaller_of_the_machine_and_the_cgroup(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:  1 kB\n")
    monkeypatch.setattr(settings_module, "cgroup_memory_limit", lambda: 784 * MB)
    assert usable_memory(str(meminfo)) == 784 * MB
    monkeypatch.setattr(settings_module, "cgroup_memory_limit", lambda: None)
    assert usable_memory(str(meminfo)) == 16384000 * 1024
    assert usable_memory(str(tmp_path / "absent")) is None
    meminfo.write_text("MemTotal: lots\n")
    assert usable_memory(str(meminfo)) is None


def test_cgroup_v1_memory_from_the_memory_hierarchy_not_another(tmp_path):
    """As on a systemd host (this VM's layout): the memory controller's cgroup path differs from
    the cpu controller's, and only the memory hierarchy's files count (review h_diff12 F3)."""
    proc = fake(tmp_path, ["9:name=systemd:/", "4:memory:/app/a", "1:cpu,cpuacct:/", "0::/"],
                ["35 31 0:32 / {root}/memory rw - cgroup cgroup rw,memory",
                 "32 31 0:29 / {root}/cpu rw - cgroup cgroup rw,cpu,cpuacct",
                 "41 31 0:38 / {root}/unified rw - cgroup2 cgroup2 rw"],
                {"memory/app/a/memory.limit_in_bytes": str(700 * MB),
                 "memory/memory.limit_in_bytes": "9223372036854771712",
                 "cpu/app/a/cpu.cfs_quota_us": "50000", "cpu/app/a/cpu.cfs_period_us": "100000"})
    assert cgroup_memory_limit(proc) == 700 * MB
    assert cgroup_cpu_limit(proc) is None


def test_cgroup_v1_memory_nested_and_co_mounted(tmp_path):
    # A parent's smaller limit applies to its child; "no limit" on 64 KiB pages is no limit.
    proc = fake(tmp_path / "a", ["5:memory:/p/c"], [V1_MEMORY_MOUNT],
                {"memory/p/memory.limit_in_bytes": str(900 * MB),
                 "memory/p/c/memory.limit_in_bytes": str(2000 * MB),
                 "memory/memory.limit_in_bytes": "9223372036854710272"})
    assert cgroup_memory_limit(proc) == 900 * MB
    # One v1 hierarchy with both controllers: each reader finds its own file.
    proc = fake(tmp_path / "b", ["3:cpu,memory:/x"],
                ["32 31 0:29 / {root}/both rw - cgroup cgroup rw,cpu,memory"],
                {"both/x/memory.limit_in_bytes": str(1024 * MB),
                 "both/x/cpu.cfs_quota_us": "50000", "both/x/cpu.cfs_period_us": "100000"})
    assert cgroup_memory_limit(proc) == 1024 * MB
    assert cgroup_cpu_limit(proc) == 0.5


@pytest.mark.parametrize("usable_mb, small", [(512, True), (784, True), (1535, True),
                                              (1536, False), (2320, False), (None, False)])
def test_images_get_smaller_limits_where_memory_is_small(monkeypatch, caplog, usable_mb, small):
    """Two image requests at the usual limits peaked at ~580 MB and got a process limited to
    512 MiB killed. A 512 MB Flex instance (784 MB with the platform's 272) or a small container
    gets the image limits infra/ sets at 512 MB, unless they are set; the log says so."""
    settings_module.forget_warnings()
    monkeypatch.setattr(settings_module, "usable_memory",
                        lambda: None if usable_mb is None else usable_mb << 20)
    with caplog.at_level("WARNING", logger="embedding_core.settings"):
        got = Settings.from_env({})
    lowered = (128 << 20, 16 << 20) if small else (256 << 20, 32 << 20)
    assert (got.max_image_decode_bytes, got.max_image_body_bytes) == lowered
    if small:
        assert (f"this process may use {usable_mb} MiB of memory, less than 1536 MiB, so the "
                "image limits not set are lowered: EMBEDDINGS_MAX_IMAGE_DECODE_BYTES=134217728, "
                "EMBEDDINGS_MAX_IMAGE_BODY_BYTES=16777216") in caplog.text
    else:
        assert "lowered" not in caplog.text
    # A value that is set is kept, and only the other one is lowered (and named).
    caplog.clear()
    settings_module.forget_warnings()
    with caplog.at_level("WARNING", logger="embedding_core.settings"):
        got = Settings.from_env({"EMBEDDINGS_MAX_IMAGE_BODY_BYTES": str(20 << 20)})
    assert (got.max_image_decode_bytes, got.max_image_body_bytes) == (lowered[0], 20 << 20)
    assert ("lowered: EMBEDDINGS_MAX_IMAGE_DECODE_BYTES=134217728\n" in caplog.text) == small
    assert "EMBEDDINGS_MAX_IMAGE_BODY_BYTES=" not in caplog.text
    both = {"EMBEDDINGS_MAX_IMAGE_BODY_BYTES": "65536",
            "EMBEDDINGS_MAX_IMAGE_DECODE_BYTES": str(300 << 20)}
    caplog.clear()
    with caplog.at_level("WARNING", logger="embedding_core.settings"):
        got = Settings.from_env(both)
    assert (got.max_image_decode_bytes, got.max_image_body_bytes) == (300 << 20, 65536)
    assert "lowered" not in caplog.text


def test_cgroup_v1_cpu_is_read_from_the_cpu_hierarchy_not_cpuset(tmp_path):
    """On a v1 host the cpuset hierarchy may hold the process elsewhere (here at its root, as
    systemd leaves it) than the cpu one: the CPU limit is the cpu hierarchy's cgroup's."""
    proc = fake(tmp_path, ["5:memory:/docker/abc", "4:cpu,cpuacct:/docker/abc", "3:cpuset:/"],
                [V1_MOUNT], {
                    "cpu/docker/abc/cpu.cfs_quota_us": "50000",
                    "cpu/docker/abc/cpu.cfs_period_us": "100000",
                    "cpu/cpu.cfs_quota_us": "-1",
                    "cpu/cpu.cfs_period_us": "100000",
                })
    assert cgroup_cpu_limit(proc) == 0.5
