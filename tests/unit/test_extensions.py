"""Extension images (sysext, confext, portable) and images on base trees (BaseTrees=, Overlay=,
BaseImage=): the extension-release file, the partitions per architecture, the configuration rows,
the reduction of an overlay's upper layer to what it adds, and a small image built for real with
mkfs.erofs, veritysetup and sfdisk (none of which needs root)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mkosi import basetrees
from mkosi.config import load_args
from mkosi.config.enums import Verity
from mkosi.config.settings import Config, by_dest
from mkosi.dependencies import host_tools
from mkosi.errors import ConfigError, MkosiError
from mkosi.formats import FORMATS, FormatKind, implemented_names
from mkosi.output import extension
from mkosi.output.extension import (
    ExtensionSpec,
    build_extension_image,
    environment_value,
    extension_release,
    parse_env_file,
    partition_label,
    partition_roles,
    partition_types,
    payload_tree,
    release_file,
)
from mkosi.output.filesystems import erofs_argv
from mkosi.output.make import maker
from mkosi.output.verity import parse_signature_blob
from tests.markers import needs_privileges, needs_tools
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")

BOOKWORM = {"ID": "debian", "VERSION_ID": "12", "NAME": "Debian GNU/Linux"}


def load(*argv: str) -> Config:
    _, configs = load_args([*argv, "summary"])
    return configs[-1]


def release(text: str) -> dict[str, str]:
    return parse_env_file(text)


# ---------------------------------------------------------------- extension-release


def test_sysext_release_is_derived_from_the_os_release() -> None:
    text = extension_release("sysext", BOOKWORM, {}, architecture="x86-64")
    assert release(text) == {"ID": "debian", "VERSION_ID": "12", "SYSEXT_SCOPE": "initrd system portable",
                             "ARCHITECTURE": "x86-64"}


def test_confext_release_uses_the_confext_keys() -> None:
    osr = {**BOOKWORM, "CONFEXT_LEVEL": "3", "SYSEXT_LEVEL": "9"}
    values = release(extension_release("confext", osr, {}, architecture="arm64", image_id="cfg",
                                       image_version="1.2"))
    assert values["CONFEXT_LEVEL"] == "3" and "SYSEXT_LEVEL" not in values
    assert values["CONFEXT_SCOPE"] == "initrd system portable"
    assert values["CONFEXT_ID"] == "cfg" and values["CONFEXT_VERSION_ID"] == "1.2"
    assert values["ARCHITECTURE"] == "arm64"


def test_release_keeps_what_the_tree_says_and_takes_the_scope_given() -> None:
    given = {"ID": "_any", "SYSEXT_LEVEL": "1.0", "EXTRA": "kept value"}
    text = extension_release("sysext", BOOKWORM, given, architecture="amd64", scope="system")
    values = release(text)
    assert values["ID"] == "_any" and values["SYSEXT_LEVEL"] == "1.0" and values["EXTRA"] == "kept value"
    assert values["SYSEXT_SCOPE"] == "system"
    assert values["ARCHITECTURE"] == "x86-64"          # systemd's name for dpkg's amd64
    assert "EXTRA='kept value'" in text                 # quoted as os-release(5) wants


def test_release_without_an_os_release_matches_any_os() -> None:
    values = release(extension_release("sysext", {}, {}, architecture="x86-64"))
    assert values["ID"] == "_any" and "VERSION_ID" not in values


def test_release_file_locations() -> None:
    assert release_file("sysext", "btrfs") == "usr/lib/extension-release.d/extension-release.btrfs"
    assert release_file("confext", "cfg_1.2") == "etc/extension-release.d/extension-release.cfg_1.2"


def test_scope_from_environment_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSEXT_SCOPE", "initrd")
    assert environment_value(["A=1", "SYSEXT_SCOPE=system"], "SYSEXT_SCOPE") == "system"
    assert environment_value(["SYSEXT_SCOPE"], "SYSEXT_SCOPE") == "initrd"
    assert environment_value(["A=1"], "SYSEXT_SCOPE") is None


def test_os_release_through_a_link(tmp_path: Path) -> None:
    write(tmp_path / "usr/lib/os-release", 'ID=debian\nVERSION_ID="12"\n# comment\n')
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").symlink_to("../usr/lib/os-release")
    assert extension.os_release_of(tmp_path) == {"ID": "debian", "VERSION_ID": "12"}
    (tmp_path / "etc/os-release").unlink()
    (tmp_path / "etc/os-release").symlink_to("/usr/lib/os-release")  # absolute: inside the tree, not the host
    assert extension.os_release_of(tmp_path)["ID"] == "debian"


# ---------------------------------------------------------------- partitions


@pytest.mark.parametrize(("arch", "root", "verity", "sig"), [
    ("x86-64", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
     "41092b05-9fc8-4523-994f-2def0408b176"),
    ("arm64", "b921b045-1df0-41c3-af44-4c6f280d3fae", "df3300ce-d69f-4c92-978c-9bfb0f38d820",
     "6db69de6-29f4-4758-a7a5-962190f00ce3"),
    ("riscv64", "72ec70a6-cf74-40e6-bd49-4bda08e8f224", "b6ed5582-440b-4209-b8da-5ff7c419ea3d",
     "efe0f087-ea8d-4469-821a-4c2a96a8386a"),
])
def test_partition_types_per_architecture(arch: str, root: str, verity: str, sig: str) -> None:
    assert {r: str(u) for r, u in partition_types("signed", arch).items()} == {
        "root": root, "root-verity": verity, "root-verity-sig": sig}
    assert {r: str(u) for r, u in partition_types("yes", arch).items()} == {"root": root, "root-verity": verity}
    assert {r: str(u) for r, u in partition_types("no", arch).items()} == {"root": root}


def test_partition_roles_and_labels() -> None:
    assert partition_roles("signed") == ["root", "root-verity", "root-verity-sig"]
    assert partition_label("root", "amd64") == "root-x86-64"
    assert partition_label("root-verity-sig", "aarch64") == "root-arm64-verity-sig"


# ---------------------------------------------------------------- the registry and the configuration


@pytest.mark.parametrize("name", ["sysext", "confext", "portable"])
def test_extension_rows(name: str) -> None:
    row = FORMATS[name]
    assert row.kind is FormatKind.extension and row.root_fs == "erofs" and row.read_only_root
    assert name in implemented_names() and row.suffix == ".raw" and row.compressions == ()
    assert "verity" in row.takes
    assert maker(row) is extension.make_extension


def test_verity_defaults_for_extensions(wd: Path) -> None:
    assert load("--format=sysext").verity == Verity.yes
    assert load("--format=directory").verity == Verity.no
    assert load("--format=confext", "--verity=no").verity == Verity.no
    write(wd / "mkosi.secure-boot.key", "key")
    write(wd / "mkosi.secure-boot.crt", "crt")
    assert load("--format=portable").verity == Verity.signed
    assert load("--format=gpt_ext4").verity == Verity.no


def test_extensions_refuse_disk_settings(wd: Path) -> None:
    with pytest.raises(ConfigError, match=r"--usr-only: only applies to GPT disk image formats, not .sysext."):
        load("--format=sysext", "--usr-only=yes")


def test_base_tree_settings(wd: Path) -> None:
    (wd / "base").mkdir()
    config = load("--format=sysext", "--base-tree=base", "--overlay=yes")
    assert config.base_trees == [wd / "base"] and config.overlay
    assert basetrees.uses_overlay(config)
    assert not basetrees.uses_overlay(load("--base-tree=base"))
    assert basetrees.uses_overlay(load("--base-image=base"))        # the classic setting always overlays
    assert basetrees.base_sources(load("--base-tree=base", "--base-image=base")) == [wd / "base", wd / "base"]


def test_a_missing_base_tree_is_an_error_unless_another_image_makes_it(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Content]\nBaseTrees=nothing-here\n")
    with pytest.raises(ConfigError, match=r"mkosi.conf:2: BaseTrees: .*nothing-here. does not exist"):
        load_args(["build"])
    write(wd / "mkosi.conf", "[Output]\nOutputDirectory=out\n[Content]\nBaseTrees=out/base\n")
    assert load_args(["build"])[1][-1].base_trees == [wd / "out/base"]


def test_base_image_setting_is_implemented(wd: Path) -> None:
    for dest in ("base_image", "base_trees", "overlay"):
        assert by_dest(dest).status is None, dest


# ---------------------------------------------------------------- erofs


def test_erofs_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert erofs_argv(tmp_path, tmp_path / "x.raw") == ["mkfs.erofs", "--quiet", str(tmp_path / "x.raw"),
                                                         str(tmp_path)]
    seed = uuid.UUID("0c6b1a56-8c1f-4a4e-a0b4-9b2f57d2c1e4")
    a = erofs_argv(tmp_path, tmp_path / "x.raw", "lz4", seed=seed, epoch=1700000000)
    assert "-zlz4" in a and "-T1700000000" in a
    assert a == erofs_argv(tmp_path, tmp_path / "x.raw", "lz4", seed=seed, epoch=1700000000)
    assert "-zlzma" in erofs_argv(tmp_path, tmp_path / "x.raw", "xz")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "12345")
    assert "-T12345" in erofs_argv(tmp_path, tmp_path / "x.raw")
    with pytest.raises(MkosiError, match="erofs compression 'lzo'"):
        erofs_argv(tmp_path, tmp_path / "x.raw", "lzo")


# ---------------------------------------------------------------- what goes into the image


def test_payload_of_a_sysext_is_usr_and_opt(tmp_path: Path) -> None:
    tree = tmp_path / "root"
    write(tree / "usr/bin/tool", "x")
    write(tree / "opt/app/run", "y")
    write(tree / "etc/config", "z")
    with payload_tree("sysext", tree, tmp_path / "ws") as top:
        assert sorted(p.name for p in top.iterdir()) == ["opt", "usr"]
        assert (top / "usr/bin/tool").read_text() == "x"
        assert not (tree / "usr").exists()
    assert (tree / "usr/bin/tool").exists() and (tree / "opt/app/run").exists()   # moved back


def test_payload_of_a_confext_is_etc_and_a_portable_the_whole_tree(tmp_path: Path) -> None:
    tree = tmp_path / "root"
    write(tree / "usr/bin/tool", "x")
    write(tree / "etc/marker", "z")
    (tmp_path / "ws").mkdir()
    with payload_tree("confext", tree, tmp_path / "ws") as top:
        assert [p.name for p in top.iterdir()] == ["etc"]
    with payload_tree("portable", tree, tmp_path / "ws2") as top:
        assert top == tree


def test_an_empty_payload_is_an_error(tmp_path: Path) -> None:
    tree = tmp_path / "root"
    write(tree / "usr/bin/tool", "x")
    with pytest.raises(MkosiError, match="no /etc"), payload_tree("confext", tree, tmp_path / "ws"):
        pass
    assert (tree / "usr/bin/tool").exists()


# ---------------------------------------------------------------- base trees


def test_kind_of_base_trees(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    assert basetrees.kind_of(tmp_path / "dir") == "directory"
    with tarfile.open(tmp_path / "base.tar", "w"):
        pass
    assert basetrees.kind_of(tmp_path / "base.tar") == "tar"
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(512) + b"EFI PART" + bytes(4096))
    assert basetrees.kind_of(disk) == "disk"
    (tmp_path / "fs.raw").write_bytes(b"hsqs" + bytes(8192))
    assert basetrees.kind_of(tmp_path / "fs.raw") == "filesystem"
    with pytest.raises(MkosiError, match="does not exist"):
        basetrees.kind_of(tmp_path / "missing")


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        write(root / rel, text)
    return root


def test_prune_keeps_only_new_and_changed_entries(tmp_path: Path) -> None:
    base = _tree(tmp_path / "base", {"usr/bin/same": "same", "usr/bin/changed": "old", "usr/lib/mode": "m",
                                     "etc/os-release": "ID=debian\n"})
    (base / "usr/share/empty").mkdir(parents=True)
    (base / "usr/bin/link").symlink_to("same")
    (base / "usr/bin/link2").symlink_to("same")
    upper = _tree(tmp_path / "upper", {"usr/bin/same": "same", "usr/bin/changed": "new", "usr/lib/mode": "m",
                                       "usr/bin/added": "added", "etc/os-release": "ID=debian\n"})
    (upper / "usr/lib/mode").chmod(0o755)
    (upper / "usr/share/empty").mkdir(parents=True)
    (upper / "usr/share/new-empty").mkdir()
    (upper / "usr/bin/link").symlink_to("same")
    (upper / "usr/bin/link2").symlink_to("changed")
    stats = basetrees.prune_against_bases(upper, [base])
    left = sorted(os.fspath(p.relative_to(upper)) for p in upper.rglob("*"))
    assert left == ["usr", "usr/bin", "usr/bin/added", "usr/bin/changed", "usr/bin/link2", "usr/lib",
                    "usr/lib/mode", "usr/share", "usr/share/new-empty"]
    assert stats.unchanged == 3 and stats.deletions == 0
    assert stats.directories == 2      # etc/ and usr/share/empty: only what the base has, left empty


def test_prune_compares_with_the_topmost_base(tmp_path: Path) -> None:
    lower = _tree(tmp_path / "lower", {"usr/file": "one"})
    top = _tree(tmp_path / "top", {"usr/file": "two"})
    upper = _tree(tmp_path / "upper", {"usr/file": "one"})
    basetrees.prune_against_bases(upper, [lower, top])
    assert (upper / "usr/file").exists()       # differs from what the image sees below it ("two")
    upper2 = _tree(tmp_path / "upper2", {"usr/file": "two"})
    basetrees.prune_against_bases(upper2, [lower, top])
    assert not (upper2 / "usr").exists()


def test_base_lookup_never_follows_links_out_of_the_base(tmp_path: Path) -> None:
    outside = _tree(tmp_path / "outside", {"file": "host"})
    base = tmp_path / "base"
    base.mkdir()
    (base / "lib").symlink_to(outside)
    assert basetrees.lower_entry(base, "lib/file") is None
    assert basetrees.lower_entry(base, "lib") is not None
    upper = _tree(tmp_path / "upper", {"lib/file": "host"})
    basetrees.prune_against_bases(upper, [base])
    assert (upper / "lib/file").exists()


def test_whiteouts_are_recognised() -> None:
    def st(mode: int, rdev: int) -> os.stat_result:
        return os.stat_result((mode, 0, 0, 1, 0, 0, 0, 0, 0, 0), {"st_rdev": rdev})

    assert basetrees.is_whiteout(st(0o20000, 0))
    assert not basetrees.is_whiteout(st(0o20666, os.makedev(1, 3)))      # /dev/null
    assert not basetrees.is_whiteout(st(0o100644, 0))


@needs_privileges()   # making a whiteout (a 0:0 character device) needs root's capabilities
def test_deletions_are_dropped(tmp_path: Path) -> None:
    base = _tree(tmp_path / "base", {"var/log/dpkg.log": "log", "usr/keep": "k"})
    upper = tmp_path / "upper"
    (upper / "var/log").mkdir(parents=True)
    os.mknod(upper / "var/log/dpkg.log", 0o20000 | 0o600, os.makedev(0, 0))
    write(upper / "usr/new", "n")
    stats = basetrees.prune_against_bases(upper, [base])
    assert stats.deletions == 1
    assert sorted(os.fspath(p.relative_to(upper)) for p in upper.rglob("*")) == ["usr", "usr/new"]


# ---------------------------------------------------------------- a real image


def _key_and_certificate(d: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mkosi test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    kp, cp = d / "key.pem", d / "cert.pem"
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return kp, cp


@needs_tools("mkfs.erofs", "veritysetup", "sfdisk")
def test_a_signed_sysext_image(tmp_path: Path) -> None:
    tree = tmp_path / "root"
    write(tree / "usr/lib/extension-release.d/extension-release.ext", "ID=_any\n")
    write(tree / "usr/share/ext/marker", "marker\n")
    write(tree / "etc/not-included", "x")
    key, cert = _key_and_certificate(tmp_path)
    seed = uuid.UUID("6f1c0b52-2f0d-4a43-9c27-1b1c9e0b2d61")
    spec = ExtensionSpec(fmt="sysext", tree=tree, output=tmp_path / "ext.raw", workspace=tmp_path / "ws",
                         arch="x86-64", verity="signed", key=key, certificate=cert, seed=seed, epoch=1700000000)
    result = build_extension_image(spec)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(result.output)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    parts = table["partitions"]
    assert [p["type"].lower() for p in parts] == [str(u) for u in partition_types("signed", "x86-64").values()]
    assert [p["name"] for p in parts] == ["root-x86-64", "root-x86-64-verity", "root-x86-64-verity-sig"]
    assert result.roothash is not None
    # The root and verity partitions carry the halves of the root hash as their UUIDs.
    assert parts[0]["uuid"].lower() == str(uuid.UUID(result.roothash[:32]))
    assert parts[1]["uuid"].lower() == str(uuid.UUID(result.roothash[-32:]))
    subprocess.run(["veritysetup", "verify", str(result.images["root"]), str(result.images["root-verity"]),
                    result.roothash], check=True, capture_output=True)
    blob = parse_signature_blob(result.images["root-verity-sig"].read_bytes())
    assert blob["rootHash"] == result.roothash
    assert (tree / "usr/share/ext/marker").exists() and (tree / "etc/not-included").exists()
    # Same inputs, same image.
    again = build_extension_image(ExtensionSpec(**{**spec.__dict__, "output": tmp_path / "again.raw",
                                                   "workspace": tmp_path / "ws2"}))
    assert again.roothash == result.roothash


def test_host_tools_of_extension_images(wd: Path) -> None:
    tools = host_tools(load("--format=sysext"), runtime=False)
    assert {"mkfs.erofs", "sfdisk", "veritysetup"} <= set(tools)
    assert "veritysetup" not in host_tools(load("--format=confext", "--verity=no"), runtime=False)
