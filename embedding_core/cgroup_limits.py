"""What a container's cgroup lets this process use, which the CPU affinity and the machine's
memory do not show: a process limited to one CPU on a 4-core host sees 4 cores, and one limited
to 784 MB on a 16 GB host sees 16 GB in /proc/meminfo.

- CPU (``docker run --cpus``, a Kubernetes CPU limit, a systemd ``CPUQuota``): cgroup v2
  ``cpu.max``, or v1 ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``.
- Memory (``docker run --memory``, a Kubernetes memory limit, a systemd ``MemoryMax``): cgroup v2
  ``memory.max``, or v1 ``memory.limit_in_bytes``.

Each is read for the process's own cgroup and every ancestor up to the mount; the smallest
limit applies, as in OpenJDK's reader (Go's runtime reads the process's own cgroup only). What
cannot be read, or makes no sense, counts as no limit: an error here must never leave the
service with fewer workers than its cores, or stop it from starting."""

from __future__ import annotations

import os
import re
from typing import Callable

__all__ = ["cgroup_cpu_limit", "cgroup_memory_limit"]


def cgroup_cpu_limit(proc: str = "/proc/self") -> float | None:
    """CPUs the cgroup allows (e.g. 1.5), or None: no limit, or none that can be read. Never
    raises: the service starts whatever these files hold."""
    try:
        return _limit(proc, "cpu", _v2_cpu, _v1_cpu)
    except Exception:  # noqa: BLE001 - whatever the files hold (OverflowError included)
        return None


def cgroup_memory_limit(proc: str = "/proc/self") -> int | None:
    """Bytes of memory the cgroup allows, or None: no limit, or none that can be read. Never
    raises."""
    try:
        limit = _limit(proc, "memory", _v2_memory, _v1_memory)
    except Exception:  # noqa: BLE001 - whatever the files hold
        return None
    return int(limit) if limit is not None else None


def _limit(proc: str, controller: str, read_v2: Callable[[str], float | None],
           read_v1: Callable[[str], float | None]) -> float | None:
    try:
        # Paths are bytes to the kernel: a name that is not UTF-8 must not hide the others.
        with open(os.path.join(proc, "cgroup"), encoding="utf-8", errors="surrogateescape") as fh:
            memberships = fh.read().splitlines()
        with open(os.path.join(proc, "mountinfo"), encoding="utf-8",
                  errors="surrogateescape") as fh:
            mounts = fh.read().splitlines()
    except OSError:
        return None
    paths: dict[str, str] = {}   # "cgroup2", or "cgroup" (the v1 controller's) -> cgroup path
    for line in memberships:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not _inside(path):
            # Empty, or outside this cgroup namespace ("/../c2"): its files are not in view.
            continue
        if hierarchy == "0" and not controllers:
            paths["cgroup2"] = path
        elif controller in controllers.split(","):
            paths["cgroup"] = path
    limits = []
    for line in mounts:
        fields, _, fs = line.partition(" - ")
        fields_, fs_ = fields.split(), fs.split(" ")   # the mount source may be empty
        if len(fields_) < 5 or len(fs_) < 3:
            continue
        fstype, options = fs_[0], fs_[2].split(",")
        if fstype not in paths or (fstype == "cgroup" and controller not in options):
            continue
        root, mount_point = _unescape(fields_[3]), _unescape(fields_[4])
        if not _inside(root):   # e.g. a host's tree bind-mounted into another namespace
            continue
        if not mount_point.startswith("/"):   # the kernel writes none: a garbled line
            continue
        rel = os.path.relpath(paths[fstype], root)
        if rel.startswith(".."):   # the process's cgroup is outside this mount's view
            continue
        read = read_v2 if fstype == "cgroup2" else read_v1
        directory = os.path.normpath(os.path.join(mount_point, rel))
        while True:
            limit = read(directory)
            if limit is not None:
                limits.append(limit)
            parent = os.path.dirname(directory)
            if directory == os.path.normpath(mount_point) or parent == directory:
                break   # the mount point, or "/" should the two ever disagree
            directory = parent
    return min(limits) if limits else None


def _inside(path: str) -> bool:
    """An absolute cgroup path with no ".." step (the kernel writes those for a cgroup outside
    the reader's cgroup namespace)."""
    return path.startswith("/") and ".." not in path.split("/")


def _unescape(field: str) -> str:
    """A mountinfo path field, whose space, tab, newline and backslash the kernel writes as
    octal escapes (``\\040``, ``\\011``, ``\\012``, ``\\134``; fs/proc_namespace.c)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_cpu(directory: str) -> float | None:
    """``cpu.max``: "<quota> <period>" in µs, or "max <period>" for no limit."""
    text = _read(os.path.join(directory, "cpu.max"))
    if not text:
        return None
    quota, _, period = text.partition(" ")
    try:
        q, p = int(quota), int(period or 100_000)
    except ValueError:   # "max"
        return None
    return _positive(q, p)


def _v1_cpu(directory: str) -> float | None:
    """``cpu.cfs_quota_us`` (-1: no limit) over ``cpu.cfs_period_us``."""
    quota, period = (_read(os.path.join(directory, f"cpu.cfs_{n}_us")) for n in ("quota", "period"))
    try:
        q, p = int(quota or -1), int(period or 100_000)
    except ValueError:
        return None
    return _positive(q, p)


def _positive(quota: int, period: int) -> float | None:
    """quota / period CPUs; None unless both and the ratio are above zero (a ratio that
    underflows to 0.0 would otherwise pass for a limit of no CPU at all)."""
    if quota <= 0 or period <= 0:
        return None
    try:
        cpus = quota / period
    except OverflowError:   # no kernel writes such numbers
        return None
    return cpus if cpus > 0 else None


# cgroup v1 writes "no limit" as the largest multiple of the page size below 2**63
# (9223372036854771712); a limit this large is none.
_NO_MEMORY_LIMIT = 1 << 62


def _v2_memory(directory: str) -> float | None:
    """``memory.max``: bytes, or "max" for no limit."""
    return _bytes(_read(os.path.join(directory, "memory.max")))


def _v1_memory(directory: str) -> float | None:
    """``memory.limit_in_bytes``: bytes; -1 or a number near 2**63 for no limit."""
    return _bytes(_read(os.path.join(directory, "memory.limit_in_bytes")))


def _bytes(text: str | None) -> float | None:
    try:
        value = int(text or "")
    except ValueError:   # "max", empty, garbage
        return None
    return float(value) if 0 < value < _NO_MEMORY_LIMIT else None
