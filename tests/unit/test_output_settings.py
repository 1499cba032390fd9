"""CompressLevel=, OutputExtension= and OutputMode=: parsing, the output's name and the names derived from
it, the compressor command lines, and the mode applied to real files."""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Optional

import pytest

from mkosi.build import move_into_place, write_checksums
from mkosi.compressionlevels import LEVELS, level_arguments, level_error
from mkosi.config import load_args
from mkosi.config.modern import parse_output_extension
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.errors import ConfigError
from mkosi.output import artifacts, compress, make
from mkosi.output.compress import compress_file, compressor_argv
from mkosi.summary import not_implemented, summary_text
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")


def main_image(*argv: str) -> Config:
    return {c.image: c for c in load_args([*argv, "summary"])[1]}["main"]


def modern(wd: Path, settings: str) -> Config:
    write(wd / "mkosi.conf", f"[Output]\n{settings}\n")
    return main_image()


def config_error(wd: Path, settings: str) -> ConfigError:
    write(wd / "mkosi.conf", f"[Output]\n{settings}\n")
    with pytest.raises(ConfigError) as e:
        main_image()
    return e.value


def stage_all(wd: Path, config: Config) -> tuple[Context, list[tuple[artifacts.Artifact, Path]]]:
    """Every declared artifact written to the staging directory, as a build's steps would."""
    staging = wd / "ws/staging"
    staging.mkdir(parents=True, exist_ok=True)
    ctx = Context(Args(), config, wd / "ws", Phase.final, wd / "ws/root", None, staging)
    for a in artifacts.declared(config):
        if a not in artifacts.SUMS and not a.link:
            artifacts.staged(ctx, a).write_text(f"{a.key}\n")
    return ctx, artifacts.collect(ctx)


# ---- they are implemented ----

def test_summary_no_longer_calls_them_not_implemented(wd: Path) -> None:
    config = modern(wd, "Format=disk\nCompressOutput=zstd\nCompressLevel=7\nOutputExtension=img\nOutputMode=0640")
    assert not {"CompressLevel", "OutputExtension", "OutputMode"} & set(not_implemented(config))
    text = summary_text(*load_args(["summary"]))
    for line in ("CompressLevel=7", "OutputExtension=img", "OutputMode=0640"):
        assert line in text
    assert not any("not implemented" in t for t in text.splitlines() if "Compress" in t or "Output" in t)


# ---- parsing ----

@pytest.mark.parametrize(("value", "parsed"), [("img", "img"), (".img", "img"), (" qcow ", "qcow"),
                                                ("raw.part", "raw.part")])
def test_an_extension_is_kept_without_its_dot(value: str, parsed: str) -> None:
    assert parse_output_extension(value) == parsed


@pytest.mark.parametrize("value", [".", "a/b", "..img", "img.", "a b"])
def test_a_bad_extension_is_an_error_naming_the_setting(wd: Path, value: str) -> None:
    with pytest.raises(ValueError):
        parse_output_extension(value)
    e = config_error(wd, f"Format=disk\nOutputExtension={value}")
    assert "OutputExtension" in str(e) and "mkosi.conf:3" in str(e)


def test_an_empty_extension_is_the_formats_again(wd: Path) -> None:
    write(wd / "mkosi.conf.d/10-a.conf", "[Output]\nOutputExtension=img\n")
    write(wd / "mkosi.conf.d/20-b.conf", "[Output]\nOutputExtension=\n")
    config = modern(wd, "Format=disk")
    assert config.output_extension is None and config.output == wd / "image.raw"


def test_the_level_and_the_mode_are_parsed(wd: Path) -> None:
    config = modern(wd, "Format=tar\nCompressOutput=gzip\nCompressLevel=9\nOutputMode=640")
    assert config.compress_level == 9 and config.output_mode == 0o640
    assert main_image("--compress-level=1", "--output-mode=0600").compress_level == 1
    assert main_image("--output-mode=0600").output_mode == 0o600


@pytest.mark.parametrize("settings", ["CompressLevel=high", "OutputMode=0999", "OutputMode=rw-r--r--"])
def test_bad_values_are_errors_naming_file_line_and_setting(wd: Path, settings: str) -> None:
    e = config_error(wd, f"Format=disk\n{settings}")
    assert "mkosi.conf:3" in str(e) and settings.split("=")[0] in str(e)


