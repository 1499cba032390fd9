"""SELinuxRelabel=: label the files of the final image for the SELinux policy the image carries.

The policy is the one /etc/selinux/config of the image names (SELINUXTYPE=); its file contexts
(/etc/selinux/TYPE/contexts/files/file_contexts) and its binary policy (the newest
/etc/selinux/TYPE/policy/policy.N) are handed to setfiles, which labels the image root (-r) as
that policy would. `auto` relabels only an image that has a policy, when setfiles is available, and
does not fail the build on setfiles' errors; `yes` (enabled) requires all of that.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.config.enums import Feature
from mkosi.errors import MkosiError
from mkosi.run import run
from mkosi.sandbox import Sandbox, resolve_in_root


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    file_contexts: Path
    binary: Optional[Path]


def policy_type(root: Path) -> Optional[str]:
    """SELINUXTYPE= of the image's /etc/selinux/config (None: no such file or no such line)."""
    config = resolve_in_root(root, "/etc/selinux/config")
    if config is None or not config.is_file():
        return None
    for line in config.read_text(errors="replace").splitlines():
        m = re.fullmatch(r"\s*SELINUXTYPE\s*=\s*[\"']?([^\"'\s]+)[\"']?\s*", line)
        if m:
            return m.group(1)
    return None


def find_policy(root: Path) -> Optional[Policy]:
    """The image's policy, or None when it has none (no config, or no file contexts for its type)."""
    name = policy_type(root)
    if name is None or "/" in name or name in (".", ".."):
        return None
    contexts = resolve_in_root(root, f"/etc/selinux/{name}/contexts/files/file_contexts")
    if contexts is None or not contexts.is_file():
        return None
    policies = resolve_in_root(root, f"/etc/selinux/{name}/policy")
    binaries = sorted((p for p in policies.glob("policy.*") if p.suffix[1:].isdigit()),
                      key=lambda p: int(p.suffix[1:])) if policies is not None and policies.is_dir() else []
    return Policy(name=name, file_contexts=contexts, binary=binaries[-1] if binaries else None)


def setfiles_command(root: Path, policy: Policy) -> list[str]:
    # -m: label every file system of the tree; -F: set the full context, not only the type; -r: the
    # tree is an alternate root (paths in the contexts file are relative to it).
    argv = ["setfiles", "-m", "-F", "-r", str(root)]
    if policy.binary is not None:
        argv += ["-c", str(policy.binary)]
    return [*argv, str(policy.file_contexts), str(root)]


def relabel(root: Path, feature: Feature, sandbox: Sandbox) -> bool:
    """Relabel the image root as SELinuxRelabel= says; True when setfiles ran successfully."""
    if feature == Feature.disabled:
        return False
    required = feature == Feature.enabled
    policy = find_policy(root)
    if policy is None:
        if required:
            name = policy_type(root)
            raise MkosiError("SELinuxRelabel=yes, but the image has no SELinux policy" +
                             (f" (SELINUXTYPE={name} in /etc/selinux/config has no contexts/files/file_contexts)"
                              if name else " (no SELINUXTYPE= in /etc/selinux/config)"),
                             hint="install a policy package (e.g. selinux-policy-default) or set SELinuxRelabel=auto")
        return False
    if sandbox.find("setfiles") is None:
        if required:
            raise MkosiError("SELinuxRelabel=yes, but setfiles is not available",
                             hint="install policycoreutils on the host or in the tools tree")
        log.info(f"Not relabeling for the SELinux policy {policy.name}: setfiles is not available")
        return False
    with log.step(f"Relabeling the image's files for the SELinux policy {policy.name}"):
        proc = run(setfiles_command(root, policy), sandbox=sandbox, check=required, capture=not required)
    if proc.returncode != 0:
        log.warn(f"setfiles failed with exit status {proc.returncode}; the image's SELinux labels may be incomplete "
                 "(SELinuxRelabel=auto ignores this)")
        return False
    return True
