"""An idle cpu cgroup for the analysis process: a SCHED_IDLE that holds across sessions.

SCHED_IDLE ranks a thread only against the other threads of its scheduling group. With
autogroups (on by default in Debian's kernels) every session is such a group, so an analysis
process started from a terminal competed as an equal with a server started in another session
(systemd starts each service in its own), whatever its policy. A cpu cgroup marked idle
(``cpu.idle``, Linux 5.15+) ranks the whole group below every sibling group instead.

The group is made beside nothing the user owns: a child of this process's own cpu cgroup,
named after the analysis pid, removed when that process is gone.
"""

from __future__ import annotations

import errno
import os
import time

PREFIX = "apptrace-analysis-"


def _own_cgroup(controller: str) -> str | None:
    """This process's path in the hierarchy holding ``controller`` ("" for the v2 one)."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    return None


def cpu_cgroup_dir() -> str | None:
    """The directory of this process's cpu cgroup, if a child group with cpu.idle can be made there."""
    v2_mount = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, root, mount, options = fields[sep + 1], fields[3], fields[4], fields[sep + 3].split(",")
            if fstype == "cgroup" and "cpu" in options and root == "/":
                path = _own_cgroup("cpu")
                if path is None:
                    return None
                if os.path.basename(path).startswith(PREFIX):  # already in ours: its parent
                    path = os.path.dirname(path)
                return mount + path.rstrip("/")
            if fstype == "cgroup2" and root == "/":
                v2_mount = mount
    if v2_mount is None:
        return None
    # cgroup v2 allows no processes in an inner group except the root: only from there.
    if _own_cgroup("") != "/":
        return None
    try:
        with open(os.path.join(v2_mount, "cgroup.subtree_control")) as f:
            if "cpu" not in f.read().split():
                return None
    except OSError:
        return None
    return v2_mount


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def join(pid: int) -> bool:
    """Move ``pid`` (all its threads) into its own idle group; False where the kernel offers none."""
    parent = cpu_cgroup_dir()
    if parent is None:
        return False
    group = os.path.join(parent, f"{PREFIX}{pid}")
    try:
        os.makedirs(group, exist_ok=True)
        if not os.path.exists(os.path.join(group, "cpu.idle")):
            os.rmdir(group)
            return False
        _write(os.path.join(group, "cpu.idle"), "1")
        _write(os.path.join(group, "cgroup.procs"), str(pid))
    except OSError:
        remove(pid)
        return False
    return True


def leave(pid: int) -> None:
    """Back to the group ``pid`` came from (which is this process's), at normal weight."""
    parent = cpu_cgroup_dir()
    if parent is None or not os.path.isdir(os.path.join(parent, f"{PREFIX}{pid}")):
        return
    try:
        _write(os.path.join(parent, "cgroup.procs"), str(pid))
    except OSError:
        pass  # it has exited


def remove(pid: int, wait_s: float = 1.0) -> None:
    """Remove ``pid``'s group once ``pid`` has exited.

    The kernel lets go of a reaped task's cgroup a moment after wait() returns; until then
    rmdir says EBUSY, so it is retried for up to ``wait_s``.
    """
    parent = cpu_cgroup_dir()
    if parent is None:
        return
    group = os.path.join(parent, f"{PREFIX}{pid}")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.rmdir(group)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return
        time.sleep(0.01)


def sweep() -> None:
    """Remove the empty groups of analysis processes that were killed before they could clean up."""
    parent = cpu_cgroup_dir()
    if parent is None:
        return
    try:
        names = [n for n in os.listdir(parent) if n.startswith(PREFIX)]
    except OSError:
        return
    for name in names:
        try:
            os.rmdir(os.path.join(parent, name))
        except OSError:
            pass  # still in use
