"""A minimal WebSocket client (RFC 6455) for tests: the upgrade, masked
frames out, unmasked frames in. The demo upstream is the server."""

from __future__ import annotations

import base64
import os
import socket
import struct


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        assert more, "connection closed"
        data += more
    return data


def ws_upgrade(sock: socket.socket, path: str,
               headers: dict[str, str]) -> tuple[str, dict[str, str], str]:
    """Send the upgrade request; its status line, lower-cased headers, and the
    Sec-WebSocket-Key sent (to check the answer's Sec-WebSocket-Accept)."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key,
               "Sec-WebSocket-Version": "13", **headers}
    sock.sendall((f"GET {path} HTTP/1.1\r\n"
                  + "".join(f"{name}: {value}\r\n" for name, value in request.items())
                  + "\r\n").encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += recv_exact(sock, 1)
    status, *lines = head.decode().rstrip("\r\n").split("\r\n")
    answer = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines)}
    return status, answer, key


def ws_send(sock: socket.socket, opcode: int, payload: bytes) -> None:
    """A client frame: always masked."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 1 << 16:
        length = bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", n)
    sock.sendall(bytes([0x80 | opcode]) + length + mask + masked)


def ws_recv(sock: socket.socket) -> tuple[int, bytes]:
    first, second = recv_exact(sock, 2)
    assert first & 0x80 and not second & 0x80  # final, unmasked
    n = second & 0x7F
    if n == 126:
        n = struct.unpack("!H", recv_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", recv_exact(sock, 8))[0]
    return first & 0x0F, recv_exact(sock, n)
