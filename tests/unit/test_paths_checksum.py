from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from splash_flows.checksum import hash_file, new_hasher
from splash_flows.errors import ConfigError, PathEscapeError
from splash_flows.paths import normalize_relpath, relpath_under, safe_join


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "", ".", "a/\x00b", "C:/x", "\\\\srv\\x"])
def test_refuses_escaping_paths(tmp_path: Path, bad: str) -> None:
    with pytest.raises(PathEscapeError):
        safe_join(tmp_path, bad, tier="t")


def test_symlink_out_of_root_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", root / "link")
    os.symlink(tmp_path, root / "dirlink")
    with pytest.raises(PathEscapeError, match="outside the tier root"):
        safe_join(root, "link", tier="data733")
    with pytest.raises(PathEscapeError):
        safe_join(root, "dirlink/secret", tier="data733")


def test_symlink_inside_root_allowed(tmp_path: Path) -> None:
    (tmp_path / "a.edf").write_text("x")
    os.symlink(tmp_path / "a.edf", tmp_path / "b.edf")
    assert safe_join(tmp_path, "b.edf") == tmp_path / "b.edf"


def test_normalises() -> None:
    assert normalize_relpath("./a//b/./c.edf") == "a/b/c.edf"
    assert normalize_relpath("ALS 00622/scan ü 1.edf") == "ALS 00622/scan ü 1.edf"


def test_relpath_under(tmp_path: Path) -> None:
    assert relpath_under(tmp_path, tmp_path / "x" / "y") == "x/y"
    with pytest.raises(PathEscapeError):
        relpath_under(tmp_path / "x", tmp_path / "y")


@given(st.text(min_size=1, max_size=40))
def test_normalised_paths_never_escape(raw: str) -> None:
    try:
        clean = normalize_relpath(raw)
    except PathEscapeError:
        return
    assert not clean.startswith("/")
    assert ".." not in clean.split("/")


@pytest.mark.parametrize(("alg", "ref"), [("sha256", lambda b: hashlib.sha256(b).hexdigest()),
                                          ("xxh3_128", lambda b: xxhash.xxh3_128(b).hexdigest())])
def test_hash_file_matches_reference(tmp_path: Path, alg: str, ref: object) -> None:
    data = os.urandom(9 * 1024 * 1024 + 17)  # crosses chunk boundaries
    p = tmp_path / "f"
    p.write_bytes(data)
    assert hash_file(p, alg) == ref(data)  # type: ignore[operator]


def test_unknown_algorithm() -> None:
    with pytest.raises(ConfigError, match="unknown checksum"):
        new_hasher("crc0")
