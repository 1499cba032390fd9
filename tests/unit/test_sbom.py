"""SPDX and CycloneDX bills of materials, checked with the SPDX tools and the CycloneDX library."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from mkosi import manifest, sbom
from mkosi.config import load_args
from mkosi.config.enums import Distribution, ManifestFormat
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.installers import pacman, rpm
from mkosi.installers.base import PackageInfo
from mkosi.output.artifacts import CYCLONEDX, SPDX, to_clean, written

DEP5 = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: demo

Files: *
Copyright: 2020 Someone
License: GPL-2+

Files: lib/*
Copyright: 2021 Someone Else
License: BSD-3-clause or Expat

Files: odd/*
Copyright: 2021 Other
License: public-domain

License: GPL-2+
 This program is free software...
"""

PACKAGES = [
    PackageInfo(type="deb", name="demo", version="1:2.3+dfsg-1", architecture="amd64", size=4096,
                source="demo-src", source_version="1:2.3+dfsg-1"),
    PackageInfo(type="deb", name="libplain", version="1.0", architecture="all", size=10),
    PackageInfo(type="deb", name="freeform", version="0.1", architecture="amd64", size=10),
]


def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr/share/doc/demo").mkdir(parents=True)
    (root / "usr/share/doc/demo/copyright").write_text(DEP5)
    (root / "usr/share/doc/freeform").mkdir(parents=True)
    (root / "usr/share/doc/freeform/copyright").write_text("This is free software, see GPL.\n")
    return root


def image(sha: str | None = "ab" * 32) -> sbom.ImageInfo:
    return sbom.ImageInfo(name="testimg", version="1.2", distribution="debian", release="bookworm",
                          architecture="x86-64", file_name="testimg_1.2.raw", sha256=sha)


def validate_spdx(doc: dict[str, object], tmp_path: Path) -> list[str]:
    path = tmp_path / "doc.spdx.json"
    path.write_text(json.dumps(doc))
    parsed = parse_file(str(path))
    return [m.validation_message for m in validate_full_spdx_document(parsed)]


def validate_cyclonedx(doc: dict[str, object]) -> object:
    return JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(doc))


@pytest.mark.parametrize("name,expected", [
    ("GPL-2+", "GPL-2.0-or-later"), ("GPL-2", "GPL-2.0-only"), ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPL-2", "LGPL-2.0-only"), ("GPL-3.0-or-later", "GPL-3.0-or-later"), ("Expat", "MIT"),
    ("BSD-3-clause", "BSD-3-Clause"), ("apache-2.0", "Apache-2.0"), ("public-domain", None),
    ("GFDL-1.3+", "GFDL-1.3-or-later"), ("GPLv2+", "GPL-2.0-or-later"), ("LGPLv2", "LGPL-2.0-only"),
])
def test_license_ids(name: str, expected: str | None) -> None:
    assert sbom.spdx_license_id(name) == expected


def test_expressions() -> None:
    assert sbom.spdx_expression("GPL-2+ or Artistic") == ("GPL-2.0-or-later OR Artistic-1.0", [])
    assert sbom.spdx_expression("GPL-2+, LGPL-2.1+") == ("GPL-2.0-or-later AND LGPL-2.1-or-later", [])
    assert sbom.spdx_expression("GPL-3+ with Autoconf-exception-3.0") == \
        ("GPL-3.0-or-later WITH Autoconf-exception-3.0", [])
    assert sbom.spdx_expression("GPL-2+ with OpenSSL exception") == \
        ("LicenseRef-GPL-2.0-or-later-with-OpenSSL-exception", ["LicenseRef-GPL-2.0-or-later-with-OpenSSL-exception"])
    assert sbom.spdx_expression("MIT,")[0] == "MIT"
    assert sbom.spdx_expression("(MIT or")[0] == "MIT"
    expr, refs = sbom.spdx_expression("(MIT or public-domain) and Foo License")
    assert expr == "(MIT OR LicenseRef-public-domain) AND LicenseRef-Foo-License"
    assert refs == ["LicenseRef-public-domain", "LicenseRef-Foo-License"]


ODD_STATEMENTS = ["GPL-2+ with OpenSSL exception", "(MIT or", "and MIT", "Foo (bar) or", "LGPL-2.1+ and, GPL-2+",
                  "GPL-3+ with Autoconf-exception-3.0 or BSD-2-clause", "with", ")MIT(", "public domain",
                  "GPL-2+ or Artistic, and GPL-2+ with Font exception", "Unicode-DFS-2016 or ISC or ZPL-2.1"]


