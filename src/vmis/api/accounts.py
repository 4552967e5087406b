"""API of the accounts: who am I, the tokens, the audit log (docs/api.md §2).

``GET /v1/account``           the caller's own account
``GET /v1/tokens``            vmis token list
``POST /v1/tokens``           vmis token add: the answer holds the secret, once
``DELETE /v1/tokens/{name}``  vmis token remove: its next request is refused
``GET /v1/audit``             Get-VMAuditLog
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from vmis.api.access import account_of
from vmis.host.accounts import Accounts, Role

__all__ = ["accounts_of", "router"]

router = APIRouter(prefix="/v1")


def accounts_of(request: Request) -> Accounts:
    """The tokens and audit log of the app's store."""
    accounts: Accounts = request.app.state.accounts
    return accounts


class TokenIn(BaseModel):
    #: checked by Accounts.add_token, which says what is wrong with it
    name: str = Field(max_length=64)
    role: Literal["Reader", "Operator", "Administrator"]


@router.get("/account")
async def whoami(request: Request) -> dict[str, Any]:
    return account_of(request).to_json()


@router.get("/tokens")
async def list_tokens(request: Request) -> list[dict[str, Any]]:
    return [token.to_json() for token in accounts_of(request).tokens()]


@router.post("/tokens", status_code=201)
async def add_token(request: Request, body: TokenIn) -> dict[str, Any]:
    token, secret = accounts_of(request).add_token(body.name, Role.parse(body.role),
                                                   account_of(request).name)
    return {**token.to_json(), "Token": secret}


@router.delete("/tokens/{name}")
async def remove_token(request: Request, name: str) -> dict[str, Any]:
    return accounts_of(request).remove_token(name).to_json()


@router.get("/audit")
async def audit(
    request: Request,
    vm: Annotated[list[str] | None, Query()] = None,
    account: Annotated[list[str] | None, Query()] = None,
    since: datetime | None = None,
    newest: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> list[dict[str, Any]]:
    """The newest entries first; *since* without a time zone is UTC."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return accounts_of(request).audit(vms=vm or (), accounts=account or (), since=since,
                                      newest=newest)
