# shellcheck shell=bash disable=SC2154 # files, repo, ZILLA_STATE, ... come from tests/peers/zilla
# `tests/peers/zilla check` and `tests/peers/zilla interop`. Sourced by tests/peers/zilla, never
# run. Both talk to the running Zilla and Kafka with mosquitto's clients and kcat, and count
# what they verified: "N passed, M failed" at the end, exit 1 if anything failed.

CHECK_PASSED=0
CHECK_FAILED=0
ok() { CHECK_PASSED=$((CHECK_PASSED + 1)); printf '  ok    %s\n' "$*"; }
bad() { CHECK_FAILED=$((CHECK_FAILED + 1)); printf '  FAIL  %s\n' "$*"; }
note() { printf '  note  %s\n' "$*"; } # Zilla's behaviour that differs from ours; not a failure
# expect DESCRIPTION CMD...: ok when CMD succeeds.
expect() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
check_summary() {
  echo "$1: $CHECK_PASSED passed, $CHECK_FAILED failed"
  [ "$CHECK_FAILED" = 0 ]
}

now_ms() { date +%s%3N; }

# until_within SECONDS CMD...: run CMD every 0.2 s until it succeeds (0) or time is up (1).
until_within() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

check_env() {
  svc_running "$ZILLA_INSTANCE" || die "Zilla is not running: tests/peers/zilla start"
  # shellcheck disable=SC1091
  source "$ZILLA_STATE/env"
  services_env
  need_cmd mosquitto_pub "tests/e2e/services up mosquitto installs it (Debian mosquitto-clients)"
  need_cmd mosquitto_sub "tests/e2e/services up mosquitto installs it (Debian mosquitto-clients)"
  need_cmd kcat "tests/e2e/services up kafka installs it"
}

# mqtt_pub ADDR ARGS...: mosquitto_pub (MQTT 5) to ADDR; exit 0 only once a QoS 1 PUBACK came.
mqtt_pub() { local addr=$1; shift; timeout 30 mosquitto_pub -V 5 -h "${addr%:*}" -p "${addr##*:}" "$@"; }

# kafka_records TOPIC SINCE_MS NEEDLE: the records of TOPIC written since SINCE_MS whose value
# contains NEEDLE, one per line (records.py).
kafka_records() {
  kcat -b "$KAFKA_BOOTSTRAP" -C -t "$1" -o "s@$2" -e -q -J 2>/dev/null | python3 "$files/records.py" "$3"
}

# wait_record TOPIC SINCE_MS NEEDLE: the first matching record (see kafka_records), within 30 s.
wait_record() {
  local deadline=$((SECONDS + 30)) rec
  while ((SECONDS < deadline)); do
    rec=$(kafka_records "$@" 2>/dev/null | head -n1) # head leaving early is no error
    [ -n "$rec" ] && { printf '%s\n' "$rec"; return 0; }
    sleep 0.3
  done
  return 1
}

# mqtt_roundtrip WHAT SUB_ADDR PUB_ADDR TOPIC [PUB_ARG...]: subscribe through SUB_ADDR, publish
# QoS 1 (with PUB_ARGs) through PUB_ADDR until the subscriber has a message (a broker may start
# serving a subscription a moment after its SUBACK), print what it got and leave it in
# ROUNDTRIP_GOT (empty when nothing came). Fails after 40 s.
ROUNDTRIP_GOT=
mqtt_roundtrip() {
  local what=$1 sub=$2 pub=$3 topic=$4 out n=0 spid line
  shift 4
  ROUNDTRIP_GOT=
  out=$(mktemp)
  # Line-buffered, so its debug lines (SUBACK) show as they come. %C: content type, %P: user
  # properties as k:v, %r: the RETAIN flag.
  stdbuf -oL mosquitto_sub -d -V 5 -h "${sub%:*}" -p "${sub##*:}" -q 1 -i "zilla-check-sub-$$-$RANDOM" \
    -t "$topic" -C 1 -W 60 -F 'MSG> topic=%t payload=%p content-type=%C props=%P retain=%r' >"$out" 2>&1 &
  spid=$!
  if ! until_within 20 grep -q 'received SUBACK' "$out"; then
    kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
    bad "$what: no SUBACK through $sub within 20 s: $(tr '\n' ' ' <"$out")"; rm -f "$out"; return
  fi
  local deadline=$((SECONDS + 40))
  while ! grep -q '^MSG> ' "$out" && ((SECONDS < deadline)); do
    n=$((n + 1))
    mqtt_pub "$pub" -q 1 -i "zilla-check-pub-$$" -t "$topic" -m "$what #$n" "$@" || true
    until_within 5 grep -q '^MSG> ' "$out" || true
  done
  kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
  line=$(grep '^MSG> ' "$out" | head -n1 || true)
  rm -f "$out"
  ROUNDTRIP_GOT=${line#MSG> }
  if [ -n "$line" ]; then ok "$what: received ${line#MSG> } (after $n publish(es))"
  else bad "$what: nothing received within 40 s ($n publishes through $pub)"; fi
}

# retained_get ADDR TOPIC: what a new subscriber through ADDR gets within 3 s (retained only):
# empty when nothing came; fails when the subscriber could not connect (a crashed peer must not
# pass for "nothing retained").
retained_get() {
  local out rc=0
  out=$(mosquitto_sub -V 5 -h "${1%:*}" -p "${1##*:}" -q 1 -t "$2" -C 1 -W 3 \
    -F 'topic=%t payload=%p props=%P retain=%r' 2>&1) || rc=$?
  case $rc in
    0) printf '%s' "$out" ;;
    27) ;; # mosquitto_sub's exit code for -W timing out: connected, nothing came
    *) log "mosquitto_sub through $1 failed (exit $rc): $out"; return 1 ;;
  esac
}

