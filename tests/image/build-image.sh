#!/usr/bin/env bash
# Build weft's image from deploy/kubernetes/Containerfile with `podman build`, as a user
# does, for tests/image.rs (which runs the DaemonSet's containers from it).
#
# - No container registry is reachable here, so the two images the Containerfile starts
#   FROM are stood in for by images made on this machine and passed as build arguments:
#   RUNTIME_IMAGE, Debian bookworm by `debootstrap --variant=minbase` from the machine's
#   Debian mirror (as debian:bookworm-slim is); BUILD_IMAGE, the same with gcc, libc6-dev,
#   ca-certificates and this machine's Rust toolchain (`rustc --print sysroot`, as
#   rust:1-slim-bookworm has rustup's) and the machine's extra certificate authorities.
#   Both are cached in $cache/bases, keyed by this
#   script and the toolchain's version.
# - The build itself is the Containerfile's, unchanged: cargo fetches crates from crates.io
#   and apt-get the runtime's packages from Debian's mirror (`--network host`: the build's
#   own network, not a test's).
# - The result is an OCI archive, $cache/weft.tar, with $cache/weft.stamp naming the source
#   it was built from (a hash of the files git knows and of untracked ones it does not
#   ignore); a run whose source is unchanged does nothing. Runs are serialised by a lock.
#
# Podman runs with its own configuration and storage under $cache (vfs, cgroupfs, runc),
# leaving the machine's untouched. Prints the archive's path on its last line of stdout.
# Needs root; reads nothing from stdin.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${WEFT_IMAGE_CACHE:-/var/cache/weft-test-image}"

log() { printf 'build-image: %s\n' "$*" >&2; }

for tool in debootstrap podman rustc tar sha256sum git; do
    command -v "$tool" >/dev/null || {
        log "missing $tool (apt-get install debootstrap podman runc conmon)"
        exit 1
    }
done

exec </dev/null
mkdir -p "$cache"
exec 9>"$cache/build.lock"
flock 9

# Podman, private: configuration, vfs storage and run state under $cache.
mkdir -p "$cache/podman/root" "$cache/podman/runroot" "$cache/podman/tmp"
cat >"$cache/podman/containers.conf" <<EOF
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
tmp_dir = "$cache/podman/tmp"
EOF
printf '[storage]\ndriver = "vfs"\ngraphroot = "%s"\nrunroot = "%s"\n' \
    "$cache/podman/root" "$cache/podman/runroot" >"$cache/podman/storage.conf"
export CONTAINERS_CONF="$cache/podman/containers.conf"
export CONTAINERS_STORAGE_CONF="$cache/podman/storage.conf"
pm() { podman --runtime runc --cgroup-manager=cgroupfs "$@"; }

# The Debian mirror the machine's apt uses (deb822 or one-line form), else deb.debian.org.
mirror=$(grep -hoE 'https?://[^ ]*/debian/?( |$)' /etc/apt/sources.list.d/*.sources \
    /etc/apt/sources.list 2>/dev/null | head -n1 | tr -d ' ' || true)
mirror="${mirror:-http://deb.debian.org/debian}"

sysroot="$(rustc --print sysroot)"
toolchain="$(rustc --version)"
bases_key=$( (cat "$0"; echo "$toolchain"; echo "$mirror") | sha256sum | cut -d' ' -f1)
runtime_tag="localhost/weft-stand-in/debian:bookworm-slim"
build_tag="localhost/weft-stand-in/rust:bookworm"

bases_fresh() {
    [ -s "$cache/bases/stamp" ] && grep -qx "$bases_key" "$cache/bases/stamp" &&
        pm image exists "$runtime_tag" && pm image exists "$build_tag"
}

if ! bases_fresh; then
    log "base images: debootstrap bookworm from $mirror, and $toolchain"
    rm -rf "$cache/bases"
    mkdir -p "$cache/bases"
    rootfs="$cache/bases/rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >&2
    # As the slim images: no apt caches or lists; apt-get update fetches them.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | pm import - "$runtime_tag" >&2

    # The build stage's stand-in: C toolchain for ring, CA certificates for cargo's
    # downloads, and the Rust toolchain's programs and libraries (not its docs).
    chroot "$rootfs" /bin/sh -c 'apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates && apt-get clean && rm -rf /var/lib/apt/lists/*' >&2
    # The machine's own certificate authorities (an egress proxy's, say), so that cargo
    # reaches crates.io from the build as it does from the machine.
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >&2
    fi
    mkdir -p "$rootfs/usr/local/rust"
    for part in bin lib libexec etc; do
        [ -d "$sysroot/$part" ] && cp -a "$sysroot/$part" "$rootfs/usr/local/rust/"
    done
    for prog in cargo rustc; do
        ln -sf "../rust/bin/$prog" "$rootfs/usr/local/bin/$prog"
    done
    tar -C "$rootfs" -c . | pm import - "$build_tag" >&2
    rm -rf "$rootfs"
    echo "$bases_key" >"$cache/bases/stamp"
fi

# What the build context holds (.dockerignore leaves out target/ and .git/).
source_key=$( {
    cd "$root" && git ls-files -co --exclude-standard -z | sort -z |
        xargs -0 -r sha256sum -- 2>/dev/null || true # (files deleted but not yet committed)
} | sha256sum | cut -d' ' -f1)
if [ -s "$cache/weft.tar" ] && [ -s "$cache/weft.stamp" ] &&
    grep -qx "source $source_key" "$cache/weft.stamp"; then
    log "cached: $cache/weft.tar (same source)"
    echo "$cache/weft.tar"
    exit 0
fi

log "podman build -f deploy/kubernetes/Containerfile"
start=$SECONDS
pm build --network host --pull=never \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --build-arg "BUILD_IMAGE=$build_tag" --build-arg "RUNTIME_IMAGE=$runtime_tag" \
    -f "$root/deploy/kubernetes/Containerfile" -t localhost/weft:test "$root" >&2
rm -f "$cache/weft.tar"
pm save --format oci-archive -o "$cache/weft.tar.part" localhost/weft:test >&2
mv "$cache/weft.tar.part" "$cache/weft.tar"
# Only the bases stay in the store: the next build starts from them again.
pm rmi -f localhost/weft:test >&2 || true
pm image prune -f >&2 || true
printf 'source %s\nbuilt in %s s\n' "$source_key" "$((SECONDS - start))" >"$cache/weft.stamp"
log "built in $((SECONDS - start)) s: $cache/weft.tar ($(du -h "$cache/weft.tar" | cut -f1))"
echo "$cache/weft.tar"
