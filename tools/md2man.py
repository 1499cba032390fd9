#!/usr/bin/env python3
"""Turn mkosi.md (pandoc-flavoured Markdown) into the roff man page mkosi(1).

Only the Markdown that mkosi.md uses is understood: a `%` title block, `#`/`##` headings,
paragraphs, fenced code blocks, `*`/`-` and numbered lists, definition lists (a term line, then
`: ` and an indented body), pipe tables, and the inline forms `code`, **bold**, *italic* and
[text](url). setup.py runs it at the start of every build, so the page installed as mkosi(1)
always matches the mkosi.md it was made from.

Usage: tools/md2man.py [mkosi.md [mkosi.1]]   (defaults: the repository's mkosi.md and
mkosi/resources/mkosi.1; `-` as the output writes to stdout)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
BULLET = re.compile(r"^([*-]) +")
NUMBER = re.compile(r"^(\d+)\. +")
INLINE = re.compile(r"(`+)(.+?)\1|\*\*(.+?)\*\*|(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])|\[([^\]]+)\]\(([^)]+)\)")


def escape(text: str) -> str:
    """Escape roff's special characters in plain text."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)


def inline(text: str) -> str:
    """Convert the inline Markdown of one paragraph's text to roff."""
    out = []
    pos = 0
    for m in INLINE.finditer(text):
        out.append(escape(text[pos:m.start()]))
        code, bold, italic, link, url = m.group(2), m.group(3), m.group(4), m.group(5), m.group(6)
        if code is not None:
            out.append(f"\\fB{escape(code.strip())}\\fR")
        elif bold is not None:
            out.append(f"\\fB{inline(bold)}\\fR")
        elif italic is not None:
            out.append(f"\\fI{inline(italic)}\\fR")
        else:
            out.append(inline(link) if link == url or url.endswith(".md") or "://" not in url
                       else f"{inline(link)} <{escape(url)}>")
        pos = m.end()
    out.append(escape(text[pos:]))
    return "".join(out)


def text_lines(lines: list[str]) -> list[str]:
    """A paragraph as roff input lines: joined, converted, and protected from starting with a control character."""
    joined = " ".join(line.strip() for line in lines)
    converted = inline(joined)
    return [("\\&" + converted) if converted.startswith((".", "'")) else converted]


def split_blocks(lines: list[str]) -> list[list[str]]:
    """Blocks separated by blank lines; a fenced code block is one block even with blank lines in it."""
    blocks: list[list[str]] = []
    current: list[str] = []
    fence = False
    for line in lines:
        if line.strip().startswith("```"):
            if not fence and current:
                blocks.append(current)
                current = []
            current.append(line)
            fence = not fence
            if not fence:
                blocks.append(current)
                current = []
            continue
        if fence:
            current.append(line)
        elif not line.strip():
            if current:
                blocks.append(current)
                current = []
        else:
            current.append(line)
    if current:
        blocks.append(current)
    return blocks


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def list_items(block: list[str], pattern: re.Pattern[str]) -> list[tuple[str, list[str]]]:
    """Split a list block into (marker, lines) items; continuation lines belong to the item above."""
    base = indent_of(block[0])
    items: list[tuple[str, list[str]]] = []
    for line in block:
        m = pattern.match(line[base:]) if indent_of(line) == base else None
        if m:
            items.append((m.group(1), [line[base + m.end():]]))
        elif items:
            items[-1][1].append(line)
    return items


def table(block: list[str]) -> list[str]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in block]
    rows = [row for row in rows if not all(re.fullmatch(r":?-+:?", cell) for cell in row)]
    width = max(len(row) for row in rows)
    out = [".TS", "tab(\t) allbox;", " ".join(["lb"] * width), " ".join(["l"] * width) + "."]
    for row in rows:
        out.append("\t".join("T{\n" + text_lines([cell])[0] + "\nT}" for cell in row))
    out.append(".TE")
    return out


def code(block: list[str]) -> list[str]:
    base = indent_of(block[0])
    body = [line[base:] if indent_of(line) >= base else line.lstrip(" ") for line in block[1:-1]]
    out = [".RS 4", ".nf"]
    for line in body:
        escaped = escape(line)
        out.append(("\\&" + escaped) if escaped.startswith((".", "'")) else escaped)
    out += [".fi", ".RE"]
    return out


def convert(markdown: str, version: str) -> str:
    lines = markdown.splitlines()
    title = []
    while lines and lines[0].startswith("%"):
        title.append(lines.pop(0)[1:].strip())
    name, section = "mkosi", "1"
    if title:
        m = re.fullmatch(r"(\S+)\((\w+)\)", title[0])
        if m:
            name, section = m.group(1), m.group(2)
    date = title[2] if len(title) > 2 else ""
    out = ["'\\\" t",
           f'.TH "{name.upper()}" "{section}" "{date}" "{name} {version}" "{name} manual"',
           ".nh", ".ad l"]

    blocks = split_blocks(lines)
    nested = -1  # the indentation of a list nested (in .RS) in a definition or list item, or -1
    for i, block in enumerate(blocks):
        first = block[0]
        indent = indent_of(first)
        stripped = first.strip()
        is_list = bool(BULLET.match(stripped) or NUMBER.match(stripped))
        if nested >= 0 and (indent < nested or (indent == nested and not is_list) or stripped.startswith(": ")):
            out.append(".RE")
            nested = -1
        if stripped.startswith("```"):
            if indent == 0:
                out.append(".PP")
            out += code(block)
        elif indent == 0 and first.startswith("# "):
            out.append(f'.SH "{escape(first[2:].strip().upper())}"')
        elif indent == 0 and first.startswith("## "):
            out.append(f'.SS "{inline(first[3:].strip())}"')
        elif all(line.lstrip().startswith("|") for line in block):
            out += table(block)
        elif stripped.startswith(": "):
            # The body of a definition whose term was the block before.
            body = [first.split(": ", 1)[1], *block[1:]]
            out += text_lines(body)
        elif len(block) > 1 and block[1].startswith(": ") and indent == 0:
            out += [".TP", *text_lines([first]), *text_lines([block[1][2:], *block[2:]])]
        elif i + 1 < len(blocks) and blocks[i + 1][0].startswith(": ") and indent == 0 and len(block) == 1:
            out += [".TP", *text_lines(block)]
        elif is_list:
            pattern = BULLET if BULLET.match(stripped) else NUMBER
            if indent > 0 and nested < 0:
                out.append(".RS")
                nested = indent
            for marker, item in list_items(block, pattern):
                tag = "\\(bu" if pattern is BULLET else f"{marker}."
                out += [f".IP {tag} 4", *text_lines(item)]
        elif indent > 0:
            out += [".IP", *text_lines(block)]
        else:
            out += [".PP", *text_lines(block)]
    if nested >= 0:
        out.append(".RE")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(TOP))
    from mkosi import __version__

    source = Path(argv[0]) if argv else TOP / "mkosi.md"
    target = argv[1] if len(argv) > 1 else str(TOP / "mkosi" / "resources" / "mkosi.1")
    page = convert(source.read_text(), __version__)
    if target == "-":
        sys.stdout.write(page)
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
