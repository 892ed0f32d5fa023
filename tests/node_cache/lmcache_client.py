"""An lm:// client that frames requests exactly as LMCache does.

Mirrors lmcache/v1/protocol.py (ClientMetaMessage / ServerMetaMessage:
struct "iiiiiiiii150s", key.encode().ljust(150); reply "iiiiiiiii" with
location last) and the socket handling of lmcache's LMCServerConnector
(sendall header, sendall payload; recv the reply header, then recv until
`length` bytes). Exits non-zero on the first mismatch.

usage: lmcache_client.py HOST PORT
"""
import os
import socket
import struct
import sys

MAX_KEY_LENGTH = 150
PUT, GET, EXIST, LIST, HEALTH = 1, 2, 3, 4, 5
SUCCESS, FAIL = 200, 400


def client_meta(command, key, length, fmt, dtype, shape, location):
    shape = list(shape) + [0] * (4 - len(shape))
    return struct.pack(
        f"iiiiiiiii{MAX_KEY_LENGTH}s",
        command, length, fmt, dtype, location,
        shape[0], shape[1], shape[2], shape[3],
        key.encode().ljust(MAX_KEY_LENGTH),
    )


def server_meta(data):
    code, length, fmt, dtype, s0, s1, s2, s3, location = struct.unpack("iiiiiiiii", data)
    return code, length, fmt, dtype, (s0, s1, s2, s3), location


def receive_all(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return bytes(buf)


def request(sock, command, key, payload=b"", fmt=1, dtype=2, shape=(0, 0, 0, 0), location=0):
    sock.sendall(client_meta(command, key, len(payload), fmt, dtype, shape, location))
    if command == PUT:
        sock.sendall(payload)
        return None
    # LMCache reads the reply header with one recv of its length.
    header = sock.recv(36)
    if len(header) != 36:
        header += receive_all(sock, 36 - len(header))
    reply = server_meta(header)
    data = receive_all(sock, reply[1]) if command == GET and reply[0] == SUCCESS else b""
    return reply, data


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    sock = socket.create_connection((host, port))
    key = "vllm@meta-llama/Llama-3.1-8B@1@0@6a1f9e3c2b@bfloat16"

    reply, _ = request(sock, HEALTH, "")
    assert reply[0] == SUCCESS, reply

    reply, _ = request(sock, EXIST, key)
    assert reply[0] == FAIL, reply
    reply, data = request(sock, GET, key)
    assert reply == (FAIL, 0, 1, 2, (0, 0, 0, 0), 0), reply
    assert data == b""

    payload = os.urandom(2 * 1024 * 1024 + 17)
    request(sock, PUT, key, payload, fmt=3, dtype=3, shape=(32, 2, 256, 1024), location=1)
    reply, _ = request(sock, EXIST, key)
    assert reply[0] == SUCCESS, reply
    reply, data = request(sock, GET, key)
    assert reply == (SUCCESS, len(payload), 3, 3, (32, 2, 256, 1024), 1), reply
    assert data == payload

    # Many small chunks back to back on one connection.
    chunks = {f"{key}-{i}": os.urandom(4096 + i) for i in range(200)}
    for k, v in chunks.items():
        request(sock, PUT, k, v, shape=(len(v), 0, 0, 0))
    for k, v in chunks.items():
        reply, data = request(sock, GET, k)
        assert reply[0] == SUCCESS and reply[4] == (len(v), 0, 0, 0) and data == v, k

    reply, _ = request(sock, LIST, "")
    assert reply[0] == FAIL, reply
    sock.close()
    print("lmcache client: ok")


if __name__ == "__main__":
    main()