@pytest.mark.parametrize(("compression", "level"), [
    ("xz", -1), ("xz", 10), ("zstd", -1), ("zstd", 23), ("gzip", 0), ("gzip", 10),
])
def test_a_level_out_of_the_compressors_range_is_an_error(wd: Path, compression: str, level: int) -> None:
    fmt = "tar" if compression == "gzip" else "disk"
    e = config_error(wd, f"Format={fmt}\nCompressOutput={compression}\nCompressLevel={level}")
    low, high = LEVELS[compression]
    assert "mkosi.conf:4" in str(e) and "CompressLevel" in str(e)
    assert f"{low} to {high}" in str(e) and compression in str(e)


def test_the_level_is_checked_against_what_yes_means(wd: Path) -> None:
    # CompressOutput=yes is zstd in a modern tree, but xz for CentOS 8: 10 is too high for xz.
    assert modern(wd, "Format=tar\nCompressOutput=yes\nCompressLevel=10").compress_level == 10
    e = config_error(wd, "Format=tar\nCompressOutput=yes\nCompressLevel=10\n[Distribution]\nDistribution=centos\n"
                         "Release=8")
    assert "xz" in str(e)


def test_a_level_without_compression_does_nothing(wd: Path) -> None:
    config = modern(wd, "Format=disk\nCompressLevel=99")
    assert config.output_compression is None and config.compress_level == 99


def test_sub_images_inherit_the_level_and_may_set_their_own(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Output]\nFormat=disk\nCompressOutput=zstd\nCompressLevel=15\n")
    write(wd / "mkosi.images/a.conf", "[Output]\nFormat=cpio\nCompressOutput=zstd\n")
    write(wd / "mkosi.images/b.conf", "[Output]\nFormat=cpio\nCompressOutput=xz\nCompressLevel=2\n")
    images = {c.image: c for c in load_args(["summary"])[1]}
    assert (images["main"].compress_level, images["a"].compress_level, images["b"].compress_level) == (15, 15, 2)


def test_level_tables() -> None:
    assert level_error("zstd", 19) is None and level_error("xz", 0) is None
    # zstd's 0 is its default level: a main image's CompressLevel=0 (for xz) passed down to a zstd initrd.
    assert level_error("zstd", 0) is None
    assert "no level" in (level_error("lz4", 1) or "")
    assert level_arguments("gzip", None) == []
    with pytest.raises(ValueError, match="out of range"):
        level_arguments("xz", 12)


# ---- the output's name ----

@pytest.mark.parametrize(("settings", "name", "stem"), [
    ("Format=disk\nOutputExtension=img", "image.img", "image"),
    ("Format=disk\nOutputExtension=.img\nCompressOutput=xz", "image.img.xz", "image"),
    ("Format=disk\nOutputExtension=img\nCompressOutput=zstd\nImageVersion=7.8", "image_7.8.img.zst", "image_7.8"),
    ("Format=disk\nOutputExtension=img\nOutput=foo", "foo.img", "foo"),
    ("Format=disk\nOutputExtension=img\nOutput=foo.img\nCompressOutput=xz", "foo.img.xz", "foo"),  # not twice
    ("Format=disk\nOutputExtension=img\nQCow2=yes", "image.img", "image"),
    ("Format=tar\nOutputExtension=tarball", "image.tarball.zst", "image"),
    ("Format=cpio\nOutputExtension=initramfs\nCompressOutput=zstd", "image.initramfs.zst", "image"),
    ("Format=uki\nOutputExtension=signed.efi", "image.signed.efi", "image"),
])
def test_the_extension_takes_the_formats_place(wd: Path, settings: str, name: str, stem: str) -> None:
    config = modern(wd, settings)
    assert config.output == wd / name
    assert artifacts.output_stem(config) == stem
    assert config.output_link == stem.split("_")[0]  # the link is named without the version


def test_the_classic_default_name_takes_the_extension_too(wd: Path) -> None:
    write(wd / "mkosi.default", "[Output]\nFormat=gpt_ext4\nImageVersion=2\nCompressOutput=xz\n")
    config = main_image("--output-extension=img")
    assert config.output == wd / "image_2.img.xz" and artifacts.output_stem(config) == "image_2"


