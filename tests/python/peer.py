#!/usr/bin/env python3
"""grpcio peers of balancer's conformance tests, for greeter/proto/*.proto.

    peer.py server --listen 127.0.0.1:0 --name NAME
        Serves helloworld.Greeter and balancer.test.Echo with the semantics of
        the Rust greeter (greeter/src/server.rs); prints `listening on ADDR`.

    peer.py client --target ADDR CASE...
        Runs the named cases over ONE channel and prints one JSON object:
        {"case": result, ...}. Cases: unary, server_stream, client_stream,
        bidi, large, status, deadline, cancel, spread=N[,CONCURRENCY].

The Python code for the protos is generated at run time with grpcio-tools
into a cache directory keyed by the protos' content; nothing generated is
kept in the repository.
"""

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import os
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "..", "greeter", "proto")
PROTOS = ["helloworld.proto", "echo.proto"]
MAX_MESSAGE = 64 * 1024 * 1024
OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]


def load_stubs():
    """Generates (once per proto content) and imports the stubs."""
    digest = hashlib.sha256()
    for p in PROTOS:
        with open(os.path.join(PROTO_DIR, p), "rb") as f:
            digest.update(f.read())
    out = os.path.join(tempfile.gettempdir(), "balancer-py-stubs-" + digest.hexdigest()[:16])
    if not os.path.exists(os.path.join(out, "done")):
        from grpc_tools import protoc

        tmp = out + ".%d" % os.getpid()
        os.makedirs(tmp, exist_ok=True)
        args = ["protoc", "-I" + PROTO_DIR, "--python_out=" + tmp, "--grpc_python_out=" + tmp] + PROTOS
        if protoc.main(args) != 0:
            sys.exit("peer.py: protoc failed on " + PROTO_DIR)
        open(os.path.join(tmp, "done"), "w").close()
        try:
            os.rename(tmp, out)
        except OSError:
            pass  # another process won the race; its output is identical
    sys.path.insert(0, out)
    import echo_pb2
    import echo_pb2_grpc
    import helloworld_pb2
    import helloworld_pb2_grpc

    return helloworld_pb2, helloworld_pb2_grpc, echo_pb2, echo_pb2_grpc


hw, hw_grpc, ep, ep_grpc = load_stubs()
import grpc  # noqa: E402  (after the stubs: they import it too)


def x_metadata(context):
    return {k: v for k, v in context.invocation_metadata() if k.startswith("x-") and isinstance(v, str)}


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.calls = 0

    def start(self):
        with self.lock:
            self.calls += 1


class Greeter(hw_grpc.GreeterServicer):
    def __init__(self, name, stats):
        self.name, self.stats = name, stats

    def SayHello(self, request, context):
        self.stats.start()
        return hw.HelloReply(message="Hello %s!" % request.name, backend=self.name)


class Echo(ep_grpc.EchoServicer):
    def __init__(self, name, stats):
        self.name, self.stats = name, stats

    def reply(self, **kw):
        return ep.EchoReply(backend=self.name, **kw)

    def Unary(self, request, context):
        self.stats.start()
        md = x_metadata(context)
        context.send_initial_metadata(tuple(md.items()))
        payload = b"e" * request.reply_size if request.reply_size else request.payload
        return self.reply(payload=payload, message=request.message, metadata=md)

    def ServerStream(self, request, context):
        self.stats.start()
        for i in range(request.count):
            if i and request.interval_ms:
                time.sleep(request.interval_ms / 1000)
            yield self.reply(payload=b"s" * request.size, message="reply %d" % i, count=i)

    def ClientStream(self, request_iterator, context):
        self.stats.start()
        md = x_metadata(context)
        context.send_initial_metadata(tuple(md.items()))
        count = size = 0
        for m in request_iterator:
            count += 1
            size += len(m.payload)
        return self.reply(message="%d messages" % count, count=count, bytes=size, metadata=md)

    def BidiStream(self, request_iterator, context):
        self.stats.start()
        for i, m in enumerate(request_iterator):
            yield self.reply(payload=m.payload, message=m.message, count=i)

    def Fail(self, request, context):
        self.stats.start()
        trailers = x_metadata(context)
        trailers.update(request.trailers)
        context.set_trailing_metadata(tuple(trailers.items()))
        if request.code == 0:
            return self.reply(message=request.message)
        code = next(c for c in grpc.StatusCode if c.value[0] == request.code)
        context.abort(code, request.message)

    def Sleep(self, request, context):
        self.stats.start()
        end = time.monotonic() + request.millis / 1000
        while time.monotonic() < end and context.is_active():
            time.sleep(0.01)
        return self.reply(message="slept %d ms" % request.millis)


