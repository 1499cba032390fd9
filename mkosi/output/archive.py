"""Tree outputs written as archives: tar (xattrs and ACLs kept, numeric owners) and cpio (newc)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from mkosi.run import PathString, run


def source_date_epoch() -> Optional[int]:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    return int(value) if value and value.isdigit() else None


def make_tar(root: Path, output: Path, strip_selinux: bool = False) -> None:
    argv: list[PathString] = [
        "tar", "--create", "--file", output, "--directory", root, "--numeric-owner", "--sort=name",
        "--xattrs", "--xattrs-include=*", "--acls", "--sparse", "--format=pax",
        "--pax-option=delete=atime,delete=ctime",
    ]
    if strip_selinux:
        argv.append("--xattrs-exclude=security.selinux")
    epoch = source_date_epoch()
    if epoch is not None:
        argv += [f"--mtime=@{epoch}", "--clamp-mtime"]
    argv.append(".")
    run(argv)


def make_cpio(root: Path, output: Path) -> None:
    """A newc archive, the format the kernel unpacks as an initrd; sorted for reproducibility."""
    names = run(["find", ".", "-mindepth", "1", "-print0"], cwd=root, capture=True, text=False).stdout
    entries = sorted(n for n in names.split(b"\0") if n)
    with open(output, "wb") as out:
        run(["cpio", "--create", "--null", "--format=newc", "--quiet", "--reproducible"],
            cwd=root, input=b"\0".join(entries) + b"\0", stdout=out, text=False)