# zilla_empty_retained SUB_ADDR GOT: GOT is the empty message Zilla serves for a cleared
# retained topic.
zilla_empty_retained() { [ "$1" = "$ZILLA_MQTT" ] && [[ "$2" == *" payload= props="* ]]; }

# mqtt_retained WHAT PUB_ADDR SUB_ADDR TOPIC RETAIN_FLAG: a retained QoS 1 message published
# through PUB_ADDR reaches a later subscriber through SUB_ADDR with RETAIN_FLAG (1 per MQTT 5
# §3.3.1.3; Zilla sends its own retained messages with 0). Then it is cleared through PUB_ADDR
# (empty retained publish) and a later subscriber through SUB_ADDR must get nothing in 3 s
# (through Zilla: nothing, or the empty message Zilla delivers for its own clears too).
mqtt_retained() {
  local what=$1 pub=$2 sub=$3 topic=$4 flag=$5 got=""
  local payload="$what $$"
  if ! mqtt_pub "$pub" -q 1 -r -t "$topic" -m "$payload"; then bad "$what: no PUBACK"; return; fi
  local deadline=$((SECONDS + 30))
  # Retry: the other side reads the retained topic asynchronously.
  while [ -z "$got" ] && ((SECONDS < deadline)); do
    got=$(retained_get "$sub" "$topic") || { bad "$what: subscribing through $sub failed"; return; }
  done
  if [[ "$got" == *"payload=$payload props="*" retain=$flag" ]]; then ok "$what: received $got"
  else bad "$what: expected '$payload' with retain=$flag through $sub, got '${got:-nothing}'"; fi
  if ! mqtt_pub "$pub" -q 1 -r -n -t "$topic"; then bad "$what: clearing it got no PUBACK"; return; fi
  deadline=$((SECONDS + 15))
  # Until the clear has reached the other side; what is left after the deadline counts. Zilla's
  # empty message for a clear is its steady answer: no point asking again (and every session
  # costs Zilla: it stops answering CONNECT after a few dozen, see docs/benchmarks.md).
  while [ -n "$got" ] && ! zilla_empty_retained "$sub" "$got" && ((SECONDS < deadline)); do
    got=$(retained_get "$sub" "$topic") || { bad "$what: subscribing through $sub failed"; return; }
  done
  if [ -z "$got" ]; then
    ok "$what: cleared through $pub, a new subscriber through $sub gets nothing"
  elif zilla_empty_retained "$sub" "$got"; then
    # Zilla's own behaviour (its clears too): the clear is an empty record, not a tombstone,
    # and its subscribers get it as an empty message (MQTT 5 §3.3.1.3 says not to store it).
    note "$what: cleared through $pub, a new subscriber through Zilla gets an empty message: '$got'"
  else
    bad "$what: cleared through $pub, a new subscriber through $sub still gets '$got'"
  fi
}