def serve(args):
    stats = Stats()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=32), options=OPTIONS)
    hw_grpc.add_GreeterServicer_to_server(Greeter(args.name, stats), server)
    ep_grpc.add_EchoServicer_to_server(Echo(args.name, stats), server)
    host, _, port = args.listen.rpartition(":")
    port = server.add_insecure_port("%s:%s" % (host, port))
    if port == 0:
        sys.exit("peer.py: cannot listen on " + args.listen)
    server.start()
    print("listening on %s:%d" % (host, port), flush=True)
    server.wait_for_termination()


# ---- client cases: each returns a JSON-able result or raises ----


def code_name(e):
    return e.code().name


def case_unary(ch):
    stub = ep_grpc.EchoStub(ch)
    reply, call = stub.Unary.with_call(
        ep.EchoRequest(payload=b"ping", message="m"), metadata=(("x-request-id", "r-17"),), timeout=10
    )
    headers = dict(call.initial_metadata())
    return {
        "payload": reply.payload.decode(),
        "message": reply.message,
        "backend": reply.backend,
        "echoed": dict(reply.metadata),
        "header": headers.get("x-request-id"),
    }


def case_server_stream(ch):
    stub = ep_grpc.EchoStub(ch)
    replies = list(stub.ServerStream(ep.StreamRequest(count=50, size=1000), timeout=20))
    return {"count": len(replies), "in_order": [r.count for r in replies] == list(range(50)),
            "sizes_ok": all(len(r.payload) == 1000 for r in replies)}


def case_stream(ch, count, size, interval_ms):
    """One server-streaming call of `count` replies of `size` bytes, one
    every `interval_ms`: did every byte arrive, in order?"""
    stub = ep_grpc.EchoStub(ch)
    req = ep.StreamRequest(count=count, size=size, interval_ms=interval_ms)
    replies = list(stub.ServerStream(req, timeout=60))
    return {"count": len(replies), "in_order": [r.count for r in replies] == list(range(count)),
            "sizes_ok": all(r.payload == b"s" * size for r in replies)}


def case_client_stream(ch):
    stub = ep_grpc.EchoStub(ch)
    reqs = (ep.EchoRequest(payload=b"\x03" * 1024) for _ in range(200))
    reply = stub.ClientStream(reqs, timeout=20)
    return {"count": reply.count, "bytes": reply.bytes}


def case_bidi(ch):
    stub = ep_grpc.EchoStub(ch)
    import queue

    q = queue.Queue()

    def requests():
        while True:
            m = q.get()
            if m is None:
                return
            yield m

    it = stub.BidiStream(requests(), timeout=20)
    got = []
    for i in range(20):
        q.put(ep.EchoRequest(message="ping %d" % i))
        r = next(it)
        got.append([r.message, r.count])
    q.put(None)
    rest = list(it)
    return {"pairs_ok": got == [["ping %d" % i, i] for i in range(20)], "after_close": len(rest)}


