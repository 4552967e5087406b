"""A test-only guest service and its installer, for the real-VM tests of vmis.qemu.

The probe is a tiny line-JSON command server on the agent's virtio-serial
port (``/dev/virtio-ports/org.vmis.agent.0``), run by systemd like the real
agent. It lets the tests look inside the guest (shell commands, the guest's
clock) without depending on the agent, which other code provides. It runs
a shell for whoever holds the host end of the port, so it exists only in test
images: :func:`install_probe` is passed to
:func:`vmis.qemu.image.layers.ensure_agent_image` by the tests, never by default.

Requests and replies are one JSON object per line::

    {"id": 1, "op": "echo", "data": "x"}     -> {"id": 1, "data": "x"}
    {"id": 2, "op": "sh", "cmd": "uname -r"} -> {"id": 2, "rc": 0, "out": "...", "err": ""}
    {"id": 3, "op": "time"}                  -> {"id": 3, "time": 1790000000.0}
    {"id": 4, "op": "freeze", "path": "/"}   -> {"id": 4, "done": true}   (FIFREEZE; "thaw": FITHAW)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

PROBE_SCRIPT = r'''#!/usr/bin/python3
"""vmis test probe (tests only): line-JSON commands on the agent's virtio-serial port."""
import fcntl
import json
import os
import select
import subprocess
import time

PORT = "/dev/virtio-ports/org.vmis.agent.0"
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


def handle(line):
    request = json.loads(line)
    reply = {"id": request.get("id")}
    op = request.get("op")
    if op == "echo":
        reply["data"] = request["data"]
    elif op == "time":
        reply["time"] = time.time()
    elif op in ("freeze", "thaw"):
        # In this already running process: nothing is exec'd or read from
        # the frozen file system, so the thaw request can always be served.
        fd = os.open(request["path"], os.O_RDONLY)
        try:
            fcntl.ioctl(fd, FIFREEZE if op == "freeze" else FITHAW, 0)
        finally:
            os.close(fd)
        reply["done"] = True
    elif op == "sh":
        proc = subprocess.run(["/bin/sh", "-c", request["cmd"]], capture_output=True,
                              text=True, timeout=60)
        reply.update(rc=proc.returncode, out=proc.stdout, err=proc.stderr)
    else:
        reply["error"] = "unknown op %r" % op
    return reply


def main():
    while not os.path.exists(PORT):
        time.sleep(0.2)
    fd = os.open(PORT, os.O_RDWR)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    pending = b""
    while True:
        events = poller.poll(1000)
        # While no host is connected the port reports POLLHUP and reads
        # return EOF at once: wait instead of spinning.
        if not events or not events[0][1] & select.POLLIN:
            time.sleep(0.1)
            continue
        data = os.read(fd, 65536)
        if not data:
            time.sleep(0.1)
            continue
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            try:
                reply = handle(line)
            except Exception as err:
                reply = {"error": repr(err)}
            try:
                os.write(fd, json.dumps(reply).encode() + b"\n")
            except OSError:
                pass  # the host went away; it will resend


main()
'''

PROBE_UNIT = """[Unit]
Description=vmis test probe on org.vmis.agent.0 (test images only)

[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/vmis-probe/probe.py
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""


def install_probe(root: Path) -> None:
    """Install the probe service into a root tree (an :data:`~vmis.qemu.image.layers.AgentInstaller`)."""
    script = root / "usr/local/lib/vmis-probe/probe.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(PROBE_SCRIPT)
    script.chmod(0o755)
    unit = root / "etc/systemd/system/vmis-probe.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(PROBE_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "vmis-probe.service"
    if link.is_symlink() or link.exists():
        link.unlink()
    # An absolute link, resolved inside the guest; never followed on the host.
    os.symlink("/etc/systemd/system/vmis-probe.service", link)


class ProbeClient:
    """The host end of the probe: requests over the machine's channel socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, path: Path) -> ProbeClient:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def request(self, op: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """Send one request and return its reply (skipping replies to older requests)."""
        ident = next(self._ids)
        self._writer.write(json.dumps({"id": ident, "op": op, **fields}).encode() + b"\n")
        await self._writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                line = await self._reader.readline()
                if not line:
                    raise ConnectionError("the channel closed")
                reply: dict[str, Any] = json.loads(line)
                if reply.get("id") == ident:
                    return reply

    async def sh(self, cmd: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run a shell command in the guest; return its exit status and standard output."""
        reply = await self.request("sh", timeout=timeout, cmd=cmd)
        return int(reply["rc"]), str(reply["out"])

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