def test_a_directory_output_has_no_extension(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = modern(wd, "Format=directory\nOutputExtension=img")
    assert config.output == wd / "image"
    assert "OutputExtension= is ignored" in capsys.readouterr().err


def test_derived_artifacts_follow_the_extension(wd: Path) -> None:
    (wd / "out").mkdir()
    config = modern(wd, "Format=disk\nOutputDirectory=out\nOutputExtension=img\nCompressOutput=xz\n"
                        "ImageVersion=3\nManifestFormat=json,changelog\nChecksum=yes\nBMap=yes")
    paths = {a.key: artifacts.path(config, a).name for a in artifacts.declared(config)}
    assert paths["output"] == "image_3.img.xz"
    assert paths["output_manifest_json"] == "image_3.manifest"
    assert paths["output_changelog"] == "image_3.changelog"
    assert paths["output_bmap"] == "image_3.bmap"
    assert paths["output_link"] == "image"
    ctx, made = stage_all(wd, config)
    sums = write_checksums(ctx, made)
    summed = {line.split("*", 1)[1] for line in sums[0][1].read_text().splitlines()}
    assert "image_3.img.xz" in summed and not any(".img." in s and s != "image_3.img.xz" for s in summed)
    move_into_place(config, made + sums)
    assert os.readlink(wd / "out/image") == "image_3.img.xz"
    assert (wd / "out/image_3.manifest").is_file() and (wd / "out/image_3.img.xz").is_file()
    # clean finds what the build wrote.
    assert set(artifacts.to_clean(config, 0)) >= {wd / "out/image_3.img.xz", wd / "out/image_3.manifest",
                                                   wd / "out/SHA256SUMS", wd / "out/image"}


# ---- the compressor command lines ----

@pytest.mark.parametrize(("algorithm", "level", "initrd", "argv"), [
    ("zstd", None, False, ["zstd", "--threads=0", "--stdout", "-q", "-"]),
    ("zstd", 19, False, ["zstd", "--threads=0", "--stdout", "-q", "-19", "-"]),
    ("zstd", 22, False, ["zstd", "--threads=0", "--stdout", "-q", "--ultra", "-22", "-"]),
    ("xz", None, False, ["xz", "--threads=0", "--stdout", "-6"]),
    ("xz", 0, True, ["xz", "--threads=0", "--stdout", "-0", "--check=crc32"]),
    ("xz", 9, False, ["xz", "--threads=0", "--stdout", "-9"]),
    ("gzip", 1, False, ["gzip", "--stdout", "-n", "-1"]),
    ("zlib", 9, False, ["gzip", "--stdout", "-n", "-9"]),
])
def test_the_compressor_command_line(algorithm: str, level: Optional[int], initrd: bool, argv: list[str]) -> None:
    assert compressor_argv(algorithm, initrd, level) == argv


def test_a_bad_level_never_reaches_a_compressor() -> None:
    with pytest.raises(ValueError):
        compressor_argv("gzip", level=11)


def recorded_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    seen: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: Any) -> None:
        seen.append([str(a) for a in argv])
        kwargs["stdout"].write(b"compressed")

    monkeypatch.setattr(compress, "run", fake_run)
    return seen


@pytest.mark.parametrize(("fmt", "compression", "level", "expected"), [
    ("tar", "zstd", 12, ["zstd", "--threads=0", "--stdout", "-q", "-12", "-"]),
    ("tar", "gzip", 2, ["gzip", "--stdout", "-n", "-2"]),
    ("cpio", "xz", 1, ["xz", "--threads=0", "--stdout", "-1", "--check=crc32"]),
])
def test_the_archive_makers_pass_the_level(wd: Path, monkeypatch: pytest.MonkeyPatch, fmt: str,
                                          compression: str, level: int, expected: list[str]) -> None:
    config = modern(wd, f"Format={fmt}\nCompressOutput={compression}\nCompressLevel={level}")
    seen = recorded_runs(monkeypatch)
    monkeypatch.setattr(make, f"make_{fmt}", lambda root, out, **kw: out.write_bytes(b"archive"))
    staging = wd / "ws/staging"
    staging.mkdir(parents=True)
    ctx = Context(Args(), config, wd / "ws", Phase.final, wd / "ws/root", None, staging)
    (make.make_tar_output if fmt == "tar" else make.make_cpio_output)(ctx)
    assert seen == [expected]
    assert artifacts.staged(ctx, artifacts.IMAGE).read_bytes() == b"compressed"


needs = pytest.mark.skipif(not all(shutil.which(t) for t in ("gzip", "xz")), reason="needs gzip and xz")


