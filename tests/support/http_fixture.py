#!/usr/bin/env python3
"""Test servers for the Portcullis test suite.

  http_fixture.py echo PORT       answers every request with JSON describing it
                                  (after ?delay_ms=N milliseconds, if asked)
  http_fixture.py tls-echo PORT CERT KEY [CLIENT_CA]
                                  the same over TLS; with CLIENT_CA, a client certificate
                                  signed by it is required
  http_fixture.py authz PORT      an external decision point. As an HTTP authorization
                                  service (any path but /v1/data/...), it decides by the
                                  X-Test-Decision header: deny (403 with a JSON body),
                                  unauth (401), error (500), slow (2 s, then allow),
                                  slow-allow (300 ms, then allow); otherwise it allows and
                                  sets X-Authz-Tenant and X-Not-Forwarded. As OPA
                                  (POST /v1/data/...): allows with header X-Opa when
                                  input.caller.roles holds "reader", answers {} when the
                                  path holds "undefined", else false.
                                  GET /__calls: decision calls so far; GET /__last: the
                                  headers of the last one.
  http_fixture.py flaky PORT      a backend that fails on purpose, counting what reaches it.
                                  ?status=N answers N; ?fail_times=N answers 503 to the
                                  first N requests for that path, then 200; ?delay_ms=N
                                  waits first. POST /__fail makes every request 503 until
                                  POST /__recover. GET /__hits?path=/x: requests for /x.
  http_fixture.py captcha PORT    a captcha provider's verify API (reCAPTCHA, hCaptcha and
                                  Turnstile share it): POST secret, response, remoteip;
                                  success when the secret is "captcha-secret" and the
                                  response "human"; the response "slow" answers after 3 s,
                                  "broken" with a 500. GET /__last: the last form it got,
                                  GET /__calls: how many.
  http_fixture.py files PORT DIR  serves files from DIR, counting requests per path;
                                  GET /__hits?path=/x returns the count for /x.
                                  A file X.cache-control next to X sets Cache-Control.
                                  X.html is text/html, anything else application/json.
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HITS = {}
LOCK = threading.Lock()


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        delay = parse_qs(urlsplit(self.path).query).get("delay_ms")
        if delay:
            time.sleep(int(delay[0]) / 1000)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        out = json.dumps({
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body_len": len(body),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = handle_any


class Files(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = "."

    def log_message(self, *args):
        pass

    def reply(self, status, body, extra=(), content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/__hits":
            path = parse_qs(url.query).get("path", [""])[0]
            with LOCK:
                count = HITS.get(path, 0)
            return self.reply(200, str(count).encode())
        with LOCK:
            HITS[url.path] = HITS.get(url.path, 0) + 1
        file = os.path.join(self.root, url.path.lstrip("/"))
        if not os.path.isfile(file):
            return self.reply(404, b"{}")
        with open(file, "rb") as f:
            body = f.read()
        extra = []
        if os.path.isfile(file + ".cache-control"):
            with open(file + ".cache-control") as f:
                extra.append(("Cache-Control", f.read().strip()))
        html = file.endswith(".html")
        self.reply(200, body, extra, "text/html" if html else "application/json")


class Authz(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    calls = 0
    last = {}

    def log_message(self, *args):
        pass

    def reply(self, status, body, extra=()):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        path = urlsplit(self.path).path
        if path in ("/__calls", "/__last"):
            with LOCK:
                out = Authz.calls if path == "/__calls" else Authz.last
            return self.reply(200, json.dumps(out).encode())
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with LOCK:
            Authz.calls += 1
            Authz.last = {k.lower(): v for k, v in self.headers.items()}
            Authz.last[":path"] = self.path
            Authz.last[":method"] = self.command
        if path.startswith("/v1/data/"):
            data = json.loads(body)["input"]
            if "undefined" in data["path"]:
                return self.reply(200, b"{}")
            caller = data.get("caller") or {}
            if "reader" in caller.get("roles", []):
                result = {"allow": True, "headers": {"x-opa": "yes"}}
            else:
                result = False
            return self.reply(200, json.dumps({"result": result}).encode())
        decision = self.headers.get("X-Test-Decision", "")
        if decision == "deny":
            return self.reply(403, b'{"error":"blocked by policy"}',
                              [("Content-Type", "application/json"), ("X-Secret", "no")])
        if decision == "unauth":
            return self.reply(401, b"log in first", [("WWW-Authenticate", 'Bearer realm="authz"')])
        if decision == "error":
            return self.reply(500, b"oops")
        if decision == "slow":
            time.sleep(2)
        if decision == "slow-allow":
            time.sleep(0.3)
        self.reply(200, b"", [("X-Authz-Tenant", "from-authz"), ("X-Not-Forwarded", "x")])

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = handle_any


class Flaky(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    failing = False

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if url.path == "/__hits":
            with LOCK:
                n = HITS.get(query.get("path", [""])[0], 0)
            return self.reply(200, str(n).encode())
        if url.path in ("/__fail", "/__recover"):
            Flaky.failing = url.path == "/__fail"
            return self.reply(200, b"ok")
        with LOCK:
            n = HITS[url.path] = HITS.get(url.path, 0) + 1
        if "delay_ms" in query:
            time.sleep(int(query["delay_ms"][0]) / 1000)
        if Flaky.failing:
            return self.reply(503, b"failing")
        if "status" in query:
            return self.reply(int(query["status"][0]), b"as asked")
        if n <= int(query.get("fail_times", ["0"])[0]):
            return self.reply(503, b"not yet")
        self.reply(200, ("attempt %d" % n).encode())

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = handle_any


class Captcha(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    calls = 0
    last = {}

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with LOCK:
            out = Captcha.calls if self.path == "/__calls" else Captcha.last
        self.reply(200, json.dumps(out).encode())

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        with LOCK:
            Captcha.calls += 1
            Captcha.last = form
        response = form.get("response")
        if response == "slow":
            time.sleep(3)
        if response == "broken":
            return self.reply(500, b"{}")
        success = form.get("secret") == "captcha-secret" and response == "human"
        codes = [] if success else ["invalid-input-response"]
        self.reply(200, json.dumps({"success": success, "error-codes": codes}).encode())


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode in ("echo", "tls-echo"):
        handler = Echo
    elif mode == "flaky":
        handler = Flaky
    elif mode == "authz":
        handler = Authz
    elif mode == "captcha":
        handler = Captcha
    else:
        Files.root = sys.argv[3]
        handler = Files
    # Parallel tests connect in bursts; the default backlog of 5 refuses some of them.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer((os.environ.get("FIXTURE_HOST", "127.0.0.1"), port), handler)
    server.daemon_threads = True
    if mode in ("flaky", "captcha"):
        # The gateway gives up on slow answers on purpose; a broken pipe is expected.
        server.handle_error = lambda request, address: None
    if mode == "tls-echo":
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        if len(sys.argv) > 5:
            ctx.load_verify_locations(sys.argv[5])
            ctx.verify_mode = ssl.CERT_REQUIRED
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        # A failed handshake is the client's problem; keep serving quietly.
        server.handle_error = lambda request, address: None
    server.serve_forever()


if __name__ == "__main__":
    main()
