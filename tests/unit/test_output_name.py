"""Output= in the two configuration languages, and the link to the image that modern trees get.

Classic trees (mkosi.default, --default=FILE, no settings file): Output= is the image's file name.
Modern trees (mkosi.conf, and every image of mkosi.images/): Output= is a prefix that gets the format's
and the compression's suffixes, and OutputDirectory/PREFIX links to the image."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mkosi.build import check_outputs, move_into_place, write_checksums
from mkosi.config import load_args
from mkosi.config.enums import ConfigLanguage
from mkosi.config.layout import tree_language
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.errors import MkosiError
from mkosi.output import artifacts
from mkosi.summary import outputs, summary_json
from tests.unit.conftest import run_main as run
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")


def load(*argv: str) -> dict[str, Config]:
    return {c.image: c for c in load_args([*argv, "summary"])[1]}


def main_image(*argv: str) -> Config:
    return load(*argv)["main"]


# ---- which language a tree speaks ----

def test_the_top_level_files_decide_the_language(wd: Path) -> None:
    assert tree_language(wd, None) == ConfigLanguage.classic  # nothing: the command line alone
    write(wd / "mkosi.conf", "[Output]\nFormat=disk\n")
    assert tree_language(wd, None) == ConfigLanguage.modern
    assert main_image().language == ConfigLanguage.modern
    assert tree_language(wd, wd / "other.conf") == ConfigLanguage.classic  # --default=FILE
    write(wd / "mkosi.default", "[Output]\nFormat=gpt_ext4\n")
    assert tree_language(wd, None) == ConfigLanguage.classic  # mkosi.default is read first
    assert main_image().language == ConfigLanguage.classic


@pytest.mark.parametrize("modern_only", ["mkosi.conf.d/10-a.conf", "mkosi.images/a.conf", "mkosi/mkosi.conf"])
def test_other_modern_only_files_make_a_modern_tree(wd: Path, modern_only: str) -> None:
    write(wd / modern_only, "[Output]\nFormat=directory\n")
    assert main_image().language == ConfigLanguage.modern


def test_the_images_of_mkosi_images_speak_the_modern_language_in_a_classic_tree(wd: Path) -> None:
    write(wd / "mkosi.default", "[Output]\nOutput=main.raw\n")
    write(wd / "mkosi.images/initrd.conf", "[Output]\nFormat=cpio\nOutput=initrd\n")
    images = load()
    assert images["main"].language == ConfigLanguage.classic
    assert images["initrd"].language == ConfigLanguage.modern
    assert images["initrd"].output is not None and images["initrd"].output.name == "initrd.cpio.zst"


def test_summary_shows_the_language(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Output]\nFormat=disk\n")
    assert '"ConfigLanguage": "modern"' in summary_json(*load_args(["summary"]))


# ---- the output's name ----

def test_a_classic_output_is_the_file_name(wd: Path) -> None:
    write(wd / "mkosi.default", "[Output]\nFormat=gpt_ext4\nOutput=foo\nImageVersion=2\nCompressOutput=xz\n")
    config = main_image()
    assert config.output == wd / "foo"
    assert config.output_link is None
    write(wd / "other.conf", "[Output]\nFormat=tar\nOutput=bar\n")
    config = main_image("--default=other.conf")
    assert config.output == wd / "bar" and config.output_link is None


def test_a_classic_default_name_has_version_and_suffixes_but_no_link(wd: Path) -> None:
    write(wd / "mkosi.default", "[Output]\nFormat=gpt_ext4\nImageId=acme\nImageVersion=7.8\nCompressOutput=xz\n")
    config = main_image()
    assert config.output == wd / "acme_7.8.raw.xz" and config.output_link is None


@pytest.mark.parametrize(("settings", "name", "link"), [
    ("Format=disk\nOutput=foo", "foo.raw", "foo"),
    ("Format=disk\nOutput=foo\nCompressOutput=xz", "foo.raw.xz", "foo"),
    ("Format=disk\nOutput=foo.raw\nCompressOutput=xz", "foo.raw.xz", "foo"),    # the format's suffix is there
    ("Format=disk\nOutput=foo.raw.xz\nCompressOutput=xz", "foo.raw.xz", "foo"),  # both are there
    ("Format=disk\nOutput=foo.raw", "foo.raw", "foo"),
    ("Format=disk\nOutput=foo\nImageVersion=2", "foo.raw", "foo"),  # ImageVersion= is the default name's only
    ("Format=tar\nOutput=root", "root.tar.zst", "root"),  # zstd: the modern default
    ("Format=cpio\nOutput=initrd\nCompressOutput=zstd", "initrd.cpio.zst", "initrd"),
    ("Format=directory\nOutput=tree", "tree", None),                 # no suffix: the names are the same
    ("Format=disk\nImageId=acme\nImageVersion=7.8\nCompressOutput=xz", "acme_7.8.raw.xz", "acme"),
    ("Format=disk", "image.raw", "image"),
    ("Format=directory\nImageVersion=3", "image_3", "image"),
    ("Format=directory", "image", None),
])
def test_a_modern_output_is_a_prefix(wd: Path, settings: str, name: str, link: str | None) -> None:
    write(wd / "mkosi.conf", f"[Output]\n{settings}\n")
    config = main_image()
    assert config.output == wd / name
    assert config.output_link == link


def test_the_command_line_output_is_a_prefix_in_a_modern_tree(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Output]\nFormat=disk\n")
    (wd / "mkosi.output").mkdir()
    for flag in ("-o", "--output"):
        config = main_image(flag, "foo")
        assert config.output == wd / "mkosi.output/foo.raw" and config.output_link == "foo"


def test_an_output_with_a_slash_is_the_full_path_in_both_languages(wd: Path) -> None:
    (wd / "mkosi.output").mkdir()
    for top in ("mkosi.conf", "mkosi.default"):
        write(wd / top, "[Output]\nFormat=gpt_ext4\nCompressOutput=xz\n")
        config = main_image("-o", "sub/foo")
        # mkosi.output/ does not apply either; the image's directory is the output directory.
        assert config.output == wd / "sub/foo" and config.output_dir == wd / "sub"
        assert config.output_link is None
        (wd / top).unlink()


def test_sub_images_are_named_and_linked_after_themselves(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Output]\nImageId=acme\nImageVersion=3\nFormat=disk\nOutputDirectory=out\n")
    (wd / "out").mkdir()
    write(wd / "mkosi.images/base/mkosi.conf", "[Output]\nFormat=directory\n")
    write(wd / "mkosi.images/initrd.conf", "[Output]\nFormat=cpio\n")
    write(wd / "mkosi.images/plain.conf", "[Output]\nFormat=directory\nImageVersion=\n")
    images = load()
    assert (images["base"].output, images["base"].output_link) == (wd / "out/base_3", "base")
    assert (images["initrd"].output, images["initrd"].output_link) == (wd / "out/initrd_3.cpio.zst", "initrd")
    assert (images["plain"].output, images["plain"].output_link) == (wd / "out/plain", None)
    assert (images["main"].output, images["main"].output_link) == (wd / "out/acme_3.raw", "acme")
    # The link is declared in the output directory, and summary lists it.
    assert artifacts.written(images["initrd"], artifacts.OUTPUT_LINK) == wd / "out/initrd"
    assert outputs(images["initrd"])["output_link"] == str(wd / "out/initrd")


def test_format_none_has_no_link(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Output]\nFormat=none\nImageVersion=2\n")
    config = main_image()
    assert config.output_link is None
    assert artifacts.declared(config) == []


def test_references_below_the_output_directory_are_looked_for_at_build_time(wd: Path) -> None:
    # %O/initrd, %O/base, %O/extra exist only once the sub-images are built (as links to their outputs).
    write(wd / "mkosi.conf", """
        [Output]
        Format=disk
        OutputDirectory=out

        [Content]
        Initrds=%O/initrd
        BaseTrees=%O/base
        ExtraTrees=%O/extra
    """)
    (wd / "out").mkdir()
    write(wd / "mkosi.images/initrd.conf", "[Output]\nFormat=cpio\nImageVersion=1\n")
    write(wd / "mkosi.images/base.conf", "[Output]\nFormat=directory\nImageVersion=1\n")
    write(wd / "mkosi.images/extra.conf", "[Output]\nFormat=tar\n")
    images = {c.image: c for c in load_args(["build"])[1]}
    main_config = images["main"]
    assert main_config.initrds == [wd / "out/initrd"]
    assert main_config.base_trees == [wd / "out/base"]
    assert [t.source for t in main_config.extra_trees] == [wd / "out/extra"]
    for name in ("initrd", "base", "extra"):
        assert artifacts.written(images[name], artifacts.OUTPUT_LINK) == wd / "out" / name


def test_a_missing_tree_outside_the_output_directory_is_still_an_error(
    wd: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    write(wd / "mkosi.conf", "[Output]\nFormat=disk\nOutputDirectory=out\n\n[Content]\nBaseTrees=elsewhere/base\n")
    (wd / "out").mkdir()
    assert run("build") != 0
    err = capsys.readouterr().err
    assert "elsewhere/base" in err and "does not exist" in err and "Traceback" not in err


# ---- the link ----

def _built(wd: Path, config: Config) -> None:
    """A build's end: every declared artifact staged, then moved into place."""
    staging = wd / "ws/staging"
    staging.mkdir(parents=True, exist_ok=True)
    ctx = Context(Args(), config, wd / "ws", Phase.final, wd / "ws/root", None, staging)
    for a in artifacts.declared(config):
        if a not in artifacts.SUMS and not a.link:
            artifacts.staged(ctx, a).write_text(f"{a.key}\n")
    move_into_place(config, artifacts.collect(ctx))


