"""Every difference between SQLite and PostgreSQL lives here, and nowhere else.

Engine creation (drivers, pragmas, search_path), the upsert statement, time bucketing and percentiles.
"""

from __future__ import annotations

import socket
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg
from sqlalchemy import BigInteger, ColumnElement, Connection, Integer, Select, Table, event, func, text
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from monitord.text import redact_url

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

# Autoincrement ids: BIGINT on PostgreSQL; SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid).
ID_TYPE = BigInteger().with_variant(Integer(), SQLITE)

# Drivers the store runs on, by the backend a URL names; a driverless URL gets the async one.
_ASYNC_DRIVERS = {SQLITE: "aiosqlite", POSTGRESQL: "asyncpg"}
_BACKEND_ALIASES = {"postgres": POSTGRESQL}

# Table options for a table that is mostly its primary key: SQLite keeps such rows in the key's own b-tree
# (WITHOUT ROWID) instead of a rowid table plus a copy of the key; PostgreSQL has no such option.
CLUSTERED_BY_PRIMARY_KEY: Mapping[str, Any] = {"sqlite_with_rowid": False}

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",  # readers never block the writer
    "PRAGMA synchronous=NORMAL",  # safe with WAL; an fsync per checkpoint, not per commit
    "PRAGMA busy_timeout=5000",  # wait for a lock (a second process, a migration) instead of failing at once
    "PRAGMA foreign_keys=ON",
)
PG_CONNECT_TIMEOUT_S = 5.0  # asyncpg waits 60 s by default: too long for a writer that retries anyway
PG_APPLICATION_NAME = "monitord"
# A session whose client went silent must not hold a transaction (and its locks) open on the server for ever.
PG_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
# TCP keepalive on every PostgreSQL socket: a peer that vanished (host down, NAT entry gone) is noticed within
# about IDLE + INTERVAL * COUNT seconds even while no statement runs. A silent but alive peer (a stuck proxy)
# still ACKs keepalives: only the statement timeout of the writer (abort_connection) ends that.
KEEPALIVE_IDLE_S = 30
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_COUNT = 3


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL and pin it to the async driver; refuse backends the store does not support."""
    parsed = make_url(url)
    backend = _BACKEND_ALIASES.get(parsed.get_backend_name(), parsed.get_backend_name())
    driver = _ASYNC_DRIVERS.get(backend)
    if driver is None:
        shown = redact_url(str(url) if isinstance(url, str) else url.render_as_string(hide_password=True))
        raise ValueError(
            f"unsupported database URL {shown!r}: use sqlite+aiosqlite:///PATH or postgresql+asyncpg://..."
        )
    return parsed.set(drivername=f"{backend}+{driver}")


def search_path(url: URL) -> str | None:
    """The PostgreSQL search_path a URL asks for with `?search_path=schema[,schema...]`, if any."""
    value = url.query.get("search_path")
    if isinstance(value, tuple):
        value = value[-1]
    return value or None


def create_engine(url: str | URL) -> AsyncEngine:
    """An async engine for `url` with the per-database settings applied on every new connection.

    PostgreSQL URLs may carry `search_path=<schema>` (tables live in that schema, e.g. one
    database shared by several monitord instances) and `timeout=<seconds>` (connect timeout).
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == SQLITE:
        engine = create_async_engine(parsed, pool_pre_ping=True)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        return engine
    query = dict(parsed.query)
    server_settings = {"application_name": PG_APPLICATION_NAME,
                       "idle_in_transaction_session_timeout": str(PG_IDLE_IN_TRANSACTION_TIMEOUT_MS)}
    path = search_path(parsed)
    query.pop("search_path", None)
    if path is not None:
        server_settings["search_path"] = path
    timeout = query.pop("timeout", None)
    timeout_s = float(timeout if isinstance(timeout, str) else PG_CONNECT_TIMEOUT_S)
    connect_args: dict[str, Any] = {"server_settings": server_settings, "timeout": timeout_s}
    engine = create_async_engine(parsed.set(query=query), pool_pre_ping=True, connect_args=connect_args)
    event.listen(engine.sync_engine, "connect", _postgresql_on_connect)
    return engine