cmd_check() {
  check_env
  local id topic since client rec
  id=$(date +%s)-$$
  topic="strait/zilla-check/$id"
  client="zilla-check-$$"
  echo "Zilla ${ZILLA_COMMIT:0:8} at $ZILLA_MQTT (workers: $ZILLA_WORKERS), Kafka $KAFKA_BOOTSTRAP, topic $ZILLA_MQTT_MESSAGES"
  since=$(now_ms)
  if until_within 30 mqtt_pub "$ZILLA_MQTT" -q 1 -i "$client" -t "$topic" -m "qos1 $id"; then
    ok "mosquitto_pub QoS 1 to $topic through Zilla: PUBACK"
  else
    bad "mosquitto_pub QoS 1 to $topic through Zilla: no PUBACK within 30 s"
  fi
  if rec=$(wait_record "$ZILLA_MQTT_MESSAGES" "$since" "qos1 $id"); then
    echo "  record in $ZILLA_MQTT_MESSAGES: $rec"
    expect "key is the MQTT topic" grep -qF "key=$topic " <<<"$rec"
    expect "zilla:filter headers, one per level" grep -qF "zilla:filter=strait, zilla:filter=zilla-check, zilla:filter=$id" <<<"$rec"
    expect "zilla:local is the client id" grep -qF "zilla:local=$client" <<<"$rec"
    expect "zilla:qos header" grep -qF "zilla:qos=" <<<"$rec"
  else
    bad "no record with 'qos1 $id' in $ZILLA_MQTT_MESSAGES within 30 s"
  fi
  mqtt_roundtrip "MQTT -> Zilla -> Kafka -> Zilla -> MQTT" "$ZILLA_MQTT" "$ZILLA_MQTT" "strait/zilla-check/$id/rt"
  mqtt_retained "retained through Zilla" "$ZILLA_MQTT" "$ZILLA_MQTT" "strait/zilla-check/$id/retained" 0
  grpc_check "$id"
  check_summary "zilla check"
}

# grpc_check ID: a unary call through Zilla's gRPC port, answered by an echo service this
# check runs at ZILLA_GRPC_SERVICE (grpc_check.py); the request record in the requests topic.
grpc_check() {
  local id=$1 py since out rec
  py=$("$repo/tests/e2e/python-grpcio") || { bad "gRPC: no Python with grpcio (tests/e2e/python-grpcio)"; return; }
  since=$(now_ms)
  if out=$("$py" "$files/grpc_check.py" "$ZILLA_GRPC" "$ZILLA_GRPC_SERVICE" "grpc $id" 2>&1); then
    ok "gRPC unary through Zilla (grpc-kafka -> Kafka -> kafka-grpc -> echo): $out"
  else
    bad "gRPC unary through Zilla: $out"
  fi
  if rec=$(wait_record "$ZILLA_GRPC_REQUESTS" "$since" "grpc $id"); then
    echo "  request record in $ZILLA_GRPC_REQUESTS: $rec"
  else
    bad "gRPC: no request record in $ZILLA_GRPC_REQUESTS"
  fi
}

# ---- interop: the same Kafka topics served by Zilla and by Strait's s-proxy ------------------

strait_proxy_bin() {
  local c
  for c in "${STRAIT_PROXY_BIN:-}" "${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/debug/strait-proxy}" \
    "$STRAIT_CACHE/target/debug/strait-proxy" "$repo/target/debug/strait-proxy"; do
    [ -n "$c" ] && [ -x "$c" ] && { printf '%s' "$c"; return 0; }
  done
  return 1
}

readyz() { curl -sf -o /dev/null "http://$1/readyz"; }

# strait_start: s-proxy on Zilla's messages and retained topics (sessions: a topic of its own,
# since Strait's session records are not Zilla's), r-proxy in front; their logs and pids in
# $STRAIT_STATE/zilla-interop. Sets STRAIT_MQTT.
strait_start() {
  local bin=$1 dir grpc s_admin r_admin mqtt
  dir=$(svc_dir "$ZILLA_INSTANCE-interop")
  stop_svc "$ZILLA_INSTANCE-interop"
  mkdir -p "$dir"
  grpc=127.0.0.1:$(free_port); s_admin=127.0.0.1:$(free_port)
  mqtt=127.0.0.1:$(free_port); r_admin=127.0.0.1:$(free_port)
  cat >"$dir/s-proxy.yaml" <<YAML
listen: $grpc
upstream: kafka
kafka:
  bootstrap: '$KAFKA_BOOTSTRAP'
  topics: { messages: $ZILLA_MQTT_MESSAGES, retained: $ZILLA_MQTT_RETAINED, sessions: strait-zilla-interop-sessions }
  newTopics: { partitions: 4 }
YAML
  start_bg "$ZILLA_INSTANCE-interop" s-proxy "$bin" s-proxy --config "$dir/s-proxy.yaml" --metrics-addr "$s_admin"
  until_within 60 readyz "$s_admin" || { tail -n 30 "$dir/s-proxy.log" >&2; die "s-proxy not ready within 60 s"; }
  start_bg "$ZILLA_INSTANCE-interop" r-proxy "$bin" r-proxy --listen "$mqtt" --s-proxy "http://$grpc" --metrics-addr "$r_admin"
  until_within 30 readyz "$r_admin" || { tail -n 30 "$dir/r-proxy.log" >&2; die "r-proxy not ready within 30 s"; }
  STRAIT_MQTT=$mqtt
  log "Strait: r-proxy MQTT on $mqtt -> s-proxy $grpc (logs in $dir)"
}

