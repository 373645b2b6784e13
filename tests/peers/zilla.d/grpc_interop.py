"""gRPC calls for `tests/peers/zilla interop` (grpc_checks.sh), Zilla and Strait side by side.

  grpc_interop.py unary TARGET METHOD TEXT SERVE_ADDR...
      Serves an echo of strait.bench.v1.Echo/Unary and strait.interop.v1.Echo/Unary on every
      SERVE_ADDR (raw bytes, echoed), calls METHOD (e.g. strait.interop.v1.Echo/Unary) through
      TARGET with a Msg whose payload is TEXT until a call succeeds or 60 s pass, and prints the
      reply and which SERVE_ADDR answered, as one JSON object. Exit 1 when no call succeeded.
  grpc_interop.py fetch TARGET METHOD NEEDLE COUNT [LAST_MESSAGE_ID]
      A `fetch` call (empty request, server stream) through TARGET, resumed from
      LAST_MESSAGE_ID (metadata last-message-id) when given. Reads until COUNT messages whose
      payload contains NEEDLE came, plus 1 s more (a redelivery would show), or 20 s passed.
      Prints one JSON line per message: payload, and the message id (field 32767) as base64url
      and hex. Exit 1 when the call failed before COUNT messages.
"""
import base64
import json
import sys
import threading
import time
from concurrent import futures

import grpc

ID_FIELD = 32767


def msg(text):
    payload = text.encode()
    return b"\x0a" + bytes([len(payload)]) + payload  # Msg { bytes payload = 1; } (short TEXT)


def varint(data, i):
    value, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def fields(data):
    """(number, bytes) of the length-delimited fields of a protobuf message."""
    out, i = [], 0
    while i < len(data):
        tag, i = varint(data, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, i = varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = varint(data, i)
            out.append((number, data[i:i + n]))
            i += n
        else:
            raise ValueError(f"wire type {wire}")
    return out


def unary(target, method, text, serve):
    seen = {addr: 0 for addr in serve}
    servers = []
    for addr in serve:
        def echo(request, context, addr=addr):
            seen[addr] += 1
            return request

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        for service in ("strait.bench.v1.Echo", "strait.interop.v1.Echo"):
            server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
                service, {"Unary": grpc.unary_unary_rpc_method_handler(echo)})])
        if server.add_insecure_port(addr) == 0:
            sys.exit(f"cannot listen on {addr}")
        server.start()
        servers.append(server)
    request = msg(text)
    call = grpc.insecure_channel(target).unary_unary("/" + method)
    deadline, attempts, last = time.monotonic() + 60, 0, None
    while time.monotonic() < deadline:
        attempts += 1
        try:
            reply = call(request, timeout=10)
            print(json.dumps({"ok": reply == request, "reply": repr(reply), "attempts": attempts,
                              "answered_by": [a for a, n in seen.items() if n]}))
            return 0 if reply == request else 1
        except grpc.RpcError as error:
            last = f"{error.code()}: {error.details()}"
            time.sleep(0.5)
    print(json.dumps({"ok": False, "attempts": attempts, "last": last,
                      "answered_by": [a for a, n in seen.items() if n]}))
    return 1


def fetch(target, method, needle, count, last_id):
    metadata = [("last-message-id", last_id)] if last_id else []
    call = grpc.insecure_channel(target).unary_stream("/" + method)
    stream = call(b"", metadata=metadata, timeout=20)
    matched, stop_at, lock = 0, None, threading.Lock()
    state = {"error": None}

    def read():
        nonlocal matched, stop_at
        try:
            for message in stream:
                payload, ident = b"", b""
                for number, value in fields(message):
                    if number == 1:
                        payload = value
                    elif number == ID_FIELD:
                        ident = value
                text = payload.decode(errors="replace")
                print(json.dumps({"payload": text, "id": base64.urlsafe_b64encode(ident).decode()
                                  .rstrip("="), "id_hex": ident.hex()}), flush=True)
                with lock:
                    if needle in text:
                        matched += 1
                        if matched >= count and stop_at is None:
                            stop_at = time.monotonic() + 1
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                state["error"] = f"{error.code()}: {error.details()}"

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 20
    while reader.is_alive() and time.monotonic() < deadline:
        with lock:
            if stop_at is not None and time.monotonic() >= stop_at:
                break
        time.sleep(0.05)
    stream.cancel()
    reader.join(2)
    if matched < count:
        print(json.dumps({"error": state["error"] or f"{matched} of {count} within 20 s"}))
        return 1
    return 0


def main():
    mode = sys.argv[1]
    if mode == "unary":
        return unary(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    if mode == "fetch":
        last = sys.argv[6] if len(sys.argv) > 6 else None
        return fetch(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), last)
    sys.exit(__doc__)


sys.exit(main())
