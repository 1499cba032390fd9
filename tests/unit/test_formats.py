"""The output format registry: a made-up format is one row plus one maker function, and every part of
mkosi that asks about formats (configuration, summary, output name, the build's maker dispatch) sees it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mkosi import formats
from mkosi.config import load_args
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.errors import ConfigError, MkosiError
from mkosi.formats import Format, FormatKind
from mkosi.output import artifacts
from mkosi.output.make import make_outputs, maker, resolve
from mkosi.summary import image_json, summary_dict, summary_text

pytestmark = pytest.mark.usefixtures("fixed_host")

MADE = "tests.unit.test_formats"


def make_madeup(ctx: Context) -> None:
    """The made-up format's maker: the list of the tree's files, one per line."""
    names = sorted(str(p.relative_to(ctx.root)) for p in ctx.root.rglob("*"))
    artifacts.staged(ctx, artifacts.IMAGE).write_text("\n".join(names) + "\n")


@pytest.fixture
def madeup() -> Iterator[Format]:
    row = formats.register(Format("madeup", FormatKind.archive, "a list of the image's files", suffix=".lst",
                                  compressions=("zstd",), maker=f"{MADE}:make_madeup"))
    yield row
    formats.unregister(row.name)


@pytest.fixture
def needy() -> Iterator[Format]:
    row = formats.register(Format("needy", FormatKind.efi, "needs Bootable=, refuses Checksum=", suffix=".efi",
                                  takes=("bootable",), needs=("bootable",), refuses=("checksum",),
                                  maker=f"{MADE}:make_madeup"))
    yield row
    formats.unregister(row.name)


def load(*argv: str) -> Config:
    _, configs = load_args([*argv, "summary"])
    return configs[0]


def load_error(*argv: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load(*argv)
    return e.value


def test_a_registered_format_is_parsed_named_and_summarized(wd: Path, madeup: Format) -> None:
    config = load("--format=madeup", "--compress-output=zstd")
    assert config.format == "madeup" and config.format.row is madeup
    assert config.output == wd / "image.lst.zst"
    # The other artifacts are named after the stem, without the new format's suffix.
    assert artifacts.output_stem(config) == "image"
    assert artifacts.written(config, artifacts.MANIFEST) == wd / "image.manifest"
    data = summary_dict(Args(), config)
    assert data["Output"]["Format"] == "madeup"
    assert data["Outputs"]["output"] == str(wd / "image.lst.zst")
    assert "image.lst.zst" in summary_text(Args(), [config])
    assert image_json(Args(), config)["Outputs"]["output"] == str(wd / "image.lst.zst")
    # Only what the row says it can write.
    assert "use zstd" in str(load_error("--format=madeup", "--compress-output=xz"))
    # Settings of disk images are refused, as for every format that does not take them.
    e = load_error("--format=madeup", "--encrypt=all")
    assert e.setting == "--encrypt" and "not 'madeup'" in str(e)


def test_the_build_dispatches_to_the_registered_maker(wd: Path, madeup: Format) -> None:
    config = load("--format=madeup", "--manifest-format=")
    root, staging = wd / "root", wd / "staging"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("x\n")
    staging.mkdir()
    ctx = Context(Args(), config, wd, Phase.final, root, None, staging)
    assert maker(madeup) is make_madeup
    make_outputs(ctx)
    assert (staging / "image.lst").read_text() == "etc\netc/hostname\n"
    assert artifacts.collect(ctx) == [(artifacts.IMAGE, staging / "image.lst")]


def test_a_format_row_needs_and_refuses_settings(wd: Path, needy: Format) -> None:
    e = load_error("--format=needy")
    assert e.setting == "--format" and "'needy' needs Bootable=" in str(e)
    assert load("--format=needy", "--bootable").output == wd / "image.efi"
    e = load_error("--format=needy", "--bootable", "--checksum")
    assert e.setting == "--checksum" and "cannot be used with Format=needy" in str(e)


def test_a_registered_name_is_unique(madeup: Format) -> None:
    with pytest.raises(ValueError):
        formats.register(madeup)
    with pytest.raises(ValueError):
        formats.register(Format("raw_gpt", FormatKind.disk, "an older name of gpt_ext4"))


def test_every_built_in_row_names_a_maker_that_exists() -> None:
    for row in formats.rows():
        if row.status is None:
            assert callable(maker(row)), row.name
        if row.precheck is not None:
            assert callable(resolve(row.precheck)), row.name
    with pytest.raises(MkosiError, match="not implemented yet"):
        maker(Format("pending", FormatKind.tree, "a row without a maker"))


@pytest.mark.parametrize("name,kind,suffix,root_fs", [
    ("directory", FormatKind.tree, "", None), ("subvolume", FormatKind.tree, "", "btrfs"),
    ("tar", FormatKind.archive, ".tar", None), ("cpio", FormatKind.archive, ".cpio", None),
    ("gpt_ext4", FormatKind.disk, ".raw", "ext4"), ("gpt_xfs", FormatKind.disk, ".raw", "xfs"),
    ("gpt_btrfs", FormatKind.disk, ".raw", "btrfs"), ("gpt_squashfs", FormatKind.disk, ".raw", "squashfs"),
    ("plain_squashfs", FormatKind.filesystem, ".raw", "squashfs"), ("uki", FormatKind.efi, ".efi", None),
])
def test_built_in_rows(name: str, kind: FormatKind, suffix: str, root_fs: str | None) -> None:
    row = formats.FORMATS[name]
    assert (row.kind, row.suffix, row.root_fs) == (kind, suffix, root_fs)


def test_format_settings_follow_the_row(wd: Path) -> None:
    # disk is a format of its own (systemd-repart).
    assert load("--format=disk").format == "disk"
    assert load("--format=uki").format == "uki"
    load_args(["--format=uki", "build"])
    # Minimize= only where the row takes it; the message names those formats.
    e = load_error("--format=gpt_xfs", "--minimize")
    assert e.setting == "--minimize" and "gpt_ext4, gpt_btrfs, gpt_squashfs and plain_squashfs" in str(e)
    # Trees are never compressed (before, the directory was named image.xz and left uncompressed).
    assert "directory outputs are not compressed" in str(load_error("--format=directory", "--compress-output=xz"))
    assert load("--format=subvolume", "--compress").compress_fs == "zstd"


def test_tar_only_settings_are_ignored_with_a_warning(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load("--format=cpio", "--tar-strip-selinux-context").format == "cpio"
    assert "TarStripSELinuxContext= only applies to tar, not 'cpio'; ignored" in capsys.readouterr().err
