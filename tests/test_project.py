"""The repository itself: what a newcomer reads describes the software, not how it was made."""

from __future__ import annotations

import re
import subprocess

from lightning_helpers import ROOT

#: the word that dates a text to the way it was written (spelled with a class so this file does not say it)
HISTORY_WORD = re.compile(r"s[e]ssion", re.IGNORECASE)
#: this file (the test's name says the word it looks for)
HISTORY_FILES = {"tests/test_project.py"}


def tracked_text_files() -> list[str]:
    """Every file git tracks that exists and reads as UTF-8 text (no NUL byte), relative to the root."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    texts = []
    for name in listed.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        texts.append(name)
    return texts


def test_no_tracked_file_says_session():
    files = tracked_text_files()
    assert "pyproject.toml" in files and "CHANGELOG.md" in files  # the listing works
    offenders = []
    for name in files:
        if name in HISTORY_FILES:
            continue
        lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
        hits = [number for number, line in enumerate(lines, 1) if HISTORY_WORD.search(line)]
        if hits:
            offenders.append(f"{name}: line {', '.join(map(str, hits[:5]))}")
    assert not offenders, "history in the product (it belongs in CHANGELOG.md):\n" + "\n".join(offenders)


def test_the_history_word_pattern_matches_what_it_should():
    assert HISTORY_WORD.search("since " + "Ses" + "sion 13")
    assert not HISTORY_WORD.search("since minimal v13")
