"""Format=disk: systemd-repart (from a tools tree) builds a Debian bookworm image from mkosi.repart/
(root, /usr with verity, an ESP), checked with sfdisk, fsck, veritysetup and systemd-dissect; and the
default layout, bootable, boots under qemu to a marker unit."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import run_mkosi
from tests.integration.test_boot import install_marker_unit

pytestmark = pytest.mark.integration

SEED = "0e9a6fe0-68f6-408c-bbeb-136054d20445"

# The type UUIDs of the Discoverable Partitions Specification (x86-64).
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
ROOT_TYPE = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
USR_TYPE = "8484680c-9521-48c6-9c11-b0720656f69e"
USR_VERITY_TYPE = "77ff5f63-e7b6-4633-acf4-1565b864c0e6"
USR_VERITY_SIG_TYPE = "e7bb33fb-06cf-4e81-8273-e543b413e2e2"
HOME_TYPE = "933ac7e1-2eb4-4f13-b844-0e14e2aef915"

DEFINITIONS = {
    "00-esp.conf": "[Partition]\nType=esp\nFormat=vfat\nSizeMinBytes=64M\nSizeMaxBytes=64M\n",
    "10-root.conf": "[Partition]\nType=root\nFormat=ext4\nCopyFiles=/\nExcludeFiles=/usr/\nMinimize=guess\n",
    "20-usr.conf": ("[Partition]\nType=usr\nFormat=erofs\nCopyFiles=/usr:/\nVerity=data\nVerityMatchKey=usr\n"
                    "Minimize=best\n"),
    "21-usr-verity.conf": "[Partition]\nType=usr-verity\nVerity=hash\nVerityMatchKey=usr\nMinimize=best\n",
    "22-usr-verity-sig.conf": "[Partition]\nType=usr-verity-sig\nVerity=signature\nVerityMatchKey=usr\n",
    "30-home.conf": "[Partition]\nType=home\nFormat=ext4\nEncrypt=key-file\nSizeMinBytes=64M\nSizeMaxBytes=64M\n",
}
PASSPHRASE = "correct horse battery staple"


def build(project: Path, label: str, *argv: str) -> float:
    start = time.monotonic()
    proc = run_mkosi(project, *argv, "build", timeout=3000)
    seconds = time.monotonic() - start
    (project / "build.log").write_text(proc.stdout + proc.stderr)
    print(f"{label} build took {seconds:.0f}s", file=sys.stderr)
    return seconds


@pytest.fixture(scope="module")
def usr_image(tmp_path_factory: pytest.TempPathFactory, package_cache: Path, tools_tree: Path) -> Path:
    d = tmp_path_factory.mktemp("repart-usr")
    (d / "mkosi.conf").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=disk
ImageId=repartimg
Seed={SEED}
SplitArtifacts=partitions,roothash

[Validation]
Verity=signed

[Content]
PackageCacheDirectory={package_cache}

[Build]
ToolsTree={tools_tree}
""")
    (d / "mkosi.repart").mkdir()
    for name, text in DEFINITIONS.items():
        (d / "mkosi.repart" / name).write_text(text)
    (d / "mkosi.output").mkdir()
    (d / "mkosi.passphrase").write_text(PASSPHRASE)
    (d / "mkosi.passphrase").chmod(0o600)
    run_mkosi(d, "genkey")
    build(d, "usr-verity disk")
    return d / "mkosi.output"


def partitions(image: Path) -> list[dict[str, object]]:
    out = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True).stdout
    table = json.loads(out)["partitiontable"]
    assert table["sectorsize"] == 512
    return [{**p, "offset": int(p["start"]) * 512, "bytes": int(p["size"]) * 512} for p in table["partitions"]]


def by_type(image: Path) -> dict[str, dict[str, object]]:
    return {str(p["type"]).lower(): p for p in partitions(image)}


def extract(image: Path, part: dict[str, object], target: Path) -> Path:
    """The partition's bytes, copied out of the disk image at its offset."""
    subprocess.run(["dd", f"if={image}", f"of={target}", f"skip={part['offset']}", f"count={part['bytes']}",
                    "iflag=skip_bytes,count_bytes", "bs=1M", "conv=sparse", "status=none"], check=True)
    return target


