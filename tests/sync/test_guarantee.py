"""The download guarantee: a client following ``cursor`` or ``server_time``
never misses a committed change, never gets one twice in a row, and sees
every item in commit order — under concurrent writers, one of them another
OS process writing the same file (or the same PostgreSQL database)."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import textwrap
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from healthsync.errors import NotFound
from healthsync.resources import Resources
from healthsync.storage import Database
from healthsync.storage.postgres import PostgresDatabase
from healthsync.sync import download as dl
from tests.support import ROOT
from tests.support import postgres as pg
from tests.support.databases import execute

pytestmark = pytest.mark.both_backends


class Follower:
    """A device that downloads page by page, following cursor or server_time."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.position = "0" if mode == "cursor" else "1970-01-01T00:00:00Z"
        self.stream: list[dict[str, Any]] = []

    def query(self, limit: int) -> str:
        key = "cursor" if self.mode == "cursor" else "since"
        return f"/api/sync/download/?{key}={self.position}&limit={limit}"

    def take(self, body: dict[str, Any]) -> bool:
        self.stream.extend(body["changes"])
        self.position = body["cursor"] if self.mode == "cursor" else body["server_time"]
        return body["has_more"]

    def check(self, final: dict[str, dict[str, Any]]) -> None:
        stamps = [e["updated_at"] for e in self.stream]
        assert stamps == sorted(stamps), f"{self.mode}: entries out of commit order"
        assert len(set(stamps)) == len(stamps), f"{self.mode}: an entry was received twice"
        seen: dict[str, dict[str, Any]] = {}
        last_version: dict[str, int] = {}
        for e in self.stream:
            sid = e["server_id"]
            assert e["server_version"] > last_version.get(sid, 0), f"{self.mode}: {sid} went backwards"
            last_version[sid] = e["server_version"]
            seen[sid] = e
        assert seen.keys() == final.keys(), f"{self.mode}: missed {len(final.keys() - seen.keys())} items"
        for sid, entry in final.items():
            assert seen[sid] == entry, f"{self.mode}: {sid} not at its final version"


CHILD = textwrap.dedent(
    """
    import asyncio, random, sys
    sys.path.insert(0, {root!r})
    from healthsync.storage import Database
    from healthsync.storage.postgres import PostgresDatabase
    from healthsync.sync.envelope import parse_upload
    from healthsync.sync.service import SyncService

    async def main():
        db = await (PostgresDatabase({url!r}) if {url!r} else Database({path!r})).open()
        sync = SyncService(db)
        rnd = random.Random({seed})
        mine = []
        for b in range({batches}):
            changes = []
            for i in range(20):
                if mine and rnd.random() < 0.4:
                    changes.append({{"operation": "update", "resource_type": "Patient",
                                     "server_id": rnd.choice(mine), "payload": {{"name": "w%d-%d" % (b, i)}}}})
                else:
                    changes.append({{"operation": "create", "resource_type": "Patient",
                                     "client_temp_id": "c%d-%d" % (b, i), "payload": {{"name": "child"}}}})
            status, body = await sync.upload(parse_upload({{"device_id": "worker", "changes": changes}}, 10000))
            import orjson
            for r in orjson.loads(orjson.dumps(body))["results"]:
                if r["status"] == "created":
                    mine.append(r["server_id"])
            await asyncio.sleep(rnd.random() * 0.01)
        await db.close()

    asyncio.run(main())
    """
)


async def rest_writer(api, rnd: random.Random, n: int, patients: list[str]) -> None:
    records: list[str] = []
    deleted: set[str] = set()  # records: writing one again is 404, and only that
    for i in range(n):
        roll = rnd.random()
        if not patients or roll < 0.2:
            patients.append((await api.new_patient(name=f"rest {i}"))["id"])
        elif roll < 0.55:
            resp = await api.post("/api/records/", {"patient": rnd.choice(patients), "resource_type": "Observation",
                                                    "data": {"i": i}})
            assert resp.status == 201, resp.body
            records.append(resp.json["id"])
        elif roll < 0.8 and records:
            rid = rnd.choice(records)
            resp = await api.patch(f"/api/records/{rid}/", {"data": {"i": i}})
            assert resp.status == (404 if rid in deleted else 200), resp.body
        elif roll < 0.9 and records:
            rid = rnd.choice(records)
            resp = await api.delete(f"/api/records/{rid}/")
            assert resp.status == (404 if rid in deleted else 204), resp.body
            deleted.add(rid)
        else:
            resp = await api.patch(f"/api/patients/{rnd.choice(patients)}/", {"name": f"renamed {i}"})
            assert resp.status == 200, resp.body