# layout_compare: the same MQTT 5 publish (QoS 1, content type, user property) through each,
# and the two records side by side.
layout_compare() {
  local id=$1 since name addr rec
  since=$(now_ms)
  for name in zilla strait; do
    [ "$name" = zilla ] && addr=$ZILLA_MQTT || addr=$STRAIT_MQTT
    mqtt_pub "$addr" -q 1 -i "layout-$name-$$" -t "strait/zilla-interop/$id/layout" \
      -D publish content-type text/plain -D publish user-property k v -m "layout $name $id" \
      || bad "layout: publish through $name got no PUBACK"
  done
  echo "  the same publish (MQTT 5, QoS 1, content-type text/plain, user property k=v) as written by each:"
  for name in zilla strait; do
    if rec=$(wait_record "$ZILLA_MQTT_MESSAGES" "$since" "layout $name $id"); then
      printf '    %-6s %s\n' "$name" "$rec"
    else
      bad "layout: no record of the publish through $name"
    fi
  done
}

# props_crossing WHAT SUB_ADDR PUB_ADDR TOPIC: an MQTT 5 publish with a content type and two user
# properties of the same name through PUB_ADDR reaches a subscriber through SUB_ADDR with them,
# in order.
props_crossing() {
  local what=$1
  mqtt_roundtrip "$@" -D publish content-type text/plain -D publish user-property k v \
    -D publish user-property k w
  [ -n "$ROUNDTRIP_GOT" ] || return 0 # mqtt_roundtrip counted the failure
  expect "$what: content type text/plain" grep -qF "content-type=text/plain " <<<"$ROUNDTRIP_GOT"
  expect "$what: user properties k:v, k:w, no others" grep -qF "props=k:v k:w retain=" <<<"$ROUNDTRIP_GOT"
}

# strait_retain_on_zilla ID: what a live subscriber through Zilla sees of a retained publish
# through Strait, whose record carries Strait's `strait:retain: 1` header (Zilla has no such
# marker): Zilla passes headers it does not know on as user properties.
strait_retain_on_zilla() {
  local topic="strait/zilla-interop/$1/retain-flag"
  mqtt_roundtrip "retained publish through Strait -> live subscriber on Zilla" "$ZILLA_MQTT" \
    "$STRAIT_MQTT" "$topic" -r
  if [ -n "$ROUNDTRIP_GOT" ]; then
    expect "live subscriber on Zilla: RETAIN 0 (MQTT 5 §3.3.1.3, no Retain As Published)" \
      grep -q ' retain=0$' <<<"$ROUNDTRIP_GOT"
    if grep -qF 'strait:retain:1' <<<"$ROUNDTRIP_GOT"; then
      note "Zilla's subscribers see Strait's strait:retain header as a user property strait:retain:1"
    else
      ok "Zilla's subscriber sees no strait:retain user property: $ROUNDTRIP_GOT"
    fi
  fi
  mqtt_pub "$STRAIT_MQTT" -q 1 -r -n -t "$topic" || bad "clearing $topic through Strait: no PUBACK"
}

cmd_interop() {
  check_env
  local bin id
  if ! bin=$(strait_proxy_bin); then
    echo "zilla interop: skipped, no strait-proxy binary (cargo build -p strait-proxy, or set STRAIT_PROXY_BIN)"
    return 0
  fi
  trap 'stop_svc "$ZILLA_INSTANCE-interop"' EXIT
  strait_start "$bin"
  id=$(date +%s)-$$
  echo "Zilla at $ZILLA_MQTT and Strait ($bin) at $STRAIT_MQTT on $ZILLA_MQTT_MESSAGES / $ZILLA_MQTT_RETAINED"
  mqtt_roundtrip "Zilla -> Kafka -> Strait" "$STRAIT_MQTT" "$ZILLA_MQTT" "strait/zilla-interop/$id/z2s"
  mqtt_roundtrip "Strait -> Kafka -> Zilla" "$ZILLA_MQTT" "$STRAIT_MQTT" "strait/zilla-interop/$id/s2z"
  mqtt_retained "retained Zilla -> Strait" "$ZILLA_MQTT" "$STRAIT_MQTT" "strait/zilla-interop/$id/rz2s" 1
  mqtt_retained "retained Strait -> Zilla" "$STRAIT_MQTT" "$ZILLA_MQTT" "strait/zilla-interop/$id/rs2z" 0
  props_crossing "content type, user properties Zilla -> Strait" "$STRAIT_MQTT" "$ZILLA_MQTT" "strait/zilla-interop/$id/pz2s"
  props_crossing "content type, user properties Strait -> Zilla" "$ZILLA_MQTT" "$STRAIT_MQTT" "strait/zilla-interop/$id/ps2z"
  strait_retain_on_zilla "$id"
  layout_compare "$id"
  check_summary "zilla interop"
}
