"""``python -m vmis.qemu.image``: build, show and boot the guest image from a shell.

``build``  builds what the cache lacks (base image, then the agent layer if
           :mod:`vmis.packaging.install` is importable) and prints the paths;
           ``.ci/run`` calls it before the tests.
``show``   prints the cached images as JSON.
``boot``   boots an image once and prints the time to multi-user.target.

Options before the command apply to it (``--cache-dir DIR -v build``); the
parameters are vmis's (``-CacheDir``, ``-Verbose``, ``-BaseOnly``, ...), and
the GNU spellings (``--cache-dir``, ``--base-only``) are the same parameters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vmis.errors import UsageError, VmisError
from vmis.psargs import (
    HELP_WORDS,
    Command,
    Param,
    find_verb,
    leading_options,
    run_command,
    run_main,
)
from vmis.qemu.image._cache import cache_dir
from vmis.qemu.image.guest_image import GuestImage
from vmis.qemu.image.layers import default_agent_installer, ensure_agent_image, ensure_base_image

PROG = "python -m vmis.qemu.image"


def _describe(image: GuestImage) -> dict[str, object]:
    manifest = image.manifest
    return {
        "kind": image.kind,
        "key": image.key,
        "directory": str(image.directory),
        "kernel": str(image.kernel),
        "initrd": str(image.initrd),
        "firmware": str(image.firmware) if image.firmware else None,
        "rootfs": str(image.rootfs),
        "kernel_release": image.kernel_release,
        "built_at": manifest.get("built_at"),
        "build_seconds": manifest.get("build_seconds"),
        "boot_seconds": manifest.get("boot_seconds"),
    }


def _cache(args: dict[str, Any]) -> Path | None:
    return Path(args["CacheDir"]) if args["CacheDir"] else None


def _build(args: dict[str, Any]) -> int:
    begin = time.monotonic()
    base = ensure_base_image(cache=_cache(args), rebuild=args["Rebuild"])
    result = {"base": _describe(base)}
    if not args["BaseOnly"]:
        try:
            installer = default_agent_installer()
        except VmisError as err:
            print(f"agent layer skipped: {err}", file=sys.stderr)
        else:
            agent = ensure_agent_image(installer, base=base, cache=_cache(args))
            result["agent"] = _describe(agent)
    print(json.dumps(result, indent=2))
    print(f"image ready in {time.monotonic() - begin:.1f} s", file=sys.stderr)
    return 0


def _show(args: dict[str, Any]) -> int:
    images = (_cache(args) or cache_dir()) / "images"
    found = []
    for directory in sorted(images.glob("*-*")):
        if directory.name.startswith("."):
            continue
        try:
            found.append(_describe(GuestImage.load(directory)))
        except VmisError as err:
            found.append({"directory": str(directory), "error": str(err)})
    print(json.dumps(found, indent=2))
    return 0


def _boot(args: dict[str, Any]) -> int:
    from vmis.qemu.machine import QemuMachine

    image = ensure_base_image(cache=_cache(args))
    if args["Agent"]:
        image = ensure_agent_image(base=image, cache=_cache(args))

    async def boot() -> None:
        with tempfile.TemporaryDirectory(prefix="vmis-boot-") as work:
            machine = QemuMachine("vmis-boot", Path(work), image)
            machine.start()
            try:
                report = await machine.wait_for_boot(timeout=args["Timeout"])
                print(
                    f"multi-user.target after {report.seconds:.2f} s "
                    f"(guest uptime {report.guest_uptime:.2f} s); "
                    f"failed units: {', '.join(report.failed_units) or 'none'}"
                )
                await machine.shutdown(timeout=30)
            finally:
                machine.cleanup()

    asyncio.run(boot())
    return 0


#: options of every command, also taken before it
OPTIONS = (
    Param("CacheDir", help="default: $VMIS_CACHE_DIR or ~/.cache/vmis"),
    Param("Verbose", "switch", aliases=("v",), help="log progress to stderr"),
)

COMMANDS: tuple[Command, ...] = (
    Command("build", "build the images the cache lacks", (
        *OPTIONS,
        Param("BaseOnly", "switch", help="skip the agent layer"),
        Param("Rebuild", "switch", help="rebuild the base image even if cached"),
    ), _build),
    Command("show", "list the cached images", OPTIONS, _show),
    Command("boot", "boot an image once and time it", (
        *OPTIONS,
        Param("Agent", "switch", help="boot the agent layer, not the base"),
        Param("Timeout", "float", default=180.0, help="seconds (default 180)"),
    ), _boot),
)


def _help() -> str:
    lines = [f"usage: {PROG} [-CacheDir DIR] [-Verbose] build|show|boot [parameters]", "",
             "Build, show and boot the guest image from a shell.", ""]
    lines += [f"  {c.name:6} {c.summary}" for c in COMMANDS]
    lines += ["", f"Run '{PROG} COMMAND -?' for a command's parameters."]
    return "\n".join(lines)


def _run(words: list[str]) -> int:
    before = leading_options(PROG, OPTIONS, words)
    if before == len(words) or words[before] in HELP_WORDS:
        print(_help())
        return 0 if words[before:] else 2
    cmd, rest = find_verb(COMMANDS, words[before:])
    return run_command(cmd, words[:before] + rest, lambda args: _start(cmd, args))


def _start(cmd: Command, args: dict[str, Any]) -> int:
    logging.basicConfig(level=logging.INFO if args["Verbose"] else logging.WARNING)
    try:
        status: int = cmd.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    return run_main(lambda: _run(words),
                    lambda exc: PROG if isinstance(exc, UsageError) else "error")


if __name__ == "__main__":
    sys.exit(main())
