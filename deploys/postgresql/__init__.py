# SPDX-License-Identifier: AGPL-3.0-or-later
"""PostgreSQL: the Orthanc index of a TsAMI or LAMI, on the same host.

configure  upload the rendered server settings (loopback only, the
           inventory's port)
activate   restart the cluster only when they changed; the cluster enabled
           and running; Orthanc's role (password from the secrets store, sent
           as a SCRAM verifier: the password itself never leaves this
           machine) and its database owned by that role; the databases of
           kontur's services on the node (the HL7 service's state) likewise
"""
from __future__ import annotations

import base64
import hashlib
import hmac

from pyinfra import host
from pyinfra.api import DeployError, deploy, operation

from kontur.render.system import POSTGRESQL_CLUSTER, POSTGRESQL_CLUSTER_UNIT, POSTGRESQL_VERSION

from ..base import activate_unit, unit_running, unit_states, upload
from ..base.facts import PostgresqlRole
from ..node import context

UNIT = "postgresql.service"
DEFAULTS = {
    "postgresql_version": POSTGRESQL_VERSION,
    "postgresql_cluster": POSTGRESQL_CLUSTER,
    "postgresql_scram_iterations": 4096,
}
LOG = (f"grep -hE 'FATAL|PANIC|ERROR|could not' /var/log/postgresql/postgresql-{POSTGRESQL_VERSION}-"
       f"{POSTGRESQL_CLUSTER}.log 2>/dev/null | tail -n 4")


def scram_verifier(password: str, user: str, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of ``password``.  The salt is
    derived from the password and the role name, so the same secret always
    gives the same verifier: a re-run compares and changes nothing."""
    salt = hmac.new(password.encode(), f"kontur-postgresql:{user}".encode(), hashlib.sha256).digest()[:16]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _ident(value: str) -> str:
    if not value.replace("_", "").isalnum():
        raise DeployError(f"{value!r} is not a plain PostgreSQL identifier")
    return value


@operation()
def role_and_database(user: str, database: str, verifier: str, port: int):
    """The login role ``user`` with password ``verifier`` and ``database`` owned by it."""
    user, database = _ident(user), _ident(database)
    current = host.get_fact(PostgresqlRole, user=user, database=database, port=port)
    if current["running"] and current["verifier"] == verifier and current["owner"] == user:
        host.noop(f"role {user} and database {database} are in place")
        return
    sql = (
        f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') "
        f"THEN CREATE ROLE {user} LOGIN; END IF; END$$;\n"
        f"ALTER ROLE {user} LOGIN PASSWORD '{verifier}';\n"
        f"SELECT 'CREATE DATABASE {database} OWNER {user} ENCODING ''UTF8'' TEMPLATE template0' "
        f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{database}')\\gexec\n"
        f"ALTER DATABASE {database} OWNER TO {user};\n"
    )
    encoded = base64.b64encode(sql.encode()).decode()
    yield (f"cd /tmp && echo {encoded} | base64 -d | "
           f"runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p {int(port)} -d postgres")


@deploy("PostgreSQL: configure", data_defaults=DEFAULTS)
def configure() -> None:
    ctx = context()
    upload(ctx, "PostgreSQL", ctx.files_under("/etc/postgresql/"))


@deploy("PostgreSQL: activate", data_defaults=DEFAULTS)
def activate() -> None:
    ctx = context()
    facts = ctx.bundle.facts.get("postgresql")
    if UNIT not in ctx.bundle.services or not facts:
        return
    port = int(facts["port"])
    ready = f"runuser -u postgres -- pg_isready -q -h 127.0.0.1 -p {port}"
    # postgresql.service only groups the clusters (its start succeeds even
    # when a cluster fails): restart and watch the cluster's own unit
    name = f"PostgreSQL: {UNIT} enabled and running"
    ctx.record(name, unit_running(name=name, unit=UNIT, current=unit_states(ctx, UNIT)))
    started = activate_unit(ctx, "PostgreSQL", UNIT, ready=ready, log=LOG, restart_unit=POSTGRESQL_CLUSTER_UNIT,
                            enable=False)
    # Orthanc's index connection does not survive a restart of the server
    # under it: a running Orthanc restarts when the cluster (re)started
    ctx.restarts.setdefault("orthanc.service", []).extend(started)
    password = ctx.store.password(facts["password_key"])
    verifier = scram_verifier(password, facts["user"], int(host.data.get("postgresql_scram_iterations", 4096)))
    # Orthanc's index, then the databases of kontur's services on the node
    # (the HL7 service's state), owned by the same role
    for database in [facts["database"], *facts.get("databases", [])]:
        name = f"PostgreSQL: role {facts['user']} and database {database}"
        ctx.record(name, role_and_database(name=name, user=facts["user"], database=database,
                                           verifier=verifier, port=port))

