"""Helpers the tests share.  Test modules import them from here, never from another
test module (nor from a conftest); ``tests/conftest.py`` turns some into fixtures.

- ``http``: the JSON client over real HTTP (``Api``, ``Response``), ``call`` over urllib,
  a raw chunked POST, and the shapes of sync uploads (``change``, ``upload``...).
- ``servers``: settings for a test app, ``run.py`` as a subprocess (``RunPy``,
  ``ServerProcess``, ``run_cli``).
- ``ws``: a websocket subscriber that records what it receives (``Client``).
- ``faults``: faults of the machine made for real (another process's lock, a full disk).
- ``databases``: database files to start from (schema version 1, a large filled one), the
  latest schema version of a backend, and one SQL statement run straight on either backend.
- ``postgres``: the suite's PostgreSQL (a database of the run's own, an empty schema per test).
- ``redis``: the suite's Redis (a queue of one's own on it) and a throwaway ``redis-server``.
- ``dashboard``: seeding a server for the browser tests over plain HTTP.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
