"""deploy/: the systemd unit passes systemd-analyze verify, the DaemonSet is a valid manifest with what eBPF needs,
and the image recipe's instructions and files are right; every apptrace command line in them parses."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from apptrace.cli import build_parser
from tests.conftest import ROOT, require_tool

DEPLOY = ROOT / "deploy"
APPTRACE_BIN = str(Path(sys.executable).parent / "apptrace")


def _parses(args: list[str]) -> None:
    """An apptrace command line the CLI accepts (argparse exits on anything it does not know)."""
    ns = build_parser().parse_args(args)
    assert ns.command == args[0]


def test_systemd_unit_verifies(tmp_path):
    text = (DEPLOY / "apptrace.service").read_text()
    # verify wants the program to exist: point it at this checkout's instead of /opt/apptrace's
    unit = tmp_path / "apptrace.service"
    unit.write_text(text.replace("/opt/apptrace/.venv/bin/apptrace", APPTRACE_BIN))
    proc = subprocess.run([require_tool("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    exec_start = " ".join(line.rstrip("\\").strip() for line in text.split("ExecStart=", 1)[1].splitlines()
                          if line.strip()).split("KillSignal")[0]
    argv = shlex.split(exec_start.split("#")[0])
    assert argv[0] == "/opt/apptrace/.venv/bin/apptrace"
    _parses(argv[1:])


def test_systemd_verify_catches_a_broken_unit(tmp_path):
    unit = tmp_path / "apptrace.service"
    unit.write_text((DEPLOY / "apptrace.service").read_text()
                    .replace("/opt/apptrace/.venv/bin/apptrace", APPTRACE_BIN).replace("Type=simple", "Type=simpel"))
    proc = subprocess.run([require_tool("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True)
    assert "simpel" in proc.stderr  # the check above would have seen a mistake


def test_daemonset_manifest():
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "daemonset.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Namespace", "DaemonSet"}
    ds = kinds["DaemonSet"]
    assert ds["apiVersion"] == "apps/v1" and ds["metadata"]["namespace"] == kinds["Namespace"]["metadata"]["name"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    (c,) = pod["containers"]
    assert c["securityContext"]["privileged"] is True
    _parses(c["args"])
    metrics_port = c["args"][c["args"].index("--metrics") + 1].rsplit(":", 1)[1]
    ann = ds["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == metrics_port
    assert {p["containerPort"] for p in c["ports"]} == {int(metrics_port)}
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert set(mounts) == set(volumes)
    for needed in ("/sys/kernel/tracing", "/lib/modules", "/var/lib/apptrace"):
        assert needed in volumes.values() and needed in mounts.values(), needed
    db = c["args"][c["args"].index("--db") + 1]
    assert db.startswith(mounts["data"] + "/")  # the DB lives on the host path


def test_image_recipe():
    lines, current = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        if raw.startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            lines.append(current.strip())
            current = ""
    known = {"FROM", "RUN", "WORKDIR", "COPY", "ENV", "EXPOSE", "VOLUME", "STOPSIGNAL", "ENTRYPOINT", "CMD", "ARG",
             "LABEL", "USER"}
    instructions = [line.split(None, 1) for line in lines]
    assert all(word in known for word, _ in instructions), instructions
    assert instructions[0][0] == "FROM"
    for word, rest in instructions:
        if word == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), src  # the build context is the checkout
    args = {word: json.loads(rest) for word, rest in instructions if word in ("ENTRYPOINT", "CMD")}
    assert args["ENTRYPOINT"] == ["apptrace"]
    _parses(args["CMD"])
