"""The socket.io load client's bookkeeping (loadtest/sioclient.py), the frame parser it shares
with the realtime scenario, the per-name window counts, and the chat example's locustfile as
Locust lists it. No stack, nothing timed."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from loadtest import report, window
from loadtest.config import parse_config
from loadtest.driver import by_name
from loadtest.report.format import DASH
from loadtest.sioclient import Acks, Connection, decode, encode_event, latency_ms, stamp
from loadtest.wsclient import parse_frames
from tests.unit.test_loadtest_report import results_with, run

ROOT = Path(__file__).resolve().parents[2]
CHAT_LOCUSTFILE = ROOT / "examples" / "chat" / "locustfile.py"


def frame(text: str, opcode: int = 0x1) -> bytes:
    """A server frame: unmasked, final."""
    data = text.encode()
    n = len(data)
    if n < 126:
        return bytes([0x80 | opcode, n]) + data
    if n <= 0xFFFF:
        return bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big") + data
    return bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big") + data


def test_parse_frames_takes_whole_frames_and_leaves_a_partial_one():
    big = "x" * 300
    buf = frame("2") + frame(big) + frame("42[]")[:3]
    frames, used = parse_frames(buf)
    assert frames == [(0x1, b"2"), (0x1, big.encode())]
    assert used == len(frame("2")) + len(frame(big))
    assert parse_frames(frame("a" * 70000)) == ([(0x1, b"a" * 70000)], len(frame("a" * 70000)))
    assert parse_frames(frame("a" * 70000)[:9]) == ([], 0)


def test_an_event_with_an_ack_id_encodes_as_socket_io_does():
    assert encode_event("chat", {"text": "hi"}, 7) == '427["chat", {"text": "hi"}]'
    assert encode_event("join", {"room": "r"}) == '42["join", {"room": "r"}]'


def test_decode_events_and_acks_and_ignores_the_rest():
    assert decode('42["chat",{"text":"1.5"}]', 2.0) == ("event", "chat", {"text": "1.5"}, 2.0)
    assert decode('42["message","bob has entered the room."]', 1.0) == (
        "event",
        "message",
        "bob has entered the room.",
        1.0,
    )
    assert decode('4312["delivered"]', 3.0) == ("ack", 12, ["delivered"], 3.0)
    assert decode("43[]", 3.0) is None  # an ack without an id is no answer to anything
    assert decode("2", 1.0) is None and decode('40{"sid":"a"}', 1.0) is None


def test_a_stamped_message_gives_its_age_and_anything_else_none():
    assert latency_ms(stamp(100.25), 100.5) == pytest.approx(250.0)
    assert latency_ms("hello", 100.5) is None
    assert latency_ms(None, 100.5) is None


def test_acks_give_the_round_trip_once_and_expire_the_late():
    acks = Acks()
    a, b, c = acks.add(10.0), acks.add(10.5), acks.add(19.0)
    assert len({a, b, c}) == 3
    assert acks.done(a, 10.02) == pytest.approx(20.0)
    assert acks.done(a, 10.03) is None  # already answered
    assert acks.expired(20.6, timeout=10) == [pytest.approx(10100.0)]  # b, not c
    assert acks.done(b, 21.0) is None  # given up on: not counted twice
    assert acks.done(c, 19.5) == pytest.approx(500.0)


def test_a_connection_upgrades_opens_the_namespace_answers_pings_and_reads_packets():
    """Against a scripted server on a local socket: what the client sends, what it yields."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    got: list[bytes] = []

    def unmask(conn: socket.socket) -> str:
        head = conn.recv(2)
        n = head[1] & 0x7F
        mask = conn.recv(4)
        data = b""
        while len(data) < n:
            data += conn.recv(n - len(data))
        return bytes(b ^ mask[i % 4] for i, b in enumerate(data)).decode()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            got.append(request)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + frame('0{"sid":"e"}'))
            got.append(unmask(conn).encode())  # 40
            conn.sendall(frame('40{"sid":"s1"}') + frame("2"))
            got.append(unmask(conn).encode())  # 3, the pong
            conn.sendall(frame('42["chat",{"text":"1.0"}]') + frame('430["delivered"]'))
            conn.sendall(frame("", 0x8))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    conn = Connection(f"http://127.0.0.1:{port}", timeout=5)
    assert conn.open() == "s1"
    packets = list(conn.packets())
    conn.close()
    server.join(5)
    listener.close()
    assert got[0].startswith(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n")
    assert got[1:] == [b"40", b"3"]
    assert [(k, n, d) for k, n, d, _t in packets] == [
        ("event", "chat", {"text": "1.0"}),
        ("ack", 0, ["delivered"]),
    ]


def test_the_window_counts_each_request_name_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("LOADTEST_MEASURE_DIR", str(tmp_path))
    monkeypatch.setenv("LOADTEST_WARMUP", "0")
    monkeypatch.setenv("LOADTEST_DURATION", "3600")
    w = window.Window()
    w.start()
    w.request(12.0, name="chat ack")
    for ms in (3.0, 4.0, 5.0):
        w.request(ms, name="chat delivery")
    w.request(10000.0, TimeoutError("late"), name="chat ack")
    w.write()
    measured = [json.loads(p.read_text()) for p in tmp_path.glob("measure-*.json")]
    names = by_name(measured + measured, duration=2.0)  # two processes alike
    assert names["chat delivery"]["requests"] == 6 and names["chat delivery"]["rps"] == 3.0
    assert names["chat delivery"]["p50"] == 4.0
    assert names["chat ack"] == {
        "rps": 1.0,
        "requests": 4,
        "failures": 2,
        "p50": 10000.0,  # Locust's rule: no more than half below it
        "p95": 10000.0,
        "p99": 10000.0,
    }


def test_the_report_shows_each_request_name_when_a_scenario_fires_several(tmp_path):
    cfg = parse_config([])
    cfg.scenarios = ["ChatUser"]
    figures = {"rps": 50.0, "requests": 400, "failures": 0, "p50": 9.0, "p95": 20.0, "p99": 41.0}
    runs = []
    for rnd, rps in ((1, 50.0), (2, 48.0)):
        for target in ("stack", "builtin"):
            r = run("ChatUser", target, rnd, 10 * rps)
            r["by_name"] = {
                "chat ack": {**figures, "rps": rps},
                "chat delivery": {**figures, "rps": 10 * rps, "p99": 60.0},
            }
            runs.append(r)
    report.write_report(tmp_path, results_with(runs, cfg=cfg))
    text = (tmp_path / "report.md").read_text()
    assert f"| ChatUser | stack | chat ack | 49.0 (48.0{DASH}50.0) | 9 | 20 | 41 | 0 |" in text
    row = f"| ChatUser | builtin | chat delivery | 490.0 (480.0{DASH}500.0) | 9 | 20 | 60 | 0 |"
    assert row in text


def test_a_report_without_names_has_no_such_table(tmp_path):
    report.write_report(tmp_path, results_with([run("json", "stack", 1, 100.0)]))
    assert "By request name" not in (tmp_path / "report.md").read_text()


def test_the_chat_locustfile_is_one_scenario(monkeypatch):
    monkeypatch.chdir(ROOT)
    for name in ("LOCUSTFILE", "SCENARIOS", "SHAPE", "SMOKE"):
        monkeypatch.delenv(name, raising=False)
    cfg = parse_config(["--locustfile", "examples/chat/locustfile.py"])
    assert cfg.scenarios == ["ChatUser"]
