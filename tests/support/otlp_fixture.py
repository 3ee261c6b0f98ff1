#!/usr/bin/env python3
"""An OTLP/HTTP trace receiver for the tests: decodes each export with OpenTelemetry's own
protobuf messages (opentelemetry-proto) and serves what it received as JSON.

    otlp_fixture.py PORT

POST /v1/traces        an ExportTraceServiceRequest (application/x-protobuf)
GET  /__spans          every span received: ids in hex, attributes as a dict
GET  /__raw_contains?s=TEXT   whether any export's bytes contain TEXT ("yes"/"no")
POST /__status?code=N  answer exports with N from now on (200 by default); 0: hang 2 s, then 503
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

LOCK = threading.Lock()
SPANS = []
RAW = []
STATUS = [200]


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def flatten(request):
    for resource_spans in request.resource_spans:
        resource = {kv.key: value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "resource": resource,
                    "scope": scope_spans.scope.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "trace_state": span.trace_state,
                    "name": span.name,
                    "kind": span.kind,
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "attributes": {kv.key: value(kv.value) for kv in span.attributes},
                    "status": {"code": span.status.code, "message": span.status.message},
                    "flags": span.flags,
                    "json": MessageToDict(span),
                }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if url.path == "/__status":
            STATUS[0] = int(parse_qs(url.query)["code"][0])
            return self.reply(200, b"ok")
        if url.path != "/v1/traces":
            return self.reply(404, b"not found")
        if self.headers.get("Content-Type") != "application/x-protobuf":
            return self.reply(415, b"protobuf only")
        if STATUS[0] == 0:
            time.sleep(2)
            try:
                return self.reply(503, b"too late")
            except OSError:  # the gateway gave up waiting, as it should
                return None
        if STATUS[0] != 200:
            return self.reply(STATUS[0], b"refused")
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception as e:  # a malformed export is the gateway's bug: show it
            print(f"otlp fixture: undecodable export: {e}", file=sys.stderr)
            return self.reply(400, b"undecodable")
        with LOCK:
            RAW.append(body)
            SPANS.extend(flatten(request))
        self.reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/__spans":
            with LOCK:
                body = json.dumps(SPANS).encode()
            return self.reply(200, body)
        if url.path == "/__raw_contains":
            needle = parse_qs(url.query)["s"][0].encode()
            with LOCK:
                found = any(needle in raw for raw in RAW)
            return self.reply(200, b"yes" if found else b"no", "text/plain")
        self.reply(404, b"not found")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