def modern(wd: Path, settings: str = "ImageVersion=7.8\nCompressOutput=xz") -> Config:
    write(wd / "mkosi.conf", f"[Output]\nFormat=disk\nOutputDirectory=out\n{settings}\n")
    (wd / "out").mkdir(exist_ok=True)
    return main_image()


def test_a_build_links_the_bare_name_to_the_image(wd: Path) -> None:
    config = modern(wd)
    _built(wd, config)
    link = wd / "out/image"
    assert link.is_symlink() and os.readlink(link) == "image_7.8.raw.xz"  # relative
    assert link.read_text() == "output\n"
    assert not [p for p in (wd / "out").iterdir() if p.name.startswith(".mkosi-tmp")]
    # A link alone does not stop a build; the image does.
    with pytest.raises(MkosiError, match=r"image_7\.8\.raw\.xz' already exists"):
        check_outputs(Args(), config)
    for p in (wd / "out").iterdir():
        if p.name != "image":
            p.unlink()
    check_outputs(Args(), config)


def test_a_rebuild_moves_the_link_to_the_new_image(wd: Path) -> None:
    _built(wd, modern(wd, "ImageVersion=1"))
    _built(wd, modern(wd, "ImageVersion=2"))
    assert os.readlink(wd / "out/image") == "image_2.raw"


