"""Files: the cache folder, SHA-256, atomic writes, JSON, zip members read by name and size."""

import hashlib
import io
import zipfile

import pytest

from gptclassifier.errors import DataError
from gptclassifier.files import (
    CHUNK_BYTES,
    atomic_writer,
    cache_dir,
    read_json,
    read_zip_member,
    sha256_of,
    write_atomically,
    write_json,
)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCLASSIFIER_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("GPTCLASSIFIER_CACHE")
    assert cache_dir().name == "gptclassifier"


def test_atomic_writer_removes_the_partial_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_writer(target) as file:
        file.write(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_sha256_of_a_file_of_several_chunks_is_hashlibs(tmp_path):
    data = bytes(range(256)) * (3 * CHUNK_BYTES // 256) + b"tail"
    (tmp_path / "data.bin").write_bytes(data)
    assert sha256_of(tmp_path / "data.bin") == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_of(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_write_atomically_replaces_the_file_and_leaves_no_part(tmp_path):
    target = tmp_path / "new" / "out.txt"
    write_atomically(target, b"first")
    write_atomically(target, b"second")
    assert target.read_bytes() == b"second"
    assert [path.name for path in target.parent.iterdir()] == ["out.txt"]


def test_json_round_trips_unicode_as_indented_utf8(tmp_path):
    data = {"classes": ["ham", "spam"], "note": "café 😊", "seed": 123}
    write_json(tmp_path / "config.json", data)
    text = (tmp_path / "config.json").read_text(encoding="utf-8")
    assert text.startswith('{\n  "classes": [') and text.endswith("}\n")
    assert "café 😊" in text  # written as itself, not as \u escapes
    assert read_json(tmp_path / "config.json") == data


def make_zip(members: dict[str, bytes]) -> bytes:
    """Return the bytes of a zip archive holding `members`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_members_are_read_by_name_only(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"../SMSSpamCollection": b"evil", "/etc/passwd": b"evil"}))
    with pytest.raises(DataError, match="no member named SMSSpamCollection"):
        read_zip_member(archive, "SMSSpamCollection")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.zip"]


def test_oversized_zip_members_and_broken_archives_are_refused(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"SMSSpamCollection": b"x" * 1000}))
    with pytest.raises(DataError, match="more than the 100 allowed"):
        read_zip_member(archive, "SMSSpamCollection", max_bytes=100)
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        read_zip_member(archive, "SMSSpamCollection")
