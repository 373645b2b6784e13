# shellcheck shell=bash
# Apache Kafka in KRaft mode: one combined broker+controller on free loopback ports. Sourced by
# tests/e2e/services.
#
# Only package registries are reachable, so there is no release tarball: Maven Central gives the
# jars and we write the few bin/ wrappers the tests need. $KAFKA_HOME (keyed by version):
#   libs/*.jar     kafka_2.13 + kafka-tools and their runtime dependencies, plus a log4j2 binding
#   config/        log4j2-server.xml (INFO to the service log), log4j2-tools.xml (WARN to stderr)
#   bin/           kafka-run-class CLASS ARGS..., kafka-topics, kafka-configs, kafka-storage, ...
# State in $(svc_dir kafka): server.properties, data/, bootstrap (host:port), kafka.log (and
# kafka.prev.log after a restart), format.log, security/ (see below). `stop` keeps all of it so
# `start` brings the same cluster back on the same ports.
#
# Two client listeners: PLAINTEXT (KAFKA_BOOTSTRAP, what most tests use) and SASL_SSL
# (KAFKA_SASL_SSL_BOOTSTRAP) with SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN. security/ holds a test
# CA (ca.crt, also KAFKA_TLS_CA), the broker's certificate for 127.0.0.1/localhost (in
# broker.p12), and one user per mechanism family with its password in a file:
# KAFKA_SCRAM_USER/KAFKA_SCRAM_PASSWORD_FILE (SCRAM-SHA-512 and -256), KAFKA_PLAIN_USER/
# KAFKA_PLAIN_PASSWORD_FILE. Same broker, same topics: a topic created over PLAINTEXT is there
# over SASL_SSL too.

KAFKA_VERSION=4.1.1
KAFKA_LOG4J_VERSION=2.24.3 # the log4j-core that kafka-server 4.1.1 itself depends on
KAFKA_HOME=$STRAIT_CACHE/kafka-$KAFKA_VERSION
KAFKA_READY_TIMEOUT=${KAFKA_READY_TIMEOUT:-90}
# The SASL users of the SASL_SSL listener (their passwords are random, in security/*.password).
KAFKA_SCRAM_USER=strait-scram
KAFKA_PLAIN_USER=strait-plain

# wrapper name -> main class (all checked to exist in the jars at install time).
KAFKA_TOOLS=(
  kafka-topics=org.apache.kafka.tools.TopicCommand
  kafka-configs=kafka.admin.ConfigCommand
  kafka-consumer-groups=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
  kafka-console-consumer=org.apache.kafka.tools.consumer.ConsoleConsumer
  kafka-console-producer=org.apache.kafka.tools.ConsoleProducer
  kafka-producer-perf-test=org.apache.kafka.tools.ProducerPerformance
  kafka-consumer-perf-test=org.apache.kafka.tools.ConsumerPerformance
  kafka-storage=kafka.tools.StorageTool
)

kafka_need_java() {
  local hint="Kafka $KAFKA_VERSION needs a Java 17+ runtime on PATH: apt-get install openjdk-17-jre-headless"
  need_cmd java "$hint"
  local v
  v=$(java -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n1)
  [ "${v:-0}" -ge 17 ] || die "java on PATH is version '${v:-unknown}': $hint"
}