def _postgresql_on_connect(dbapi_connection: Any, _record: Any) -> None:
    transport = getattr(dbapi_connection.driver_connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        set_keepalive(sock)


def set_keepalive(sock: Any) -> None:
    """SO_KEEPALIVE with the probe timings above, where the platform has the options."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                        ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def abort_connection(driver_connection: Any) -> None:
    """End a statement that overran its time, from outside it, without a round trip (the peer may be silent).

    PostgreSQL: close the socket at once (asyncpg's terminate); every await on the connection fails and SQLAlchemy,
    seeing it closed, drops it from the pool. SQLite: interrupt the running statement (thread-safe); the
    connection stays usable.
    """
    if hasattr(driver_connection, "terminate"):
        driver_connection.terminate()
        return
    try:
        inner = driver_connection._conn  # aiosqlite runs sqlite3 in a thread of its own
    except (AttributeError, ValueError):  # not aiosqlite, or already closed
        return
    inner.interrupt()


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def prepare_for_migrations(connection: Connection) -> None:
    """Run inside the migration transaction, before any revision.

    PostgreSQL: serialize concurrent migrators (two daemons starting at once) with a transaction-scoped
    advisory lock, and create the schema the search_path names first so the tables have a home.
    """
    if connection.dialect.name != POSTGRESQL:
        return
    path = connection.exec_driver_sql("SELECT current_setting('search_path')").scalar_one()
    first = str(path).split(",")[0].strip().strip('"')
    lock_key = zlib.crc32(f"monitord.migrate:{first}".encode())
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
    if first and not first.startswith("$"):
        quoted = connection.dialect.identifier_preparer.quote_identifier(first)
        connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quoted}")


async def insert_records(conn: AsyncConnection, table: Table, columns: Sequence[str],
                         records: Sequence[tuple[Any, ...]], *, dedupe: bool = False) -> None:
    """Insert rows given as tuples in `columns` order, in the caller's transaction, skipping none and converting
    nothing (the writer's hot path: the rows are already what the columns hold).

    SQLite: one executemany of INSERT OR IGNORE (a key already stored is the same probe written twice).
    PostgreSQL: COPY (about 4x less client CPU per row than a batched INSERT, see BENCHMARKS.md); COPY cannot skip
    a taken key, so a duplicate raises IntegrityError and the caller writes the batch again with `dedupe`, which
    inserts with ON CONFLICT DO NOTHING.
    """
    if not records:
        return
    names = ", ".join(columns)
    if conn.dialect.name != POSTGRESQL:
        marks = ", ".join("?" * len(columns))
        await conn.exec_driver_sql(f"INSERT OR IGNORE INTO {table.name} ({names}) VALUES ({marks})",
                                   list(records))
        return
    if dedupe:
        await conn.execute(insert_ignore(POSTGRESQL, table), [dict(zip(columns, record, strict=True))
                                                              for record in records])
        return
    # SQLAlchemy's asyncpg adapter sends BEGIN lazily, with the first statement: send it now, so the COPY joins
    # the transaction and the batch stays all or nothing with the statements that follow.
    raw = await conn.get_raw_connection()
    adapted = raw.dbapi_connection
    start = getattr(adapted, "_start_transaction", None)
    if start is not None and getattr(adapted, "_transaction", False) is None:
        await start()  # the BEGIN alone (a statement would cost a round trip more)
    else:
        await conn.execute(text("SELECT 1"))
    try:
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            table.name, records=records, columns=list(columns))
    except asyncpg.IntegrityConstraintViolationError as exc:  # the rows' fault: the connection is fine
        raise IntegrityError(f"COPY {table.name}", None, exc) from exc
    except asyncpg.DataError as exc:
        raise DataError(f"COPY {table.name}", None, exc) from exc
    except BaseException:
        # The driver's own error bypasses SQLAlchemy, which would otherwise hand this (possibly dead)
        # connection to the next caller: drop it from the pool, so the next batch reconnects.
        await conn.invalidate()
        raise


# asyncpg's InternalClientError: the protocol is out of step (a termination notice arrived while idle), so the
# connection is no use either
_GONE = (ConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.ConnectionDoesNotExistError,
         asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError)


def is_disconnect(exc: BaseException) -> bool:
    """Whether `exc` says the connection is gone (closed, reset, terminated), not that a statement failed: what
    SQLAlchemy marked as a disconnect, or a closed-connection error of the driver anywhere in its causes."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, _GONE):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def upsert(
    dialect_name: str,
    table: Table,
    key_columns: tuple[str, ...],
    set_: Callable[[Any], Mapping[str, Any]],
    where: Callable[[Any], ColumnElement[bool]] | None = None,
) -> Any:
    """INSERT ... ON CONFLICT (key_columns) DO UPDATE SET set_(excluded) [WHERE where(excluded)].

    Executed with a list of rows. `set_` and `where` receive the statement's `excluded` pseudo-table so they can
    refer to the new values; a conflicting row that fails `where` is left as it is (and not RETURNed).
    """
    insert = postgresql.insert if dialect_name == POSTGRESQL else sqlite.insert
    stmt = insert(table)
    condition = where(stmt.excluded) if where is not None else None
    return stmt.on_conflict_do_update(index_elements=list(key_columns), set_=dict(set_(stmt.excluded)),
                                      where=condition)


def insert_ignore(dialect_name: str, table: Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING: a row whose key is already there is left as it is (and not RETURNed)."""
    insert = postgresql.insert if dialect_name == POSTGRESQL else sqlite.insert
    return insert(table).on_conflict_do_nothing()


def epoch_bucket(dialect_name: str, ts: ColumnElement[Any], step_s: int) -> ColumnElement[int]:
    """floor(unix seconds of `ts` / step_s): the index of the step_s-wide bucket a timestamp falls in."""
    if dialect_name == POSTGRESQL:
        epoch_s: ColumnElement[Any] = func.extract("epoch", ts)
        return sql_cast(func.floor(epoch_s / step_s), BigInteger)
    # Stored as UTC text; strftime('%s') reads it back as integer unix seconds.
    return sql_cast(func.strftime("%s", ts), Integer) // step_s


def percentile(dialect_name: str, fraction: float, column: ColumnElement[Any]) -> ColumnElement[Any] | None:
    """The continuous percentile aggregate where the database has one (None: compute it in Python)."""
    if dialect_name == POSTGRESQL:
        return func.percentile_cont(fraction).within_group(column)
    return None


def skip_locked(dialect_name: str, stmt: Select[Any]) -> Select[Any]:
    """Lock the selected rows until commit, passing over rows another transaction holds.

    PostgreSQL: `FOR UPDATE SKIP LOCKED`, so monitord instances sharing one database never claim the same alert
    delivery. SQLite has no row locks; its single writer serializes claims (one instance per SQLite file).
    """
    if dialect_name == POSTGRESQL:
        return stmt.with_for_update(skip_locked=True)
    return stmt


def lock_key(name: str) -> int:
    """A stable 32-bit advisory lock key for `name` (scoped by the caller, e.g. with the schema name)."""
    return zlib.crc32(name.encode())


async def try_session_lock(conn: AsyncConnection, name: str) -> bool:
    """Take a session-level lock named `name` if free, without waiting; held until unlock or the session ends.

    PostgreSQL: `pg_try_advisory_lock` keyed by the schema too, so instances on other schemas never collide, and a
    SIGKILLed holder's lock goes with its connection. SQLite has one writer per file: always granted.
    """
    if conn.dialect.name != POSTGRESQL:
        return True
    key = await _schema_lock_key(conn, name)
    return bool((await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})).scalar_one())


async def session_unlock(conn: AsyncConnection, name: str) -> None:
    if conn.dialect.name == POSTGRESQL:
        key = await _schema_lock_key(conn, name)
        await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


async def _schema_lock_key(conn: AsyncConnection, name: str) -> int:
    schema = (await conn.execute(text("SELECT current_schema()"))).scalar_one()
    return lock_key(f"{name}:{schema}")

