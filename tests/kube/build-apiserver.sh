#!/usr/bin/env bash
# Build a real kube-apiserver (Kubernetes 1.20.2) from Debian 12's own `kubernetes` source
# package, once, for the tests against a real API server (kube/tests/apiserver.rs).
#
# - The source comes from `apt-get source` with a private sources list holding one deb-src
#   line for bookworm; the machine's apt configuration (sources, lists) is not touched.
# - The tarball carries vendor/, so the build is offline with Debian's Go (golang-go), in
#   GOPATH mode as the package's debian/rules does: a symlink .go/src/k8s.io/kubernetes,
#   then `make WHAT=cmd/kube-apiserver` (needs make and rsync).
# - The binary is cached as $WEFT_KUBE_CACHE/bin/kube-apiserver (default
#   /var/cache/weft-test-kube); a second run with the binary present does nothing.
#   The source tree is removed after a successful build.
# - etcd is not built here: Debian's etcd-server (3.4) provides /usr/bin/etcd.
#
# Prints the path of the binary on its last line of stdout. Needs root only to write the
# cache directory; reads nothing from stdin.
set -euo pipefail

cache="${WEFT_KUBE_CACHE:-/var/cache/weft-test-kube}"
version="1.20.2"
bin="$cache/bin/kube-apiserver"

log() { printf 'build-apiserver: %s\n' "$*" >&2; }

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$version"; then
    log "cached: $bin ($("$bin" --version))"
    echo "$bin"
    exit 0
fi

for tool in go make rsync dpkg-source apt-get; do
    command -v "$tool" >/dev/null || {
        log "missing $tool (apt-get install golang-go make rsync dpkg-dev)"
        exit 1
    }
done

mkdir -p "$cache/bin" "$cache/apt/lists/partial" "$cache/apt/cache/archives/partial" "$cache/src"

# One build at a time (CI and a developer's test run may both ask).
exec 9>"$cache/build.lock"
flock 9
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$version"; then
    log "built meanwhile by another run: $bin"
    echo "$bin"
    exit 0
fi

start=$(date +%s)

# Private apt state: only this sources list, its own lists and archive directories.
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
    >"$cache/apt/sources.list"
apt_opts=(
    -o "Dir::Etc::sourcelist=$cache/apt/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$cache/apt/lists"
    -o "Dir::Cache=$cache/apt/cache"
    -o "APT::Get::List-Cleanup=0"
)

src="$cache/src"
# bookworm's only version is 1.20.5+really1.20.2-1.1+deb12u1 (1.20.2 under a higher version).
tree=$(find "$src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
if [ -z "$tree" ]; then
    log "apt-get update (private deb-src list)"
    apt-get "${apt_opts[@]}" update </dev/null >&2
    log "apt-get source kubernetes"
    (cd "$src" && apt-get "${apt_opts[@]}" source --only-source kubernetes </dev/null >&2) || {
        log "apt-get source failed"
        exit 1
    }
fi
tree=$(find "$src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
[ -n "$tree" ] || {
    log "no source tree under $src after apt-get source"
    ls "$src" >&2
    exit 1
}

# GOPATH mode, as debian/rules: the tree must be at $GOPATH/src/k8s.io/kubernetes.
gopath="$tree/.go"
mkdir -p "$gopath/src/k8s.io"
ln -sfn "$tree" "$gopath/src/k8s.io/kubernetes"
export GOPATH="$gopath"
export GO111MODULE=off
export GOFLAGS=-mod=vendor
export GOCACHE="$cache/go-build"
export GOPROXY=off
export CGO_ENABLED=0 # as debian/rules
# The Makefile derives the version from git otherwise; there is no .git in the tarball.
export KUBE_GIT_VERSION="v$version"
export KUBE_GIT_TREE_STATE=clean
export KUBE_GIT_COMMIT=debian
export KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20

log "make WHAT=cmd/kube-apiserver (GOPATH=$gopath, $(go version))"
cd "$gopath/src/k8s.io/kubernetes"
unset GOFLAGS # the Makefile sets its own flags; GOPATH mode uses vendor/ anyway
make WHAT=cmd/kube-apiserver </dev/null >&2

built=$(find "$tree/_output" -type f -name kube-apiserver -perm -u+x | head -n1)
[ -n "$built" ] || {
    log "make finished but no kube-apiserver under $tree/_output"
    exit 1
}
install -m 0755 "$built" "$bin.tmp"
mv "$bin.tmp" "$bin"
"$bin" --version >&2
end=$(date +%s)
echo "$((end - start))" >"$cache/bin/build-seconds"
log "built in $((end - start)) s: $bin"
rm -rf "$tree" "$src"/kubernetes_* "$GOCACHE"
echo "$bin"
