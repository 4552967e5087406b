"""Guest half of the toy service."""

from __future__ import annotations

from support.toy_service import ToyOp

from vmis.protocol import RequestReceived, encode_json
from vmis.services.catalog import by_key
from vmis.services.guest_half import GuestContext, GuestService


class ToyService(GuestService):
    """vmictoy: answers ECHO and counts what it answered."""

    spec = by_key("toy")

    def __init__(self, ctx: GuestContext) -> None:
        super().__init__(ctx)
        self.handlers[ToyOp.ECHO] = self._echo
        self.answered = 0

    async def _echo(self, request: RequestReceived) -> bytes:
        self.answered += 1
        self.ctx.notify(self.spec.id, ToyOp.COUNT, encode_json({"answered": self.answered}))
        return bytes(request.payload)


SERVICE = ToyService
