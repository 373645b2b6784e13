# shellcheck shell=bash disable=SC2154 # files, repo, ZILLA_* ... come from tests/peers/zilla
# `tests/peers/zilla interop grpc`: Strait's grpc-kafka and kafka-grpc beside Zilla's, on Zilla's
# topics. Sourced by tests/peers/zilla after checks.sh (ok, bad, note, check_summary, wait_record,
# strait_proxy_bin, readyz), never run.
#
# Who answers a call. Zilla's kafka-grpc (zilla.yaml) takes only records of service
# strait.bench.v1.Echo: it filters its fetch on zilla:service. Strait's kafka-grpc here takes only
# strait.interop.v1.Echo (its route's `method`). Both read the same requests topic, in their own
# consumer groups, and write to the same replies topic, so:
#   a. strait.interop.v1.Echo through Zilla's grpc-kafka is answered by Strait's kafka-grpc;
#   b. strait.bench.v1.Echo through Strait's grpc-kafka is answered by Zilla's kafka-grpc.
# The echo service (grpc_interop.py) listens at both targets, ZILLA_GRPC_SERVICE for Zilla's
# kafka-grpc and one of its own for Strait's, and tells which one a call reached.
#   c. strait.interop.v1.Events/Fetch streams ZILLA_GRPC_EVENTS through either; a stream read
#      through one is resumed through the other with the last message id it got.

