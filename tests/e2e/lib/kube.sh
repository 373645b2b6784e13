# shellcheck shell=bash
# A real Kubernetes control plane on 127.0.0.1 without containers: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok as the kubelet of one fake Node (pods on it
# become Running/Ready, no image is pulled). Sourced by tests/e2e/services.
#
# Only package registries are reachable (no dl.k8s.io, no GitHub releases), so everything is built
# from the Go module proxy once per version into $KUBE_HOME:
#   bin/               etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm
#   src/               the wrapper module the Kubernetes binaries were built from
#   kwok-stages.yaml   kwok's default node/pod stages, taken from the kwok module itself
# State in $(svc_dir kube): pki/, etcd/, *.kubeconfig, kubeconfig (admin), one log per process.

KUBE_VERSION=1.35.4 # the Rust operator uses k8s-openapi feature v1_35
KUBE_ETCD_VERSION=3.6.6
KUBE_KWOK_VERSION=0.8.0
KUBE_HELM_VERSION=4.3.1
KUBE_HOME=$STRAIT_CACHE/k8s-$KUBE_VERSION
KUBE_READY_TIMEOUT=${KUBE_READY_TIMEOUT:-90}
KUBE_NODE=kwok-node-0
# Process names in start order; line N of the pids file belongs to name N.
KUBE_PROCS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok coredns containerd kubelet kube-proxy)

# Go with every cache under $STRAIT_CACHE, so nothing lands in ~/go or the clone.
kube_go() {
  GOPATH="$STRAIT_CACHE/go" GOMODCACHE="$STRAIT_CACHE/go/mod" GOCACHE="$STRAIT_CACHE/go/build" \
    GOFLAGS="-modcacherw -buildvcs=false" GOWORK=off CGO_ENABLED=0 "$KUBE_GO" "$@"
}