def test_the_link_points_across_directories(wd: Path) -> None:
    modern(wd, "")
    config = main_image("--output-directory", "links", "-o", "foo")
    (wd / "links").mkdir()
    _built(wd, config)
    assert os.readlink(wd / "links/foo") == "foo.raw"
    assert artifacts.link_output(config) == wd / "links/foo"  # again: replaced, not refused


def test_the_link_never_replaces_a_real_file_or_directory(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = modern(wd)
    (wd / "out/image").write_text("mine\n")
    _built(wd, config)
    assert not (wd / "out/image").is_symlink() and (wd / "out/image").read_text() == "mine\n"
    assert "a file or directory of that name is in the way" in capsys.readouterr().err
    (wd / "out/image").unlink()
    (wd / "out/image").mkdir()
    assert artifacts.link_output(config) is None
    assert (wd / "out/image").is_dir() and not (wd / "out/image").is_symlink()


def test_clean_removes_the_link_but_not_a_file_of_its_name(wd: Path) -> None:
    config = modern(wd)
    _built(wd, config)
    assert (wd / "out/image") in artifacts.to_clean(config, 0)
    assert run("clean") == 0
    assert not (wd / "out/image").is_symlink() and not (wd / "out/image_7.8.raw.xz").exists()
    (wd / "out/image").write_text("mine\n")
    assert (wd / "out/image") not in artifacts.to_clean(config, 0)
    assert run("clean") == 0
    assert (wd / "out/image").read_text() == "mine\n"


def test_the_link_is_not_staged_nor_checksummed(wd: Path) -> None:
    config = modern(wd, "ImageVersion=7.8\n[Validation]\nChecksum=yes")
    assert artifacts.OUTPUT_LINK in artifacts.declared(config)
    staging = wd / "ws/staging"
    staging.mkdir(parents=True)
    ctx = Context(Args(), config, wd / "ws", Phase.final, wd / "ws/root", None, staging)
    for a in artifacts.declared(config):
        if a not in artifacts.SUMS and not a.link:
            artifacts.staged(ctx, a).write_text(f"{a.key}\n")
    made = artifacts.collect(ctx)  # the link is not asked of the build steps
    assert artifacts.OUTPUT_LINK not in [a for a, _ in made]
    sums = write_checksums(ctx, made)
    summed = {line.split("*", 1)[1] for line in sums[0][1].read_text().splitlines()}
    assert "image_7.8.raw" in summed and "image" not in summed
    move_into_place(config, made + sums)
    assert sorted(p.name for p in (wd / "out").iterdir()) == sorted([*summed, "SHA256SUMS", "image"])


def test_the_builtin_initrd_sub_image_is_what_initrds_percent_o_initrd_names(wd: Path) -> None:
    # The public trees' pattern: mkosi.images/initrd.conf includes mkosi-initrd, the main image boots with it.
    write(wd / "mkosi.conf", "[Output]\nFormat=disk\nImageVersion=5\n\n[Content]\nBootable=yes\nInitrds=%O/initrd\n")
    (wd / "mkosi.output").mkdir()
    write(wd / "mkosi.images/initrd.conf", "[Include]\nInclude=mkosi-initrd\n")
    images = load()
    initrd = images["initrd"]
    assert initrd.output == wd / "mkosi.output/initrd_5.cpio.zst"
    assert images["main"].initrds == [artifacts.written(initrd, artifacts.OUTPUT_LINK)] == [wd / "mkosi.output/initrd"]


# ---- WithDocs=: the one default the two languages give differently ----

def test_documentation_is_left_out_in_classic_trees_and_kept_in_modern_ones(wd: Path) -> None:
    assert main_image().with_docs is False                        # the command line alone: classic
    write(wd / "mkosi.default", "[Distribution]\nDistribution=debian\n")
    assert main_image().with_docs is False
    assert main_image("--with-docs").with_docs is True
    (wd / "mkosi.default").unlink()
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=debian\n")
    assert main_image().with_docs is True
    assert main_image("--with-docs=no").with_docs is False
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=debian\n[Content]\nWithDocs=no\n")
    assert main_image().with_docs is False


def test_sub_images_keep_documentation_unless_told(wd: Path) -> None:
    write(wd / "mkosi.default", "[Distribution]\nDistribution=debian\n")
    write(wd / "mkosi.images/plain.conf", "[Output]\nFormat=directory\n")
    write(wd / "mkosi.images/lean.conf", "[Output]\nFormat=directory\n[Content]\nWithDocs=no\n")
    images = load()
    assert images["main"].with_docs is False
    assert images["plain"].with_docs is True and images["lean"].with_docs is False

