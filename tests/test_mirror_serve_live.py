"""`civitai-mirror serve` over real HTTP on 127.0.0.1 against what a stranger or a build does to it.

Each test starts the real command on a free port (``--port 0``; the first line says which), and
talks to it with http.client or a raw socket.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlite_utils

import mirror.serve
from mirror.build import build_mirror
from mirror.serve import bind, make_datasette, make_server
from tests.test_mirror_build import copy_dump

MODEL_101 = Path("00000000") / "00000101.json"


class Server:
    """A running ``civitai-mirror serve``; ``get`` and ``post`` answer (status, headers, body)."""

    def __init__(self, cwd: Path, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "civitai_mirror", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.line = self.proc.stdout.readline()
        assert "Serving" in self.line, self.line + self.proc.stderr.read()
        self.port = int(self.line.rsplit(":", 1)[1].strip().strip("/"))

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def get(self, path: str, **headers: str) -> tuple[int, dict, bytes]:
        return self.request("GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})

    def stop(self) -> str:
        """Stop the server; what it printed after its first line (stdout, then stderr)."""
        self.proc.terminate()
        out, err = self.proc.communicate(timeout=10)
        return out + err


@pytest.fixture
def world(tmp_path):
    dump = copy_dump(tmp_path / "dump")
    db = tmp_path / "civitai.sqlite"
    build_mirror(dump, db)
    return tmp_path, dump, db


@pytest.fixture
def serve(world):
    started: list[Server] = []

    def start(*args: str) -> Server:
        server = Server(world[0], *args)
        started.append(server)
        return server
    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()


def rename_model(dump: Path, name: str, mtime: int) -> None:
    path = dump / MODEL_101
    doc = json.loads(path.read_text())
    doc["name"] = name
    path.write_text(json.dumps(doc))
    os.utime(path, (mtime, mtime))


def name_of_101(server: Server) -> tuple[str, str]:
    """Model 101's name as the offline API and the Datasette table page say it."""
    status, _, body = server.get("/api/v1/models/101")
    assert status == 200, body
    api_name = json.loads(body)["name"]
    status, _, body = server.get("/civitai/models/101.json?_shape=objects")
    assert status == 200, body
    return api_name, json.loads(body)["rows"][0]["name"]