def case_large(ch):
    stub = ep_grpc.EchoStub(ch)
    out = {}
    for size in (4 << 20, (8 << 20) + 17):
        payload = (bytes(range(251)) * (size // 251 + 1))[:size]
        r = stub.Unary(ep.EchoRequest(payload=payload), timeout=60)
        r2 = stub.Unary(ep.EchoRequest(reply_size=size), timeout=60)
        out[str(size)] = {"echo_equal": r.payload == payload, "reply_len": len(r2.payload)}
    return out


def case_status(ch):
    stub = ep_grpc.EchoStub(ch)
    out = {}
    for code in range(0, 17):
        msg = "status %d: ünïcödé and 100%% spaces" % code
        try:
            reply, call = stub.Fail.with_call(
                ep.StatusRequest(code=code, message=msg, trailers={"x-detail": "d%d" % code}),
                metadata=(("x-echo", "e"),),
                timeout=10,
            )
            # A successful unary call's metadata may come as headers (tonic
            # cannot send trailing metadata with OK) or as trailers.
            trailers = dict(call.initial_metadata())
            trailers.update(dict(call.trailing_metadata()))
            out[str(code)] = {"code": 0, "message": reply.message, "detail": trailers.get("x-detail"),
                              "echo": trailers.get("x-echo")}
        except grpc.RpcError as e:
            trailers = dict(e.trailing_metadata() or ())
            out[str(code)] = {"code": e.code().value[0], "message": e.details(),
                              "detail": trailers.get("x-detail"), "echo": trailers.get("x-echo")}
    return {"expected_message": "status N: ünïcödé and 100% spaces", "results": out}


def case_deadline(ch):
    stub = ep_grpc.EchoStub(ch)
    t = time.monotonic()
    try:
        stub.Sleep(ep.SleepRequest(millis=10000), timeout=0.3)
        code = "OK"
    except grpc.RpcError as e:
        code = code_name(e)
    return {"code": code, "elapsed_ms": int((time.monotonic() - t) * 1000)}


def case_cancel(ch):
    stub = ep_grpc.EchoStub(ch)
    fut = stub.Sleep.future(ep.SleepRequest(millis=30000), timeout=60)
    time.sleep(0.3)
    cancelled = fut.cancel()
    # The channel still serves new calls.
    r = stub.Unary(ep.EchoRequest(message="after"), timeout=10)
    return {"cancelled": cancelled, "after": r.message}


def case_spread(ch, n, concurrency):
    stub = hw_grpc.GreeterStub(ch)
    counts, errors, details = {}, {}, []
    lock = threading.Lock()

    def one(i):
        try:
            r = stub.SayHello(hw.HelloRequest(name="call-%d" % i), timeout=10)
            with lock:
                counts[r.backend] = counts.get(r.backend, 0) + 1
        except grpc.RpcError as e:
            with lock:
                errors[code_name(e)] = errors.get(code_name(e), 0) + 1
                if len(details) < 5:  # what the first failures said
                    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S.%f")
                    details.append("%s at %s: %s" % (code_name(e), stamp, e.details()))

    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(n)))
    return {"backends": counts, "errors": errors, "details": details}


def client(args):
    # One channel: one HTTP/2 connection for every case.
    ch = grpc.insecure_channel(args.target, options=OPTIONS)
    grpc.channel_ready_future(ch).result(timeout=10)
    report = {}
    for case in args.cases:
        name, _, arg = case.partition("=")
        try:
            if name == "spread":
                n, _, c = arg.partition(",")
                report[case] = case_spread(ch, int(n), int(c or 1))
            elif name == "stream":
                count, size, interval = (int(x) for x in arg.split(","))
                report[case] = case_stream(ch, count, size, interval)
            else:
                report[case] = globals()["case_" + name](ch)
        except grpc.RpcError as e:
            report[case] = {"error": code_name(e), "details": e.details()}
        except Exception as e:  # a broken case is reported, not hidden
            report[case] = {"error": type(e).__name__, "details": str(e)}
    ch.close()
    print(json.dumps(report), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--listen", default="127.0.0.1:0")
    s.add_argument("--name", default="python")
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("cases", nargs="+")
    args = p.parse_args()
    serve(args) if args.cmd == "server" else client(args)


if __name__ == "__main__":
    main()
