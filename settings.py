"""``import settings`` from a checkout (``run.py``'s folder, the tests) gets
``healthsync.settings`` itself, where every setting is declared: the same module
object, so what is set on one is seen through the other."""

import sys

from healthsync import settings as _settings

sys.modules[__name__] = _settings
