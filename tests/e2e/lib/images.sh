# shellcheck shell=bash
# Container images made here, without a container engine or a registry: the binaries cargo built,
# the host's shared libraries and a few distroless-like files, written as image archives that
# `ctr images import` accepts. Sourced by tests/e2e/images after common.sh, never run.
#
#   $STRAIT_CACHE/images/<name>_<tag>.tar   one archive per image reference (an OCI image layout
#                                           that also carries docker-save's manifest.json)
#   $STRAIT_CACHE/images/current.env        `export STRAIT_*_IMAGE=...` for the last build

IMAGES_DIR=$STRAIT_CACHE/images
IMAGES_REGISTRY=strait.local
IMAGES_APPS=(strait-proxy strait-operator)
IMAGES_PAUSE_REF=$IMAGES_REGISTRY/pause:busybox

# image_facts NAME: the runtime facts of image NAME, in img_entrypoint, img_user, img_expose
# (space-separated ports like 8080/tcp) and img_env (space-separated NAME=value).
# This is the one table of them: `build` and `config` both read it, and
# tests/e2e/tests/images.rs checks strait-proxy's and strait-operator's against the final stage of
# crates/proxy/Dockerfile and crates/operator/Dockerfile (ENTRYPOINT, USER, EXPOSE, COPY).
image_facts() {
  # distroless cc-debian12 sets these two.
  local app_env="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
  case $1 in
    strait-proxy)
      img_entrypoint=/usr/local/bin/strait-proxy img_user=65532:65532 img_expose="" img_env=$app_env ;;
    strait-operator)
      img_entrypoint=/usr/local/bin/strait-operator img_user=65532:65532 img_expose="" img_env=$app_env ;;
    pause) # like registry.k8s.io/pause: an unprivileged user
      img_entrypoint=/pause img_user=65535:65535 img_expose="" img_env=PATH=/bin ;;
    *) die "unknown image '$1' (known: ${IMAGES_APPS[*]} pause)" ;;
  esac
}

# image_archive REF: the archive file of image reference REF.
image_archive() {
  local ref=$1 name
  name=${ref#"$IMAGES_REGISTRY"/}
  printf '%s/%s.tar' "$IMAGES_DIR" "${name//:/_}"
}

# shared_libs BINARY: the dynamic loader and every shared library ldd names, as the paths the
# binary uses (the image mirrors the host's symlinks from there to the real files).
shared_libs() {
  local bin=$1 out interp
  out=$(ldd "$bin") || die "ldd $bin failed"
  if grep -q 'not found' <<<"$out"; then
    die "ldd $bin: libraries missing on this host: $(grep 'not found' <<<"$out" | tr -s ' \t\n' ' ')"
  fi
  interp=$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]$/\1/p')
  [ -n "$interp" ] || die "readelf -l $bin names no program interpreter (is it statically linked?)"
  {
    echo "$interp"
    # `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and `/lib64/ld-linux-x86-64.so.2 (0x...)`;
    # linux-vdso.so.1 has no file.
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
  } | sort -u
}

