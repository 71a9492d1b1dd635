"""Where the dashboard's and the docs page's files are.

An installed package (``pip install .``) carries them as ``healthsync/static/``
(the build copies the repository's ``static/`` there); a checkout serves its own
``static/`` beside the package, so ``python run.py`` needs no build step.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


def find_static_dir(package: Path = _PACKAGE) -> Path:
    """The installed copy when there is one, else the checkout's folder."""
    installed = package / "static"
    return installed if (installed / "index.html").is_file() else package.parent / "static"


STATIC_DIR = find_static_dir()
