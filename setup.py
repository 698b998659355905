"""Wheels carry the browser page (web/) and the default weights (models/) inside the package, under
xnect_app/_data/, so `pip install xnect_app` works out of the box; editable installs read them from
the checkout (xnect_app/assets.py)."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"web": ["**/*.html", "**/*.css", "**/*.js"], "models": ["*.pt", "*.int8.json", "README.md"]}


class BuildPyWithAssets(build_py):
    def run(self):
        super().run()
        for folder, patterns in SHIPPED.items():
            src = ROOT / folder
            for pattern in patterns:
                for path in src.glob(pattern):
                    dest = Path(self.build_lib) / "xnect_app" / "_data" / folder / path.relative_to(src)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, dest)


setup(cmdclass={"build_py": BuildPyWithAssets})
