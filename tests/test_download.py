"""Downloads from a local HTTP server: success, 404, 5xx, timeout, wrong hash, the mirror."""

import contextlib
import hashlib
import socket
import subprocess
import sys
import time

import pytest

from gptclassifier.download import download_file
from gptclassifier.errors import DownloadError
from gptclassifier.files import sha256_of

PAYLOAD = b"label\ttext\n" * 1000
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"timeout": 2.0, "backoff": 0.0, "progress": False}


def leftovers(folder):
    """Return the temporary files a download may have left in a folder."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_download_writes_the_verified_file(file_server, tmp_path):
    file_server.serve("/data.bin", PAYLOAD)
    dest = download_file(
        [file_server.url("/data.bin")], tmp_path / "data.bin", PAYLOAD_SHA256, **FAST
    )
    assert dest.read_bytes() == PAYLOAD
    assert sha256_of(dest) == PAYLOAD_SHA256
    assert leftovers(tmp_path) == []


def test_404_moves_on_to_the_mirror_without_retrying(file_server, tmp_path):
    file_server.serve("/mirror.bin", PAYLOAD)
    urls = [file_server.url("/gone.bin"), file_server.url("/mirror.bin")]
    dest = download_file(urls, tmp_path / "data.bin", PAYLOAD_SHA256, retries=3, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert file_server.requests == {"/gone.bin": 1, "/mirror.bin": 1}


def test_server_errors_are_retried_then_the_mirror_is_used(file_server, tmp_path):
    file_server.serve("/busy.bin", b"try later", status=503)
    file_server.serve("/mirror.bin", PAYLOAD)
    urls = [file_server.url("/busy.bin"), file_server.url("/mirror.bin")]
    download_file(urls, tmp_path / "data.bin", PAYLOAD_SHA256, retries=3, **FAST)
    assert file_server.requests["/busy.bin"] == 3


def test_a_timeout_falls_back_to_the_mirror(file_server, tmp_path):
    file_server.serve("/slow.bin", PAYLOAD, delay=1.0)
    file_server.serve("/mirror.bin", PAYLOAD)
    urls = [file_server.url("/slow.bin"), file_server.url("/mirror.bin")]
    options = {**FAST, "timeout": 0.2}
    dest = download_file(urls, tmp_path / "data.bin", PAYLOAD_SHA256, retries=1, **options)
    assert dest.read_bytes() == PAYLOAD


def test_a_wrong_hash_is_refused_and_leaves_no_file(file_server, tmp_path):
    file_server.serve("/data.bin", PAYLOAD + b"tampered")
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="SHA-256"):
        download_file([file_server.url("/data.bin")], dest, PAYLOAD_SHA256, **FAST)
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_a_wrong_hash_on_the_first_address_falls_back_to_the_mirror(file_server, tmp_path):
    file_server.serve("/bad.bin", b"something else")
    file_server.serve("/mirror.bin", PAYLOAD)
    urls = [file_server.url("/bad.bin"), file_server.url("/mirror.bin")]
    assert download_file(urls, tmp_path / "d", PAYLOAD_SHA256, **FAST).read_bytes() == PAYLOAD


def test_a_truncated_download_leaves_no_file(file_server, tmp_path):
    file_server.serve("/short.bin", PAYLOAD, declared_length=len(PAYLOAD) + 100)
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError):
        download_file([file_server.url("/short.bin")], dest, None, retries=2, **FAST)
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_an_html_page_is_not_taken_for_the_file(file_server, tmp_path):
    file_server.serve("/login", b"<html>sign in</html>", content_type="text/html")
    with pytest.raises(DownloadError, match="HTML page"):
        download_file([file_server.url("/login")], tmp_path / "data.bin", None, **FAST)


def test_an_oversized_file_is_refused(file_server, tmp_path):
    file_server.serve("/big.bin", PAYLOAD)
    with pytest.raises(DownloadError, match="limit"):
        download_file([file_server.url("/big.bin")], tmp_path / "d", None, max_bytes=100, **FAST)


def test_a_refused_connection_is_reported_with_every_address(tmp_path):
    with socket.socket() as probe:  # find a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    urls = [f"http://127.0.0.1:{port}/a.zip", f"http://127.0.0.1:{port}/b.zip"]
    with pytest.raises(DownloadError) as caught:
        download_file(urls, tmp_path / "data.bin", None, retries=2, **FAST)
    assert "a.zip" in str(caught.value) and "b.zip" in str(caught.value)


def test_a_failed_download_keeps_the_previous_file(file_server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"previous copy")
    with pytest.raises(DownloadError):
        download_file([file_server.url("/missing")], dest, None, **FAST)
    assert dest.read_bytes() == b"previous copy"


def test_unreachable_hosts_fail_fast_without_retries(tmp_path):
    urls = ["https://archive.ics.uci.edu/x.zip", "https://mirror.invalid/x.zip"]
    with pytest.raises(DownloadError, match="x.zip"):
        download_file(urls, tmp_path / "x.zip", None, retries=5, backoff=10.0, progress=False)


def test_two_processes_downloading_at_once_leave_one_good_copy(file_server, tmp_path):
    file_server.serve("/data.bin", PAYLOAD, delay=0.1, pieces=5)  # both transfers overlap
    dest = tmp_path / "data.bin"
    script = (
        "import sys; from gptclassifier.download import download_file; "
        "download_file([sys.argv[1]], sys.argv[2], sys.argv[3], progress=False)"
    )
    command = [
        sys.executable,
        "-c",
        script,
        file_server.url("/data.bin"),
        str(dest),
        PAYLOAD_SHA256,
    ]
    processes = [subprocess.Popen(command, stderr=subprocess.PIPE) for _ in range(2)]
    seen = set()  # what a reader finds under the final name while both are downloading
    while any(process.poll() is None for process in processes):
        with contextlib.suppress(FileNotFoundError):
            seen.add(dest.read_bytes())
        time.sleep(0.005)
    for process in processes:
        assert process.returncode == 0, process.stderr.read()
        process.stderr.close()
    assert file_server.requests["/data.bin"] == 2
    assert seen <= {PAYLOAD}  # never a part
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == []
