"""The guarantee across processes: two ``run.py serve`` processes and a ``run.py worker``
on one PostgreSQL database, writers on both (REST, sync uploads, background batches the
worker applies) and followers on both (download by cursor and by ``since``, websockets),
all at once.  Nothing lost, nothing twice, seq strictly increasing and contiguous, every
acknowledged write seen by every follower, and a change written on one process pushed to
a websocket on the other within a second.

The queue is one parameter (``QUEUES``): the one that follows the database (in the
same PostgreSQL, the default), and Redis.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from datetime import datetime

import pytest

from tests.support.district import (
    Acks,
    CursorFollower,
    SinceFollower,
    WsFollower,
    check_follower,
    check_seq,
    final_state,
    http_client,
    jcall,
    queue_flags,
    rest_writer,
    start_district,
    upload_writer,
)

pytestmark = pytest.mark.slow

#: Where the site's queue lives ("database": in the same PostgreSQL, the default).
QUEUES = ["database", "redis"]

#: How long a change written on one process may take to reach a websocket on another.
PUSH_WITHIN_SECONDS = 1.0


@pytest.fixture(params=QUEUES)
def queue(request: pytest.FixtureRequest) -> list[str]:
    """The flags of the site's queue, for every process of the district."""
    return queue_flags(request.param, request.getfixturevalue("redis_queue") if request.param == "redis" else None)


@pytest.fixture
def district(server_process, tmp_path, postgres_url, queue):
    d = start_district(server_process, tmp_path, postgres_url, queue)
    yield d
    assert d.worker.stop() == 0, "".join(d.worker.log)


def queue_kind(district) -> str:
    """The queue backend /api/health should name for the district's flags."""
    return "redis" if "--queue-url" in district.servers[0].args else "postgres"


def push_delays(acks: Acks, ws: WsFollower) -> list[float]:
    """For each change ``ws`` got that another process wrote (answering it, not in the
    background), how long after its commit stamp (``updated_at``: the database's clock,
    read when the write took the clock row, just before it commits) it arrived here.
    The database runs on this machine, so the clocks are the same one."""
    delays = []
    for s in ws.seen:
        ack = acks.pairs[(s.sid, s.version)]
        if ack.where == ws.where or (s.sid, s.version) in acks.background:
            continue
        stamp = datetime.fromisoformat(s.updated_at.replace("Z", "+00:00")).timestamp()
        delays.append(s.wall - stamp)
    return delays


async def test_writers_and_followers_on_two_processes_see_one_gap_free_history(district):
    client = http_client()
    a, b = district.urls
    acks = Acks()
    sockets = [WsFollower(url, i) for i, url in enumerate(district.urls)]
    for ws in sockets:
        await ws.connect()
    followers = [
        CursorFollower(a, 0, client, limit=1),  # one entry a page: each entry's seq is known
        CursorFollower(b, 1, client, limit=7),
        SinceFollower(a, 0, client, limit=5),
        SinceFollower(b, 1, client, limit=50),
        *sockets,
    ]
    try:
        following = [asyncio.ensure_future(f.run(timeout=180)) for f in followers]
        writers = []
        for i, url in enumerate(district.urls):
            writers += [
                rest_writer(client, url, i, f"rest {i}a", 25, acks),
                rest_writer(client, url, i, f"rest {i}b", 25, acks),
                upload_writer(client, url, i, f"tablet-{i}", 12, acks),
                upload_writer(client, url, i, f"tablet-{i}-bg", 6, acks, background=True),
            ]
        await asyncio.gather(*writers)
        head, rows = final_state(district.database_url)
        for f in followers:
            f.final_head = head
        await asyncio.gather(*following)
        for url in district.urls:  # each names the one database and the one queue
            health = (await jcall(client, "GET", f"{url}/api/health")).json
            assert health["status"] == "ok", health
            assert health["database"]["backend"] == "postgres" and health["database"]["head"] == head
            assert health["queue"]["ok"] is True and health["queue"]["backend"] == queue_kind(district), health
    finally:
        for ws in sockets:
            ws.close()
        client.close()

    assert len(acks.pairs) > 900 and acks.background  # the load was what it says
    for f in followers:
        check_follower(f, acks, head, rows)
    check_seq(followers[0], acks, head, rows)  # type: ignore[arg-type]
    for ws in sockets:
        assert all(x < y for x, y in zip(ws.cursors, ws.cursors[1:], strict=False)), f"{ws}: cursor not increasing"
        delays = push_delays(acks, ws)
        assert len(delays) > 250
        print(f"{ws}: {len(delays)} changes written through the other process pushed in median"
              f" {statistics.median(delays):.3f} s, max {max(delays):.3f} s", file=sys.stderr)
        late = sorted(d for d in delays if d > PUSH_WITHIN_SECONDS)
        assert not late, f"{ws}: {len(late)} of {len(delays)} changes pushed after more than a second: {late[-5:]}"
