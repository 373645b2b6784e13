"""Print the Kafka records (kcat -J lines on stdin) whose value contains argv[1], one per line:
partition, key, headers (name=value; values that are not printable text in hex), value
(repr() when not printable).
Used by checks.sh; kcat's JSON carries headers as a flat [name, value, ...] list."""
import json
import sys

needle = sys.argv[1]
for line in sys.stdin:
    record = json.loads(line)
    if needle not in (record.get("payload") or ""):
        continue
    flat = record.get("headers") or []
    pairs = []
    for name, value in zip(flat[0::2], flat[1::2]):
        if value is not None and not value.isprintable():
            value = "0x" + value.encode("latin-1", "replace").hex()
        pairs.append(f"{name}={value}")
    headers = ", ".join(pairs)
    value = record["payload"]
    if value is not None and not value.isprintable():
        value = repr(value)  # e.g. protobuf bytes: one line, escapes visible
    print(f"partition={record['partition']} key={record['key']} headers=[{headers}] value={value}")
