"""Builds the wheel with the dashboard's files inside the package (the rest is in setup.cfg).

The source tree keeps ``templates/`` and ``static/`` at its top, where people look for them; an installed
server cannot reach the source tree, so the build copies them into ``rover_stream/demo/`` as package data.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: Top-level folders of the source tree, and where they go inside the built package.
DATA_FOLDERS = {"templates": "rover_stream/demo/templates", "static": "rover_stream/demo/static"}


class BuildWithDashboard(build_py):
    def run(self) -> None:
        super().run()
        for source, target in DATA_FOLDERS.items():
            for path in sorted((ROOT / source).rglob("*")):
                if path.is_file():
                    destination = Path(self.build_lib) / target / path.relative_to(ROOT / source)
                    self.mkpath(str(destination.parent))
                    self.copy_file(str(path), str(destination))


setup(cmdclass={"build_py": BuildWithDashboard})
