"""apt's dpkg plan (Debug::pkgDPkgPM output): parsing it, reordering and trimming it for a bootstrap."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mkosi.installers.apt.debs import Archives, dependency_closure, is_essential

# The scaffold extracted with dpkg-deb before dpkg can run in the root: what dpkg needs to unpack
# packages (it checks for sh, rm, tar, diff, ldconfig and start-stop-daemon) with their libraries.
_SCAFFOLD_ROOTS = ("dpkg", "tar", "coreutils", "diffutils", "libc-bin", "dash")


@dataclass(frozen=True)
class DpkgOp:
    action: str                 # "unpack", "configure", "remove", "purge", "triggers-only", "install"
    options: tuple[str, ...]    # e.g. "--no-triggers", "--auto-deconfigure"
    args: tuple[str, ...]       # .deb paths for unpack/install, package names otherwise (may be "--pending")


_DPKG_ACTIONS = {"--unpack": "unpack", "--configure": "configure", "--remove": "remove", "--purge": "purge",
                 "--triggers-only": "triggers-only", "--install": "install"}


# Options of apt's dpkg runs that describe apt's side (its status pipe, its dpkg database and root),
# not the operation: dropped, since the plan is replayed with the image's own dpkg.
_DPKG_VALUE_OPTIONS = ("--status-fd", "--admindir", "--root", "--instdir")


def parse_dpkg_plan(text: str) -> list[DpkgOp]:
    """The dpkg runs apt printed with Debug::pkgDPkgPM=1 (one command line per run)."""
    ops = []
    for line in text.splitlines():
        tokens = line.split()
        if not tokens or os.path.basename(tokens[0]) != "dpkg":
            continue
        action = None
        options: list[str] = []
        args: list[str] = []
        it = iter(tokens[1:])
        for tok in it:
            if tok in _DPKG_VALUE_OPTIONS:
                next(it, None)   # apt's own status pipe and database (apt 3 names its --admindir)
            elif tok.split("=", 1)[0] in _DPKG_VALUE_OPTIONS:
                pass
            elif tok in _DPKG_ACTIONS:
                action = _DPKG_ACTIONS[tok]
            elif tok in ("--pending", "-a"):
                args.append("--pending")
            elif tok.startswith("-"):
                options.append(tok)
            elif tok.startswith("/"):
                # A package of a flat file: repository is named as DIR/./NAME.deb.
                args.append(os.path.normpath(tok))
            else:
                args.append(tok)
        if action is not None and args:
            ops.append(DpkgOp(action, tuple(options), tuple(args)))
    return ops


def format_op(op: DpkgOp) -> str:
    """A plan line in the form parse_dpkg_plan() reads."""
    return " ".join(["dpkg", *op.options, f"--{op.action}", *op.args])


def plan_without(plan: Sequence[DpkgOp], installed: set[str],
             controls: dict[str, dict[str, str]]) -> list[DpkgOp]:
    """apt's plan minus the given packages; adjacent runs of the same kind are merged."""
    ops: list[DpkgOp] = []
    for op in plan:
        if op.action in ("unpack", "install"):
            args = tuple(a for a in op.args if controls[a]["Package"] not in installed)
        else:
            args = tuple(a for a in op.args if a == "--pending" or a.split(":")[0] not in installed)
        if not args:
            continue
        mergeable = ops and ops[-1].action == op.action and ops[-1].options == op.options
        if mergeable and "--pending" not in args and "--pending" not in ops[-1].args:
            ops[-1] = DpkgOp(op.action, op.options, ops[-1].args + args)
        else:
            ops.append(DpkgOp(op.action, op.options, args))
    return ops


def plan_debs(plan: Sequence[DpkgOp]) -> list[Path]:
    debs: dict[Path, None] = {}
    for op in plan:
        if op.action in ("unpack", "install"):
            debs.update((Path(a), None) for a in op.args)
    return list(debs)


def essential_unpack_order(debs: Sequence[Path], archives: Archives) -> list[Path]:
    """Packages without a preinst first, then essential ones with a preinst, then the others; each in
    apt's order. When the first preinst runs, all essential packages without one are on disk, and the
    essential ones are there before the preinsts of packages that are not essential run."""
    def rank(deb: Path) -> int:
        control, members = archives[str(deb)]
        if "preinst" not in members:
            return 0
        return 1 if is_essential(control) else 2

    return sorted(debs, key=rank)  # stable: apt's order within each group


def scaffold_debs(debs: Sequence[Path], controls: dict[str, dict[str, str]]) -> list[Path]:
    """What to extract with dpkg-deb so that the image's dpkg can run: dpkg, sh and the tools dpkg
    insists on, with their libraries. Every file extracted here is written a second time by dpkg, and
    creating files is what costs most, so this is kept small: the rest of the essential set is unpacked
    by dpkg, those without a preinst first (see essential_unpack_order())."""
    names = dependency_closure(controls, _SCAFFOLD_ROOTS)
    return [d for d in debs if controls[str(d)]["Package"] in names]
