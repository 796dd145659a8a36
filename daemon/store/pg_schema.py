"""The PostgreSQL store's schema (daemon/store/postgres.py): the versioned DDL (`MIGRATIONS`,
`SCHEMA_VERSION`, recorded in `routingd_schema`) and `migrate`, which brings a database to the
current version in place at open, in one transaction under a transaction-scoped advisory lock, so
processes starting together migrate once. A database of a newer schema is refused.
"""

from __future__ import annotations

import logging

from .interface import StoreError
from .pg_conn import _Conn

log = logging.getLogger("routingd.store")

# Advisory lock key (64-bit; arbitrary, fixed) of the migration.
_MIGRATE_LOCK = 0x726F7574696E6701
# Migrations, in order: version -> statements. A database at version N runs those above N.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE messages (
            id               text PRIMARY KEY,
            request          text NOT NULL,
            route            text NOT NULL,
            policy_version   text NOT NULL,
            status           text NOT NULL DEFAULT 'pending',
            accepted_at      double precision NOT NULL,
            message_deadline double precision NOT NULL,
            finished_at      double precision,
            delivered_at     double precision,
            idempotency_key  text,
            run              integer NOT NULL DEFAULT 0)""",
        "CREATE INDEX messages_pending ON messages(accepted_at) WHERE status = 'pending'",
        "CREATE INDEX messages_finished ON messages(finished_at) WHERE status != 'pending'",
        """CREATE TABLE attempts (
            attempt_id   text PRIMARY KEY,
            message_id   text NOT NULL,
            channel      text NOT NULL,
            provider     text NOT NULL,
            try_no       integer NOT NULL,
            started_at   double precision NOT NULL,
            ended_at     double precision,
            deadline     double precision NOT NULL,
            outcome      text,
            status_code  integer,
            detail       text,
            provider_message_id text)""",
        "CREATE INDEX attempts_message ON attempts(message_id)",
        "CREATE INDEX attempts_vendor ON attempts(provider, provider_message_id) "
        "WHERE provider_message_id IS NOT NULL",
        """CREATE TABLE event_log (
            seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            message_id text NOT NULL,
            events     text NOT NULL)""",
        "CREATE INDEX event_log_message ON event_log(message_id, seq)",
        """CREATE TABLE policies (
            version    text PRIMARY KEY,
            source     text NOT NULL,
            path       text NOT NULL,
            stored_at  double precision NOT NULL)""",
        """CREATE TABLE idempotency (
            key        text PRIMARY KEY,
            message_id text NOT NULL,
            created_at double precision NOT NULL)""",
        "CREATE INDEX idempotency_created ON idempotency(created_at)",
        """CREATE TABLE profiles (
            user_id    text PRIMARY KEY,
            profile    text NOT NULL,
            updated_at double precision NOT NULL)""",
    ]),
    # Leases: several processes on one database (docs/scaling.md). Rows of version 1 have no
    # owner: the first process to start takes them over.
    (2, [
        "ALTER TABLE messages ADD COLUMN owner text",
        "CREATE INDEX messages_owner ON messages(owner) WHERE status = 'pending'",
        """CREATE TABLE nodes (
            node        text PRIMARY KEY,
            lease_until timestamptz NOT NULL,
            started_at  timestamptz NOT NULL DEFAULT now(),
            policy_version text)""",
        """CREATE TABLE handoffs (
            seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            message_id text NOT NULL,
            kind       text NOT NULL,
            provider   text,
            attempt_id text,
            status     text,
            created_at timestamptz NOT NULL DEFAULT now())""",
        "CREATE INDEX handoffs_message ON handoffs(message_id)",
    ]),
    # Profiles at accept (daemon/profiles.py): every write of a profile gives it a new version,
    # so an insert can check that the profile its accept assumed is still the stored one.
    (3, [
        "CREATE SEQUENCE profiles_version_seq",
        "ALTER TABLE profiles ADD COLUMN version bigint NOT NULL DEFAULT nextval('profiles_version_seq')",
        """CREATE FUNCTION routingd_profile_version() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN NEW.version := nextval('profiles_version_seq'); RETURN NEW; END $$""",
        "CREATE TRIGGER profiles_version BEFORE UPDATE ON profiles FOR EACH ROW "
        "EXECUTE FUNCTION routingd_profile_version()",
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(conn: _Conn, where: str) -> int:
    """Bring the database to SCHEMA_VERSION in one transaction under the migration advisory lock
    (a second process starting at the same moment waits, then finds nothing to do); return the
    version it found. A database of a newer schema is refused."""
    conn.execute("BEGIN")
    conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATE_LOCK,))
    conn.execute("CREATE TABLE IF NOT EXISTS routingd_schema (version integer PRIMARY KEY, "
                 "applied_at timestamptz NOT NULL DEFAULT now())")
    row = conn.execute("SELECT coalesce(max(version), 0) FROM routingd_schema").fetchone()
    have = int(row[0]) if row else 0
    if have > SCHEMA_VERSION:
        conn.execute("ROLLBACK")
        raise StoreError(where, f"was written by a newer routingd (schema {have}, this one knows {SCHEMA_VERSION})",
                         "upgrade routingd or point [daemon] store at another database")
    for version, statements in MIGRATIONS:
        if version > have:
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO routingd_schema (version) VALUES (?)", (version,))
            log.info("state store %s: schema migrated to version %d", where, version)
    conn.execute("COMMIT")
    return have
