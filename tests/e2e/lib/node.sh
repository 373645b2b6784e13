# shellcheck shell=bash
# A real Kubernetes node beside the control plane of kube.sh: containerd + runc + CNI bridge,
# kubelet, kube-proxy (iptables) and CoreDNS, so pods really run. Sourced by tests/e2e/services;
# kube_up starts it last, kube_down stops it first.
#
# Network (all of it on this machine; nothing is routed off it):
#   bridge strait0 10.244.0.1/24    the node's pod network (CNI bridge + host-local); the host is
#                                   the pods' gateway and reaches every pod IP directly
#   10.0.0.0/16 dev strait0         Service IPs; kube-proxy's iptables rules DNAT them to pods, the
#                                   route only keeps such packets off the default route
#   10.244.0.1:53                   CoreDNS: cluster.local only (anything else is REFUSED), so the
#                                   operator's Service DNS names resolve in pods
#   FORWARD guard (STRAIT-NODE)     pods may reach the host and each other, nothing beyond
# The test Kafka, Mosquitto and the kube-apiserver also listen where pods reach them
# (KAFKA_BOOTSTRAP_FOR_PODS, MQTT_BROKER_FOR_PODS, the `kubernetes` Service).
#
# One node per machine (the bridge, port 10250 and the iptables chains are machine-wide):
# /run/strait-node.owner names the state directory of the node that runs.
#
# Built once per version into $NODE_HOME/bin: kubelet and kube-proxy from the wrapper module of
# kube.sh, coredns with `go install`. Images are made from the tree by tests/e2e/images.
# State in $(svc_dir kube)/node: containerd's root and state, kubelet's root, pod logs, configs.

NODE_HOME=$STRAIT_CACHE/k8s-node-$KUBE_VERSION
NODE_COREDNS_VERSION=1.14.7
NODE_NAME=strait-node-0
NODE_BRIDGE=strait0
NODE_GATEWAY=10.244.0.1
NODE_POD_CIDR=10.244.0.0/24
NODE_SERVICE_CIDR=10.0.0.0/16
# Where pods reach the host's Kafka and Mosquitto (their *_FOR_PODS addresses): the node's
# gateway here; on a kind cluster, the gateway of kind's Docker network (e2e-kind.yml).
PODS_REACH_HOST_AT=${STRAIT_PODS_GATEWAY:-$NODE_GATEWAY}
# Pods of namespaces carrying this annotation run on the real node; every other pod stays on the
# kwok node (the apiserver's PodNodeSelector default), where no image is ever pulled.
NODE_LABEL=strait.dev/node=real
NODE_OWNER=/run/strait-node.owner
# 0 skips the real node (a machine where you are not root); CI always runs it.
KUBE_REAL_NODE=${KUBE_REAL_NODE:-1}

node_enabled() { [ "$KUBE_REAL_NODE" = 1 ]; }

