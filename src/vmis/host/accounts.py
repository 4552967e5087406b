"""Who may use the host manager's API, and what they changed: API tokens and the audit log.

Both live in the store (schema revision 0003), so the host managers of a
fleet that share a PostgreSQL store share their tokens and one audit log,
and removing a token ends its access on every manager at once.

A token is ``vmis_`` and 32 random bytes (URL-safe Base64). The store keeps
only its SHA-256: a token is checked on every request, so a slow password
hash would cost every call, and a 256-bit random secret needs none (nobody
can guess it, whatever the hash). The secret is shown once, when the token
is made. Roles rank Reader < Operator < Administrator (docs/api.md §2).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from vmis.errors import ConfigError, NotFoundError, StateError
from vmis.services.host_half import metadata

__all__ = ["TOKEN_PREFIX", "Accounts", "AuditEntry", "Role", "TokenInfo", "hash_secret"]

#: what every token starts with, so secret scanners and people recognise one
TOKEN_PREFIX = "vmis_"
#: a token's name: it is who the audit log names, so no ':' (``local:root`` is the socket's)
_TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class Role(enum.IntEnum):
    """What an account may do; a higher role may do all a lower one may."""

    READER = 1
    OPERATOR = 2
    ADMINISTRATOR = 3

    @property
    def label(self) -> str:
        """``Reader``, ``Operator``, ``Administrator``: as the command line spells it."""
        return self.name.capitalize()

    @classmethod
    def parse(cls, text: str) -> Role:
        """A role from its name, case-insensitively.

        :raise ConfigError: For an unknown name.
        """
        for role in cls:
            if role.label.lower() == text.strip().lower():
                return role
        raise ConfigError(f"no role named {text!r}: Reader, Operator or Administrator")


api_tokens = sa.Table(
    "api_tokens",
    metadata,
    #: lower-case name: token names are case-insensitive, as VM names are
    sa.Column("name_key", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    #: hex SHA-256 of the secret; the secret itself is never stored
    sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.String(255), nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False, index=True),
    #: ``local:<user>`` for the Unix socket's caller, else the token's name
    sa.Column("account", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    #: how the caller reached the API: ``socket`` or ``token``
    sa.Column("via", sa.String(16), nullable=False),
    #: the client's address (``unix`` on the socket)
    sa.Column("client", sa.String(255), nullable=False),
    sa.Column("method", sa.String(16), nullable=False),
    #: the route's path template (``/v1/vms/{name}/copy``); ``path`` is the one asked for
    sa.Column("route", sa.String(255), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    #: the VMs the call named, for reading (audit_vms holds them for filters)
    sa.Column("vms", sa.Text, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    #: ``Completed``, ``Failed`` or ``Refused``
    sa.Column("result", sa.String(16), nullable=False),
    #: the error, or what the call ran (Invoke-Command's command line)
    sa.Column("detail", sa.Text),
    sqlite_autoincrement=True,
)

audit_vms = sa.Table(
    "audit_vms",
    metadata,
    sa.Column("audit_id", sa.Integer, sa.ForeignKey("audit_log.id", ondelete="CASCADE"),
              primary_key=True),
    #: lower-case: VM names are case-insensitive
    sa.Column("vm_key", sa.String(255), primary_key=True, index=True),
)


def hash_secret(secret: str) -> str:
    """The hex SHA-256 the store keeps of a token."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def _utc(value: datetime) -> datetime:
    # SQLite hands back what it stored (UTC, naive); PostgreSQL an aware time
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _like(pattern: str) -> str:
    """A Hyper-V wildcard (``*``, ``?``) as a LIKE pattern, its own ``%`` and ``_`` escaped."""
    escaped = pattern.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as ``vmis token list`` shows it (never its secret)."""

    name: str
    role: Role
    created: datetime
    created_by: str

    def to_json(self) -> dict[str, Any]:
        return {"Name": self.name, "Role": self.role.label,
                "Created": self.created.isoformat(), "CreatedBy": self.created_by}


@dataclass(slots=True)
class AuditEntry:
    """One state-changing call, as the audit log keeps it."""

    account: str
    role: Role
    via: str
    client: str
    method: str
    route: str
    path: str
    vms: list[str] = field(default_factory=list)
    status: int = 0
    result: str = ""
    detail: str | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))


class Accounts:
    """The tokens and the audit log in a store's database.

    :param engine: the store's engine (``Store.engine``).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # Section: tokens

    def add_token(self, name: str, role: Role, created_by: str) -> tuple[TokenInfo, str]:
        """Make a token; return it and its secret, which nothing can show again.

        :raise ConfigError: For a name that is not one.
        :raise StateError: When a token of that name exists.
        """
        if not _TOKEN_NAME.fullmatch(name):
            raise ConfigError(f"{name!r} is not a token name: 1 to 64 letters, digits and "
                              "'.', '_', '@', '-', starting with a letter or digit")
        secret = TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)) \
            .decode().rstrip("=")
        info = TokenInfo(name, role, datetime.now(UTC), created_by)
        try:
            with self.engine.begin() as conn:
                conn.execute(api_tokens.insert().values(
                    name_key=name.lower(), name=name, role=role.label,
                    secret_sha256=hash_secret(secret), created=info.created,
                    created_by=created_by))
        except IntegrityError:
            raise StateError(f"a token named {name!r} exists; remove it first "
                             f"(vmis token remove {name})") from None
        return info, secret

    def remove_token(self, name: str) -> TokenInfo:
        """Remove a token: the next request that presents it is refused.

        :raise NotFoundError: When there is no such token.
        """
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(api_tokens)
                               .where(api_tokens.c.name_key == name.lower())).mappings().first()
            if row is None:
                raise NotFoundError(f"no token named {name!r} (see 'vmis token list')")
            conn.execute(api_tokens.delete().where(api_tokens.c.name_key == name.lower()))
        return self._info(row)

    def tokens(self) -> list[TokenInfo]:
        """Every token, by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(api_tokens).order_by(api_tokens.c.name_key))
            return [self._info(row) for row in rows.mappings()]

    def find(self, secret: str) -> TokenInfo | None:
        """The token whose secret this is, if any.

        Looked up in the store on every call, not cached, so a token removed
        on any manager of a shared store stops working everywhere at once.
        """
        return self.find_digest(hash_secret(secret))

    def find_digest(self, digest: str) -> TokenInfo | None:
        """The token whose secret has this SHA-256 (hex), if any: what the web
        console's session keeps instead of the secret (vmis.api.console.sessions)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_tokens)
                               .where(api_tokens.c.secret_sha256 == digest)).mappings().first()
        if row is None or not hmac.compare_digest(row["secret_sha256"], digest):
            return None
        return self._info(row)

    @staticmethod
    def _info(row: Any) -> TokenInfo:
        return TokenInfo(row["name"], Role.parse(row["role"]), _utc(row["created"]),
                         row["created_by"])

    # Section: the audit log

    def record(self, entry: AuditEntry) -> int:
        """Add one call to the audit log; return its id (for :meth:`finish`).

        :raise StateError: When the database cannot take it.
        """
        keys = sorted({vm.lower() for vm in entry.vms})
        try:
            with self.engine.begin() as conn:
                inserted = conn.execute(audit_log.insert().values(
                    time=entry.time, account=entry.account, role=entry.role.label,
                    via=entry.via, client=entry.client[:255], method=entry.method,
                    route=entry.route[:255], path=entry.path, vms=",".join(entry.vms),
                    status=entry.status, result=entry.result, detail=entry.detail,
                )).inserted_primary_key
                audit_id = int(inserted[0]) if inserted is not None else 0
                if keys:
                    conn.execute(audit_vms.insert(),
                                 [{"audit_id": audit_id, "vm_key": key[:255]} for key in keys])
        except OperationalError as exc:
            raise StateError(f"database error: {exc.orig}") from exc
        return audit_id

    def finish(self, audit_id: int | None, entry: AuditEntry) -> None:
        """Complete an entry :meth:`record` wrote when its call began.

        :raise StateError: When the database cannot take it.
        """
        if audit_id is None:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(audit_log.update().where(audit_log.c.id == audit_id).values(
                    status=entry.status, result=entry.result, detail=entry.detail))
        except OperationalError as exc:
            raise StateError(f"database error: {exc.orig}") from exc

    def audit(self, *, vms: Sequence[str] = (), accounts: Sequence[str] = (),
              since: datetime | None = None, newest: int = 1000) -> list[dict[str, Any]]:
        """Get-VMAuditLog: the newest entries first.

        :param vms: VM names or wildcards: entries naming any of them.
        :param accounts: account names or wildcards (``local:*``, a token's name).
        :param since: entries at or after this time.
        :param newest: at most this many entries.
        """
        query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(newest)
        if since is not None:
            query = query.where(audit_log.c.time >= since.astimezone(UTC))
        if accounts:
            query = query.where(sa.or_(*(
                sa.func.lower(audit_log.c.account).like(_like(a), escape="\\")
                for a in accounts)))
        if vms:
            query = query.where(sa.exists().where(
                audit_vms.c.audit_id == audit_log.c.id,
                sa.or_(*(audit_vms.c.vm_key.like(_like(v), escape="\\") for v in vms))))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [self._entry(row) for row in rows]

    @staticmethod
    def _entry(row: Any) -> dict[str, Any]:
        return {"Id": row["id"], "Time": _utc(row["time"]).isoformat(),
                "Account": row["account"], "Role": row["role"], "Via": row["via"],
                "Client": row["client"], "Method": row["method"], "Route": row["route"],
                "Path": row["path"], "VMName": [v for v in row["vms"].split(",") if v],
                "Status": row["status"], "Result": row["result"], "Detail": row["detail"]}