# grpc_interop_start BIN: Strait's grpc-kafka and kafka-grpc on Zilla's topics; their logs and
# pids in $STRAIT_STATE/$ZILLA_INSTANCE-grpc-interop. Sets STRAIT_GRPC and STRAIT_SERVICE.
grpc_interop_start() {
  local bin=$1 svc=$ZILLA_INSTANCE-grpc-interop dir front_admin back_admin
  dir=$(svc_dir "$svc")
  stop_svc "$svc"
  mkdir -p "$dir/protos"
  STRAIT_GRPC=127.0.0.1:$(free_port); STRAIT_SERVICE=127.0.0.1:$(free_port)
  front_admin=127.0.0.1:$(free_port); back_admin=127.0.0.1:$(free_port)
  # The .proto files of zilla.yaml's inline catalog.
  cat >"$dir/protos/bench.proto" <<'PROTO'
syntax = "proto3";
package strait.bench.v1;
message Msg { bytes payload = 1; }
service Echo {
  rpc Unary(Msg) returns (Msg);
  rpc Stream(Msg) returns (stream Msg);
}
PROTO
  cat >"$dir/protos/interop.proto" <<'PROTO'
syntax = "proto3";
package strait.interop.v1;
message Msg { bytes payload = 1; }
message Empty {}
service Echo { rpc Unary(Msg) returns (Msg); }
service Events { rpc Fetch(Empty) returns (stream Msg); }
PROTO
  cat >"$dir/grpc-kafka.yaml" <<YAML
listen: $STRAIT_GRPC
kafka: { bootstrap: '$KAFKA_BOOTSTRAP' }
protos: { paths: ['$dir/protos'], reloadInterval: 0s }
routes:
  - { method: strait.bench.v1.Echo/*, produce: { topic: $ZILLA_GRPC_REQUESTS, replyTo: $ZILLA_GRPC_REPLIES } }
  - { method: strait.interop.v1.Events/*, fetch: { topic: $ZILLA_GRPC_EVENTS } }
YAML
  # A fixed group: a rerun starts where the last one stopped instead of answering old calls.
  cat >"$dir/kafka-grpc.yaml" <<YAML
kafka: { bootstrap: '$KAFKA_BOOTSTRAP' }
target: http://$STRAIT_SERVICE
groupId: strait-zilla-interop-$ZILLA_INSTANCE
routes: [{ topic: $ZILLA_GRPC_REQUESTS, method: 'strait.interop.v1.Echo/*', replyTo: [$ZILLA_GRPC_REPLIES] }]
YAML
  start_bg "$svc" grpc-kafka "$bin" grpc-kafka --config "$dir/grpc-kafka.yaml" --metrics-addr "$front_admin"
  start_bg "$svc" kafka-grpc "$bin" kafka-grpc --config "$dir/kafka-grpc.yaml" --metrics-addr "$back_admin"
  until_within 60 readyz "$front_admin" || { tail -n 30 "$dir/grpc-kafka.log" >&2; die "grpc-kafka not ready within 60 s"; }
  until_within 120 readyz "$back_admin" || { tail -n 30 "$dir/kafka-grpc.log" >&2; die "kafka-grpc not ready within 120 s"; }
  log "Strait: grpc-kafka on $STRAIT_GRPC, kafka-grpc -> $STRAIT_SERVICE (logs in $dir)"
}

# json_field JSON NAME: a top-level field of a JSON object (lists joined with spaces).
json_field() {
  python3 -c 'import json, sys; v = json.loads(sys.argv[1]).get(sys.argv[2], ""); print(" ".join(v) if isinstance(v, list) else v)' "$1" "$2"
}

# grpc_unary WHAT THROUGH METHOD ANSWERER TEXT: a unary call of METHOD through THROUGH must come
# back equal, having reached only the echo at ANSWERER; then the request and reply records.
grpc_unary() {
  local what=$1 through=$2 method=$3 answerer=$4 text=$5 out since rec by
  since=$(now_ms)
  out=$("$GRPC_PY" "$files/grpc_interop.py" unary "$through" "$method" "$text" \
    "$ZILLA_GRPC_SERVICE" "$STRAIT_SERVICE" 2>&1 | tail -n1) || true
  by=$(json_field "$out" answered_by 2>/dev/null) || by=
  if [ "$(json_field "$out" ok 2>/dev/null)" = True ] && [ "$by" = "$answerer" ]; then
    ok "$what: $out"
  else
    bad "$what: expected the echo at $answerer to answer, got: $out"
  fi
  if rec=$(wait_record "$ZILLA_GRPC_REQUESTS" "$since" "$text"); then echo "    request: $rec"
  else bad "$what: no request record with '$text' in $ZILLA_GRPC_REQUESTS"; fi
  if rec=$(wait_record "$ZILLA_GRPC_REPLIES" "$since" "$text"); then echo "    reply:   $rec"
  else bad "$what: no reply record with '$text' in $ZILLA_GRPC_REPLIES"; fi
}

# fetch_lines THROUGH NEEDLE COUNT [ID]: grpc_interop.py fetch's JSON lines.
fetch_lines() {
  "$GRPC_PY" "$files/grpc_interop.py" fetch "$1" strait.interop.v1.Events/Fetch "$2" "$3" ${4:+"$4"}
}

# grpc_fetch_resume FROM_NAME FROM TO_NAME TO NEEDLE: a fetch through FROM reads the six events
# NEEDLE marks; the id after the third resumes a fetch through TO, which must deliver exactly
# the other three.
grpc_fetch_resume() {
  local from_name=$1 from=$2 to_name=$3 to=$4 needle=$5 first id rest got want
  local what="fetch through $from_name, resumed through $to_name"
  if ! first=$(fetch_lines "$from" "$needle" 6); then
    bad "$what: fetch through $from_name: $(tail -n1 <<<"$first")"; return
  fi
  # The first three of ours, and the id that came with the third.
  local ours; ours=$(grep -F "\"payload\": \"$needle" <<<"$first")
  id=$(sed -n 3p <<<"$ours" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  echo "    $from_name's id after 3 of 6 events: $id ($(sed -n 3p <<<"$ours" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id_hex"])'))"
  if ! rest=$(fetch_lines "$to" "$needle" 3 "$id"); then
    bad "$what: $(tail -n1 <<<"$rest")"; return
  fi
  payloads() { python3 -c 'import json, sys; print(" ".join(sorted(json.loads(l)["payload"] for l in sys.stdin if l.strip())))'; }
  got=$(grep -F "\"payload\": \"$needle" <<<"$rest" | payloads)
  want=$(sed -n '4,$p' <<<"$ours" | payloads)
  if [ "$got" = "$want" ]; then ok "$what: the other three, once each: $got"
  else bad "$what: expected '$want' after id $id, got '$got'"; fi
}

cmd_interop_grpc() {
  check_env
  local bin id
  if ! bin=$(strait_proxy_bin); then
    echo "zilla interop grpc: skipped, no strait-proxy binary (cargo build -p strait-proxy, or set STRAIT_PROXY_BIN)"
    return 0
  fi
  GRPC_PY=$("$repo/tests/e2e/python-grpcio") || die "no Python with grpcio (tests/e2e/python-grpcio)"
  trap 'stop_svc "$ZILLA_INSTANCE-grpc-interop"' EXIT
  grpc_interop_start "$bin"
  id=$(date +%s)-$$
  echo "Zilla gRPC at $ZILLA_GRPC (its kafka-grpc -> $ZILLA_GRPC_SERVICE) and Strait ($bin) grpc-kafka at"
  echo "$STRAIT_GRPC (its kafka-grpc -> $STRAIT_SERVICE) on $ZILLA_GRPC_REQUESTS / $ZILLA_GRPC_REPLIES / $ZILLA_GRPC_EVENTS"
  grpc_unary "a. Zilla grpc-kafka -> Kafka -> Strait kafka-grpc" "$ZILLA_GRPC" \
    strait.interop.v1.Echo/Unary "$STRAIT_SERVICE" "z2s $id"
  grpc_unary "b. Strait grpc-kafka -> Kafka -> Zilla kafka-grpc" "$STRAIT_GRPC" \
    strait.bench.v1.Echo/Unary "$ZILLA_GRPC_SERVICE" "s2z $id"
  # c. Six events over four partitions (two in partitions 1 and 2), as Msg { payload } bytes.
  local k text
  for k in 1 2 3 4 5 6; do
    text="ev-$id-$k"
    # shellcheck disable=SC2059 # the length byte is built into the format on purpose
    printf "\\x0a\\x$(printf '%02x' "${#text}")%s" "$text" \
      | kcat -b "$KAFKA_BOOTSTRAP" -P -t "$ZILLA_GRPC_EVENTS" -p $((k % 4)) -D '~~~' \
      || bad "producing event $k to $ZILLA_GRPC_EVENTS failed"
  done
  grpc_fetch_resume Zilla "$ZILLA_GRPC" Strait "$STRAIT_GRPC" "ev-$id-"
  grpc_fetch_resume Strait "$STRAIT_GRPC" Zilla "$ZILLA_GRPC" "ev-$id-"
  check_summary "zilla interop grpc"
}

# cmd_interop_parts [mqtt|grpc|all]: `tests/peers/zilla interop [PART]`; all (the default) runs
# both, each with its own summary, and fails when either did.
cmd_interop_parts() {
  case "${1:-all}" in
    mqtt) cmd_interop ;;
    grpc) cmd_interop_grpc ;;
    all)
      local rc=0
      (cmd_interop) || rc=1
      (cmd_interop_grpc) || rc=1
      return "$rc"
      ;;
    *) die "interop: unknown part '$1' (mqtt, grpc or all)" ;;
  esac
}