# images_py MODE ARGS...: the archive writer (python3 standard library only).
#   config --entrypoint P --user U --expose PORTS --env VARS
#       print the image config (what `build` writes, without rootfs)
#   app    (config options) --ref REF --binary FILE --lib PATH... --out ARCHIVE
#   pause  (config options) --ref REF --busybox FILE --out ARCHIVE
images_py() {
  python3 - "$@" <<'PY'
import argparse, hashlib, io, json, os, platform, stat, sys, tarfile

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
NONROOT = 65532

p = argparse.ArgumentParser(prog="images_py")
p.add_argument("mode", choices=["config", "app", "pause"])
p.add_argument("--entrypoint", required=True)
p.add_argument("--user", required=True)
p.add_argument("--expose", default="")
p.add_argument("--env", default="")
p.add_argument("--ref")
p.add_argument("--out")
p.add_argument("--binary")
p.add_argument("--lib", action="append", default=[])
p.add_argument("--busybox")
a = p.parse_args()


def image_config():
    cfg = {
        "User": a.user,
        "Env": a.env.split(),
        "Entrypoint": [a.entrypoint],
        "WorkingDir": "/",
    }
    ports = a.expose.split()
    if ports:
        cfg["ExposedPorts"] = {port: {} for port in ports}
    return {"architecture": ARCH, "os": "linux", "config": cfg}


class Rootfs:
    """The single layer: entries keyed by path (no leading slash), written sorted, owned
    root:root unless told, every mtime 0, so the same inputs give the same bytes."""

    def __init__(self):
        self.entries = {}

    def _put(self, path, kind, **kw):
        path = path.strip("/")
        new = dict(kind=kind, **kw)
        old = self.entries.get(path)
        if old is not None and old != new:
            # A parent made on the way gives way to the directory asked for by name.
            if kind == "dir" and old.get("auto"):
                old = None
            elif kind == "dir" and kw.get("auto") and old["kind"] == "dir":
                return
            else:
                sys.exit(f"images: rootfs path /{path} added twice: {old} and {new}")
        parent = os.path.dirname(path)
        if parent and parent not in self.entries:
            self.dir(parent, auto=True)
        self.entries[path] = new

    def dir(self, path, mode=0o755, uid=0, auto=False):
        self._put(path, "dir", mode=mode, uid=uid, auto=auto)

    def file(self, path, mode=0o644, data=None, src=None):
        self._put(path, "file", mode=mode, data=data, src=src)

    def symlink(self, path, target):
        self._put(path, "symlink", target=target)

    def host(self, path):
        """Copy host file `path` to the same path, recreating every symlink on the way
        (/lib -> usr/lib, /lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/...)."""
        parts = path.strip("/").split("/")
        for i in range(len(parts)):
            cur = "/" + "/".join(parts[: i + 1])
            if os.path.islink(cur):
                target = os.readlink(cur)
                self.symlink(cur, target)
                resolved = os.path.normpath(os.path.join(os.path.dirname(cur), target))
                return self.host("/".join([resolved] + parts[i + 1 :]))
            if i < len(parts) - 1:
                self.dir(cur, auto=True)
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            sys.exit(f"images: {path} is not a regular file")
        self.file(path, mode=stat.S_IMODE(st.st_mode) & 0o755, src=path)

    def write(self, dest):
        with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tar:
            for path in sorted(self.entries):
                e = self.entries[path]
                ti = tarfile.TarInfo(path)
                ti.mtime = 0
                ti.uid = ti.gid = e.get("uid", 0)
                ti.uname = ti.gname = "root" if ti.uid == 0 else "nonroot"
                if e["kind"] == "dir":
                    ti.type, ti.mode = tarfile.DIRTYPE, e["mode"]
                    tar.addfile(ti)
                elif e["kind"] == "symlink":
                    ti.type, ti.mode, ti.linkname = tarfile.SYMTYPE, 0o777, e["target"]
                    tar.addfile(ti)
                elif e["data"] is not None:
                    ti.mode, ti.size = e["mode"], len(e["data"])
                    tar.addfile(ti, io.BytesIO(e["data"]))
                else:
                    ti.mode, ti.size = e["mode"], os.path.getsize(e["src"])
                    with open(e["src"], "rb") as f:
                        tar.addfile(ti, f)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_archive(rootfs):
    """An OCI image layout (oci-layout, index.json, blobs/sha256/...) that also carries
    docker-save's manifest.json, like `docker save` since Docker 25. containerd reads the OCI
    index, whose io.containerd.image.name annotation names the image; importers that only know
    the Docker format read RepoTags."""
    work = os.path.dirname(a.out)
    layer = os.path.join(work, "layer.tar")
    rootfs.write(layer)
    layer_hex = sha256_file(layer)

    def blob(obj):
        data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        return data, hashlib.sha256(data).hexdigest()

    config = image_config()
    config["rootfs"] = {"type": "layers", "diff_ids": ["sha256:" + layer_hex]}
    config["history"] = [{"created_by": "tests/e2e/images build", "created": "1970-01-01T00:00:00Z"}]
    config_data, config_hex = blob(config)
    manifest_data, manifest_hex = blob({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + config_hex, "size": len(config_data)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": "sha256:" + layer_hex, "size": os.path.getsize(layer)}],
    })
    tag = a.ref.rsplit(":", 1)[1]
    index_data, _ = blob({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + manifest_hex, "size": len(manifest_data),
            "platform": {"architecture": ARCH, "os": "linux"},
            "annotations": {"io.containerd.image.name": a.ref,
                            "org.opencontainers.image.ref.name": tag},
        }],
    })
    docker_data, _ = blob([{"Config": "blobs/sha256/" + config_hex,
                            "RepoTags": [a.ref],
                            "Layers": ["blobs/sha256/" + layer_hex]}])
    layout_data, _ = blob({"imageLayoutVersion": "1.0.0"})

    def add(tar, name, data=None, src=None):
        ti = tarfile.TarInfo(name)
        ti.mtime, ti.uname, ti.gname = 0, "root", "root"
        if data is None and src is None:
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(ti)
        elif data is not None:
            ti.mode, ti.size = 0o644, len(data)
            tar.addfile(ti, io.BytesIO(data))
        else:
            ti.mode, ti.size = 0o644, os.path.getsize(src)
            with open(src, "rb") as f:
                tar.addfile(ti, f)

    with tarfile.open(a.out, "w", format=tarfile.GNU_FORMAT) as tar:
        add(tar, "oci-layout", layout_data)
        add(tar, "index.json", index_data)
        add(tar, "manifest.json", docker_data)
        add(tar, "blobs")
        add(tar, "blobs/sha256")
        add(tar, "blobs/sha256/" + config_hex, config_data)
        add(tar, "blobs/sha256/" + manifest_hex, manifest_data)
        add(tar, "blobs/sha256/" + layer_hex, src=layer)
    os.remove(layer)