kafka_install() {
  kafka_need_java
  # kcat answers a metadata request in milliseconds; a JVM tool would take seconds per poll.
  command -v kcat >/dev/null 2>&1 || { log "kafka: installing Debian package kcat"; apt_install kcat; }
  [ -f "$KAFKA_HOME/.complete" ] && return 0

  mkdir -p "$STRAIT_CACHE"
  local lock fd
  lock="$STRAIT_CACHE/.kafka-$KAFKA_VERSION.lock"
  exec {fd}>"$lock"
  flock "$fd" # two concurrent `up`s: the second waits, then finds the install complete
  if [ -f "$KAFKA_HOME/.complete" ]; then exec {fd}>&-; return 0; fi
  command -v mvn >/dev/null 2>&1 || { log "kafka: installing Debian package maven"; apt_install maven; }

  log "kafka: installing Kafka $KAFKA_VERSION from Maven Central into $KAFKA_HOME"
  rm -rf "$STRAIT_CACHE/.kafka-$KAFKA_VERSION.tmp."* # leftovers of an interrupted install
  local tmp
  tmp=$(mktemp -d "$STRAIT_CACHE/.kafka-$KAFKA_VERSION.tmp.XXXXXX")
  mkdir -p "$tmp/bin" "$tmp/config" "$tmp/libs"
  kafka_write_pom >"$tmp/pom.xml"
  # Own local repository so nothing lands in ~/.m2 (or in the clone).
  if ! (cd "$tmp" && mvn -B -q -Dmaven.repo.local="$STRAIT_CACHE/m2" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp/libs") >"$tmp/mvn.log" 2>&1; then
    tail -n 30 "$tmp/mvn.log" >&2
    die "kafka: resolving the Kafka $KAFKA_VERSION jars with mvn failed (log: $tmp/mvn.log)"
  fi
  kafka_write_log4j "$tmp/config"
  kafka_write_bin "$tmp/bin"
  kafka_check_classes "$tmp/libs"
  touch "$tmp/.complete"
  rm -rf "$KAFKA_HOME" # an older incomplete install (no .complete)
  mv -T "$tmp" "$KAFKA_HOME"
  exec {fd}>&-
  log "kafka: installed $KAFKA_HOME ($(find "$KAFKA_HOME/libs" -name '*.jar' | wc -l) jars)"
}

kafka_write_pom() {
  cat <<POM
<?xml version="1.0" encoding="UTF-8"?>
<!-- Throwaway: only used to resolve the jars of Kafka $KAFKA_VERSION into libs/. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>strait.e2e</groupId>
  <artifactId>kafka-dist</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- Kafka logs through slf4j 1.7; without a binding it would log nothing at all. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
POM
}

kafka_write_log4j() {
  local dir=$1
  cat >"$dir/log4j2-server.xml" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<!-- Broker: INFO to stdout, which start_bg sends to the service log; per-partition and
     per-client chatter at WARN so a test's log stays readable. -->
<Configuration status="warn">
  <Appenders>
    <Console name="out" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="info"><AppenderRef ref="out"/></Root>
    <Logger name="kafka.request.logger" level="warn"/>
    <Logger name="kafka.network.RequestChannel$" level="warn"/>
    <Logger name="org.apache.kafka.clients" level="warn"/>
    <Logger name="org.apache.kafka.common.config.AbstractConfig" level="warn"/>
    <Logger name="org.apache.kafka.common.utils.AppInfoParser" level="warn"/>
    <Logger name="org.apache.kafka.storage.internals.log" level="warn"/>
    <Logger name="kafka.log.LogManager" level="warn"/>
    <Logger name="org.apache.kafka.raft" level="warn"/>
    <Logger name="org.apache.kafka.snapshot" level="warn"/>
    <Logger name="org.apache.kafka.image" level="warn"/>
  </Loggers>
</Configuration>
XML
  cat >"$dir/log4j2-tools.xml" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<!-- Command-line tools: only problems, on stderr, so stdout stays parseable. -->
<Configuration status="warn">
  <Appenders>
    <Console name="err" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="warn"><AppenderRef ref="err"/></Root>
  </Loggers>
</Configuration>
XML
}

kafka_write_bin() {
  local bin=$1 tool
  # KAFKA_HEAP_OPTS, KAFKA_JVM_OPTS and KAFKA_LOG4J_CONFIG override the tool defaults (the broker
  # sets all three). The home is found at run time because the install is built under a temp name.
  # Tools run C1-only: on 2 cores C2 compiling competes with the broker, and tools are short-lived
  # (measured: topic commands ~30% and storage format ~55% faster, a 100k-record perf test too).
  cat >"$bin/kafka-run-class" <<'SH'
#!/usr/bin/env bash
# kafka-run-class CLASS ARGS...: run a Kafka main class from ../libs.
set -euo pipefail
home=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
read -ra heap <<<"${KAFKA_HEAP_OPTS:--Xmx512m}"
read -ra jvm <<<"${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1}"
exec java "${heap[@]}" "${jvm[@]}" -Djava.awt.headless=true \
  "-Dlog4j2.configurationFile=${KAFKA_LOG4J_CONFIG:-$home/config/log4j2-tools.xml}" \
  -cp "$home/libs/*" "$@"
SH
  for tool in "${KAFKA_TOOLS[@]}"; do
    # shellcheck disable=SC2016 # expanded when the wrapper runs
    printf '#!/usr/bin/env bash\nexec "$(dirname "${BASH_SOURCE[0]}")/kafka-run-class" %s "$@"\n' \
      "${tool#*=}" >"$bin/${tool%%=*}"
  done
  chmod +x "$bin"/*
}

# Fail the install, not a later test, if a class moved between Kafka versions.
kafka_check_classes() {
  local libs=$1 tool classes=(kafka.Kafka org.apache.logging.slf4j.Log4jLoggerFactory)
  for tool in "${KAFKA_TOOLS[@]}"; do classes+=("${tool#*=}"); done
  python3 - "$libs" "${classes[@]}" <<'PY' || die "kafka: main classes missing from $libs"
import glob, sys, zipfile
have = set()
for jar in glob.glob(sys.argv[1] + "/*.jar"):
    have.update(zipfile.ZipFile(jar).namelist())
missing = [c for c in sys.argv[2:] if c.replace(".", "/") + ".class" not in have]
if missing:
    sys.exit("missing classes: " + " ".join(missing))
PY
}

kafka_up() {
  kafka_install
  local dir port cport sport pport psport cluster_id
  dir=$(svc_dir kafka)
  rm -rf "$dir" # a fresh cluster on every up
  mkdir -p "$dir/data"
  port=$(free_port)
  cport=$(free_port)
  while [ "$cport" = "$port" ]; do cport=$(free_port); done
  sport=$(free_port)
  while [ "$sport" = "$port" ] || [ "$sport" = "$cport" ]; do sport=$(free_port); done
  # A listener for pods on the real node (node.sh): they reach the host at the node's gateway.
  # Bound to every address because the gateway's bridge may not exist yet when Kafka starts.
  pport=$(free_port)
  while [ "$pport" = "$port" ] || [ "$pport" = "$cport" ] || [ "$pport" = "$sport" ]; do pport=$(free_port); done
  psport=$(free_port)
  while [[ " $port $cport $sport $pport " == *" $psport "* ]]; do psport=$(free_port); done
  kafka_security "$dir/security"
  local sec="$dir/security" keystore_password
  keystore_password=$(cat "$sec/keystore.password")
  # Kafka's Uuid text form: 16 random bytes, unpadded url-safe base64, never starting with '-'.
  cluster_id=$(python3 -c '
import base64, os
while True:
    u = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    if not u.startswith("-"): print(u); break')

  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$port,SASL_SSL://127.0.0.1:$sport,CONTROLLER://127.0.0.1:$cport,PODS://0.0.0.0:$pport,PODS_SASL_SSL://0.0.0.0:$psport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_SSL://127.0.0.1:$sport,CONTROLLER://127.0.0.1:$cport,PODS://$PODS_REACH_HOST_AT:$pport,PODS_SASL_SSL://$PODS_REACH_HOST_AT:$psport
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT,PODS:PLAINTEXT,PODS_SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
# Dynamic quorum with this node as its only voter (storage formatted with --standalone).
controller.quorum.bootstrap.servers=127.0.0.1:$cport
log.dirs=$dir/data

# SASL_SSL: SCRAM users are stored in the cluster metadata (kafka-storage format --add-scram),
# the PLAIN user in the JAAS line. No authorizer: an authenticated user may do anything.
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN
$(kafka_sasl_listener sasl_ssl "$sec" "$keystore_password")
$(kafka_sasl_listener pods_sasl_ssl "$sec" "$keystore_password")

# Tests create their topics explicitly, so a typo fails instead of creating a topic.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer internal partitions: the first consumer group or transaction comes up faster.
offsets.topic.num.partitions=8
transaction.state.log.num.partitions=8
share.coordinator.state.topic.num.partitions=8
group.initial.rebalance.delay.ms=0

# Small, short-lived data; few threads on a 2-core machine.
log.segment.bytes=16777216
log.retention.hours=2
log.retention.check.interval.ms=60000
log.cleaner.dedupe.buffer.size=16777216
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
PROPS

  local scram_password
  scram_password=$(cat "$sec/scram.password")
  if ! KAFKA_HEAP_OPTS=-Xmx256m "$KAFKA_HOME/bin/kafka-storage" format --standalone \
    -t "$cluster_id" -c "$dir/server.properties" \
    --add-scram "SCRAM-SHA-512=[name=$KAFKA_SCRAM_USER,password=$scram_password]" \
    --add-scram "SCRAM-SHA-256=[name=$KAFKA_SCRAM_USER,password=$scram_password]" \
    >"$dir/format.log" 2>&1; then
    cat "$dir/format.log" >&2
    die "kafka: formatting the storage in $dir/data failed"
  fi
  echo "127.0.0.1:$port" >"$dir/bootstrap"
  echo "127.0.0.1:$sport" >"$dir/sasl_ssl_bootstrap"
  echo "$PODS_REACH_HOST_AT:$pport" >"$dir/pods_bootstrap"
  echo "$PODS_REACH_HOST_AT:$psport" >"$dir/pods_sasl_ssl_bootstrap"
  kafka_launch "$dir"
}

# kafka_sasl_listener NAME DIR PASSWORD: the SASL mechanisms and keystore of SASL_SSL listener NAME.
kafka_sasl_listener() {
  local name=$1 sec=$2 password=$3
  cat <<PROPS
listener.name.$name.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.$name.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.$name.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_PLAIN_USER="$(cat "$sec/plain.password")";
listener.name.$name.ssl.keystore.type=PKCS12
listener.name.$name.ssl.keystore.location=$sec/broker.p12
listener.name.$name.ssl.keystore.password=$password
PROPS
}

# kafka_security DIR: a test CA, the broker's certificate (127.0.0.1 and localhost) in a PKCS12
# keystore, and random passwords for the keystore and the SASL users, each in a file.
kafka_security() {
  local sec=$1 log=$1/openssl.log
  need_cmd openssl "the test Kafka's TLS certificates are made with it: apt-get install openssl"
  mkdir -p "$sec"
  local name
  for name in keystore scram plain; do
    python3 -c 'import secrets; print(secrets.token_urlsafe(18))' >"$sec/$name.password"
  done
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:$PODS_REACH_HOST_AT" 'basicConstraints=CA:FALSE' \
    'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' >"$sec/broker.ext"
  if ! {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=strait test Kafka CA" -keyout "$sec/ca.key" -out "$sec/ca.crt" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign &&
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout "$sec/broker.key" -out "$sec/broker.csr" &&
      openssl x509 -req -in "$sec/broker.csr" -CA "$sec/ca.crt" -CAkey "$sec/ca.key" \
        -CAcreateserial -days 3650 -extfile "$sec/broker.ext" -out "$sec/broker.crt" &&
      openssl pkcs12 -export -name broker -in "$sec/broker.crt" -inkey "$sec/broker.key" \
        -certfile "$sec/ca.crt" -passout "file:$sec/keystore.password" -out "$sec/broker.p12"
  } >"$log" 2>&1; then
    cat "$log" >&2
    die "kafka: making the test certificates in $sec failed"
  fi
  chmod 600 "$sec"/*.key "$sec"/*.password "$sec/broker.p12"
}

# kafka_sasl_ready HOST:PORT DIR: the SASL_SSL listener answers metadata to the PLAIN user over
# TLS checked against the test CA (certificates, listener and JAAS setup together). Not the
# SCRAM user: Debian's kcat (librdkafka 2.0.2 with OpenSSL 3) fails SCRAM against Kafka 4.1
# with credentials the Java client and Strait's librdkafka accept.
kafka_sasl_ready() {
  local sec=$2/security
  kcat -L -b "$1" -m 5 -X security.protocol=SASL_SSL -X sasl.mechanism=PLAIN \
    -X "sasl.username=$KAFKA_PLAIN_USER" -X "sasl.password=$(cat "$sec/plain.password")" \
    -X "ssl.ca.location=$sec/ca.crt" 2>&1 | grep -q 'broker 1 at'
}

# kafka_launch DIR: run the broker from DIR's config and data, wait until it serves metadata.
kafka_launch() {
  local dir=$1 bootstrap pid
  bootstrap=$(cat "$dir/bootstrap")
  start_bg kafka kafka env \
    KAFKA_HEAP_OPTS="-Xms768m -Xmx1g" \
    KAFKA_JVM_OPTS="-XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError" \
    KAFKA_LOG4J_CONFIG="$KAFKA_HOME/config/log4j2-server.xml" \
    "$KAFKA_HOME/bin/kafka-run-class" kafka.Kafka "$dir/server.properties"
  pid=$(tail -n 1 "$dir/pids")
  local deadline=$((SECONDS + KAFKA_READY_TIMEOUT))
  until kafka_ready "$bootstrap"; do
    if ! pid_alive "$pid"; then
      kafka_show_failure "$dir/kafka.log"
      stop_svc kafka
      die "kafka: exited during startup on $bootstrap (see $dir/kafka.log)"
    fi
    if ((SECONDS >= deadline)); then
      kafka_show_failure "$dir/kafka.log"
      stop_svc kafka
      die "kafka: not ready on $bootstrap after ${KAFKA_READY_TIMEOUT}s (see $dir/kafka.log)"
    fi
    sleep 0.5
  done
  local sasl_bootstrap sec=$dir/security
  sasl_bootstrap=$(cat "$dir/sasl_ssl_bootstrap")
  if ! wait_for 30 "the SASL_SSL listener $sasl_bootstrap" kafka_sasl_ready "$sasl_bootstrap" "$dir"; then
    kafka_show_failure "$dir/kafka.log"
    stop_svc kafka
    die "kafka: the SASL_SSL listener $sasl_bootstrap does not answer the PLAIN user (see $dir/kafka.log)"
  fi
  write_env kafka "KAFKA_BOOTSTRAP=$bootstrap" "KAFKA_HOME=$KAFKA_HOME" "KAFKA_BIN=$KAFKA_HOME/bin" \
    "KAFKA_BOOTSTRAP_FOR_PODS=$(cat "$dir/pods_bootstrap")" \
    "KAFKA_SASL_SSL_BOOTSTRAP_FOR_PODS=$(cat "$dir/pods_sasl_ssl_bootstrap")" \
    "KAFKA_SASL_SSL_BOOTSTRAP=$sasl_bootstrap" "KAFKA_TLS_CA=$sec/ca.crt" \
    "KAFKA_SCRAM_USER=$KAFKA_SCRAM_USER" "KAFKA_SCRAM_PASSWORD_FILE=$sec/scram.password" \
    "KAFKA_PLAIN_USER=$KAFKA_PLAIN_USER" "KAFKA_PLAIN_PASSWORD_FILE=$sec/plain.password"
}

# kafka_ready HOST:PORT: the broker answers metadata and lists itself (a fenced broker does not).
# The TCP probe comes first because kcat waits its whole timeout on a port nobody listens on, and
# Kafka opens the client port only once it is about to serve.
kafka_ready() {
  local out
  (: <>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null || return 1
  out=$(kcat -L -b "$1" -m 2 2>/dev/null) && [[ $out == *"broker 1 at"* ]]
}

# The cause (e.g. a port in use) is logged long before the tail, which is shutdown chatter.
kafka_show_failure() {
  local errors
  errors=$(grep -E -A1 -m 3 '^\[[^]]*\] (ERROR|FATAL) ' "$1" || true)
  [ -z "$errors" ] || { log "kafka: first errors in $1:"; printf '%s\n' "$errors" >&2; }
  log "kafka: last lines of $1:"
  tail -n 15 "$1" >&2
}

# Simulate an outage: the process goes, data, config and ports stay for kafka_start_keep.
kafka_stop_keep() {
  local dir
  dir=$(svc_dir kafka)
  [ -f "$dir/bootstrap" ] || die "kafka: no state in $dir to keep (run 'services up kafka' first)"
  stop_svc kafka
  log "kafka: data kept in $dir; 'services start kafka' brings it back on $(cat "$dir/bootstrap")"
}

kafka_start_keep() {
  local dir
  dir=$(svc_dir kafka)
  [ -f "$dir/bootstrap" ] || die "kafka: no kept state in $dir (use 'services up kafka')"
  kafka_install
  stop_svc kafka # leftovers of a crashed run
  if [ -f "$dir/kafka.log" ]; then mv -f "$dir/kafka.log" "$dir/kafka.prev.log"; fi
  kafka_launch "$dir"
}
