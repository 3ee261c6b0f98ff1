#!/usr/bin/env python3
"""A real gRPC server and client (grpcio) for the Portcullis tests, with raw-bytes messages so
that no generated code is needed.

  grpc_fixture.py server PORT [CERT KEY]
      (with CERT and KEY: over TLS, offering h2 by ALPN)
      test.Echo/Unary answers JSON: the request's text and the x-user-id it was given;
      test.Echo/Stream answers N messages ("part 0" ...) for a request "N", then sets the
      trailer x-trailer: kept.
  grpc_fixture.py client HOST:PORT CALL [TOKEN]
      makes one call (unary, stream) with the token as a bearer, and prints JSON: the code,
      the details, the answers, and the trailing metadata.
"""
import json
import sys
from concurrent import futures

import grpc


def unary(request, context):
    metadata = dict(context.invocation_metadata())
    return json.dumps({
        "echo": request.decode(),
        "user": metadata.get("x-user-id"),
        "authorization": metadata.get("authorization") is not None,
    }).encode()


def stream(request, context):
    for i in range(int(request.decode())):
        yield ("part %d" % i).encode()
    context.set_trailing_metadata((("x-trailer", "kept"),))


def serve(port, cert=None, key=None):
    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    if cert:
        with open(cert, "rb") as c, open(key, "rb") as k:
            credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
        server.add_secure_port("127.0.0.1:%d" % port, credentials)
    else:
        server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    server.wait_for_termination()


def call(target, which, token):
    metadata = [("authorization", "Bearer " + token)] if token else []
    out = {}
    with grpc.insecure_channel(target) as channel:
        try:
            if which == "unary":
                answer, c = channel.unary_unary("/test.Echo/Unary").with_call(
                    b"hello", metadata=metadata, timeout=10)
                out["answers"] = [answer.decode()]
            else:
                c = channel.unary_stream("/test.Echo/Stream")(b"3", metadata=metadata, timeout=10)
                out["answers"] = [m.decode() for m in c]
            out["code"] = c.code().name
            out["trailers"] = dict(c.trailing_metadata() or ())
        except grpc.RpcError as e:
            out["code"] = e.code().name
            out["details"] = e.details()
            out["trailers"] = dict(e.trailing_metadata() or ())
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]), *sys.argv[3:5])
    else:
        call(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")
