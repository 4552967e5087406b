"""Host half of the toy service: Echo, and the count the guest reports, typed per VM."""

from __future__ import annotations

from collections.abc import Mapping

from support.toy_service import ToyOp

from vmis.protocol import decode_json
from vmis.services.catalog import by_key
from vmis.services.host_half import HostService, VmContext, VmPart
from vmis.services.link import NotificationHandler

SPEC = by_key("toy")


class VmToy(VmPart):
    """One VM's toy state: what its guest last said it answered."""

    def __init__(self, vm: VmContext) -> None:
        super().__init__(vm)
        self.answered = 0
        self.runs = 0

    def handlers(self) -> Mapping[int, NotificationHandler]:
        return {ToyOp.COUNT: self._on_count}

    async def on_running(self) -> None:
        self.runs += 1

    def _on_count(self, payload: bytes) -> None:
        self.answered = int(decode_json(payload)["answered"])


class ToyHost(HostService[VmToy]):
    spec = SPEC
    needs = frozenset({ToyOp.ECHO})

    def new_part(self, vm: VmContext) -> VmToy:
        return VmToy(vm)

    async def echo(self, vm_name: str, text: str) -> str:
        vm = self.host.session(vm_name)
        return bytes(await vm.request(SPEC, ToyOp.ECHO, text.encode())).decode()


SERVICE = ToyHost