@needs
def test_real_gzip_records_the_level_it_ran_at(tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.write_bytes(b"mkosi " * 10000)
    for level, flag in ((1, 4), (9, 2)):  # the gzip header's XFL byte: 4 fastest, 2 best
        dst = tmp_path / f"data.{level}.gz"
        compress_file(src, dst, "gzip", level=level)
        assert dst.read_bytes()[8] == flag
        assert gzip.decompress(dst.read_bytes()) == src.read_bytes()


@needs
def test_real_xz_levels_decompress_and_differ(tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.write_bytes(bytes(range(256)) * 2000 + os.urandom(4096))
    out = {}
    for level in (0, 9):
        dst = tmp_path / f"data.{level}.xz"
        compress_file(src, dst, "xz", for_initrd=True, level=level)
        assert lzma.decompress(dst.read_bytes()) == src.read_bytes()
        out[level] = dst.read_bytes()
    assert out[0] != out[9]


# ---- the mode of the output files ----

def test_the_mode_is_applied_to_the_staged_files(wd: Path) -> None:
    (wd / "out").mkdir()
    config = modern(wd, "Format=disk\nOutputDirectory=out\nOutputMode=0640\nManifestFormat=json\nChecksum=yes\n"
                        "OutputExtension=img\n\n[Validation]\n\n[Runtime]\nSsh=yes")
    ctx, made = stage_all(wd, config)
    key = artifacts.staged(ctx, artifacts.SSH_KEY)
    key.chmod(0o600)
    sums = write_checksums(ctx, made)
    artifacts.apply_output_mode(config, made + sums)
    move_into_place(config, made + sums)
    for name in ("image.img", "image.manifest", "SHA256SUMS", "id_ed25519.pub"):
        assert stat.S_IMODE((wd / "out" / name).stat().st_mode) == 0o640, name
    assert stat.S_IMODE((wd / "out/id_ed25519").stat().st_mode) == 0o600  # a secret keeps its mode
    assert (wd / "out/image").is_symlink()


def test_without_a_mode_the_files_keep_theirs(wd: Path) -> None:
    config = modern(wd, "Format=disk")
    ctx, made = stage_all(wd, config)
    image = artifacts.staged(ctx, artifacts.IMAGE)
    image.chmod(0o604)
    artifacts.apply_output_mode(config, made)
    assert stat.S_IMODE(image.stat().st_mode) == 0o604


def test_a_directory_output_keeps_its_mode(wd: Path) -> None:
    config = modern(wd, "Format=directory\nOutputMode=0600")
    staging = wd / "ws/staging"
    (staging / "image").mkdir(parents=True)
    (staging / "image").chmod(0o755)
    ctx = Context(Args(), config, wd / "ws", Phase.final, wd / "ws/root", None, staging)
    for a in artifacts.declared(config):
        if a not in artifacts.SUMS and not a.link and a is not artifacts.IMAGE:
            artifacts.staged(ctx, a).write_text(f"{a.key}\n")
    artifacts.apply_output_mode(config, artifacts.collect(ctx))
    assert stat.S_IMODE((staging / "image").stat().st_mode) == 0o755


@needs
def test_the_oci_layer_is_compressed_at_the_level(tmp_path: Path) -> None:
    from mkosi.output.oci import make_layer

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/data").write_bytes(b"layer " * 10000)
    for level, flag in ((1, 4), (9, 2)):
        layout, work = tmp_path / f"layout{level}", tmp_path / f"work{level}"
        layout.mkdir()
        work.mkdir()
        layer = make_layer(root, layout, work, "gzip", 1700000000, level)
        _, _, digest = layer.descriptor.digest.partition(":")
        assert (layout / "blobs/sha256" / digest).read_bytes()[8] == flag


def classic(wd: Path, settings: str) -> Config:
    write(wd / "mkosi.default", f"[Output]\n{settings}\n")
    return main_image()


@pytest.mark.parametrize(("settings", "compression"), [
    ("Format=tar", "zstd"), ("Format=cpio", "zstd"),                  # the v26 manual's default
    ("Format=disk\nCompressOutput=yes", "zstd"),
    ("Format=tar\n[Distribution]\nDistribution=centos\nRelease=8", "xz"),  # CentOS up to 8 has no zstd
    ("Format=tar\n[Distribution]\nDistribution=alma\nRelease=9", "zstd"),
    ("Format=oci", "gzip"),
    ("Format=disk", "no"),
])
def test_modern_default_compression(wd: Path, settings: str, compression: str) -> None:
    assert modern(wd, settings).compress_output == compression


@pytest.mark.parametrize(("settings", "compression"), [
    ("Format=tar", "xz"), ("Format=cpio", "xz"), ("Format=gpt_ext4\nCompressOutput=yes", "xz")])
def test_classic_default_compression_stays_xz(wd: Path, settings: str, compression: str) -> None:
    assert classic(wd, settings).compress_output == compression
