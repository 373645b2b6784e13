"""One unary call through Zilla's grpc-kafka -> Kafka -> kafka-grpc -> an echo service here.

Usage: grpc_check.py ZILLA_GRPC SERVICE_ADDR TEXT. Serves strait.bench.v1.Echo/Unary (raw
bytes, echoed) on SERVICE_ADDR (where Zilla's kafka-grpc calls), calls it through Zilla at
ZILLA_GRPC with a strait.bench.v1.Msg whose payload is TEXT until a call succeeds (kafka-grpc
may still be joining its group) or 60 s pass, and prints what came back. Exit 1 on failure."""
import sys
import time
from concurrent import futures

import grpc

zilla, service, text = sys.argv[1], sys.argv[2], sys.argv[3]
calls = []


def echo(request, context):
    calls.append(request)
    return request


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers([
    grpc.method_handlers_generic_handler(
        "strait.bench.v1.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(echo)})
])
if server.add_insecure_port(service) == 0:
    sys.exit(f"cannot listen on {service} (ZILLA_GRPC_SERVICE)")
server.start()

payload = text.encode()
request = b"\x0a" + bytes([len(payload)]) + payload  # Msg { bytes payload = 1; }
channel = grpc.insecure_channel(zilla)
unary = channel.unary_unary("/strait.bench.v1.Echo/Unary")
deadline = time.monotonic() + 60
attempts, last = 0, None
while time.monotonic() < deadline:
    attempts += 1
    try:
        reply = unary(request, timeout=10)
        print(f"reply after {attempts} call(s): {reply!r}; the service saw {len(calls)} call(s)")
        sys.exit(0 if reply == request else 1)
    except grpc.RpcError as error:
        last = f"{error.code()}: {error.details()}"
        time.sleep(0.5)
print(f"no reply within 60 s ({attempts} calls, last: {last}); the service saw {len(calls)} call(s)")
sys.exit(1)
