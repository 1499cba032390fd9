"""Software bills of materials: the installed packages as SPDX 2.3 JSON and CycloneDX 1.5 JSON.

Both documents are built from the same package list as the JSON manifest (the distribution plugins'
installed_packages()). Licences come from the package database where it records them, else from a
machine-readable (DEP-5) /usr/share/doc/PACKAGE/copyright file. The image itself is the described
item; when the output is a file, its SHA-256 is included. With SOURCE_DATE_EPOCH the documents'
timestamps come from it, and their identifiers are derived from their content, so equal builds give
equal documents.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Optional

from mkosi import __version__
from mkosi.installers.base import PackageInfo

# SPDX licence identifiers the documents may name as such (each is in the SPDX licence list, so
# both validators accept it). Anything else is written as a LicenseRef (SPDX) or a name (CycloneDX).
SPDX_IDS = (
    "0BSD", "AFL-2.1", "AFL-3.0", "AGPL-3.0-only", "AGPL-3.0-or-later", "Apache-1.0", "Apache-1.1",
    "Apache-2.0", "APSL-2.0", "Artistic-1.0", "Artistic-1.0-Perl", "Artistic-2.0", "Beerware",
    "BSD-1-Clause", "BSD-2-Clause", "BSD-2-Clause-Patent", "BSD-3-Clause", "BSD-4-Clause",
    "BSD-Source-Code", "BSL-1.0", "bzip2-1.0.6", "CC-BY-3.0", "CC-BY-4.0", "CC-BY-SA-3.0",
    "CC-BY-SA-4.0", "CC0-1.0", "CDDL-1.0", "CDDL-1.1", "CPL-1.0", "curl", "ECL-2.0", "EPL-1.0",
    "EPL-2.0", "EUPL-1.2", "FSFAP", "FSFUL", "FSFULLR", "FTL", "GFDL-1.1-only", "GFDL-1.1-or-later",
    "GFDL-1.2-only", "GFDL-1.2-or-later", "GFDL-1.3-only", "GFDL-1.3-or-later", "GPL-1.0-only",
    "GPL-1.0-or-later", "GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0-only", "GPL-3.0-or-later", "HPND",
    "ICU", "IJG", "Info-ZIP", "ISC", "LGPL-2.0-only", "LGPL-2.0-or-later", "LGPL-2.1-only",
    "LGPL-2.1-or-later", "LGPL-3.0-only", "LGPL-3.0-or-later", "Libpng", "libpng-2.0", "LPPL-1.3c",
    "MIT", "MIT-0", "MPL-1.1", "MPL-2.0", "MS-PL", "NCSA", "OFL-1.1", "OpenSSL", "PHP-3.01", "PostgreSQL",
    "PSF-2.0", "Python-2.0", "Ruby", "SGI-B-2.0", "Sleepycat", "SSPL-1.0", "TCL", "Unicode-DFS-2016",
    "Unicode-3.0", "Unlicense", "UPL-1.0", "Vim", "W3C", "WTFPL", "X11", "XFree86-1.1", "Zlib",
    "ZPL-2.1",
)
SPDX_EXCEPTIONS = (
    "Autoconf-exception-2.0", "Autoconf-exception-3.0", "Bison-exception-2.2", "Classpath-exception-2.0",
    "GCC-exception-2.0", "GCC-exception-3.1", "Libtool-exception", "LLVM-exception", "OpenSSL-exception",
)
_BY_LOWER = {i.lower(): i for i in SPDX_IDS}
_EXC_BY_LOWER = {i.lower(): i for i in SPDX_EXCEPTIONS}

# Debian copyright-format short names whose SPDX identifier is spelt differently.
DEP5_NAMES = {
    "expat": "MIT", "apache-2": "Apache-2.0", "artistic": "Artistic-1.0", "perl": "Artistic-1.0-Perl",
    "psf-2": "PSF-2.0", "python": "Python-2.0", "zope-2.1": "ZPL-2.1", "mpl-2": "MPL-2.0",
    "mpl-1.1": "MPL-1.1", "cc0": "CC0-1.0", "lppl-1.3c": "LPPL-1.3c", "bsl-1": "BSL-1.0",
    "unicode": "Unicode-DFS-2016", "openssl": "OpenSSL", "ssleay": "OpenSSL",
}
_GNU = re.compile(r"(A?GPL|LGPL|GFDL)(?:-|v)?(\d(?:\.\d)?)(\+|-only|-or-later)?", re.IGNORECASE)


def spdx_license_id(name: str) -> Optional[str]:
    """The SPDX identifier for a licence name (SPDX or Debian copyright-format style), or None."""
    n = name.strip()
    low = n.lower()
    if low in _BY_LOWER:
        return _BY_LOWER[low]
    if low in DEP5_NAMES:
        return DEP5_NAMES[low]
    m = _GNU.fullmatch(n)
    if m:
        family, version, suffix = m.group(1).upper(), m.group(2), (m.group(3) or "").lower()
        if "." not in version:
            version += ".0"
        tail = "-or-later" if suffix in ("+", "-or-later") else "-only"
        candidate = f"{family}-{version}{tail}"
        return _BY_LOWER.get(candidate.lower())
    m = re.fullmatch(r"bsd-([234])-clause", low)
    if m:
        return f"BSD-{m.group(1)}-Clause"
    return None


def license_ref(name: str) -> str:
    """A LicenseRef- identifier for a licence SPDX does not list (letters, digits, '.' and '-')."""
    return "LicenseRef-" + (re.sub(r"[^A-Za-z0-9.]+", "-", name.strip()).strip("-") or "unknown")


_TOKEN = re.compile(r"\(|\)|,|[^\s(),]+")
_OPERATORS = ("and", "or", "with", ",")


def _terms(text: str) -> list[str]:
    """Tokens of a licence statement, with runs of plain words ('OpenSSL exception') joined into one."""
    terms: list[str] = []
    word = False
    for tok in _TOKEN.findall(text):
        if tok in ("(", ")") or tok.lower() in _OPERATORS:
            terms.append(tok)
            word = False
        elif word:
            terms[-1] += " " + tok
        else:
            terms.append(tok)
            word = True
    return terms


def _well_formed(tokens: list[str]) -> bool:
    """operand ((AND|OR) operand)*, where an operand is ID [WITH EXC] or a parenthesised expression."""
    depth = 0
    want_operand = True
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if want_operand:
            if tok == "(":
                depth += 1
            elif tok in ("AND", "OR", "WITH", ")"):
                return False
            else:
                want_operand = False
                if i + 1 < len(tokens) and tokens[i + 1] == "WITH":
                    if i + 2 >= len(tokens) or tokens[i + 2] not in SPDX_EXCEPTIONS:
                        return False
                    i += 2
        elif tok == ")":
            depth -= 1
            if depth < 0:
                return False
        elif tok in ("AND", "OR"):
            want_operand = True
        else:
            return False
        i += 1
    return depth == 0 and not want_operand


def spdx_expression(text: str) -> tuple[str, list[str]]:
    """Turn a licence statement ('GPL-2+ or Artistic', 'MIT AND BSD-3-clause', 'GPL-2 with X') into
    an SPDX licence expression. Returns the expression and the LicenseRef names it had to invent."""
    tokens = _terms(text)
    out: list[str] = []
    refs: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        low = tok.lower()
        if tok in ("(", ")"):
            out.append(tok)
        elif low in ("and", "or", ","):
            out.append("OR" if low == "or" else "AND")
        elif low == "with":
            following = tokens[i + 1] if i + 1 < len(tokens) else ""
            if not out or out[-1] in ("(", ")", "AND", "OR") or following.lower() in (*_OPERATORS, "(", ")", ""):
                i += 1
                continue
            exc = _EXC_BY_LOWER.get(following.lower())
            if exc is not None and not out[-1].startswith("LicenseRef-"):
                out += ["WITH", exc]
            else:
                # An exception SPDX does not list: the licence with it becomes one reference.
                ref = license_ref(f"{out[-1].removeprefix('LicenseRef-')}-with-{following}")
                out[-1] = ref
                refs.append(ref)
            i += 1
        else:
            ident = spdx_license_id(tok)
            if ident is None:
                ident = license_ref(tok)
                refs.append(ident)
            out.append(ident)
        i += 1
    # Drop operators that are not between two operands (e.g. a trailing comma).
    cleaned: list[str] = []
    for tok in out:
        if tok in ("AND", "OR") and (not cleaned or cleaned[-1] in ("AND", "OR", "(")):
            continue
        if tok == ")" and cleaned and cleaned[-1] in ("AND", "OR"):
            cleaned.pop()
        cleaned.append(tok)
    while cleaned and cleaned[-1] in ("AND", "OR"):
        cleaned.pop()
    if not _well_formed(cleaned) and cleaned.count("(") != cleaned.count(")"):
        cleaned = [t for t in cleaned if t not in ("(", ")")]
    if not _well_formed(cleaned):
        # Beyond repair: the whole statement becomes one reference.
        ref = license_ref(text)
        return ref, [ref]
    expr = " ".join(cleaned).replace("( ", "(").replace(" )", ")")
    used = [r for r in refs if r in cleaned]
    return expr, list(dict.fromkeys(used))


def dep5_licenses(text: str) -> list[str]:
    """The licence statements of a machine-readable Debian copyright file (the License: fields of its
    Files: paragraphs, first line only); [] for a copyright file in free form."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if not paragraphs or not re.search(r"^Format:\s*\S", paragraphs[0], re.MULTILINE):
        return []
    found: list[str] = []
    for para in paragraphs:
        if not re.search(r"^Files:", para, re.MULTILINE):
            continue
        m = re.search(r"^License:[ \t]*(.*)$", para, re.MULTILINE)
        if m and m.group(1).strip():
            found.append(m.group(1).strip())
    return list(dict.fromkeys(found))


