"""``MoveRule``'s fast paths give exactly the answers of its general form.

A scan of a million files cannot afford an fnmatch regex and a whole-path parse per file, so ``ignored_name``
turns plain ``X*`` / ``*X`` / ``X`` patterns into string tests and ``refusal_in`` checks only a listed name's
encoding inside a folder that passed ``refusal``. These tests compare both with the general rule over many
names (odd ones included), so the one rule stays one rule.
"""

from __future__ import annotations

import fnmatch
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from splash_flows.config import DEFAULT_IGNORE_PATTERNS
from splash_flows.selection import MoveRule, SourceListing, stream_source
from splash_flows.tiers.base import FileStat, Tier
from splash_flows.tiers.local import LocalTier

PATTERNS = [*DEFAULT_IGNORE_PATTERNS, "*", "a*b", "x?y", "[ab]*", "**", "*.", "*tmp*", "]x", "scan_*_old"]
ALPHABET = "ab.~$*?xyTtmpq]_\n "


def _fnmatch_rule(patterns: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or r"(?!x)x")


def test_ignored_name_matches_fnmatch_for_every_pattern_mix() -> None:
    rng = random.Random(733)
    for k in range(len(PATTERNS) + 1):
        for patterns in (PATTERNS[:k], PATTERNS[k:], rng.sample(PATTERNS, k)):
            rule, reference = MoveRule(patterns, tier="data733"), _fnmatch_rule(patterns)
            names = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 8))) for _ in range(400)]
            names += [*patterns, ".DS_Store", "Thumbs.db", "frame_0001.edf", "frame.edf~", "~$report.docx"]
            for name in names:
                assert rule.ignored_name(name) == (reference.match(name) is not None), (patterns, name)


def test_refusal_in_a_listed_folder_is_refusal_of_the_whole_path() -> None:
    rule = MoveRule(DEFAULT_IGNORE_PATTERNS, tier="data733")
    odd = [os.fsdecode(b"bad\xff"), "caf\u00e9", " ", "  ", "C:", "x:y", "\\lead", "tab\there", "new\nline",
           "a b", "\u2603.edf", os.fsdecode(b"\xe9t\xe9")]
    names = ["frame_0001.edf", *odd]
    folders = ["", "scan", "C:", "x:data", "\\share", " ", "a b", "ALS-1/day_01", *[f"p/{o}" for o in odd], *odd]
    for folder in folders:
        clean = rule.clean_folder(folder)
        for name in names:
            rel = f"{folder}/{name}" if folder else name
            assert rule.refusal_in(folder, clean, rel) == rule.refusal(rel), (folder, name)


def test_stream_source_on_a_local_tier_answers_as_the_generic_walk(tmp_path: Path) -> None:
    """``stream_source`` walks a local tier with ``scan_tree`` (the watcher's walk); any other tier goes through
    ``Tier.walk``. Over an odd tree both give the same files, refusals and unreadable places."""
    root = tmp_path / "data733"
    for rel in ("p/a/frame_1.edf", "p/a/.hidden", "p/a/x.tmp", "p/b/c/deep.edf", "top.edf", "p/caf\u00e9.edf",
                "p/.git/objects.pack", "~lock.edf"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    with open(os.path.join(os.fsencode(root / "p/a"), b"bad_\xff.edf"), "wb") as fh:
        fh.write(b"not utf-8")
    os.mkfifo(root / "p/b/pipe")
    os.symlink(root / "top.edf", root / "p/link.edf")
    (root / "p/b/empty").mkdir()
    tier = LocalTier("data733", root, "xxh3_128")
    rule = MoveRule(DEFAULT_IGNORE_PATTERNS, tier="data733")

    class Generic:  # not a LocalTier: stream_source takes the Tier.walk path
        def walk(self, prefix: str = "", **kwargs: Any) -> Iterator[FileStat]:
            return tier.walk(prefix, **kwargs)

    for prefix in ("", "p", "p/b"):
        local, generic = SourceListing(), SourceListing()
        fast = [s for chunk in stream_source(tier, rule, local, prefix, chunk=2) for s in chunk]
        slow = [s for chunk in stream_source(cast(Tier, Generic()), rule, generic, prefix, chunk=2) for s in chunk]
        assert fast == slow and fast, prefix
        assert sorted(local.refused, key=str) == sorted(generic.refused, key=str)
        assert local.unreadable == generic.unreadable
    assert {s.path for s in fast} == {"p/b/c/deep.edf"}
    assert {r.path for r in local.refused} == {"p/b/pipe"}
