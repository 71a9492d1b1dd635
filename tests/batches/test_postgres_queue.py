"""The task queue in PostgreSQL (the default when ``database_url`` names one, or
``queue_url=postgresql://…``), on a real server: Huey's storage API as HealthSync
configures it (order, priority, schedule, key/value, ``put_if_empty`` and dequeues
raced from several connections), batches applied by an in-process consumer and by a
separate ``run.py worker``, periodic jobs once per site, and a queue database that
cannot be reached (closed port, a server that never answers, a dropped database):
503s with the batch left pending, health naming the queue, then recovery."""

from __future__ import annotations

import asyncio
import datetime
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from huey.constants import EmptyData
from psycopg import sql

from healthsync.storage.postgres.queue import PostgresQueue, PostgresQueueStorage, is_queue_error
from healthsync.tasks import (
    HealthSyncConsumer,
    _is_queue_error,
    make_huey,
    once_per_site,
    queue_backend,
    queue_info,
    queue_name,
)
from tests.support import postgres as pg
from tests.support.http import call, patient_changes, upload_async, wait_status
from tests.support.queues import check_once_per_site
from tests.support.redis import free_port
from tests.support.servers import RunPy, make_settings


def storage(url: str, name: str = "q") -> PostgresQueueStorage:
    return PostgresQueueStorage(name, dsn=url)


def huey_rows(url: str) -> dict[str, int]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
                for t in ("huey_task", "huey_schedule", "huey_kv")}


@contextmanager
def extra_database() -> Iterator[tuple[str, str]]:
    """Another database of this test's own on the suite's server: (name, URL); dropped after."""
    name, url = pg.create_database()
    try:
        yield name, url
    finally:
        pg.drop_database(name)


