#!/usr/bin/env python3
"""WebSocket peers from the Python `websockets` package, which negotiates permessage-deflate.

  ws_fixture.py server PORT LOG
      an echo server; every message it receives is appended to LOG as a JSON line
  ws_fixture.py renew URL TOKEN RENEWED_TOKEN
      connects with TOKEN, renews in-band with RENEWED_TOKEN (compressed, split into
      fragments), keeps talking past TOKEN's expiry and waits for the gateway's Close;
      prints a JSON report
  ws_fixture.py tls URL TOKEN CA_FILE
      connects over TLS trusting CA_FILE, has a large and a small message echoed, then
      waits for the gateway's Close; prints a JSON report
"""
import asyncio
import base64
import json
import ssl
import sys
import time

import websockets


def exp_of(token):
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return json.loads(base64.urlsafe_b64decode(payload))["exp"]


async def server(port, log):
    async def echo(ws, _path=None):
        with open(log, "a") as out:
            try:
                async for message in ws:
                    text = message if isinstance(message, str) else message.decode("latin-1")
                    out.write(json.dumps({"message": text}) + "\n")
                    out.flush()
                    await ws.send(message)
            except websockets.ConnectionClosed:
                pass

    async with websockets.serve(echo, "127.0.0.1", port, max_size=None):
        await asyncio.Future()


async def renew(url, token, renewed):
    report = {"echoes": []}
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(url, extra_headers=headers, max_size=None) as ws:
        report["extensions"] = ws.response_headers.get("Sec-WebSocket-Extensions", "")

        async def say(text):
            await ws.send(text)
            report["echoes"].append(await asyncio.wait_for(ws.recv(), 5))

        await say("hello")
        renewal = json.dumps({"type": "access_token", "token": renewed})
        # A fragmented renewal: the first fragment carries RSV1 for the whole message.
        third = len(renewal) // 3
        await ws.send(iter([renewal[:third], renewal[third : 2 * third], renewal[2 * third :]]))
        await say("after")
        await asyncio.sleep(max(0.0, exp_of(token) - time.time() + 0.5))
        await say("past the first expiry")
        try:
            await asyncio.wait_for(ws.recv(), exp_of(renewed) - time.time() + 5)
        except websockets.ConnectionClosed as closed:
            report["close_code"] = closed.rcvd.code if closed.rcvd else None
            report["close_reason"] = closed.rcvd.reason if closed.rcvd else None
            report["closed_after_exp"] = time.time() - exp_of(renewed)
    print(json.dumps(report))


async def tls(url, token, ca_file):
    report = {}
    context = ssl.create_default_context(cafile=ca_file)
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(url, ssl=context, extra_headers=headers, max_size=None) as ws:
        big = bytes(i * 7 % 251 for i in range(300_000))
        await ws.send(big)
        report["big_echoed"] = await asyncio.wait_for(ws.recv(), 5) == big
        await ws.send("hello")
        report["echo"] = await asyncio.wait_for(ws.recv(), 5)
        try:
            await asyncio.wait_for(ws.recv(), exp_of(token) - time.time() + 5)
        except websockets.ConnectionClosed as closed:
            report["close_code"] = closed.rcvd.code if closed.rcvd else None
            report["closed_after_exp"] = time.time() - exp_of(token)
    print(json.dumps(report))


def main():
    mode = sys.argv[1]
    if mode == "server":
        asyncio.run(server(int(sys.argv[2]), sys.argv[3]))
    elif mode == "renew":
        asyncio.run(renew(sys.argv[2], sys.argv[3], sys.argv[4]))
    elif mode == "tls":
        asyncio.run(tls(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
