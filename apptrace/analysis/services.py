"""``--service NAME=RULE``: naming services by hand, where the automatic name (procfs.service_name) is not
the one people use."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol


class Described(Protocol):
    pid: int
    comm: str
    cmdline: str


#: (service name, does this process belong to it?)
ServiceRule = tuple[str, Callable[[Described], bool]]


def parse_service_rules(rules: list[str]) -> list[ServiceRule]:
    """``NAME=RULE``: RULE is ``pid:N``, ``comm:NAME``, or a regex searched in the command line.

    ValueError, naming the option, for a rule that is not one.
    """
    out: list[ServiceRule] = []
    for rule in rules:
        name, sep, pattern = rule.partition("=")
        if not sep or not name or not pattern:
            raise ValueError(f"--service {rule!r}: expected NAME=RULE (RULE: pid:N, comm:NAME or a regex)")
        if pattern.startswith("pid:"):
            if not pattern[4:].isdigit():
                raise ValueError(f"--service {rule!r}: pid:N takes a process id")
            pid = int(pattern[4:])
            out.append((name, lambda p, pid=pid: p.pid == pid))
        elif pattern.startswith("comm:"):
            comm = pattern[5:]
            out.append((name, lambda p, comm=comm: p.comm == comm))
        else:
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"--service {rule!r}: bad regex: {exc}") from None
            out.append((name, lambda p, rx=rx: bool(rx.search(p.cmdline or p.comm))))
    return out
