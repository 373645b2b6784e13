"""A grpcio client of strait.test.v1.Echo, without generated code: messages are encoded and
decoded by hand, calls go through grpcio's generic stubs. Prints what it saw as JSON.

usage: echo_client.py HOST:PORT
"""
import json
import sys

import grpc


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_bytes(number, value):
    return varint(number << 3 | 2) + varint(len(value)) + value


def echo_request(text, repeat=0, code=0, error=""):
    out = field_bytes(1, text.encode())
    if repeat:
        out += varint(2 << 3) + varint(repeat)
    if code:
        out += varint(3 << 3) + varint(code)
    if error:
        out += field_bytes(4, error.encode())
    return out


def read_varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def fields(data):
    i = 0
    while i < len(data):
        tag, i = read_varint(data, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = read_varint(data, i)
        elif wire == 2:
            length, i = read_varint(data, i)
            value, i = data[i:i + length], i + length
        else:
            raise ValueError("unexpected wire type %d" % wire)
        yield number, value


def echo_reply(data):
    reply = {"text": "", "index": 0, "metadata": {}}
    for number, value in fields(data):
        if number == 1:
            reply["text"] = value.decode()
        elif number == 2:
            reply["index"] = value
        elif number == 3:
            entry = dict(fields(value))
            reply["metadata"][entry[1].decode()] = entry[2].decode()
    return reply


def main():
    out = {}
    with grpc.insecure_channel(sys.argv[1]) as channel:
        unary = channel.unary_unary("/strait.test.v1.Echo/Unary")
        response, call = unary.with_call(
            echo_request("from python"),
            metadata=(("x-lang", "python"), ("x-trace-bin", b"\x00\x01\xfe\xff")),
            timeout=20,
        )
        out["unary"] = echo_reply(response)
        initial = dict(call.initial_metadata())
        out["served_by"] = initial.get("x-served-by")
        out["trace_bin"] = list(initial.get("x-trace-bin", b""))

        stream = channel.unary_stream("/strait.test.v1.Echo/ServerStream")
        out["stream"] = [echo_reply(m)["text"] for m in stream(echo_request("py", repeat=3), timeout=20)]

        client_stream = channel.stream_unary("/strait.test.v1.Echo/ClientStream")
        out["client_stream"] = echo_reply(
            client_stream(iter([echo_request(t) for t in ("x", "y")]), timeout=20)
        )["text"]

        try:
            unary(echo_request("missing", code=5, error="no such thing"), timeout=20)
            out["error"] = None
        except grpc.RpcError as error:
            out["error"] = [error.code().value[0], error.details()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