if a.mode == "config":
    json.dump(image_config(), sys.stdout, indent=2, sort_keys=True)
    print()
elif a.mode == "app":
    fs = Rootfs()
    for lib in a.lib:
        fs.host(lib)
    fs.file(a.entrypoint, mode=0o755, src=a.binary)
    # What distroless cc-debian12:nonroot offers a program besides its libraries.
    fs.file("/etc/passwd", data=b"root:x:0:0:root:/root:/sbin/nologin\n"
            b"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
            b"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
    fs.file("/etc/group", data=b"root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n")
    fs.file("/etc/nsswitch.conf", data=b"passwd: files\ngroup: files\nhosts: files dns\n")
    fs.file("/etc/ssl/certs/ca-certificates.crt", src=os.path.realpath("/etc/ssl/certs/ca-certificates.crt"))
    fs.dir("/home/nonroot", mode=0o700, uid=NONROOT)
    fs.dir("/root", mode=0o700)
    fs.dir("/tmp", mode=0o1777)
    write_archive(fs)
else:
    fs = Rootfs()
    fs.file("/bin/busybox", mode=0o755, src=a.busybox)
    for applet in ("sh", "sleep"):
        fs.symlink("/bin/" + applet, "busybox")
    # PID 1 of the pod sandbox: wait forever, leave at once on TERM or INT (the trap runs as soon
    # as `wait` is interrupted; the sleep dies with the PID namespace).
    fs.file(a.entrypoint, mode=0o755,
            data=b"#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait $!; done\n")
    fs.dir("/tmp", mode=0o1777)
    write_archive(fs)
PY
}

# image_py_args NAME: the config options of images_py for image NAME.
image_py_args() {
  image_facts "$1"
  img_args=(--entrypoint "$img_entrypoint" --user "$img_user" --expose "$img_expose" --env "$img_env")
}

# build_app_image NAME WORKDIR: the image of cargo's debug build of NAME; prints its reference.
# The tag is the first 12 hex digits of the sha256 of the binary without debug info and of this
# file (the recipe), so an unchanged binary built by an unchanged recipe reuses its archive.
build_app_image() {
  local name=$1 work=$2 bin stripped hex ref out libs lib_args=() lib
  bin=$CARGO_TARGET_DIR/debug/$name
  [ -x "$bin" ] || die "$bin is missing after cargo build"
  stripped=$work/$name
  objcopy --strip-debug "$bin" "$stripped" || die "objcopy --strip-debug $bin failed"
  hex=$(cat "$stripped" "${BASH_SOURCE[0]}" | sha256sum)
  hex=${hex:0:12}
  ref=$IMAGES_REGISTRY/$name:dev-$hex
  out=$(image_archive "$ref")
  if [ -s "$out" ]; then
    touch "$out"
    log "$ref: reusing $out"
  else
    libs=$(shared_libs "$bin") || exit 1
    while read -r lib; do lib_args+=(--lib "$lib"); done <<<"$libs"
    image_py_args "$name"
    images_py app "${img_args[@]}" --ref "$ref" --binary "$stripped" "${lib_args[@]}" \
      --out "$work/$name.tar" || die "writing the $ref archive failed"
    mv -f "$work/$name.tar" "$out"
    log "$ref: wrote $out ($(du -h "$out" | cut -f1))"
  fi
  rm -f "$stripped"
  # Archives of older builds of NAME nobody used for a week.
  find "$IMAGES_DIR" -maxdepth 1 -name "${name}_dev-*.tar" ! -name "$(basename "$out")" -mtime +7 -delete
  printf '%s\n' "$ref"
}

# build_pause_image WORKDIR: the pod sandbox image (static busybox); prints its reference.
build_pause_image() {
  local work=$1 ref=$IMAGES_PAUSE_REF out busybox=${STRAIT_BUSYBOX:-/usr/bin/busybox}
  out=$(image_archive "$ref")
  if [ -s "$out" ]; then
    log "$ref: reusing $out"
  else
    [ -x "$busybox" ] || die "$busybox not found: install busybox-static (or set STRAIT_BUSYBOX)"
    if ldd "$busybox" >/dev/null 2>&1; then
      die "$busybox is dynamically linked; the pause image needs a static busybox (busybox-static)"
    fi
    image_py_args pause
    images_py pause "${img_args[@]}" --ref "$ref" --busybox "$busybox" --out "$work/pause.tar" \
      || die "writing the $ref archive failed"
    mv -f "$work/pause.tar" "$out"
    log "$ref: wrote $out ($(du -h "$out" | cut -f1))"
  fi
  printf '%s\n' "$ref"
}
