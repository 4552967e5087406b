"""What a VM may be called: Hyper-V's rules, plus what vmis's command line needs.

Every path that registers or creates a VM checks the name here first (the
manager's ``add_vm``, ``vmis vm create``, ``vmis lab up``), so a VM that
exists can always be named again: on the command line, in a URL, as a
directory. VMs registered before these rules keep their names and can be
removed by id (``vmis vm remove -Id ID``).
"""

from __future__ import annotations

from vmis.errors import ConfigError

__all__ = ["MAX_VM_NAME", "check_vm_name"]

#: Hyper-V's longest VM name, in characters
MAX_VM_NAME = 100
#: characters Hyper-V refuses in a VM name (those of a Windows file name)
HYPERV_FORBIDDEN = '\\/:*?"<>|'
#: vmis's own: wildcards (``[ab]``) and the list separator of its command line
VMIS_FORBIDDEN = "[],"


def _is_control(char: str) -> bool:
    # Unicode's Cc category: C0, DEL and C1
    return ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F


def _shown(char: str) -> str:
    return repr(char) if _is_control(char) else f"'{char}'"


def check_vm_name(name: str) -> str:
    """Return *name* if a VM may be called so.

    Hyper-V's rules: 1 to 100 characters, not only spaces, no space at either
    end, none of ``\\ / : * ? " < > |`` nor a control character. vmis's own:
    none of ``[ ] ,`` (wildcards and list separators on its command line), no
    ``-`` first (it would read as a parameter), not only dots (the name is a
    directory for ``vm create`` and ``lab up``), and UTF-8 text (an argument
    that was not is carried as lone surrogates).

    :raise ConfigError: Saying which rule the name breaks.
    """
    def bad(why: str) -> ConfigError:
        return ConfigError(f"invalid VM name {name!r}: {why}")

    if not isinstance(name, str) or not name.strip():
        raise bad("a VM name cannot be empty or only spaces")
    if len(name) > MAX_VM_NAME:
        raise bad(f"it is {len(name)} characters long; at most {MAX_VM_NAME}")
    for char in name:
        if char in HYPERV_FORBIDDEN or _is_control(char):
            raise bad(f"{_shown(char)} is not allowed in a VM name (none of "
                      f"{' '.join(HYPERV_FORBIDDEN)} nor control characters)")
        if char in VMIS_FORBIDDEN:
            raise bad(f"'{char}' is not allowed in a VM name (vmis reads [ ] as wildcards "
                      "and , as a list separator)")
        if 0xD800 <= ord(char) <= 0xDFFF:
            raise bad("it is not valid UTF-8 text")
    if name != name.strip():
        raise bad("a VM name cannot begin or end with a space")
    if name.startswith("-"):
        raise bad("a VM name cannot begin with '-' (it would read as a parameter)")
    if not name.strip("."):
        raise bad("a VM name cannot be only dots")
    return name