def entries(ext4: Path, directory: str) -> list[str]:
    """The names in a directory of an ext4 image (debugfs ls -p: /INODE/MODE/UID/GID/NAME/SIZE/)."""
    out = subprocess.run(["debugfs", "-R", f"ls -p {directory}", str(ext4)], capture_output=True, text=True,
                         check=True).stdout
    assert "File not found" not in out
    names = [line.split("/")[5] for line in out.splitlines() if line.startswith("/")]
    assert "." in names, out
    return [n for n in names if n not in (".", "..")]


def in_tools(project: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A command with the tools tree's /usr, the way the build runs its commands."""
    return run_mkosi(project, "sandbox", "--", *argv, timeout=600)


def test_the_partition_table_has_the_defined_partitions(usr_image: Path) -> None:
    image = usr_image / "repartimg.raw"
    print(f"usr-verity disk image: {image.stat().st_size} bytes, "
          f"{image.stat().st_blocks * 512} on disk", file=sys.stderr)
    parts = partitions(image)
    assert [str(p["type"]).lower() for p in parts] == [ESP_TYPE, ROOT_TYPE, USR_TYPE, USR_VERITY_TYPE,
                                                       USR_VERITY_SIG_TYPE, HOME_TYPE]
    assert [p["name"] for p in parts] == ["esp", "root-x86-64", "usr-x86-64", "usr-x86-64-verity",
                                          "usr-x86-64-verity-sig", "home"]
    # The verity partition UUIDs are the halves of the root hash, as the specification says.
    usrhash = (usr_image / "repartimg.usrhash").read_text().strip()
    assert len(usrhash) == 64
    assert str(parts[2]["uuid"]).lower().replace("-", "") == usrhash[:32]
    assert str(parts[3]["uuid"]).lower().replace("-", "") == usrhash[32:]


def test_each_file_system_passes_fsck(usr_image: Path, tmp_path: Path) -> None:
    image = usr_image / "repartimg.raw"
    project = usr_image.parent
    types = by_type(image)
    root = extract(image, types[ROOT_TYPE], tmp_path / "root.img")
    subprocess.run(["e2fsck", "-f", "-n", str(root)], check=True, capture_output=True)
    esp = extract(image, types[ESP_TYPE], tmp_path / "esp.img")
    subprocess.run(["fsck.vfat", "-n", str(esp)], check=True, capture_output=True)
    usr = extract(image, types[USR_TYPE], tmp_path / "usr.img")
    in_tools(project, "fsck.erofs", str(usr))
    verity = extract(image, types[USR_VERITY_TYPE], tmp_path / "usr-verity.img")
    usrhash = (usr_image / "repartimg.usrhash").read_text().strip()
    in_tools(project, "veritysetup", "verify", str(usr), str(verity), usrhash)
    # The root has /usr as an empty mount point; /usr holds the image's programs.
    assert entries(root, "/usr") == []
    files = in_tools(project, "dump.erofs", "--path=/bin", "--ls", str(usr)).stdout
    assert "bash" in files


def test_the_split_files_are_the_partitions(usr_image: Path, tmp_path: Path) -> None:
    image = usr_image / "repartimg.raw"
    types = by_type(image)
    for type_uuid, name in ((ESP_TYPE, "esp"), (ROOT_TYPE, "root-x86-64"), (USR_TYPE, "usr-x86-64"),
                            (USR_VERITY_TYPE, "usr-x86-64-verity"), (USR_VERITY_SIG_TYPE, "usr-x86-64-verity-sig"),
                            (HOME_TYPE, "home")):
        split = usr_image / f"repartimg.{name}.raw"
        assert split.exists(), sorted(p.name for p in usr_image.iterdir())
        part = extract(image, types[type_uuid], tmp_path / f"{name}.img")
        assert subprocess.run(["cmp", str(split), str(part)]).returncode == 0, name
    sums = (usr_image / "SHA256SUMS").read_text() if (usr_image / "SHA256SUMS").exists() else ""
    assert "repartimg.roothash" not in sums


def test_the_signature_partition_signs_the_usr_root_hash(usr_image: Path, tmp_path: Path) -> None:
    """systemd-repart signed the root hash with mkosi's verity key (--private-key=, --certificate=)."""
    image = usr_image / "repartimg.raw"
    sig = extract(image, by_type(image)[USR_VERITY_SIG_TYPE], tmp_path / "sig.img").read_bytes()
    data = json.loads(sig.rstrip(b"\0"))
    usrhash = (usr_image / "repartimg.usrhash").read_text().strip()
    assert data["rootHash"] == usrhash
    (tmp_path / "sig.der").write_bytes(base64.b64decode(data["signature"]))
    (tmp_path / "hash").write_text(usrhash)
    cert = usr_image.parent / "mkosi.secure-boot.crt"
    ok = subprocess.run(["openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.der"),
                         "-content", str(tmp_path / "hash"), "-certfile", str(cert), "-CAfile", str(cert),
                         "-purpose", "any", "-out", "/dev/null"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_the_encrypted_home_opens_with_the_passphrase(usr_image: Path, tmp_path: Path) -> None:
    """Encrypt=key-file in a definition: systemd-repart got Passphrase= as --key-file=."""
    image = usr_image / "repartimg.raw"
    home = extract(image, by_type(image)[HOME_TYPE], tmp_path / "home.img")
    dump = subprocess.run(["cryptsetup", "luksDump", str(home)], capture_output=True, text=True, check=True).stdout
    assert "Version:" in dump and "2" in dump.split("Version:")[1].split()[0]
    (tmp_path / "key").write_text(PASSPHRASE)
    subprocess.run(["cryptsetup", "open", "--test-passphrase", f"--key-file={tmp_path / 'key'}", str(home)],
                   check=True, capture_output=True)
    (tmp_path / "wrong").write_text("wrong")
    wrong = subprocess.run(["cryptsetup", "open", "--test-passphrase", f"--key-file={tmp_path / 'wrong'}", str(home)],
                           capture_output=True)
    assert wrong.returncode != 0


def test_systemd_dissect_lists_the_partitions(usr_image: Path) -> None:
    project = usr_image.parent
    out = in_tools(project, "systemd-dissect", "--json=short", str(usr_image / "repartimg.raw")).stdout
    found = {m["designator"]: m for m in json.loads(out)["mounts"]}
    assert {"root", "usr", "usr-verity", "esp"} <= set(found), found
    assert found["root"]["fstype"] == "ext4" and found["usr"]["fstype"] == "erofs"
    assert found["esp"]["fstype"] == "vfat"


def test_the_build_says_what_it_ran(usr_image: Path) -> None:
    log = (usr_image.parent / "build.log").read_text()
    assert "Building the disk image with systemd-repart" in log


# ---- the default layout, bootable ----

@pytest.fixture(scope="module")
def default_boot(tmp_path_factory: pytest.TempPathFactory, package_cache: Path, tools_tree: Path) -> Path:
    d = tmp_path_factory.mktemp("repart-boot")
    (d / "mkosi.conf").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=disk
ImageId=bootdisk
Bootable=yes
SplitArtifacts=partitions

[Content]
PackageCacheDirectory={package_cache}

[Build]
ToolsTree={tools_tree}

[Host]
QemuHeadless=yes
""")
    install_marker_unit(d)
    (d / "mkosi.output").mkdir()
    build(d, "bootable default-layout disk")
    return d


def test_the_default_layout_is_an_esp_and_a_root(default_boot: Path, tmp_path: Path) -> None:
    out = default_boot / "mkosi.output"
    image = out / "bootdisk.raw"
    print(f"bootable disk image: {image.stat().st_size} bytes", file=sys.stderr)
    parts = partitions(image)
    assert [str(p["type"]).lower() for p in parts] == [ESP_TYPE, ROOT_TYPE]
    assert parts[0]["bytes"] == 512 * 1024 * 1024
    esp = extract(image, parts[0], tmp_path / "esp.img")
    subprocess.run(["fsck.vfat", "-n", str(esp)], check=True, capture_output=True)
    listing = subprocess.run(["mdir", "-i", str(esp), "-/", "::"], capture_output=True, text=True,
                             check=True).stdout
    assert "systemd-bootx64.efi" in listing.lower() and ".efi" in listing
    assert "bootdisk" in subprocess.run(["mdir", "-i", str(esp), "::EFI/Linux"], capture_output=True, text=True,
                                        check=True).stdout
    root = extract(image, parts[1], tmp_path / "root.img")
    subprocess.run(["e2fsck", "-f", "-n", str(root)], check=True, capture_output=True)
    # /efi stays an empty mount point in the root.
    assert entries(root, "/efi") == []
    for name in ("bootdisk.esp.raw", "bootdisk.root-x86-64.raw", "bootdisk.efi"):
        assert (out / name).exists(), name


@pytest.mark.slow
def test_the_default_layout_boots(default_boot: Path, tools_tree: Path) -> None:
    # qemu from the host when the tools tree has none (the image was built with the tree's tools).
    host_qemu = [] if (tools_tree / "usr/bin/qemu-system-x86_64").exists() else ["--tools-tree=no"]
    start = time.monotonic()
    proc = run_mkosi(default_boot, *host_qemu, "vm", timeout=900)
    out = proc.stdout + proc.stderr
    print(f"default-layout disk: uefi boot to marker and poweroff {time.monotonic() - start:.0f}s", file=sys.stderr)
    assert "MKOSI-BOOT-MARKER" in out, out[-3000:]
    assert "root=PARTLABEL=root-x86-64" in out


# ---- a verity-protected root from mkosi.repart/, bootable ----

VERITY_DEFINITIONS = {
    "00-esp.conf": "[Partition]\nType=esp\nFormat=vfat\nCopyFiles=/efi:/\nSizeMinBytes=512M\nSizeMaxBytes=512M\n",
    "10-root.conf": ("[Partition]\nType=root\nFormat=squashfs\nCopyFiles=/\nVerity=data\nVerityMatchKey=root\n"
                     "Minimize=best\n"),
    "11-root-verity.conf": "[Partition]\nType=root-verity\nVerity=hash\nVerityMatchKey=root\nMinimize=best\n",
}


@pytest.fixture(scope="module")
def verity_boot(tmp_path_factory: pytest.TempPathFactory, package_cache: Path, tools_tree: Path) -> Path:
    d = tmp_path_factory.mktemp("repart-verity-boot")
    (d / "mkosi.conf").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=disk
ImageId=veritydisk
Bootable=yes
SplitArtifacts=roothash

[Content]
PackageCacheDirectory={package_cache}

[Build]
ToolsTree={tools_tree}

[Host]
QemuHeadless=yes
""")
    (d / "mkosi.repart").mkdir()
    for name, text in VERITY_DEFINITIONS.items():
        (d / "mkosi.repart" / name).write_text(text)
    install_marker_unit(d)
    (d / "mkosi.output").mkdir()
    build(d, "bootable verity-root disk")
    return d


@pytest.mark.slow
def test_a_verity_protected_root_boots_with_the_reported_root_hash(verity_boot: Path, tools_tree: Path) -> None:
    roothash = (verity_boot / "mkosi.output/veritydisk.roothash").read_text().strip()
    host_qemu = [] if (tools_tree / "usr/bin/qemu-system-x86_64").exists() else ["--tools-tree=no"]
    start = time.monotonic()
    proc = run_mkosi(verity_boot, *host_qemu, "vm", timeout=900)
    out = proc.stdout + proc.stderr
    print(f"verity-root disk: uefi boot to marker and poweroff {time.monotonic() - start:.0f}s", file=sys.stderr)
    marker = next((line for line in out.splitlines() if "MKOSI-BOOT-MARKER" in line), None)
    assert marker is not None, out[-3000:]
    assert f"roothash={roothash}" in marker and "root=/dev/mapper/root" in marker and " ro" in marker
