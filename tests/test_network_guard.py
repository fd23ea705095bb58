"""The tests run offline: tests/conftest.py refuses every connection that is not loopback or a Unix
socket, and fails the test that tried (even when the code under test caught the error); the
Hugging Face libraries, in-process and in subprocesses, are in offline mode."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import NETWORK_ATTEMPTS, OFFLINE_ENV, NetworkBlocked, check_network, is_loopback

ROOT = Path(__file__).resolve().parents[1]


def _connect(family, address, method="connect"):
    with socket.socket(family) as s:
        return getattr(s, method)(address)


def test_connections_to_the_network_are_refused():
    tries = [lambda: socket.create_connection(("huggingface.co", 443), timeout=1),
             lambda: socket.getaddrinfo("example.com", 80),
             lambda: _connect(socket.AF_INET, ("192.0.2.1", 443)),  # an address: no DNS asked
             lambda: _connect(socket.AF_INET6, ("2001:db8::1", 443, 0, 0), "connect_ex"),
             lambda: _connect(socket.AF_INET, ("example.com", 80))]  # a name the C call would resolve itself
    for attempt in tries:
        with pytest.raises(NetworkBlocked, match="tests run offline"):
            attempt()
    assert len(NETWORK_ATTEMPTS) == len(tries) and "huggingface.co" in NETWORK_ATTEMPTS[0]
    with pytest.raises(pytest.fail.Exception, match="tried to reach the network .*192.0.2.1"):
        check_network("this test")  # what the autouse fixture does after every test
    assert not NETWORK_ATTEMPTS  # reported once


def test_a_swallowed_attempt_still_fails_its_test(tmp_path):
    """A pytest run of a test whose code catches the refusal (as hub clients do): it fails, naming
    the address."""
    (tmp_path / "test_online.py").write_text(
        "import socket\n\n"
        "def test_online():\n"
        "    try:\n"
        "        socket.create_connection(('192.0.2.1', 443), timeout=1)\n"
        "    except OSError:\n"
        "        pass\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                          "--rootdir", str(tmp_path), str(tmp_path / "test_online.py")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert "test_online tried to reach the network (getaddrinfo('192.0.2.1')" in run.stdout


def test_loopback_and_unix_sockets_still_work():
    for host in ("127.0.0.1", "localhost"):
        with socket.socket(socket.AF_INET) as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            with socket.create_connection((host, server.getsockname()[1]), timeout=5):
                server.accept()[0].close()
    with tempfile.TemporaryDirectory(dir="/tmp") as folder, socket.socket(socket.AF_UNIX) as server:
        path = os.path.join(folder, "s")
        server.bind(path)
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            server.accept()[0].close()
    assert socket.getaddrinfo("::1", 80) and socket.getaddrinfo(None, 0)
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "::ffff:127.0.0.1", "0.0.0.0",
                                        "localhost", b"localhost", None))
    assert not any(is_loopback(h) for h in ("10.0.0.1", "192.0.2.1", "2001:db8::1", "huggingface.co", "::ffff:8.8.8.8"))
    assert not NETWORK_ATTEMPTS


def test_hugging_face_libraries_are_offline_here_and_in_subprocesses():
    assert all(os.environ[k] == v for k, v in OFFLINE_ENV.items()) and "MWORK_DATA" not in os.environ
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE
    code = "import os, json; print(json.dumps({k: os.environ.get(k) for k in %r}))" % sorted(OFFLINE_ENV)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '{"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}'
