"""HealthSync: the sync server a clinic runs on one box.

Devices work offline and sync patients and health records through the REST
API under ``/api/``; dashboards watch changes arrive live.  The package is
layered so imports point one way::

    web -> services (resources, sync/) -> storage -> (models, errors, clock)

Nothing below ``web/`` imports Tornado.
"""

__version__ = "0.1.0"
