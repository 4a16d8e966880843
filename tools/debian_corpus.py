"""A real-text corpus of about 300k passages from Debian packages: GCIDE dictionary entries, WordNet glosses and
Linux kernel documentation paragraphs.

    apt-get install dict-gcide wordnet-base linux-doc
    python -m tools.debian_corpus debian.jsonl
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

GCIDE = Path("/usr/share/dictd/gcide")
WORDNET = Path("/usr/share/wordnet")
PACKAGES = "dict-gcide wordnet-base linux-doc"  # linux-doc: the release's kernel documentation (6.1 in bookworm)


def _linux_doc() -> Path:
    """The newest installed kernel's documentation (the passages differ between kernel versions: say which)."""
    found = sorted(Path("/usr/share/doc").glob("linux-doc-*/Documentation"),
                   key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)])  # fmt: skip
    return found[-1] if found else Path("/usr/share/doc/linux-doc/Documentation")


LINUX_DOC = _linux_doc()
_DICTD_DIGITS = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_MARKUP = re.compile(r"[{}\\*\"`]|\[1913 Webster\]|\[PJC\]|\[WordNet 1\.5\]")


class MissingPackages(RuntimeError):
    pass


def _dictd_number(text: str) -> int:
    value = 0
    for c in text:
        value = value * 64 + _DICTD_DIGITS[c]
    return value


def gcide_entries() -> Iterator[dict]:
    """One passage per dictionary entry (headwords sharing a definition are indexed once)."""
    with gzip.open(GCIDE.with_suffix(".dict.dz"), "rb") as f:
        data = f.read()
    seen: set[tuple[int, int]] = set()
    with open(GCIDE.with_suffix(".index"), encoding="utf-8") as index:
        for line in index:
            headword, offset, length = line.rstrip("\n").split("\t")
            if headword.startswith("00-"):
                continue
            span = (_dictd_number(offset), _dictd_number(length))
            if span in seen:
                continue
            seen.add(span)
            text = data[span[0] : span[0] + span[1]].decode("utf-8", "replace")
            text = " ".join(_MARKUP.sub(" ", text).split())
            if len(text.split()) >= 4:
                yield {"_id": f"gcide:{span[0]}", "title": headword, "text": text}


def wordnet_glosses() -> Iterator[dict]:
    for pos in ("noun", "verb", "adj", "adv"):
        with open(WORDNET / f"data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):
                    continue  # the licence header
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                count = int(fields[3], 16)
                words = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
                yield {"_id": f"wn:{pos}:{fields[0]}", "title": ", ".join(words), "text": gloss.strip()}


def linux_doc_paragraphs(min_words: int = 8) -> Iterator[dict]:
    for path in sorted(LINUX_DOC.rglob("*.rst.gz")):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            paragraphs = re.split(r"\n\s*\n", f.read())
        name = str(path.relative_to(LINUX_DOC)).removesuffix(".rst.gz")
        for number, paragraph in enumerate(paragraphs):
            text = " ".join(paragraph.split())
            if len(text.split()) >= min_words and not text.startswith(("..", "::", "===", "---")):
                yield {"_id": f"linux:{name}:{number}", "title": "", "text": text}


def debian_documents() -> Iterator[dict]:
    missing = [str(p) for p in (GCIDE.with_suffix(".index"), WORDNET / "data.noun", LINUX_DOC) if not p.exists()]
    if missing:
        raise MissingPackages(f"missing {', '.join(missing)}; run: apt-get install {PACKAGES}")
    yield from gcide_entries()
    yield from wordnet_glosses()
    yield from linux_doc_paragraphs()


def write_debian_corpus(path: str | os.PathLike) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in debian_documents():
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


if __name__ == "__main__":
    print(f"{write_debian_corpus(sys.argv[1] if len(sys.argv) > 1 else 'debian.jsonl'):,} passages")
