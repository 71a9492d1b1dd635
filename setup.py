"""The build's file list, which pyproject.toml cannot say: every ``healthsync``
package (found, so a new subpackage cannot be forgotten), and the repository's
``static/`` folder shipped inside the package as ``healthsync/static/`` (the
dashboard and the docs page; ``healthsync.web.files`` finds it there).  Everything
else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["healthsync", "healthsync.*"]), "healthsync.static"],
    package_dir={"healthsync.static": "static"},
    package_data={"healthsync.static": ["**/*"]},
    include_package_data=False,
)