def test_a_running_server_shows_every_build_and_never_fails(world, serve):
    _, dump, db = world
    server = serve("--db", str(db))
    assert name_of_101(server) == ("Detail Slider", "Detail Slider")
    statuses: list[int] = []
    stop = threading.Event()

    def read_all_the_time():
        while not stop.is_set():
            for path in ("/api/v1/models/101", "/civitai/models.json?_shape=array", "/civitai/by_hash.json?hash=1A2B3C4D"):
                statuses.append(server.get(path)[0])
    readers = [threading.Thread(target=read_all_the_time) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        # an incremental build writes the served file in place
        rename_model(dump, "Detail Slider Two", 1767312000)
        summary = build_mirror(dump, db)
        assert summary.models_rebuilt >= 1 and summary.files_unchanged == 9  # in place, not fresh
        assert name_of_101(server) == ("Detail Slider Two", "Detail Slider Two")
        # a full build swaps a new file in: the server follows the path, not the old file
        rename_model(dump, "Detail Slider Three", 1767398400)
        inode = db.stat().st_ino
        build_mirror(dump, db, full=True)
        assert db.stat().st_ino != inode
        assert name_of_101(server) == ("Detail Slider Three", "Detail Slider Three")
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert statuses and set(statuses) == {200}
    assert "malformed" not in server.stop()


def test_the_library_follows_a_rebuilt_mirror(world, serve, tmp_path):
    _, dump, db = world
    library = tmp_path / "library.sqlite"
    sqlite_utils.Database(library)["files"].insert({"id": 1, "path": "/x/a.safetensors"}, pk="id")
    server = serve("--db", str(db), "--library", str(library))
    sql = quote("select name from civitai.models where id = 101")  # the library's view of the mirror
    status, _, body = server.get(f"/library.json?sql={sql}&_shape=array")
    assert status == 200 and json.loads(body) == [{"name": "Detail Slider"}]
    rename_model(dump, "Renamed", 1767312000)
    build_mirror(dump, db, full=True)
    status, _, body = server.get(f"/library.json?sql={sql}&_shape=array")
    assert status == 200 and json.loads(body) == [{"name": "Renamed"}]


def test_only_the_bound_host_names_are_answered(world, serve):
    _, _, db = world
    server = serve("--db", str(db), "--allow-host", "mirror.example")
    for host in ("127.0.0.1", f"127.0.0.1:{server.port}", f"localhost:{server.port}", "[::1]",
                 "mirror.example", "MIRROR.example.:80"):
        assert server.get("/-/versions.json", Host=host)[0] == 200, host
    for host in ("evil.example", f"evil.example:{server.port}", "localhost.evil.example", "127.0.0.2", ""):
        status, headers, body = server.get("/civitai/models.json", Host=host)
        assert status == 400, host
        assert headers["content-type"].startswith("application/json")
        assert "--allow-host" in json.loads(body)["error"]


def test_every_address_needs_the_library_named(world, serve):
    root, _, db = world
    sqlite_utils.Database(root / "library.sqlite")["files"].insert({"id": 1, "path": "/x/a"}, pk="id")
    server = serve("--db", str(db), "--host", "0.0.0.0")
    assert "library" not in server.line
    assert server.get("/library.json", Host="127.0.0.1")[0] == 404
    assert server.get("/civitai.json", Host=f"127.0.0.1:{server.port}")[0] == 200  # any IP address
    assert server.get("/civitai.json", Host="rebound.example")[0] == 400
    named = serve("--db", str(db), "--host", "0.0.0.0", "--library", str(root / "library.sqlite"))
    assert "library.sqlite" in named.line
    assert named.get("/library/files.json", Host="127.0.0.1")[0] == 200


def _raw(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send a request's head and the start of its body; the answer, read before sending more."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_request_bodies_are_capped_before_they_are_read(world, serve):
    _, _, db = world
    server = serve("--db", str(db))
    # 200 MB announced, 1 KB sent: answered at once, without waiting for (or parsing) the rest
    head = (b"POST /api/v1/model-versions/by-hash HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 200000000\r\n\r\n")
    assert _raw(server.port, head, b"[" + b'"00",' * 200).startswith(b"HTTP/1.1 413 ")
    # chunked, no length: stopped once it passes the cap
    chunked = (b"POST /api/v1/model-versions/by-hash HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 32768
    chunks = (b"%x\r\n" % len(piece) + piece + b"\r\n") * 3
    assert _raw(server.port, chunked, chunks).startswith(b"HTTP/1.1 413 ")
    # the API still answers a normal POST afterwards
    status, _, body = server.request("POST", "/api/v1/model-versions/by-hash", json.dumps(["A1" * 32]).encode())
    assert status == 200 and [v["id"] for v in json.loads(body)] == [1011]


BAD_PARAMETERS = [
    "/api/v1/models?page=99999999999999999999",
    "/api/v1/models?page=0",
    "/api/v1/models?limit=100&page=2147483648",
    "/api/v1/models?ids=" + ",".join(["1"] * 101),
    "/api/v1/models?types=" + ",".join(["LORA"] * 101),
    "/api/v1/models?page=" + "9" * 5000,
    "/api/v1/models/99999999999999999999",
    "/api/v1/model-versions/by-hash/" + "g" * 64,
]


def test_bad_parameters_are_400_with_a_json_error(world, serve):
    server = serve("--db", str(world[2]))
    for path in BAD_PARAMETERS:
        status, headers, body = server.get(path)
        assert status == 400 and set(json.loads(body)) == {"error"}, (path, body)
        assert headers["content-type"].startswith("application/json")


def test_a_404_is_one_line_or_none_on_the_console(world, serve):
    server = serve("--db", str(world[2]))
    for path in ("/no/such/page", "/civitai/no_such_table", "/-/civitai-images/images/0/1.html"):
        assert server.get(path)[0] == 404
    err = server.stop()
    assert "Traceback" not in err and len(err.splitlines()) <= 1, err


def test_a_busy_port_fails_before_saying_serving(world):
    root, _, db = world
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "civitai_mirror", "serve", "--db", str(db),
                                 "--port", str(port)], capture_output=True, text=True, cwd=root, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [f"Error: port {port} on 127.0.0.1 is in use; choose another with --port"]


def test_a_client_that_never_finishes_its_request_head_is_let_go(world, monkeypatch):
    monkeypatch.setattr(mirror.serve, "HEAD_TIMEOUT_S", 0.3)
    ds = make_datasette(world[2])
    sock = bind("127.0.0.1", 0)
    server = make_server(ds, None)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as silent, \
                socket.create_connection(("127.0.0.1", port), timeout=30) as trickle:
            trickle.sendall(b"GET / HTTP/1.1\r\nHost: 127")
            assert silent.recv(100) == b""  # closed by the server (the timeout would raise)
            assert trickle.recv(100) == b""
        with socket.create_connection(("127.0.0.1", port), timeout=30) as fine:
            fine.sendall(b"GET /-/versions.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert fine.recv(100).startswith(b"HTTP/1.1 200 ")
    finally:
        server.should_exit = True
        thread.join()


def test_an_address_this_machine_does_not_have_is_one_line(world):
    root, _, db = world
    result = subprocess.run([sys.executable, "-m", "civitai_mirror", "serve", "--db", str(db),
                             "--host", "192.0.2.1"], capture_output=True, text=True, cwd=root, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot serve on 192.0.2.1:8001: ")  # + the OS's reason
