"""Fixtures shared by the tests: no internet, an isolated cache, a local file server, real data,
the tokenizer, the smoke profile's data and splits, the seeded gpt2-nano classifier.

The fixtures import the package when they run, after the environment below is set.
"""

import ipaddress
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import hypothesis
import pytest

REAL_SMS_VARIABLE = "GPTCLASSIFIER_TEST_SMS_FILE"
# The Hugging Face client reads its settings once, when first imported: the tests start from
# an empty cache of their own, online, at the real endpoint, whatever the user's shell says.
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HUB_CACHE"):
    os.environ.pop(_name, None)
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="gptclassifier-tests-hf-")

# Property tests write files and run small models: on a busy CI machine an example may take
# longer than hypothesis's default 200 ms, which says nothing about correctness.
hypothesis.settings.register_profile("project", deadline=None, print_blob=True)
hypothesis.settings.load_profile("project")


def _is_loopback(host) -> bool:
    """Return whether a host name or address stays on this machine."""
    if host in ("localhost", None, ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_internet(monkeypatch):
    """Refuse every connection that would leave this machine, as on an offline laptop."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise OSError(f"tests must not reach the network ({address[0]})")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, f"tests must not resolve {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """Give every test its own empty caches and none of the user's gptclassifier settings."""
    from huggingface_hub import constants

    monkeypatch.setenv("GPTCLASSIFIER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    for name in ("GPTCLASSIFIER_PROFILE", "GPTCLASSIFIER_SMS_FILE", "GPTCLASSIFIER_STRICT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def tokenizer():
    """Return GPT-2's tokenizer (tiktoken's `gpt2` encoding, read offline)."""
    from gptclassifier.model.tokenizer import get_tokenizer

    return get_tokenizer()


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """Return the smoke profile's data (the practice set, the book's parsing), loaded once.

    It is read through a cache folder of its own, without the user's settings, and shared by
    every test: a test must not change it.
    """
    from gptclassifier.data.sms import load_data

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPTCLASSIFIER_CACHE", str(tmp_path_factory.mktemp("smoke-cache")))
        for name in ("GPTCLASSIFIER_PROFILE", "GPTCLASSIFIER_SMS_FILE", "GPTCLASSIFIER_STRICT"):
            patch.delenv(name, raising=False)
        return load_data(profile="smoke")


@pytest.fixture(scope="session")
def smoke_splits(smoke_data):
    """Return the chapter's train, validation and test splits of the smoke data (seed 123)."""
    from gptclassifier.data.splits import prepare_splits

    return prepare_splits(smoke_data)


@pytest.fixture(scope="session")
def nano_classifier():
    """Return a function that builds a seeded gpt2-nano classifier, in evaluation mode.

    `nano_classifier(trainable=None, seed=123, head_seed=123, num_classes=2, lora_rank=16,
    lora_alpha=16)` seeds the global generator with `seed`, builds gpt2-nano (3 blocks of
    width 48, GPT-2's vocabulary, no dropout), gives it a `num_classes`-way head drawn from
    `head_seed` (without touching the global generator), and, when `trainable` names a
    strategy, unfreezes it with set_trainable (LoRA's matrices are drawn from the global
    generator, after the body). Each call builds a new model.
    """
    import torch

    from gptclassifier.model.classifier import add_classification_head, set_trainable
    from gptclassifier.model.gpt import GPTModel, model_config

    def build(
        trainable: str | None = None,
        *,
        seed: int = 123,
        head_seed: int = 123,
        num_classes: int = 2,
        lora_rank: int = 16,
        lora_alpha: float = 16,
    ):
        torch.manual_seed(seed)
        model = GPTModel(model_config("gpt2-nano"))
        add_classification_head(model, num_classes, head_seed)
        if trainable is not None:
            set_trainable(model, trainable, lora_rank, lora_alpha)
        return model.eval()

    return build


@pytest.fixture(scope="session")
def first_token_classifier():
    """Return a stub classifier class: `first_token_classifier(num_classes, context_length=128)`.

    Its logits are one-hot (times 3) for class (first token id % num_classes) at every position;
    it records the shape of every batch in `input_shapes`.
    """
    from torch import nn

    class FirstTokenClassifier(nn.Module):
        def __init__(self, num_classes: int, context_length: int = 128):
            super().__init__()
            self.num_classes = num_classes
            self.pos_emb = nn.Embedding(context_length, 1)
            self.input_shapes = []

        def forward(self, input_batch):
            self.input_shapes.append(tuple(input_batch.shape))
            predicted = input_batch[:, 0] % self.num_classes
            logits = nn.functional.one_hot(predicted, self.num_classes).float() * 3.0
            return logits[:, None, :].expand(-1, input_batch.shape[1], -1)

    return FirstTokenClassifier


@pytest.fixture(scope="session")
def transformers():
    """Return the `transformers` module, or skip the test where it is not installed."""
    return pytest.importorskip(
        "transformers",
        reason="transformers (the dev extra) is not installed: the reference GPT-2 needs it",
    )


@pytest.fixture
def real_sms_file() -> Path:
    """Return the real SMS Spam Collection file named by $GPTCLASSIFIER_TEST_SMS_FILE."""
    value = os.environ.get(REAL_SMS_VARIABLE)
    if not value:
        pytest.skip(
            f"{REAL_SMS_VARIABLE} is not set: this test needs the real SMS Spam Collection "
            "(.ci/run sets it when ../shared/data/sms-spam-collection exists)"
        )
    path = Path(value)
    if not path.is_file():
        pytest.fail(f"{REAL_SMS_VARIABLE}={value} is not a file")
    return path


@dataclass
class Route:
    """What the local server answers for one path."""

    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    delay: float = 0.0  # seconds before answering, to provoke timeouts
    declared_length: int | None = None  # a Content-Length other than the body's, to truncate
    pieces: int = 1  # send the body in this many pieces, `delay` apart, to slow the transfer
    headers: dict[str, str] = field(default_factory=dict)  # sent with GET and HEAD answers


@dataclass
class FileServer:
    """A local HTTP server on 127.0.0.1 that serves `routes` and counts requests per path."""

    base_url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)  # by path, HEAD ones as 'HEAD path'

    def url(self, path: str) -> str:
        """Return the full address of a path on this server."""
        return f"{self.base_url}{path}"

    def serve(self, path: str, body: bytes = b"", **options) -> str:
        """Answer requests for `path` with `body` (see Route for options); return its address."""
        self.routes[path] = Route(body, **options)
        return self.url(path)


@pytest.fixture
def file_server():
    """Start a local file server for one test, and stop it afterwards."""

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.answer(with_body=False)

        def do_GET(self):
            self.answer(with_body=True)

        def answer(self, with_body: bool):
            key = self.path if with_body else f"HEAD {self.path}"
            server.requests[key] = server.requests.get(key, 0) + 1
            route = server.routes.get(self.path, Route(b"not found", status=404))
            time.sleep(route.delay)
            length = route.declared_length if route.declared_length is not None else len(route.body)
            size = max(1, -(-len(route.body) // route.pieces))
            try:
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(length))
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                for start in range(0, len(route.body) if with_body else 0, size):
                    if start:
                        self.wfile.flush()
                        time.sleep(route.delay)
                    self.wfile.write(route.body[start : start + size])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting, as a timeout test intends

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server = FileServer(f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    httpd.shutdown()
    httpd.server_close()
