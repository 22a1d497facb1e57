"""Fetching files intact: retries, the next address on a bad answer, the SHA-256 checked."""

import hashlib
import http.client
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from gptclassifier.errors import DownloadError
from gptclassifier.files import CHUNK_BYTES, atomic_writer

USER_AGENT = "gptclassifier/0.1 (Python urllib)"


class _TryNextAddress(Exception):
    """This address will not serve the file; retrying it is pointless."""


def download_file(
    urls: Sequence[str],
    dest: Path,
    sha256: str | None = None,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
    max_bytes: int | None = None,
    progress: bool = True,
) -> Path:
    """Download the first of `urls` that serves the file (with `sha256`, if given) to `dest`.

    The bytes go to a temporary file beside `dest` and are renamed to `dest` only once complete
    and verified, so an interrupted or failed download never leaves a file under the final name.
    Transient failures (timeouts, refused connections, 5xx) are retried with exponential backoff;
    a 4xx, a wrong hash or an HTML page moves on to the next address.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        for attempt in range(retries):
            try:
                _fetch(url, dest, sha256, timeout, max_bytes, progress)
                return dest
            except _TryNextAddress as exc:
                failures.append(f"{url}: {exc}")
                break
            except (OSError, http.client.HTTPException) as exc:
                reason = (
                    exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", exc)
                )
                failures.append(f"{url}: {reason or type(exc).__name__}")
                if isinstance(reason, socket.gaierror):
                    break  # the host name does not resolve: probably offline
                if attempt + 1 < retries:
                    time.sleep(backoff * 2**attempt)
    raise DownloadError(f"could not download {dest.name}: " + "; ".join(failures))


def _fetch(url, dest, sha256, timeout, max_bytes, progress) -> None:
    """Stream one address into a temporary file, verify it, and rename it to `dest`."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise
        raise _TryNextAddress(f"HTTP {exc.code} {exc.reason}") from exc
    with response:
        if response.headers.get_content_type() == "text/html" and not url.endswith(".html"):
            raise _TryNextAddress("served an HTML page instead of the file")
        total = int(response.headers.get("Content-Length") or 0) or None
        if max_bytes and total and total > max_bytes:
            raise _TryNextAddress(f"file of {total:,} bytes exceeds the {max_bytes:,}-byte limit")
        digest = hashlib.sha256()
        progress_bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=dest.name,
            disable=not progress,
            leave=False,
        )
        with atomic_writer(dest) as tmp, progress_bar:
            received = 0
            for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                received += len(block)
                if max_bytes and received > max_bytes:
                    raise _TryNextAddress(f"file exceeds the {max_bytes:,}-byte limit")
                digest.update(block)
                tmp.write(block)
                progress_bar.update(len(block))
            if total is not None and received != total:
                raise OSError(f"connection closed after {received:,} of {total:,} bytes")
            if sha256 and digest.hexdigest() != sha256:
                raise _TryNextAddress(
                    f"SHA-256 {digest.hexdigest()} does not match the expected {sha256}"
                )
