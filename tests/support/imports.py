"""What a command line imports to answer: a guard of its start (bench/cli_start.py: the times)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

#: what the host CLI's common path must not load: the HTTP client and server stacks,
#: the manager and its database, QEMU, the lab, the advisor's data, rich, asyncio;
#: dataclasses (it imports inspect, ast and dis: a third of the command line's start);
#: hashlib (OpenSSL's: 3 ms, for a remote manager's certificate fingerprint only);
#: pathlib, urllib.parse and a remote manager's module (URLs, TLS): 7 ms, for the local socket
HOST_HEAVY = ("httpx", "rich", "fastapi", "starlette", "pydantic", "uvicorn", "websockets",
              "sqlalchemy", "alembic", "qemu", "vmis.host", "vmis.qemu", "vmis.lab",
              "vmis.advisor", "asyncio", "ssl", "dataclasses", "inspect", "hashlib",
              "_hashlib", "pathlib", "vmis.api.remote", "urllib.parse", "ipaddress")
#: what the guest tools' common path must not load: the agent, its transports, asyncio;
#: hashlib and secrets (hmac, random: 8 ms, for a host's nonces and resume tokens only);
#: the whole configuration and the protocol's framing and session (their dataclasses
#: import inspect: 25-30 ms of a 80 ms Get-Service); pathlib and urllib.parse (3-4 ms)
GUEST_HEAVY = ("asyncio", "ssl", "logging", "vmis.guest.agent", "vmis.guest.control",
               "vmis.guest.manager", "vmis.transport", "vmis.services.fcopy.guest",
               "hashlib", "_hashlib", "secrets", "hmac", "vmis.guest.config",
               "vmis.protocol.session", "vmis.protocol.frames", "dataclasses", "inspect",
               "pathlib", "urllib.parse")


def heavy_modules_loaded(program: str, words: Sequence[str], heavy: Sequence[str],
                         env: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """Run ``program`` (``host`` or ``guest``) with *words* in a new interpreter; return
    its stdout and the modules of *heavy* (or inside them) it had loaded at the end."""
    code = ("import json, sys\n"
            f"from vmis.cli.{program} import main\n"
            "status = main(sys.argv[1:])\n"
            "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
            "sys.exit(status)\n")
    done = subprocess.run([sys.executable, "-c", code, *words], capture_output=True, text=True,
                          timeout=60, check=False, env=dict(env or os.environ))
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stderr.splitlines()[-1])
    return done.stdout, [m for m in loaded
                         if m in heavy or m.startswith(tuple(f"{h}." for h in heavy))]
