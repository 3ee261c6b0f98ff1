#!/usr/bin/env python3
"""A name server the tests control: answers A queries over UDP from a JSON file
({"name.test": ["127.0.0.1", ...]}), read on every query, with a TTL of 1 second. A name not in
the file is NXDOMAIN; other record types get an empty answer.

  dns_fixture.py PORT FILE
"""
import json
import socket
import struct
import sys

TTL = 1


def answer(query, path):
    tid, _flags, qdcount = struct.unpack(">HHH", query[:6])
    i, labels = 12, []
    while query[i] != 0:
        n = query[i]
        labels.append(query[i + 1:i + 1 + n].decode().lower())
        i += 1 + n
    qtype, _qclass = struct.unpack(">HH", query[i + 1:i + 5])
    question = query[12:i + 5]
    name = ".".join(labels)
    try:
        with open(path) as f:
            records = json.load(f)
    except (OSError, ValueError):
        records = {}
    if name not in records:
        return struct.pack(">HHHHHH", tid, 0x8183, 1, 0, 0, 0) + question
    ips = records[name] if qtype == 1 else []
    body = b"".join(
        b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, TTL, 4) + socket.inet_aton(ip) for ip in ips)
    return struct.pack(">HHHHHH", tid, 0x8180, 1, len(ips), 0, 0) + question + body


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    while True:
        query, client = sock.recvfrom(512)
        try:
            sock.sendto(answer(query, path), client)
        except (IndexError, struct.error):
            pass


if __name__ == "__main__":
    main()
