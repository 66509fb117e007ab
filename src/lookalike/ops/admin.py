"""Organisations on a Milvus server: one database, one user and one role per organisation code.

The server enforces the isolation: an organisation's user holds a role whose privileges are
granted on its own database only, and the built-in ``public`` role (every user has it) loses
the privileges that let anyone list and describe collections in every database. Milvus 2.3
grants those back to ``public`` at every server start: :func:`restrict_public_role` must run
again after each restart (:class:`lookalike.ops.milvus_server.MilvusServer` does it; on Milvus 2.5+ set
``common.security.enablePublicPrivilege: false`` instead).

All functions take the server's root credentials (``LOOKALIKE_MILVUS_ROOT_TOKEN``, ``root:...``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from ..config import Secret, validate_codops
from ..engines import database_name
from ..engines.errors import grpc_code, redact_uri, translate_engine_error
from ..errors import AuthenticationError, InvalidInputError, PermissionDeniedError

# What lookalike does in an organisation's database, and nothing more (no ListDatabases, no
# user or role management). AlterCollection (collection properties) needs CreateCollection.
ORGANISATION_PRIVILEGES: dict[str, tuple[str, ...]] = {
    "Global": ("CreateCollection", "DropCollection", "DescribeCollection", "ShowCollections"),
    "Collection": (
        "CreateIndex", "DropIndex", "IndexDetail", "Load", "GetLoadingProgress",
        "GetLoadState", "Release", "Insert", "Delete", "Upsert", "Search", "Query",
        "Flush", "GetFlushState", "GetStatistics",
    ),
}  # fmt: skip
# Calls that each need one of those privileges and change nothing, on a collection that does not
# exist: the server refuses them with PERMISSION_DENIED until it enforces the grant.
_PROBE = "lookalike_grant_probe"
_GRANT_PROBES: dict[str, Callable[[MilvusClient], object]] = {
    "ShowCollections": lambda c: c.list_collections(),
    "DescribeCollection": lambda c: c.describe_collection(_PROBE),
    "DropCollection": lambda c: c.drop_collection(_PROBE),
    "IndexDetail": lambda c: c.list_indexes(_PROBE),
    "GetStatistics": lambda c: c.get_collection_stats(_PROBE),
    "Load": lambda c: c.get_load_state(_PROBE),
    "Release": lambda c: c.release_collection(_PROBE),
    "Search": lambda c: c.search(_PROBE, data=[[0.0]], limit=1),
    "Query": lambda c: c.query(_PROBE, filter="id == 1"),
    "Delete": lambda c: c.delete(_PROBE, filter="id == 1"),
    "Flush": lambda c: c.flush(_PROBE),
    "DropIndex": lambda c: c.drop_index(_PROBE, "vector"),
}
# What Milvus 2.3 grants the built-in public role on every database.
PUBLIC_PRIVILEGES = (
    ("Global", "ShowCollections"),
    ("Global", "DescribeCollection"),
    ("Collection", "IndexDetail"),
)
# Milvus's limits on passwords (proxy.minPasswordLength / maxPasswordLength).
_SECRET_LENGTH = (6, 256)
_ROLE_SUFFIX = "_rw"


@dataclass(frozen=True)
class Organisation:
    """The names an organisation has on the server."""

    code: str

    @property
    def database(self) -> str:
        return database_name(self.code)  # where the client looks for the organisation's data

    @property
    def user(self) -> str:
        return self.code

    @property
    def role(self) -> str:
        return f"{self.database}{_ROLE_SUFFIX}"


def provision(code: str, secret: Secret | str, root_uri: str, root_token: Secret | str) -> Organisation:
    """Create (or repair) an organisation: its database, its user with ``secret`` as password,
    and a role limited to that database. Idempotent; a new secret replaces the old one.

    Raises:
        InvalidInputError: bad code or secret.
        AuthenticationError, PermissionDeniedError, EngineUnavailableError: from the server.
    """
    org = Organisation(_organisation_code(code))
    password = secret.reveal() if isinstance(secret, Secret) else secret
    low, high = _SECRET_LENGTH
    if not low <= len(password) <= high:
        raise InvalidInputError(f"the secret for organisation {org.code} must have {low} to {high} characters")
    with _root_client(root_uri, root_token, f"provision organisation {org.code}") as root:
        if org.database not in root.list_databases():
            _tolerate_existing(root.create_database, org.database)
        users = root.list_users()
        if org.user in users and not _can_log_in(root_uri, org.user, password):
            root.drop_user(org.user)  # root cannot set a password without the old one: replace
            users.remove(org.user)
        if org.user not in users:
            _tolerate_existing(root.create_user, org.user, password)
        if org.role not in root.list_roles():
            _tolerate_existing(root.create_role, org.role)
        for object_type, privileges in ORGANISATION_PRIVILEGES.items():
            for privilege in privileges:  # granting twice is accepted
                root.grant_privilege(org.role, object_type, privilege, "*", db_name=org.database)
        root.grant_role(org.user, org.role)
        _revoke_public(root)
    _wait_until_granted(root_uri, org, password)
    return org


def list_organisations(root_uri: str, root_token: Secret | str) -> list[str]:
    """Codes of the provisioned organisations, sorted."""
    with _root_client(root_uri, root_token, "list organisations") as root:
        roles = root.list_roles()
    return sorted(
        role[len("org_") : -len(_ROLE_SUFFIX)]
        for role in roles
        if role.startswith("org_") and role.endswith(_ROLE_SUFFIX)
    )


def revoke(code: str, root_uri: str, root_token: Secret | str, *, drop_data: bool = False) -> bool:
    """Remove an organisation's user and role; with ``drop_data`` its collections and database
    too. Without it the data stays, and provisioning the code again gives it back.

    Returns:
        True if there was something to remove.
    """
    org = Organisation(validate_codops(code))
    with _root_client(root_uri, root_token, f"revoke organisation {org.code}") as root:
        found = False
        if org.role in root.list_roles():
            found = True
            grants = root.describe_role(org.role, db_name=org.database)["privileges"]
            for grant in grants:  # a role that still holds privileges cannot be dropped
                root.revoke_privilege(
                    org.role, grant["object_type"], grant["privilege"], grant["object_name"],
                    db_name=grant["db_name"],
                )  # fmt: skip
            if org.user in root.list_users():
                root.revoke_role(org.user, org.role)
            root.drop_role(org.role)
        if org.user in root.list_users():
            found = True
            root.drop_user(org.user)
        if drop_data and org.database in root.list_databases():
            found = True
            scoped = MilvusClient(root_uri, token=_reveal(root_token), db_name=org.database, dedicated=True)
            try:
                for collection in scoped.list_collections():
                    scoped.drop_collection(collection)
            finally:
                scoped.close()
            root.drop_database(org.database)
    return found


def restrict_public_role(root_uri: str, root_token: Secret | str) -> None:
    """Take from the built-in ``public`` role what lets every user list and describe
    collections in every database. Milvus 2.3 restores it at each start: run after a restart."""
    with _root_client(root_uri, root_token, "restrict the public role") as root:
        _revoke_public(root)


def _revoke_public(root: MilvusClient) -> None:
    for object_type, privilege in PUBLIC_PRIVILEGES:  # revoking twice is accepted
        root.revoke_privilege("public", object_type, privilege, "*", db_name="*")


@contextmanager
def _root_client(uri: str, token: Secret | str, action: str) -> Iterator[MilvusClient]:
    """A root connection of its own (pymilvus shares connections per uri and token and keeps
    them open after ``close()``); every engine error becomes a lookalike error."""
    client = None
    try:
        client = MilvusClient(uri, token=_reveal(token), dedicated=True, timeout=10)
        yield client
    except Exception as exc:
        raise translate_engine_error(exc, uri=uri, action=action) from exc
    finally:
        if client is not None:
            client.close()


def _wait_until_granted(uri: str, org: Organisation, password: str, timeout: float = 60.0) -> None:
    """Return once the server enforces the new grants. Milvus 2.3.5 applies privilege changes
    made soon after a loaded collection was dropped 5-10 s late, some before others."""
    deadline = time.monotonic() + timeout
    client = MilvusClient(uri, user=org.user, password=password, db_name=org.database, dedicated=True, timeout=10)
    waiting = dict(_GRANT_PROBES)
    try:
        while waiting:
            for privilege, probe in list(waiting.items()):
                try:
                    probe(client)
                except Exception as exc:
                    if grpc_code(exc) == grpc.StatusCode.PERMISSION_DENIED:
                        continue
                del waiting[privilege]  # a refusal for any other reason means the grant works
            if waiting and time.monotonic() > deadline:
                raise PermissionDeniedError(
                    f"the server at {redact_uri(uri)} still denies organisation {org.code} "
                    f"{', '.join(waiting)} {timeout:.0f} s after provisioning"
                )
            time.sleep(0.2 if waiting else 0)
    finally:
        client.close()


def _can_log_in(uri: str, user: str, password: str) -> bool:
    try:
        MilvusClient(uri, user=user, password=password, dedicated=True, timeout=10).close()
    except Exception as exc:
        if isinstance(translate_engine_error(exc, uri=uri), AuthenticationError):
            return False
        raise
    return True


def _tolerate_existing(create: Callable[..., object], *args: str) -> None:
    """Create something another provisioning may have created since we looked (2.3.5 has no
    'if not exists')."""
    try:
        create(*args)
    except MilvusException as exc:
        if "already exist" not in (exc.message or ""):
            raise


def _organisation_code(code: str) -> str:
    code = validate_codops(code)
    if code == "root":  # the user would be the server's superuser
        raise InvalidInputError("organisation code 'root' is reserved for the Milvus superuser")
    return code


def _reveal(token: Secret | str) -> str:
    return token.reveal() if isinstance(token, Secret) else token
