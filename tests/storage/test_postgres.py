"""What only the PostgreSQL backend has: its faults as domain errors, and
migrations under the advisory lock.  On the run's own database (``postgres_url``)."""

from __future__ import annotations

import asyncio
import socket

import psycopg
import pytest

from healthsync.errors import Busy, SchemaTooNew, Unreachable
from healthsync.storage.postgres import PostgresDatabase
from healthsync.storage.postgres.schema import LATEST


async def test_a_clock_lock_held_past_lock_timeout_is_busy_and_nothing_is_written(postgres_url):
    db = await PostgresDatabase(postgres_url, lock_timeout_ms=200).open()
    try:
        async with await psycopg.AsyncConnection.connect(postgres_url) as other:
            await other.execute("SELECT 1 FROM clock WHERE id = 1 FOR UPDATE")  # held: a stuck writer

            async def stamp(tx):
                return tx.stamp()

            with pytest.raises(Busy):
                await db.write(stamp)
            await other.rollback()
        assert (await db.write(stamp))[0] == 1  # the lock let go: the next write goes through
    finally:
        await db.close()


async def test_a_server_that_does_not_answer_is_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    db = PostgresDatabase(f"postgresql://postgres@127.0.0.1:{port}/none")
    with pytest.raises(Unreachable):
        await db.probe()
    with pytest.raises(Unreachable):
        await db.open()
    await db.close()


async def test_processes_starting_at_once_migrate_once(postgres_url):
    dbs = [PostgresDatabase(postgres_url, connections=1) for _ in range(4)]
    try:
        await asyncio.gather(*(db.open() for db in dbs))
        assert [db.schema_version for db in dbs] == [LATEST] * 4
        assert await dbs[0].head() == (0, 0)
    finally:
        for db in dbs:
            await db.close()


async def test_a_newer_schema_is_refused(postgres_url):
    db = await PostgresDatabase(postgres_url).open()
    await db.close()
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("UPDATE schema_version SET version = %s", (LATEST + 1,))
    with pytest.raises(SchemaTooNew):
        await PostgresDatabase(postgres_url).open()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_stopped_server_is_unreachable_at_once_and_the_pool_is_back_when_it_is(mode, throwaway_postgres):
    """Reads and writes while PostgreSQL is stopped fail as ``Unreachable`` within about a
    second (not after the pool's 30 s wait), and succeed again soon after it is back."""
    cluster = throwaway_postgres
    db = await PostgresDatabase(cluster.create_database()).open()

    async def stamp(tx):
        return tx.stamp()

    try:
        assert (await db.write(stamp))[0] == 1
        cluster.stop(mode)
        loop = asyncio.get_running_loop()
        for attempt in range(4):
            started = loop.time()
            with pytest.raises(Unreachable):
                await (db.head() if attempt % 2 else db.write(stamp))
            assert loop.time() - started < 10  # the pool would wait 30 s
        cluster.start()
        deadline = loop.time() + 30
        while True:
            try:
                assert (await db.write(stamp))[0] == 2  # nothing refused was written
                break
            except Unreachable:
                assert loop.time() < deadline, "the pool did not reconnect"
                await asyncio.sleep(0.2)
        assert (await db.head())[0] == 2
    finally:
        await db.close()