def test_odd_statements_still_give_valid_spdx(tmp_path: Path) -> None:
    pkgs = [PackageInfo(type="deb", name=f"p{i}", version="1", architecture="amd64", size=1, license=text)
            for i, text in enumerate(ODD_STATEMENTS)]
    doc = sbom.spdx_document(image(), pkgs, epoch=0)
    assert validate_spdx(doc, tmp_path) == []
    assert validate_cyclonedx(sbom.cyclonedx_document(image(), pkgs, epoch=0)) is None


def test_dep5_licenses_read_from_copyright_files(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    pkgs = {p.name: p for p in sbom.with_licenses(root, PACKAGES)}
    assert pkgs["demo"].license == "GPL-2+ AND (BSD-3-clause or Expat) AND public-domain"
    assert pkgs["libplain"].license is None, "no copyright file"
    assert pkgs["freeform"].license is None, "a copyright file in free form names no licence"
    db = dataclasses.replace(PACKAGES[1], license="MIT")
    assert sbom.package_license(root, db) == "MIT", "the package database's licence wins"


def test_spdx_document_validates_and_lists_everything(tmp_path: Path) -> None:
    pkgs = sbom.with_licenses(image_root(tmp_path), PACKAGES)
    doc = sbom.spdx_document(image(), pkgs, epoch=1700000000)
    assert validate_spdx(doc, tmp_path) == []
    img = doc["packages"][0]
    assert img["checksums"] == [{"algorithm": "SHA256", "checksumValue": "ab" * 32}]
    by_name = {p["name"]: p for p in doc["packages"][1:]}
    assert set(by_name) == {"demo", "libplain", "freeform"}
    demo = by_name["demo"]
    assert demo["versionInfo"] == "1:2.3+dfsg-1"
    assert demo["licenseDeclared"] == \
        "GPL-2.0-or-later AND (BSD-3-Clause OR MIT) AND LicenseRef-public-domain"
    assert "demo-src 1:2.3+dfsg-1" in demo["sourceInfo"]
    assert "amd64" in demo["comment"]
    assert demo["externalRefs"][0]["referenceLocator"] == \
        "pkg:deb/debian/demo@1%3A2.3%2Bdfsg-1?arch=amd64&distro=debian-bookworm"
    assert by_name["libplain"]["licenseDeclared"] == "NOASSERTION"
    assert [e["licenseId"] for e in doc["hasExtractedLicensingInfos"]] == ["LicenseRef-public-domain"]
    contains = [r for r in doc["relationships"] if r["relationshipType"] == "CONTAINS"]
    assert len(contains) == 3
    assert doc["creationInfo"]["created"] == "2023-11-14T22:13:20Z"


def test_spdx_invalid_document_is_rejected(tmp_path: Path) -> None:
    """The validator is real: a licence id it does not know makes it complain."""
    doc = sbom.spdx_document(image(), PACKAGES, epoch=0)
    doc["packages"][1]["licenseDeclared"] = "LicenseRef-missing"
    assert validate_spdx(doc, tmp_path) != []


def test_spdx_is_deterministic_and_namespace_follows_content() -> None:
    a = sbom.spdx_document(image(), PACKAGES, epoch=5)
    assert a == sbom.spdx_document(image(), list(reversed(PACKAGES)), epoch=5)
    b = sbom.spdx_document(image("cd" * 32), PACKAGES, epoch=5)
    assert a["documentNamespace"] != b["documentNamespace"]


def test_cyclonedx_document_validates(tmp_path: Path) -> None:
    pkgs = sbom.with_licenses(image_root(tmp_path), PACKAGES)
    doc = sbom.cyclonedx_document(image(), pkgs, epoch=1700000000)
    assert validate_cyclonedx(doc) is None
    meta = doc["metadata"]["component"]
    assert meta["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert meta["type"] == "operating-system"
    comps = {c["name"]: c for c in doc["components"]}
    assert set(comps) == {"demo", "libplain", "freeform"}
    demo = comps["demo"]
    assert demo["version"] == "1:2.3+dfsg-1"
    # Not every part has an SPDX id: CycloneDX gets the statement as a name.
    assert demo["licenses"] == [{"license": {"name": "GPL-2+ AND (BSD-3-clause or Expat) AND public-domain"}}]
    props = {p["name"]: p["value"] for p in demo["properties"]}
    assert props["mkosi:package:source"] == "demo-src"
    assert props["mkosi:package:architecture"] == "amd64"
    assert doc["serialNumber"].startswith("urn:uuid:")
    assert doc["dependencies"][0]["dependsOn"] == [c["bom-ref"] for c in doc["components"]]


def test_cyclonedx_single_id_and_no_hash_for_directories() -> None:
    pkgs = [dataclasses.replace(PACKAGES[1], license="Expat")]
    doc = sbom.cyclonedx_document(image(None), pkgs)
    assert validate_cyclonedx(doc) is None
    assert doc["components"][0]["licenses"] == [{"license": {"id": "MIT"}}]
    assert "hashes" not in doc["metadata"]["component"]


def test_cyclonedx_invalid_document_is_rejected() -> None:
    doc = sbom.cyclonedx_document(image(), PACKAGES)
    doc["components"][0]["licenses"] = [{"license": {"id": "Not-A-Licence"}}]
    assert validate_cyclonedx(doc) is not None


class FakePlugin:
    def installed_packages(self, ctx: Context) -> list[PackageInfo]:
        return list(PACKAGES)


def test_written_next_to_the_json_manifest_with_the_output_checksum(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mkosi.manifest.plugin", lambda d: FakePlugin())
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "out"
    config = dataclasses.replace(
        Config(), distribution=Distribution.debian, release="bookworm", architecture="x86-64",
        image_id="testimg", image_version="1.2", output=out / "testimg_1.2.raw", output_dir=out,
        manifest_format=[ManifestFormat.json, ManifestFormat.spdx, ManifestFormat.cyclonedx])
    root = image_root(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    ctx = Context(Args(), config, tmp_path, Phase.final, root, None, staging)
    manifest.write_manifests(ctx)
    assert (staging / "testimg_1.2.manifest").exists()
    assert "license" not in json.loads((staging / "testimg_1.2.manifest").read_text())["packages"][0]
    # The package databases may be cleaned away before the output is made.
    (root / "usr/share/doc/demo/copyright").unlink()
    raw = staging / "testimg_1.2.raw"
    raw.write_bytes(b"disk image")
    manifest.write_sboms(ctx)
    documents = [staging / "testimg_1.2.spdx.json", staging / "testimg_1.2.cdx.json"]
    assert all(p.exists() for p in documents)
    sha = manifest.sha256_file(raw)
    spdx = json.loads(documents[0].read_text())
    assert spdx["packages"][0]["checksums"][0]["checksumValue"] == sha
    assert validate_spdx(spdx, tmp_path) == []
    assert "GPL-2.0-or-later" in next(p for p in spdx["packages"] if p["name"] == "demo")["licenseDeclared"]
    cdx = documents[1].read_text()
    assert json.loads(cdx)["metadata"]["component"]["hashes"][0]["content"] == sha
    assert validate_cyclonedx(json.loads(cdx)) is None


def test_not_written_unless_asked(tmp_path: Path) -> None:
    ctx = Context(Args(), Config(), tmp_path, Phase.final, tmp_path / "root", None, tmp_path)
    manifest.write_sboms(ctx)
    assert list(tmp_path.iterdir()) == []


def test_setting_names_the_files(wd: Path, fixed_host: None) -> None:
    (wd / "mkosi.default").write_text("[Output]\nManifestFormat=json,spdx,cyclonedx\nImageId=foo\n"
                                      "Format=tar\n")
    config = load_args(["summary"])[1][0]
    assert config.manifest_format == [ManifestFormat.json, ManifestFormat.spdx, ManifestFormat.cyclonedx]
    assert written(config, SPDX) == wd / "foo.spdx.json"
    assert written(config, CYCLONEDX) == wd / "foo.cdx.json"
    assert wd / "foo.cdx.json" in to_clean(config, 0), "mkosi clean removes them"


def test_rpm_and_pacman_databases_give_licences() -> None:
    text = ("bash\t(none)\t5.2.26\t1.fc40\tx86_64\t8000\tbash-5.2.26-1.fc40.src.rpm\tGPL-3.0-or-later\n"
            "old\t(none)\t1\t1\tnoarch\t1\t(none)\t(none)\n"
            "seven\t(none)\t1\t1\tnoarch\t1\t(none)\n")
    pkgs = {p.name: rpm.to_package_info(p) for p in rpm.parse_query(text)}
    assert pkgs["bash"].license == "GPL-3.0-or-later"
    assert pkgs["old"].license is None and pkgs["seven"].license is None
    assert "%{LICENSE}" in rpm.QUERYFORMAT


def test_pacman_licence_lines(tmp_path: Path) -> None:
    desc = tmp_path / "var/lib/pacman/local/zstd-1.5-1/desc"
    desc.parent.mkdir(parents=True)
    desc.write_text("%NAME%\nzstd\n\n%VERSION%\n1.5-1\n\n%ARCH%\nx86_64\n\n%LICENSE%\nBSD-3-Clause\n"
                    "GPL-2.0-only OR MIT\n\n")
    [pkg] = pacman.installed_packages(tmp_path)
    assert pkg.license == "BSD-3-Clause AND (GPL-2.0-only OR MIT)"
