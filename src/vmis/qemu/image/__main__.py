"""``python -m vmis.qemu.image``: build, show and boot the guest image from a shell.

``build``  builds what the cache lacks (base image, then the agent layer if
           :mod:`vmis.packaging.install` is importable) and prints the paths;
           ``.ci/run`` calls it before the tests.
``show``   prints the cached images as JSON.
``boot``   boots an image once and prints the time to multi-user.target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from vmis.errors import VmisError
from vmis.qemu.image._cache import cache_dir
from vmis.qemu.image.guest_image import GuestImage
from vmis.qemu.image.layers import default_agent_installer, ensure_agent_image, ensure_base_image


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


def _build(args: argparse.Namespace) -> int:
    begin = time.monotonic()
    base = ensure_base_image(cache=args.cache_dir, rebuild=args.rebuild)
    result = {"base": _describe(base)}
    if not args.base_only:
        try:
            installer = default_agent_installer()
        except VmisError as err:
            print(f"agent layer skipped: {err}", file=sys.stderr)
        else:
            agent = ensure_agent_image(installer, base=base, cache=args.cache_dir)
            result["agent"] = _describe(agent)
    print(json.dumps(result, indent=2))
    print(f"image ready in {time.monotonic() - begin:.1f} s", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    images = (args.cache_dir or cache_dir()) / "images"
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


def _boot(args: argparse.Namespace) -> int:
    from vmis.qemu.machine import QemuMachine

    image = ensure_base_image(cache=args.cache_dir)
    if args.agent:
        image = ensure_agent_image(base=image, cache=args.cache_dir)

    async def boot() -> None:
        with tempfile.TemporaryDirectory(prefix="vmis-boot-") as work:
            machine = QemuMachine("vmis-boot", Path(work), image)
            machine.start()
            try:
                report = await machine.wait_for_boot(timeout=args.timeout)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m vmis.qemu.image", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="default: $VMIS_CACHE_DIR or ~/.cache/vmis"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the images the cache lacks")
    build.add_argument("--base-only", action="store_true", help="skip the agent layer")
    build.add_argument(
        "--rebuild", action="store_true", help="rebuild the base image even if cached"
    )
    build.set_defaults(func=_build)
    show = commands.add_parser("show", help="list the cached images")
    show.set_defaults(func=_show)
    boot = commands.add_parser("boot", help="boot an image once and time it")
    boot.add_argument("--agent", action="store_true", help="boot the agent layer, not the base")
    boot.add_argument("--timeout", type=float, default=180.0)
    boot.set_defaults(func=_boot)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        status: int = args.func(args)
    except VmisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
