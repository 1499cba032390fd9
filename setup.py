"""Build hook: the metadata is in pyproject.toml; this only makes the man page before files are collected.

Every build (sdist, wheel, and a wheel built from the sdist) runs this file first, so
mkosi/resources/mkosi.1 is always made from the mkosi.md being packaged and is never stale. The
Markdown itself goes along as mkosi/resources/mkosi.md (`mkosi documentation` shows it without man).
"""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup

top = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("md2man", top / "tools" / "md2man.py")
assert spec and spec.loader
md2man = importlib.util.module_from_spec(spec)
spec.loader.exec_module(md2man)
md2man.main([str(top / "mkosi.md"), str(top / "mkosi" / "resources" / "mkosi.1")])
shutil.copyfile(top / "mkosi.md", top / "mkosi" / "resources" / "mkosi.md")

setup()
