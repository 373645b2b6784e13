# Mosquitto from Debian's packages, as our own process on a free loopback port (never the
# system service). Sourced by tests/e2e/services.

MOSQUITTO_BIN=${MOSQUITTO_BIN:-/usr/sbin/mosquitto}

mosquitto_install() {
  if [ -x "$MOSQUITTO_BIN" ] && command -v mosquitto_pub >/dev/null 2>&1; then return 0; fi
  log "mosquitto: installing Debian packages mosquitto and mosquitto-clients"
  apt_install mosquitto mosquitto-clients
  [ -x "$MOSQUITTO_BIN" ] || die "mosquitto installed but $MOSQUITTO_BIN is missing"
}

mosquitto_up() {
  mosquitto_install
  local dir port pod_port
  dir=$(svc_dir mosquitto)
  rm -rf "$dir"; mkdir -p "$dir"
  port=$(free_port)
  # A second listener for pods on the real node (node.sh), which reach the host at its gateway.
  pod_port=$(free_port)
  while [ "$pod_port" = "$port" ]; do pod_port=$(free_port); done
  # Anonymous, MQTT 3.1.1 and 5 on one listener; in-memory only (tests start clean each time).
  # `user` keeps mosquitto from dropping to the `mosquitto` account, which could not write here.
  cat >"$dir/mosquitto.conf" <<CONF
user $(id -un)
per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
connection_messages true
max_queued_messages 100000
listener $port 127.0.0.1
listener $pod_port 0.0.0.0
CONF
  # Room for the 10,000-connection benchmarks.
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  start_bg mosquitto broker "$MOSQUITTO_BIN" -c "$dir/mosquitto.conf"
  if ! wait_for 20 "mosquitto on port $port" \
    mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -t strait/ready -m up; then
    tail -n 20 "$dir/broker.log" >&2
    die "mosquitto did not come up"
  fi
  write_env mosquitto "MQTT_BROKER=127.0.0.1:$port" "MQTT_BROKER_FOR_PODS=$PODS_REACH_HOST_AT:$pod_port"
}