def combine(statements: list[str]) -> str:
    """The conjunction of several licence statements, each one parenthesised when it has an OR."""
    if len(statements) == 1:
        return statements[0]
    return " AND ".join(f"({s})" if re.search(r"\s(or|OR)\s", s) else s for s in statements)


def package_license(root: Path, pkg: PackageInfo) -> Optional[str]:
    """The licence statement of an installed package: the database's, or its DEP-5 copyright file's."""
    if pkg.license:
        return pkg.license
    copyright = root / "usr/share/doc" / pkg.name / "copyright"
    try:
        text = copyright.read_text(errors="replace")
    except OSError:
        return None
    statements = dep5_licenses(text)
    return combine(statements) if statements else None


def with_licenses(root: Path, packages: list[PackageInfo]) -> list[PackageInfo]:
    return [dataclasses.replace(p, license=package_license(root, p)) for p in packages]


# ---------------------------------------------------------------- the image and its packages

@dataclasses.dataclass(frozen=True)
class ImageInfo:
    name: str
    version: Optional[str]
    distribution: str
    release: str
    architecture: str
    file_name: str
    sha256: Optional[str]          # of the output, when it is a file


PURL_TYPES = {"deb": "deb", "rpm": "rpm", "pacman": "alpm", "ebuild": "ebuild"}