async def upload_writer(api, rnd: random.Random, batches: int, device: str) -> None:
    mine: list[str] = []
    for b in range(batches):
        changes = []
        for i in range(40):
            if mine and rnd.random() < 0.3:
                op = "delete" if rnd.random() < 0.1 else "update"
                changes.append({"operation": op, "resource_type": "Patient", "server_id": rnd.choice(mine),
                                "payload": {"dob": "2000-01-01"}})
            else:
                changes.append({"operation": "create", "resource_type": "Patient",
                                "client_temp_id": f"{device}-{b}-{i}",
                                "payload": {"name": "uploaded"}})
                changes.append({"operation": "create", "resource_type": "Observation",
                                "client_temp_id": f"{device}-{b}-{i}-o",
                                "payload": {"patient_temp_id": f"{device}-{b}-{i}", "v": i}})
        resp = await api.post("/api/sync/upload/", {"device_id": device, "changes": changes})
        assert resp.status == 200, resp.body
        mine += [r["server_id"] for r in resp.json["results"]
                 if r["status"] == "created" and r["client_temp_id"].count("-") == 2]
        await asyncio.sleep(0)


async def follow(api, follower: Follower, done: asyncio.Event, rnd: random.Random) -> None:
    while True:
        finished = done.is_set()
        while True:
            resp = await api.get(follower.query(rnd.randint(1, 60)))
            assert resp.status == 200, resp.body
            if not follower.take(resp.json):
                break
        if finished:
            return
        await asyncio.sleep(rnd.random() * 0.02)


async def final_state(api) -> dict[str, dict[str, Any]]:
    resp = await api.get("/api/sync/download/?cursor=0&limit=10000")
    assert not resp.json["has_more"]
    return {e["server_id"]: e for e in resp.json["changes"]}


@pytest.mark.slow
@pytest.mark.timeout(seconds=240)
async def test_followers_see_everything_under_concurrent_writers(api, settings):
    seed = random.randrange(1 << 30)
    print("seed", seed)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=str(ROOT), path=str(settings.db_path), url=settings.database_url,
                                            seed=seed, batches=60)]
    )
    done = asyncio.Event()
    followers = [Follower("cursor"), Follower("since"), Follower("cursor")]
    readers = [asyncio.ensure_future(follow(api, f, done, random.Random(seed + i))) for i, f in enumerate(followers)]
    patients: list[str] = []
    await asyncio.gather(
        rest_writer(api, random.Random(seed + 10), 700, patients),
        upload_writer(api, random.Random(seed + 11), 25, "tab-a"),
        upload_writer(api, random.Random(seed + 12), 25, "tab-b"),
    )
    while child.poll() is None:
        await asyncio.sleep(0.05)
    assert child.returncode == 0
    done.set()
    await asyncio.gather(*readers)
    final = await final_state(api)
    head = (await asyncio.to_thread(execute, settings, "SELECT seq FROM clock"))[0][0]
    assert head >= 5000, f"only {head} changes were made"
    for f in followers:
        f.check(final)


# A property test of the same guarantee on the storage layer: any interleaving
# of writes and page reads, any page sizes.

ops = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(0, 5)),
        st.tuples(st.just("update"), st.integers(0, 5)),
        st.tuples(st.just("delete"), st.integers(0, 5)),
        st.tuples(st.just("read"), st.integers(1, 4)),
    ),
    min_size=1,
    max_size=60,
)


def test_any_interleaving_of_writes_and_reads(io_loop, tmp_path_factory, backend, request):
    if backend == "postgres":
        url = request.getfixturevalue("postgres_database")

        def run(schedule):
            pg.empty_schema(url)  # each example starts empty, as each SQLite file does
            io_loop.run_sync(lambda: _interleaving(PostgresDatabase(url, connections=2), schedule))

        examples = 20  # each costs a migration of an empty schema: fewer, for time
    else:

        def run(schedule):
            path = tmp_path_factory.mktemp("prop") / "h.db"
            io_loop.run_sync(lambda: _interleaving(Database(path), schedule))

        examples = 40

    given(schedule=ops)(hsettings(max_examples=examples, deadline=None)(run))()


async def _interleaving(db, schedule) -> None:
    await db.open()
    res = Resources(db)
    followers = [Follower("cursor"), Follower("since")]
    items: list[str] = []
    deleted: set[str] = set()

    async def read(follower: Follower, limit: int) -> bool:
        after_seq, after_time = dl.parse_position(
            None if follower.mode == "cursor" else follower.position,
            follower.position if follower.mode == "cursor" else None,
        )
        page = await db.read(lambda c: dl.read_page(c, after_seq=after_seq, after_time=after_time, limit=limit))
        return follower.take(orjson.loads(orjson.dumps(page.body())))

    try:
        for op, arg in schedule:
            if op == "create" or not items:
                items.append((await res.create_patient({"name": f"p{arg}"}))["id"])
            elif op in ("update", "delete"):
                target = items[arg % len(items)]
                write = (res.patch_patient(target, {"name": f"u{arg}"}, None) if op == "update"
                         else res.delete_patient(target, None))
                if target in deleted:
                    with pytest.raises(NotFound):  # a deleted patient is 404, and only that
                        await write
                else:
                    await write
                    if op == "delete":
                        deleted.add(target)
            else:
                for f in followers:
                    await read(f, arg)
        for f in followers:
            while await read(f, 3):
                pass
        final_page = await db.read(lambda c: dl.read_page(c, after_seq=0, after_time=None, limit=10_000))
        final = {e["server_id"]: e for e in orjson.loads(orjson.dumps(final_page.body()))["changes"]}
        for f in followers:
            f.check(final)
    finally:
        await db.close()