kube_need_go() {
  KUBE_GO=${KUBE_GO:-$(command -v go || echo /usr/local/go/bin/go)}
  [ -x "$KUBE_GO" ] || die "kube: Go >= 1.26 is needed to build Kubernetes $KUBE_VERSION (set KUBE_GO or put go on PATH)"
  local v
  v=$("$KUBE_GO" env GOVERSION) # go1.26.8
  v=${v#go}
  # kwok 0.8 and helm 4.3 declare `go 1.26.0`.
  [ "${v%%.*}" -gt 1 ] || [ "$(echo "$v" | cut -d. -f2)" -ge 26 ] \
    || die "kube: $KUBE_GO is Go $v; Go >= 1.26 is needed"
}

kube_install() {
  [ -f "$KUBE_HOME/.complete" ] && return 0
  kube_need_go

  mkdir -p "$STRAIT_CACHE"
  local lock fd
  lock="$STRAIT_CACHE/.k8s-$KUBE_VERSION.lock"
  exec {fd}>"$lock"
  flock "$fd" # two concurrent `up`s: the second waits, then finds the build complete
  if [ -f "$KUBE_HOME/.complete" ]; then exec {fd}>&-; return 0; fi

  log "kube: building Kubernetes $KUBE_VERSION, etcd $KUBE_ETCD_VERSION, kwok $KUBE_KWOK_VERSION and" \
    "helm $KUBE_HELM_VERSION from the Go module proxy into $KUBE_HOME (several minutes on 2 cores)"
  rm -rf "$STRAIT_CACHE/.k8s-$KUBE_VERSION.tmp."* # leftovers of an interrupted build
  local tmp started=$SECONDS
  tmp=$(mktemp -d "$STRAIT_CACHE/.k8s-$KUBE_VERSION.tmp.XXXXXX")
  if ! kube_build "$tmp" 3>&2 >>"$tmp/build.log" 2>&1; then
    tail -n 30 "$tmp/build.log" >&2
    die "kube: build failed (log: $tmp/build.log)"
  fi
  touch "$tmp/.complete"
  rm -rf "$KUBE_HOME" # an older incomplete build (no .complete)
  mv -T "$tmp" "$KUBE_HOME"
  exec {fd}>&-
  log "kube: built $KUBE_HOME in $((SECONDS - started))s ($(du -sh "$KUBE_HOME/bin" | cut -f1) of binaries)"
}

# kube_build DIR: everything $KUBE_HOME holds, built into DIR. Runs where errexit is off, hence
# the explicit `|| return 1`. Progress goes to fd 3, Go's chatter to stdout/stderr (build.log).
kube_build() {
  local out=$1 src=$1/src minor=${KUBE_VERSION#*.}
  minor=${minor%%.*}
  mkdir -p "$out/bin" "$src" || return 1

  # k8s.io/kubernetes can't be `go install`ed: its go.mod requires the staging modules at v0.0.0
  # and replaces them with ./staging/... . A wrapper module that replaces each of them with its
  # v0.<minor>.<patch> tag can build it. The staging list changes between minors, so it is read
  # from this version's go.mod (and so is its godebug default).
  log "kube: resolving modules" 2>&3
  local gomod
  gomod=$(kube_go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [ -f "$gomod" ] || { echo "no go.mod for k8s.io/kubernetes@v$KUBE_VERSION" >&2; return 1; }
  local m edits=()
  while read -r m; do
    edits+=("-replace=$m=$m@v0.$minor.${KUBE_VERSION##*.}")
  done < <(sed -n 's|^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*|\1|p' "$gomod")
  ((${#edits[@]} > 20)) || { echo "found only ${#edits[@]} staging modules in $gomod" >&2; return 1; }
  while read -r m; do edits+=("-godebug=$m"); done < <(sed -n 's/^godebug[[:space:]]\{1,\}\([^ (]*=[^ ]*\)$/\1/p' "$gomod")

  local k=k8s.io/kubernetes/cmd etcd=go.etcd.io/etcd/server/v3 # etcd's main package is its module root
  local pkgs=("$k/kube-apiserver" "$k/kube-controller-manager" "$k/kube-scheduler" "$k/kubectl")
  cat >"$src/tools.go" <<GO || return 1
//go:build tools

// What this module is for; see tests/e2e/lib/kube.sh (kube_build).
package tools

import (
	_ "$etcd"
	_ "${pkgs[0]}"
	_ "${pkgs[1]}"
	_ "${pkgs[2]}"
	_ "${pkgs[3]}"
)
GO
  # Without the version stamp the servers report v0.0.0-master, which breaks Helm's kubeVersion
  # constraints and client version checks (kubectl reads client-go's copy).
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=v$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  # `go get pkg@version` also records the go.sum lines needed to build exactly these packages.
  (cd "$src" \
    && kube_go mod init strait.local/k8s-tools \
    && kube_go mod edit "${edits[@]}" \
    && kube_go get "${pkgs[@]/%/@v$KUBE_VERSION}" "$etcd@v$KUBE_ETCD_VERSION" \
    && log "kube: compiling kube-apiserver, kube-controller-manager, kube-scheduler, kubectl" 2>&3 \
    && kube_go build -trimpath -ldflags "$ld" -o "$out/bin/" "${pkgs[@]}" \
    && log "kube: compiling etcd" 2>&3 \
    && kube_go build -trimpath -ldflags "-s -w" -o "$out/bin/etcd" "$etcd") || return 1

  # Each on its own: their go.mod files have no replace directives, so `go install` works and
  # they keep the dependency versions they were released with.
  log "kube: compiling kwok and helm" 2>&3
  # helm's Makefile stamps the full version (the source only says v4.3).
  local hv=helm.sh/helm/v4/internal/version
  GOBIN=$out/bin kube_go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KUBE_KWOK_VERSION" \
    && GOBIN=$out/bin kube_go install -trimpath \
      -ldflags "-s -w -X $hv.version=v$KUBE_HELM_VERSION -X $hv.gitTreeState=clean" \
      "helm.sh/helm/v4/cmd/helm@v$KUBE_HELM_VERSION" \
    || return 1

  # The kwok controller has no built-in stages (kwokctl writes them); use the defaults kwokctl uses.
  local kwok_dir f stages=(node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease
    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete)
  kwok_dir=$(kube_go mod download -json "sigs.k8s.io/kwok@v$KUBE_KWOK_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  for f in "${stages[@]}"; do
    echo "---" && cat "$kwok_dir/kustomize/stage/$f.yaml" || return 1
  done >"$out/kwok-stages.yaml" || return 1

  local v
  v=$("$out/bin/kube-apiserver" --version)
  [ "$v" = "Kubernetes v$KUBE_VERSION" ] || { echo "kube-apiserver --version says '$v'" >&2; return 1; }
}

# kube_cert DIR NAME SUBJECT EXTENSIONS: NAME.key and NAME.crt signed by DIR/ca.
kube_cert() {
  local dir=$1 name=$2 subj=$3 ext=$4
  openssl req -new -newkey rsa:2048 -nodes -keyout "$dir/$name.key" -subj "$subj" 2>/dev/null \
    | openssl x509 -req -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
      -days 3650 -out "$dir/$name.crt" -extfile <(printf '%s\n' \
        "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" "$ext") 2>/dev/null
}

# A fresh CA per cluster. rustls (kube-rs) insists on a real CA and CA:FALSE leaves with SANs.
kube_pki() {
  local pki=$1
  mkdir -p "$pki"
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 3650 \
    -subj "/CN=strait-e2e-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  kube_cert "$pki" apiserver "/CN=kube-apiserver" \
    "extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:127.0.0.1,IP:10.0.0.1,IP:$NODE_GATEWAY"
  kube_cert "$pki" admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
  # The identities kubeadm gives them, so the default RBAC bindings apply.
  kube_cert "$pki" controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
  kube_cert "$pki" scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  if [ ! -s "$pki/sa.pub" ] || [ ! -s "$pki/scheduler.crt" ]; then die "kube: creating the PKI with openssl failed"; fi
}

# kube_kubeconfig FILE SERVER PKI USER: a self-contained kubeconfig (certs embedded).
kube_kubeconfig() {
  local file=$1 server=$2 pki=$3 user=$4
  cat >"$file" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: strait-e2e
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$pki/$user.crt")
    client-key-data: $(base64 -w0 "$pki/$user.key")
contexts:
- name: strait-e2e
  context:
    cluster: strait-e2e
    user: $user
current-context: strait-e2e
YAML
}

kube_server() { cat "$(svc_dir kube)/server"; }
kube_kubectl() { KUBECACHEDIR="$(svc_dir kube)/kube-cache" "$KUBE_HOME/bin/kubectl" --kubeconfig "$(svc_dir kube)/kubeconfig" --request-timeout=5s "$@"; }

kube_port_open() { (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
kube_readyz() { [ "$(kube_kubectl get --raw /readyz 2>/dev/null)" = ok ]; }
kube_node_ready() {
  [ "$(kube_kubectl get node "$KUBE_NODE" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
kube_default_sa() { kube_kubectl -n default get serviceaccount default; }

# The one Node, managed by kwok (selected by its annotation). Big enough for the tests' pods.
kube_create_node() {
  kube_kubectl create -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: $KUBE_NODE
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: $KUBE_NODE
    kubernetes.io/os: linux
    type: kwok
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "250", ephemeral-storage: 1Ti}
  capacity: {cpu: "32", memory: 256Gi, pods: "250", ephemeral-storage: 1Ti}
  nodeInfo:
    architecture: amd64
    kubeletVersion: v$KUBE_VERSION
    operatingSystem: linux
YAML
}

# kube_fail LOGNAME MESSAGE: show the log, stop what we started (the logs stay), fail.
kube_fail() {
  local dir
  dir=$(svc_dir kube)
  tail -n 30 "$dir/$1.log" >&2
  kube_down
  die "kube: $2 (log: $dir/$1.log)"
}

# kube_until_dead CMD...: CMD succeeds, or one of our processes died (no use waiting any longer).
kube_until_dead() { ! svc_running kube || "$@"; }

# kube_wait SECONDS WHAT LOG CMD...: wait for CMD; on failure show the log of a dead process or LOG.
kube_wait() {
  local secs=$1 what=$2 logname=$3; shift 3
  local dir i pids=()
  dir=$(svc_dir kube)
  ((secs > 0)) || secs=1
  wait_for "$secs" "$what" kube_until_dead "$@" || true
  mapfile -t pids <"$dir/pids"
  for i in "${!pids[@]}"; do
    pid_alive "${pids[i]}" || kube_fail "${KUBE_PROCS[i]}" "${KUBE_PROCS[i]} exited while waiting for $what"
  done
  "$@" >/dev/null 2>&1 || kube_fail "$logname" "timed out waiting for $what"
}

kube_up() {
  need_cmd openssl "apt-get install openssl"
  kube_install
  local dir bin pki deadline
  dir=$(svc_dir kube)
  bin=$KUBE_HOME/bin
  pki=$dir/pki
  deadline=$((SECONDS + KUBE_READY_TIMEOUT))
  rm -rf "$dir"; mkdir -p "$dir"
  kube_pki "$pki"

  local etcd_port peer_port api_port kcm_port sched_port server
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  kcm_port=$(free_port); sched_port=$(free_port)
  server=https://127.0.0.1:$api_port
  echo "$server" >"$dir/server"
  kube_kubeconfig "$dir/kubeconfig" "$server" "$pki" admin
  kube_kubeconfig "$dir/controller-manager.kubeconfig" "$server" "$pki" controller-manager
  kube_kubeconfig "$dir/scheduler.kubeconfig" "$server" "$pki" scheduler

  local etcd_url=http://127.0.0.1:$etcd_port peer_url=http://127.0.0.1:$peer_port
  start_bg kube etcd "$bin/etcd" --name strait-e2e --data-dir "$dir/etcd" --unsafe-no-fsync \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
    --initial-cluster "strait-e2e=$peer_url" --log-level warn
  kube_wait $((deadline - SECONDS)) "etcd on port $etcd_port" etcd kube_port_open "$etcd_port"

  # Pods on the real node reach the apiserver through the `kubernetes` Service, whose endpoint
  # is the advertised address: the node's gateway (node.sh), hence the wildcard bind. Without the
  # node there is nothing to reach it, and a loopback endpoint is not allowed. A /16 of Service
  # IPs holds the operator figures' 1,000 resources. ServiceAccount admission stays on: the
  # controller-manager's serviceaccount controller creates the `default` SA of every namespace.
  # PodNodeSelector keeps every pod on the kwok node unless its namespace asks for the real one
  # (node.sh: NODE_LABEL), so tests written for kwok never wait on an image pull.
  local node_flags=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none)
  if node_enabled; then
    node_flags=(--bind-address=0.0.0.0 --advertise-address="$NODE_GATEWAY"
      --kubelet-client-certificate="$pki/admin.crt" --kubelet-client-key="$pki/admin.key"
      --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP)
  fi
  cat >"$dir/admission.yaml" <<YAML
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodNodeSelector
  path: $dir/podnodeselector.yaml
YAML
  printf 'podNodeSelectorPluginConfig:\n  clusterDefaultNodeSelector: type=kwok\n' >"$dir/podnodeselector.yaml"
  start_bg kube kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers="$etcd_url" "${node_flags[@]}" \
    --secure-port="$api_port" --cert-dir="$dir/kube-apiserver-certs" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --authorization-mode=Node,RBAC --allow-privileged=true \
    --enable-admission-plugins=NodeRestriction,PodNodeSelector \
    --admission-control-config-file="$dir/admission.yaml" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$NODE_SERVICE_CIDR" --profiling=false
  kube_wait $((deadline - SECONDS)) "kube-apiserver /readyz on $server" kube-apiserver kube_readyz

  # The rest starts only now: the controller-manager exits if the apiserver isn't healthy
  # within 10 s. They authenticate callers of their own ports with our CA directly; without
  # --authentication-skip-lookup they keep polling for a front-proxy CA this apiserver doesn't
  # have. The flex-volume dir would otherwise be created under /usr/libexec.
  kube_create_node 2>"$dir/node.log" || kube_fail node "creating Node $KUBE_NODE failed"
  start_bg kube kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$dir/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" --cert-dir="$dir/kube-controller-manager-certs" \
    --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --client-ca-file="$pki/ca.crt" --authentication-skip-lookup \
    --flex-volume-plugin-dir="$dir/flexvolume" --profiling=false
  start_bg kube kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig="$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig="$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig="$dir/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$sched_port" --cert-dir="$dir/kube-scheduler-certs" \
    --client-ca-file="$pki/ca.crt" --authentication-skip-lookup --leader-elect=false --profiling=false
  # kwok manages only Nodes carrying its annotation. Its lease flag defaults to 0 (no Lease), and
  # then the node-lifecycle controller marks the Node Unknown and taints it every ~50 s. Pod IPs
  # come from a range that overlaps neither the Service range, the real node's pods nor loopback.
  start_bg kube kwok "$bin/kwok" --kubeconfig="$dir/kubeconfig" --config="$KUBE_HOME/kwok-stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-ip=127.0.0.1 --cidr=10.246.0.0/16 --node-lease-duration-seconds=40

  kube_wait $((deadline - SECONDS)) "Node $KUBE_NODE Ready" kwok kube_node_ready
  kube_wait $((deadline - SECONDS)) "ServiceAccount default/default" kube-controller-manager kube_default_sa
  if node_enabled; then node_up; else rm -f "$dir/node.env"; fi

  write_env kube "KUBECONFIG=$dir/kubeconfig" "KUBECTL=$bin/kubectl" "HELM=$bin/helm" "KUBE_BIN=$bin" \
    "KUBE_VERSION=$KUBE_VERSION" "KUBECACHEDIR=$dir/kube-cache" \
    "HELM_CACHE_HOME=$dir/helm/cache" "HELM_CONFIG_HOME=$dir/helm/config" "HELM_DATA_HOME=$dir/helm/data"
  if [ -f "$dir/node.env" ]; then cat "$dir/node.env" >>"$dir/env"; fi
}

# kube_down: the real node first (its pods, mounts, network), then the control plane.
kube_down() {
  node_down
  stop_svc kube
}