def purl(pkg: PackageInfo, distribution: str, release: str) -> str:
    kind = PURL_TYPES.get(pkg.type, "generic")
    name = urllib.parse.quote(pkg.name, safe="")
    version = urllib.parse.quote(pkg.version, safe="")
    quals = [f"arch={urllib.parse.quote(pkg.architecture, safe='')}"] if pkg.architecture else []
    quals.append(f"distro={urllib.parse.quote(f'{distribution}-{release}', safe='')}")
    ns = "" if kind == "generic" else f"{distribution}/"
    return f"pkg:{kind}/{ns}{name}@{version}?{'&'.join(quals)}"


def _timestamp(epoch: Optional[int]) -> str:
    when = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc) if epoch is not None else \
        datetime.datetime.now(datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _sorted(packages: list[PackageInfo]) -> list[PackageInfo]:
    return sorted(packages, key=lambda p: (p.name, p.architecture, p.version))


def _content_uuid(doc: dict[str, Any]) -> uuid.UUID:
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=5)


def _spdx_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text)


def spdx_document(image: ImageInfo, packages: list[PackageInfo], epoch: Optional[int] = None) -> dict[str, Any]:
    """An SPDX 2.3 document (JSON form): the image as the described package, CONTAINS each package."""
    image_id = "SPDXRef-Image"
    image_pkg: dict[str, Any] = {
        "SPDXID": image_id,
        "name": image.name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "packageFileName": image.file_name,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "description": f"{image.distribution} {image.release} image for {image.architecture}",
    }
    if image.version:
        image_pkg["versionInfo"] = image.version
    if image.sha256:
        image_pkg["checksums"] = [{"algorithm": "SHA256", "checksumValue": image.sha256}]
    spdx_packages = [image_pkg]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": image_id}]
    refs: dict[str, str] = {}
    seen: set[str] = set()
    for p in _sorted(packages):
        ident = _spdx_id(f"SPDXRef-Package-{p.type}-{p.name}-{p.architecture or 'none'}")
        n = 2
        base = ident
        while ident in seen:
            ident, n = f"{base}-{n}", n + 1
        seen.add(ident)
        declared = "NOASSERTION"
        if p.license:
            declared, new_refs = spdx_expression(p.license)
            for r in new_refs:
                refs.setdefault(r, p.license)
            declared = declared or "NOASSERTION"
        entry: dict[str, Any] = {
            "SPDXID": ident,
            "name": p.name,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": declared,
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "LIBRARY",
            "comment": f"architecture: {p.architecture or 'none'}",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": purl(p, image.distribution, image.release)}],
        }
        if p.source:
            entry["sourceInfo"] = f"built from source package {p.source} {p.source_version or p.version}"
        spdx_packages.append(entry)
        relationships.append({"spdxElementId": image_id, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": ident})
    doc: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{image.name} {image.version or ''}".strip(),
        "creationInfo": {"created": _timestamp(epoch), "creators": [f"Tool: mkosi-{__version__}"]},
        "documentDescribes": [image_id],
        "packages": spdx_packages,
        "relationships": relationships,
    }
    if refs:
        doc["hasExtractedLicensingInfos"] = [
            {"licenseId": r, "name": r.removeprefix("LicenseRef-"),
             "extractedText": f"The licence named '{r.removeprefix('LicenseRef-')}' in the package's "
                              f"licence statement '{statement}'."}
            for r, statement in sorted(refs.items())]
    ns = _content_uuid(doc)
    doc["documentNamespace"] = f"https://mkosi.invalid/spdx/{_spdx_id(image.name)}-{ns}"
    return doc


def cyclonedx_licenses(statement: str) -> list[dict[str, Any]]:
    """CycloneDX licence choices: one SPDX id, a valid SPDX expression, or the plain name."""
    expr, refs = spdx_expression(statement)
    if expr and not refs:
        if " " not in expr and expr in SPDX_IDS:
            return [{"license": {"id": expr}}]
        return [{"expression": expr}]
    return [{"license": {"name": statement}}]


def cyclonedx_document(image: ImageInfo, packages: list[PackageInfo],
                       epoch: Optional[int] = None) -> dict[str, Any]:
    """A CycloneDX 1.5 BOM (JSON form): the image as metadata.component, the packages as components."""
    image_ref = f"image:{image.name}"
    component: dict[str, Any] = {"type": "operating-system", "bom-ref": image_ref, "name": image.name,
                                 "description": f"{image.distribution} {image.release} image for "
                                                f"{image.architecture}"}
    if image.version:
        component["version"] = image.version
    if image.sha256:
        component["hashes"] = [{"alg": "SHA-256", "content": image.sha256}]
    components = []
    refs: list[str] = []
    for p in _sorted(packages):
        ref = purl(p, image.distribution, image.release)
        if ref in refs:
            continue
        refs.append(ref)
        c: dict[str, Any] = {"type": "library", "bom-ref": ref, "name": p.name, "version": p.version,
                             "purl": ref}
        if p.license:
            c["licenses"] = cyclonedx_licenses(p.license)
        props = [{"name": "mkosi:package:type", "value": p.type}]
        if p.architecture:
            props.append({"name": "mkosi:package:architecture", "value": p.architecture})
        if p.source:
            props.append({"name": "mkosi:package:source", "value": p.source})
            props.append({"name": "mkosi:package:source_version", "value": p.source_version or p.version})
        c["properties"] = props
        components.append(c)
    doc: dict[str, Any] = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": _timestamp(epoch),
            "tools": {"components": [{"type": "application", "name": "mkosi", "version": __version__}]},
            "component": component,
        },
        "components": components,
        "dependencies": [{"ref": image_ref, "dependsOn": refs}],
    }
    doc["serialNumber"] = f"urn:uuid:{_content_uuid(doc)}"
    return doc


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