node_install() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  [ -x /usr/bin/busybox ] || missing+=(busybox-static)
  command -v objcopy >/dev/null || missing+=(binutils)
  if ((${#missing[@]})); then
    log "node: installing Debian packages ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  [ -f "$NODE_HOME/.complete" ] && return 0

  local lock fd tmp started=$SECONDS
  lock="$STRAIT_CACHE/.k8s-node-$KUBE_VERSION.lock"
  exec {fd}>"$lock"
  flock "$fd"
  if [ -f "$NODE_HOME/.complete" ]; then exec {fd}>&-; return 0; fi
  log "node: building kubelet and kube-proxy $KUBE_VERSION and coredns $NODE_COREDNS_VERSION into $NODE_HOME"
  rm -rf "$STRAIT_CACHE/.k8s-node-$KUBE_VERSION.tmp."*
  tmp=$(mktemp -d "$STRAIT_CACHE/.k8s-node-$KUBE_VERSION.tmp.XXXXXX")
  if ! node_build "$tmp" >>"$tmp/build.log" 2>&1; then
    tail -n 30 "$tmp/build.log" >&2
    die "node: build failed (log: $tmp/build.log)"
  fi
  touch "$tmp/.complete"
  rm -rf "$NODE_HOME"
  mv -T "$tmp" "$NODE_HOME"
  exec {fd}>&-
  log "node: built $NODE_HOME in $((SECONDS - started))s"
}

# node_build DIR: kubelet and kube-proxy from a copy of kube.sh's wrapper module (its replace
# directives pin the staging modules), coredns on its own (its go.mod needs no replaces).
node_build() {
  local out=$1 src=$1/src k=k8s.io/kubernetes/cmd minor=${KUBE_VERSION#*.} ld="-s -w" p
  minor=${minor%%.*}
  mkdir -p "$out/bin" "$src" || return 1
  cp "$KUBE_HOME/src/go.mod" "$KUBE_HOME/src/go.sum" "$src/" || return 1
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "%s/kubelet"\n\t_ "%s/kube-proxy"\n)\n' "$k" "$k" \
    >"$src/tools.go" || return 1
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=v$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  (cd "$src" \
    && kube_go get "$k/kubelet@v$KUBE_VERSION" "$k/kube-proxy@v$KUBE_VERSION" \
    && kube_go build -trimpath -ldflags "$ld" -o "$out/bin/" "$k/kubelet" "$k/kube-proxy") || return 1
  GOBIN=$out/bin kube_go install -trimpath -ldflags "-s -w" \
    "github.com/coredns/coredns@v$NODE_COREDNS_VERSION" || return 1
  [ "$("$out/bin/kubelet" --version)" = "Kubernetes v$KUBE_VERSION" ] || return 1
}

# node_owner_check: refuse to start a second node on this machine; clear a dead one's leftovers.
node_owner_check() {
  local owner
  [ -f "$NODE_OWNER" ] || return 0
  owner=$(cat "$NODE_OWNER")
  [ "$owner" = "$STRAIT_STATE" ] && return 0
  if STRAIT_STATE=$owner svc_running kube; then
    die "node: a real node already runs on this machine for $owner; stop it first:" \
      "STRAIT_STATE=$owner tests/e2e/services down kube"
  fi
  log "node: clearing the leftovers of a node started for $owner"
  STRAIT_STATE=$owner node_down
}

# The iptables rule that keeps pods on this machine: forwarded traffic from the bridge may only
# go back into it (pod to pod, through kube-proxy's DNAT). Traffic to the host is INPUT, not
# FORWARD, so the apiserver, Kafka, Mosquitto and CoreDNS stay reachable.
node_guard() {
  local op=$1
  iptables -w "$op" FORWARD -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -j DROP -m comment --comment strait-node
}

node_net_up() {
  local dir=$1
  # Remember the sysctls we change, to put them back on down.
  printf '%s %s\n' net.ipv4.ip_forward "$(sysctl -n net.ipv4.ip_forward)" \
    net.bridge.bridge-nf-call-iptables "$(sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null || echo 0)" \
    >"$dir/sysctl.saved"
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge || die "node: creating bridge $NODE_BRIDGE failed"
  fi
  ip addr replace "$NODE_GATEWAY/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  ip route replace "$NODE_SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_GATEWAY"
  node_guard -C 2>/dev/null || node_guard -I
  sysctl -qw net.ipv4.ip_forward=1
  # Pod-to-Service-to-pod on one bridge: the reply is bridged, and only br_netfilter lets
  # conntrack undo the DNAT on it.
  modprobe br_netfilter 2>/dev/null || true
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 \
    || die "node: net.bridge.bridge-nf-call-iptables is missing (br_netfilter not loaded)"
}

node_net_down() {
  local dir=$1 key value
  if [ -x "$NODE_HOME/bin/kube-proxy" ]; then
    "$NODE_HOME/bin/kube-proxy" --cleanup --proxy-mode=iptables >"$dir/kube-proxy-cleanup.log" 2>&1 || true
  fi
  while node_guard -C 2>/dev/null; do node_guard -D; done
  node_kube_chains_down
  # What the pods' sandboxes left: their network namespaces (CNI's cni-* names under
  # /var/run/netns) and with them their veths.
  local ns
  for ns in /var/run/netns/cni-*; do
    [ -e "$ns" ] || continue
    grep -qx "${ns##*/}" "$dir/netns.before" 2>/dev/null && continue
    ip netns delete "${ns##*/}" 2>/dev/null || { umount "$ns" 2>/dev/null; rm -f "$ns"; }
  done
  ip route del "$NODE_SERVICE_CIDR" dev "$NODE_BRIDGE" 2>/dev/null || true
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  if [ -f "$dir/sysctl.saved" ]; then
    while read -r key value; do sysctl -qw "$key=$value" 2>/dev/null || true; done <"$dir/sysctl.saved"
  fi
  rm -rf /var/lib/cni/networks/strait 2>/dev/null || true # host-local's leases
}

# The chains the kubelet adds and kube-proxy --cleanup leaves (KUBE-FIREWALL with its jumps from
# INPUT and OUTPUT, the canaries, the hint), in IPv4 and IPv6: every KUBE-* chain, since only the
# test ground's node runs a kubelet on this machine.
node_kube_chains_down() {
  local cmd table rule chains
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle; do
      "$cmd" -w -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' | grep -vE '^-A KUBE-' \
        | while read -r rule; do eval "$cmd -w -t $table -D ${rule#-A }" 2>/dev/null || true; done \
        || true # no such rule: grep fails the pipeline
      chains=$("$cmd" -w -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/ { print $2 }')
      for rule in $chains; do "$cmd" -w -t "$table" -F "$rule" 2>/dev/null || true; done
      for rule in $chains; do "$cmd" -w -t "$table" -X "$rule" 2>/dev/null || true; done
    done
  done
}

# node_certs PKI: the kubelet's and kube-proxy's client identities (the Node authorizer and the
# default system:node-proxier binding grant what they need).
node_certs() {
  local pki=$1
  kube_cert "$pki" node "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
  kube_cert "$pki" kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
  kube_cert "$pki" kubelet-serving "/CN=$NODE_NAME" \
    "extendedKeyUsage=serverAuth
subjectAltName=DNS:$NODE_NAME,IP:$NODE_GATEWAY"
}

node_containerd_config() {
  local node=$1
  mkdir -p "$node/cni" "$node/containerd"
  cat >"$node/containerd/config.toml" <<TOML
version = 2
root = "$node/containerd/root"
state = "$node/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri.v1alpha2"]
[grpc]
  address = "$node/containerd.sock"
[ttrpc]
  address = "$node/containerd.sock.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$node/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$STRAIT_PAUSE_IMAGE"
  # This machine does not allow lowering oom_score_adj: without this every sandbox fails with
  # "runc create failed: ... can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni"
TOML
  cat >"$node/cni/10-strait.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "strait",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
JSON
}

node_kubelet_config() {
  local node=$1 pki=$2
  : >"$node/resolv.conf" # pods get CoreDNS; the host's own resolvers are never handed out
  cat >"$node/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# A cgroup v1 host without systemd; 1.35 refuses cgroup v1 unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$node/containerd.sock
address: $NODE_GATEWAY
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: AlwaysAllow
clusterDNS: [$NODE_GATEWAY]
clusterDomain: cluster.local
resolvConf: $node/resolv.conf
podLogsDir: $node/pod-logs
staticPodPath: ""
maxPods: 60
serializeImagePulls: false
# Images are imported, never pulled: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
protectKernelDefaults: false
localStorageCapacityIsolation: false
YAML
  cat >"$node/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $node/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $NODE_POD_CIDR
hostnameOverride: $NODE_NAME
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_GATEWAY/32"]
# Leave the machine's conntrack table sizes alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
YAML
}

node_coredns_config() {
  local node=$1 ready_port=$2
  cat >"$node/Corefile" <<COREFILE
# Only the cluster's names; anything else is REFUSED (no server block serves it), so nothing a
# pod asks for leaves this machine.
cluster.local:53 {
  bind $NODE_GATEWAY
  errors
  ready 127.0.0.1:$ready_port
  kubernetes cluster.local {
    kubeconfig $(svc_dir kube)/kubeconfig strait-e2e
  }
  cache 5
}
COREFILE
}

node_ctr() { ctr --address "$(svc_dir kube)/node/containerd.sock" "$@"; }
node_ready() {
  [ "$(kube_kubectl get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
node_http_ok() { python3 - "$1" <<'PY'
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
PY
}

# node_up: called by kube_up once the control plane is Ready; appends its processes to kube's
# pids (KUBE_PROCS names them) and its variables to $dir/node.env.
node_up() {
  node_install
  node_owner_check
  local dir node pki deadline ready_port images
  dir=$(svc_dir kube)
  node=$dir/node
  pki=$dir/pki
  mkdir -p "$node"
  echo "$STRAIT_STATE" >"$NODE_OWNER"
  ls /var/run/netns 2>/dev/null >"$node/netns.before" || true

  # The images first: containerd needs the sandbox image's name, the tests the others'.
  images="$(dirname "${BASH_SOURCE[0]}")/../images"
  "$images" build >"$node/images.env" || die "node: building the images failed (tests/e2e/images build)"
  # shellcheck disable=SC1091
  source "$node/images.env"
  deadline=$((SECONDS + KUBE_READY_TIMEOUT))

  node_net_up "$node"
  node_certs "$pki"
  kube_kubeconfig "$node/kubelet.kubeconfig" "$(kube_server)" "$pki" node
  kube_kubeconfig "$node/kube-proxy.kubeconfig" "$(kube_server)" "$pki" kube-proxy
  node_containerd_config "$node"
  node_kubelet_config "$node" "$pki"
  ready_port=$(free_port)
  node_coredns_config "$node" "$ready_port"

  start_bg kube coredns "$NODE_HOME/bin/coredns" -conf "$node/Corefile"
  start_bg kube containerd containerd --config "$node/containerd/config.toml"
  kube_wait $((deadline - SECONDS)) "containerd on $node/containerd.sock" containerd node_ctr version
  CONTAINERD_ADDRESS=$node/containerd.sock "$images" load >>"$node/images.log" 2>&1 \
    || { cat "$node/images.log" >&2; die "node: loading the images into containerd failed"; }

  start_bg kube kubelet "$NODE_HOME/bin/kubelet" --config="$node/kubelet.yaml" \
    --kubeconfig="$node/kubelet.kubeconfig" --root-dir="$node/kubelet" --cert-dir="$node/kubelet-pki" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_GATEWAY" --node-labels="$NODE_LABEL"
  start_bg kube kube-proxy "$NODE_HOME/bin/kube-proxy" --config="$node/kube-proxy.yaml"
  kube_wait $((deadline - SECONDS)) "Node $NODE_NAME Ready" kubelet node_ready
  kube_wait $((deadline - SECONDS)) "kube-proxy /healthz" kube-proxy node_http_ok http://127.0.0.1:10256/healthz
  kube_wait $((deadline - SECONDS)) "CoreDNS ready" coredns node_http_ok "http://127.0.0.1:$ready_port/ready"

  {
    grep '^export ' "$node/images.env"
    printf 'export %s=%q\n' CONTAINERD_ADDRESS "$node/containerd.sock" STRAIT_NODE "$NODE_NAME" \
      STRAIT_NODE_NAMESPACE_ANNOTATION "scheduler.alpha.kubernetes.io/node-selector=$NODE_LABEL" \
      STRAIT_NODE_GATEWAY "$NODE_GATEWAY"
  } >"$dir/node.env"
}

# node_down: everything node_up started or changed, in reverse: the pods' processes (kubelet
# first, so nothing restarts them), containerd and its shims, mounts, network, ownership.
node_down() {
  local dir node pid
  dir=$(svc_dir kube)
  node=$dir/node
  [ -d "$node" ] || { node_release_owner; return 0; }
  for pid in $(node_pids kubelet kube-proxy); do kill -TERM "$pid" 2>/dev/null || true; done
  if [ -S "$node/containerd.sock" ] && node_ctr version >/dev/null 2>&1; then
    local task
    for task in $(node_ctr -n k8s.io tasks ls -q 2>/dev/null); do
      node_ctr -n k8s.io tasks kill -a -s SIGKILL "$task" >/dev/null 2>&1 || true
    done
  fi
  for pid in $(node_pids containerd coredns); do kill -TERM "$pid" 2>/dev/null || true; done
  # Shims outlive containerd by design; ours are the ones that talk to our socket.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $node/containerd.sock" 2>/dev/null || true
  node_wait_gone "$node"
  node_unmount "$node"
  node_net_down "$node"
  node_cgroups_down
  rm -rf "$node" "$dir/node.env"
  node_release_owner
}

node_release_owner() {
  [ -f "$NODE_OWNER" ] && [ "$(cat "$NODE_OWNER")" = "$STRAIT_STATE" ] && rm -f "$NODE_OWNER"
  return 0
}

# node_pids NAME...: the recorded pids of kube's processes of those names.
node_pids() {
  local dir name i pids=()
  dir=$(svc_dir kube)
  [ -f "$dir/pids" ] || return 0
  mapfile -t pids <"$dir/pids"
  for name in "$@"; do
    for i in "${!KUBE_PROCS[@]}"; do
      [ "${KUBE_PROCS[i]}" = "$name" ] && [ -n "${pids[i]:-}" ] && echo "${pids[i]}"
    done
  done
}

# node_wait_gone NODE: up to 15 s for the node's processes and the containers' processes to end.
node_wait_gone() {
  local node=$1 deadline=$((SECONDS + 15)) pid alive
  while ((SECONDS < deadline)); do
    alive=0
    for pid in $(node_pids kubelet kube-proxy containerd coredns); do pid_alive "$pid" && alive=1; done
    pgrep -f "containerd-shim-runc-v2 .*-address $node/containerd.sock" >/dev/null && alive=1
    ((alive)) || return 0
    sleep 0.2
  done
  for pid in $(node_pids kubelet kube-proxy containerd coredns); do kill -KILL "$pid" 2>/dev/null || true; done
}

# Volumes, rootfs overlays and sandbox mounts under the node's directory, deepest first.
node_unmount() {
  local node=$1 m
  awk -v p="$node/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

# kubelet's cgroups (cgroupfs driver): kubepods under every v1 hierarchy, emptied by now.
node_cgroups_down() {
  local d
  for d in /sys/fs/cgroup/*/kubepods; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}