def recreate_database(name: str) -> None:
    with psycopg.connect(pg.server_url(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung or firewalled server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        sock.close()


# Huey's storage API, as configured here, on a real server ------------------------------------


class TestStorage:
    def test_tasks_come_out_by_priority_then_in_order(self, postgres_url):
        s = storage(postgres_url)
        try:
            for data, priority in ((b"a", None), (b"b", None), (b"urgent", 10), (b"c", 0), (b"soon", 5)):
                s.enqueue(data, priority)
            assert s.queue_size() == 5
            assert s.enqueued_items() == [b"urgent", b"soon", b"a", b"b", b"c"]
            assert s.enqueued_items(limit=2) == [b"urgent", b"soon"]
            assert [s.dequeue() for _ in range(5)] == [b"urgent", b"soon", b"a", b"b", b"c"]
            assert s.dequeue() is None and s.queue_size() == 0
            s.enqueue(b"x")
            s.flush_queue()
            assert s.queue_size() == 0 and s.enqueued_items() == []
        finally:
            s.close()

    def test_the_schedule_gives_what_is_due_soonest_first(self, postgres_url):
        s = storage(postgres_url)
        t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        at = [t0 + datetime.timedelta(seconds=n) for n in range(4)]
        try:
            s.add_to_schedule(b"third", at[3])
            s.add_to_schedule(b"first", at[1])
            s.add_to_schedule(b"second", at[2])
            assert s.schedule_size() == 3
            assert s.scheduled_items() == [b"first", b"second", b"third"]
            assert s.scheduled_items(limit=1) == [b"first"]
            assert s.read_schedule(at[0]) == []
            assert s.read_schedule(at[2]) == [b"first", b"second"]  # taken out once read
            assert s.read_schedule(at[2]) == [] and s.schedule_size() == 1
            s.flush_schedule()
            assert s.schedule_size() == 0 and s.read_schedule(at[3]) == []
        finally:
            s.close()

    def test_the_key_value_store(self, postgres_url):
        s = storage(postgres_url)
        try:
            assert s.peek_data("k") is EmptyData and not s.has_data_for_key("k")
            s.put_data("k", b"1")
            s.put_data(b"k", b"2")  # bytes and str keys are one key; a put overwrites
            assert s.peek_data("k") == b"2" and s.has_data_for_key(b"k")
            assert s.put_if_empty("k", b"3") is False and s.peek_data("k") == b"2"
            assert s.put_if_empty("other", b"4") is True
            assert s.peek_many(["k", "other", "missing"]) == {"k": b"2", "other": b"4"}
            assert s.result_store_size() == 2 and s.result_items() == {"k": b"2", "other": b"4"}
            assert s.pop_data("k") == b"2" and s.pop_data("k") is EmptyData
            assert s.delete_data("other") is True and s.delete_data("other") is False
            assert s.incr("n") == 1 and s.incr("n", 5) == 6
            s.delete_counter("n")
            assert s.incr("n") == 1
            s.put_data("left", b"x")
            s.enqueue(b"t")
            s.add_to_schedule(b"s", datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
            s.flush_all()
            assert (s.result_store_size(), s.queue_size(), s.schedule_size(), s.incr("n")) == (0, 0, 0, 1)
        finally:
            s.close()

    def test_queues_of_two_names_share_the_tables_and_nothing_else(self, postgres_url):
        a, b = storage(postgres_url, "site-a"), storage(postgres_url, "site-b")
        try:
            a.enqueue(b"for a")
            a.put_data("lock", b"a")
            assert b.dequeue() is None and b.queue_size() == 0 and b.peek_data("lock") is EmptyData
            assert b.put_if_empty("lock", b"b") is True
            b.flush_all()
            assert a.dequeue() == b"for a" and a.peek_data("lock") == b"a"
        finally:
            a.close()
            b.close()

    def test_nothing_is_opened_until_used_and_the_tables_are_made_then(self, postgres_url):
        s = storage(postgres_url)
        with psycopg.connect(postgres_url, connect_timeout=5) as conn:
            made = conn.execute("SELECT to_regclass('huey_task')").fetchone()[0]
        assert made is None  # the constructor did not connect
        try:
            s.enqueue(b"x")
            assert huey_rows(postgres_url) == {"huey_task": 1, "huey_schedule": 0, "huey_kv": 0}
        finally:
            s.close()

    def test_put_if_empty_lets_exactly_one_of_racing_connections_win(self, postgres_url):
        racers = [storage(postgres_url) for _ in range(6)]
        for s in racers:
            s.queue_size()  # connected (and the tables made) before the race
        try:
            for round_ in range(20):
                barrier = threading.Barrier(len(racers))
                wins: list[bool] = []

                def race(s: PostgresQueueStorage, key: str, barrier: threading.Barrier, wins: list[bool]) -> None:
                    barrier.wait()
                    wins.append(s.put_if_empty(key, b"mine"))

                threads = [threading.Thread(target=race, args=(s, f"lock-{round_}", barrier, wins)) for s in racers]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert sorted(wins) == [False] * (len(racers) - 1) + [True], round_
        finally:
            for s in racers:
                s.close()

    def test_connections_dequeuing_at_once_never_take_the_same_task(self, postgres_url):
        producer = storage(postgres_url)
        takers = [storage(postgres_url) for _ in range(4)]
        taken: list[list[bytes]] = [[] for _ in takers]
        try:
            for n in range(400):
                producer.enqueue(str(n).encode())
            barrier = threading.Barrier(len(takers))

            def take(i: int) -> None:
                barrier.wait()
                while (data := takers[i].dequeue()) is not None:
                    taken[i].append(data)

            threads = [threading.Thread(target=take, args=(i,)) for i in range(len(takers))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            everything = [d for part in taken for d in part]
            assert sorted(everything, key=int) == [str(n).encode() for n in range(400)]  # each once
            assert sum(1 for part in taken if part) > 1  # they did take turns
        finally:
            producer.close()
            for s in takers:
                s.close()


def test_two_consumers_on_one_queue_run_each_task_once(postgres_url):
    ran: list[int] = []
    lock = threading.Lock()
    hueys = [PostgresQueue("shared", dsn=postgres_url, results=False, utc=True) for _ in range(2)]

    def note(n: int) -> None:
        with lock:
            ran.append(n)

    tasks = [huey.task(name="note")(note) for huey in hueys]

    consumers = [HealthSyncConsumer(huey, workers=2, worker_type="thread", periodic=False, initial_delay=0.05,
                                    backoff=1.0, max_delay=0.05) for huey in hueys]
    for consumer in consumers:
        consumer.start()
    try:
        for n in range(200):
            hueys[n % 2].enqueue(tasks[n % 2].s(n))
        deadline = time.monotonic() + 60
        while len(ran) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a task taken twice would show up meanwhile
    finally:
        for consumer in consumers:
            consumer.stop(graceful=True)
        for huey in hueys:
            huey.storage.close()
    assert sorted(ran) == list(range(200))


# Which queue the settings name ---------------------------------------------------------------


def test_the_queue_follows_the_database_unless_queue_url_says_otherwise(tmp_path):
    site = "postgresql://hs:s3cret@db.local:5432/district"
    on_pg = make_settings(tmp_path, database_url=site)
    assert queue_backend(on_pg) == "postgres"
    # the database is the site: one fixed name, whatever each process's data dir
    assert queue_info(on_pg) == {"backend": "postgres", "url": "postgresql://hs:***@db.local:5432/district",
                                 "name": "healthsync"}
    assert queue_name(make_settings(tmp_path / "elsewhere", database_url=site)) == "healthsync"
    assert queue_name(make_settings(tmp_path, database_url=site, queue_url=site)) == "healthsync"
    assert queue_name(make_settings(tmp_path, database_url=site, queue_name="site-a")) == "site-a"
    # another PostgreSQL (that sites may share) or a Redis: the data dir's name unless queue_name is set
    other = make_settings(tmp_path, database_url=site, queue_url="postgres://q@queue.local/queues")
    assert queue_info(other)["backend"] == "postgres" and queue_info(other)["name"].startswith("healthsync-")
    assert queue_info(make_settings(tmp_path, database_url=site, queue_url="redis://h/1"))["backend"] == "redis"
    assert queue_info(make_settings(tmp_path)) == {"backend": "sqlite"}
    assert queue_backend(make_settings(tmp_path, queue_url="postgresql://q@h/queues")) == "postgres"


# A consumer in the server, and one in another process -----------------------------------------


class TestInProcessConsumer:
    @pytest.fixture
    def settings(self, data_dir, postgres_url):
        return make_settings(data_dir, embedded_worker=True, database_url=postgres_url)

    async def test_an_async_upload_is_applied_through_the_queue_in_the_database(self, app, api, settings,
                                                                                postgres_url):
        batch_id = await upload_async(api)
        trig = await api.post(f"/api/sync/trigger/{batch_id}/")
        assert trig.status == 202, trig.body
        done = await wait_status(api, batch_id, "done")
        assert [r["status"] for r in done["results"]] == ["created"] * 3
        assert len((await api.get("/api/patients/")).json) == 3
        assert not (settings.data_dir / "huey.db").exists()  # the queue is in PostgreSQL, not in the data dir
        assert huey_rows(postgres_url)["huey_task"] == 0  # taken
        health = await api.get("/api/health")
        assert health.status == 200 and health.json["status"] == "ok", health.body
        assert health.json["queue"] == {"backend": "postgres", "url": postgres_url, "name": "healthsync",
                                        "ok": True}
        assert health.json["worker"]["queue_depth"] == 0


@pytest.mark.slow
def test_a_worker_process_applies_batches_triggered_on_a_server(server_process, tmp_path, postgres_url):
    # server and worker with data dirs of their own: the database names the site and its queue
    server = server_process("--no-worker", "--database-url", postgres_url, data_dir=tmp_path / "server")
    worker = RunPy(tmp_path / "worker", "worker", "--database-url", postgres_url).start()
    try:
        batches = []
        for n in range(3):
            status, body = call("POST", server.url + "/api/sync/upload/",
                                {"device_id": f"tab-{n}", "changes": patient_changes(20, f"t{n}-"), "async": True})
            assert status == 202, body
            batches.append(body["batch_id"])
        for batch_id in batches:
            status, trig = call("POST", f"{server.url}/api/sync/trigger/{batch_id}/")
            assert status == 202, trig
        deadline = time.monotonic() + 60
        for batch_id in batches:
            while (batch := call("GET", f"{server.url}/api/sync/batches/{batch_id}/")[1])["status"] != "done":
                assert batch["status"] != "failed" and time.monotonic() < deadline, batch
                time.sleep(0.1)
        assert len(call("GET", server.url + "/api/patients/?limit=1000")[1]) == 60
        assert call("GET", server.url + "/api/health")[1]["queue"]["backend"] == "postgres"
    finally:
        assert worker.stop() == 0, "".join(worker.log)
    assert not (tmp_path / "server" / "huey.db").exists() and not (tmp_path / "worker" / "huey.db").exists()
    assert not any(" ERROR " in line for line in worker.log), "".join(worker.log)


# Periodic jobs once per site ------------------------------------------------------------------


def test_a_periodic_job_runs_once_per_period_whatever_the_consumers(tmp_path, postgres_url):
    # two processes' queues (data dirs of their own) on one database: what one runs, the other skips
    first, second = (make_huey(make_settings(tmp_path / d, database_url=postgres_url)) for d in ("a", "b"))
    try:
        check_once_per_site(first, second)
        # the registered job is the guarded one
        first.maintenance.call_local()  # type: ignore[attr-defined]
        assert second.get("healthsync.last.maintenance", peek=True) is not None
    finally:
        first.storage.close()
        second.storage.close()


def test_consumers_racing_for_a_periodic_job_run_it_once(tmp_path, postgres_url):
    hueys = [make_huey(make_settings(tmp_path / f"c{i}", database_url=postgres_url)) for i in range(4)]
    try:
        for minute in range(10):
            runs: list[int] = []
            barrier = threading.Barrier(len(hueys))

            def consumer(i: int, period: str, barrier: threading.Barrier, runs: list[int]) -> None:
                barrier.wait()
                once_per_site(hueys[i], "job", period, lambda: runs.append(i))

            threads = [threading.Thread(target=consumer, args=(i, f"2026-01-01T00:{minute:02d}", barrier, runs))
                       for i in range(len(hueys))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(runs) == 1, (minute, runs)
    finally:
        for huey in hueys:
            huey.storage.close()


# A queue database that cannot be reached ------------------------------------------------------


def test_a_queue_that_cannot_be_reached_is_an_error_of_the_queue_in_seconds(tmp_path):
    huey = make_huey(make_settings(tmp_path, queue_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nope"))
    with pytest.raises(psycopg.OperationalError) as refused:
        huey.enqueue(huey.apply_batch.s("b1"))  # type: ignore[attr-defined]
    assert is_queue_error(refused.value) and _is_queue_error(refused.value)
    assert not _is_queue_error(ValueError("a fault of the job"))
    with silent_server() as port:  # connects, and never hears back: connect_timeout ends the wait
        silent = make_huey(make_settings(tmp_path, queue_url=f"postgresql://postgres@127.0.0.1:{port}/nope"))
        with pytest.raises(psycopg.OperationalError) as timed_out:
            silent.pending_count()
        assert _is_queue_error(timed_out.value)


def test_a_periodic_job_whose_queue_database_goes_away_is_skipped_with_a_warning(tmp_path, caplog):
    with extra_database() as (name, url):
        huey = make_huey(make_settings(tmp_path, queue_url=url))
        try:
            # the queue's database dropped while the job runs: the job's work stands, the bookkeeping is a warning
            assert once_per_site(huey, "job", "2026-01-01T00:00", lambda: pg.drop_database(name)) is None
            assert any("job: the task queue went away while it ran" in r.getMessage() for r in caplog.records)
            # the queue unreachable when the job is due: skipped, with a warning (the next period runs it)
            assert once_per_site(huey, "job", "2026-01-01T00:01", lambda: "ran") is None
            assert any("job skipped: the task queue cannot be read" in r.getMessage() for r in caplog.records)
            recreate_database(name)  # back (empty): the tables are made again on reconnect
            assert once_per_site(huey, "job", "2026-01-01T00:02", lambda: "ran") == "ran"
        finally:
            huey.storage.close()


class TestQueueOnAClosedPort:
    @pytest.fixture
    def settings(self, data_dir, postgres_url):
        return make_settings(data_dir, embedded_worker=True, database_url=postgres_url,
                             queue_url=f"postgresql://hs:s3cret@127.0.0.1:{free_port()}/queue")

    @pytest.mark.expect_error_logs  # the access log reports the 503s
    async def test_a_trigger_is_503_and_the_batch_stays_pending(self, app, api, settings, caplog):
        batch_id = await upload_async(api)
        trig = await api.post(f"/api/sync/trigger/{batch_id}/")
        assert trig.status == 503 and int(trig.headers["Retry-After"]) >= 1, trig.body
        assert "task queue" in trig.json["error"] and trig.json["details"][0]["field"] == "batch_id"
        batch = (await api.get(f"/api/sync/batches/{batch_id}/")).json
        assert batch["status"] == "pending" and batch.get("task_id") is None, batch  # the claim released
        health = await api.get("/api/health")
        assert health.status == 503 and health.json["status"] == "unavailable", health.body
        assert health.json["database"]["ok"] is True  # the data is fine: only the queue is gone
        queue = health.json["queue"]
        assert queue["backend"] == "postgres" and queue["ok"] is False and "s3cret" not in queue["url"]
        assert any("task queue cannot be reached" in r for r in health.json["reasons"])
        await asyncio.sleep(1.5)  # the consumer's threads and scheduler meet it a few times
        records = caplog.get_records("setup") + caplog.records  # from the start of the app on
        said = [r.getMessage() for r in records if "task queue cannot be read" in r.getMessage()]
        assert any("trying again" in m for m in said) and any("scheduled and periodic" in m for m in said)
        assert len(said) <= 3, said  # once per thread (2 workers, the scheduler), not once per poll
        huey_errors = [r for r in records if r.name.startswith("huey") and r.levelno >= 40]
        assert not huey_errors, [(r.getMessage(), r.exc_info) for r in huey_errors]


class TestQueueThatNeverAnswers:
    @pytest.fixture
    def port(self):
        with silent_server() as port:
            yield port

    @pytest.fixture
    def settings(self, data_dir, postgres_url, port):
        return make_settings(data_dir, database_url=postgres_url, queue_url=f"postgresql://hs@127.0.0.1:{port}/q")

    @pytest.mark.expect_error_logs  # the access log reports the 503
    async def test_a_trigger_is_503_not_a_hang(self, app, api):
        batch_id = await upload_async(api)
        trig = await api.post(f"/api/sync/trigger/{batch_id}/")
        assert trig.status == 503 and trig.headers["Retry-After"], trig.body
        assert (await api.get(f"/api/sync/batches/{batch_id}/")).json["status"] == "pending"


class TestQueueDatabaseDropped:
    @pytest.fixture
    def queue_db(self):
        with extra_database() as (name, url):
            yield name, url

    @pytest.fixture
    def settings(self, data_dir, postgres_url, queue_db):
        return make_settings(data_dir, embedded_worker=True, database_url=postgres_url, queue_url=queue_db[1])

    @pytest.mark.expect_error_logs  # the access log reports the 503s
    async def test_503_and_the_batch_left_pending_then_applied_once_it_is_back(self, app, api, queue_db, caplog):
        name, url = queue_db
        first = await upload_async(api)
        assert (await api.post(f"/api/sync/trigger/{first}/")).status == 202
        await wait_status(api, first, "done")

        batch_id = await upload_async(api, prefix="q")
        await asyncio.get_running_loop().run_in_executor(None, pg.drop_database, name)
        await asyncio.sleep(0.5)  # the consumer threads meet the dropped database
        trig = await api.post(f"/api/sync/trigger/{batch_id}/")
        assert trig.status == 503 and int(trig.headers["Retry-After"]) >= 1, trig.body
        assert (await api.get(f"/api/sync/batches/{batch_id}/")).json["status"] == "pending"
        health = await api.get("/api/health")
        assert health.status == 503 and health.json["queue"]["ok"] is False, health.body
        assert health.json["worker"]["queue_depth"] == -1

        await asyncio.get_running_loop().run_in_executor(None, recreate_database, name)  # back, empty
        assert (await api.get("/api/health")).status == 200
        trig = await api.post(f"/api/sync/trigger/{batch_id}/")
        assert trig.status == 202, trig.body
        await wait_status(api, batch_id, "done")
        assert len((await api.get("/api/patients/")).json) == 6
        assert any("task queue cannot be read" in r.getMessage() for r in caplog.records)
        huey_errors = [r for r in caplog.records if r.name.startswith("huey") and r.levelno >= 40]
        assert not huey_errors, [(r.getMessage(), r.exc_info) for r in huey_errors]
