#!/usr/bin/env bash
# Build the small virtual machine image the kernel WireGuard tests boot (tests/kernel_vm.rs,
# weft_testbed::Vm): a Debian 6.1 kernel with WireGuard and an initramfs, once per machine.
#
# - The kernel is Debian's `linux-image-6.1.0-*-amd64` (the one linux-image-amd64 depends
#   on), fetched with `apt-get download` and unpacked with `dpkg-deb -x`: never installed on
#   this machine. If the machine's apt lists do not know it, a private apt state (its own
#   sources list and lists under the cache) is used, as tests/kube/build-apiserver.sh does.
# - The uncompressed vmlinux is cut out of the vmlinuz (an ELF with a PVH entry: QEMU boots
#   it directly, about twice as fast as the bzImage).
# - The initramfs (uncompressed newc cpio: nothing to inflate at boot under TCG) holds
#   busybox-static, `ip`, `nft` and `wg` with the shared libraries ldd names (and those a
#   Rust binary needs: the test-built weft comes in over 9p at boot), the modules a node and
#   the VM need (WireGuard, bridge, veth, tun, nf_tables, virtio, 9p) with their dependencies
#   and a `depmod -b` index (busybox's: the kernel loads more on demand with busybox
#   modprobe), and tests/vm/init (the init script with the command agent).
# - Cached in $WEFT_VM_CACHE (default /var/cache/weft-test-vm): vmlinux, initramfs.cpio and
#   stamp (the kernel version and the hash of this script and of init). A second run with
#   an up-to-date stamp does nothing; runs are serialised by a lock.
#
# Prints the cache directory on its last line of stdout. Needs root only to write the cache
# directory; reads nothing from stdin.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${WEFT_VM_CACHE:-/var/cache/weft-test-vm}"

log() { printf 'build-image: %s\n' "$*" >&2; }

for tool in apt-get dpkg-deb busybox xz ldd sha256sum; do
    command -v "$tool" >/dev/null || {
        log "missing $tool (apt-get install busybox-static xz-utils dpkg)"
        exit 1
    }
done
# (Not `busybox --list | grep -q`: with pipefail, grep's early exit fails the pipe.)
applets=$(busybox --list)
if ! grep -qx depmod <<<"$applets" || ! grep -qx cpio <<<"$applets"; then
    log "busybox has no depmod or cpio applet: install busybox-static"
    exit 1
fi

recipe=$(cat "$0" "$here/init" | sha256sum | cut -d' ' -f1)
fresh() {
    [ -s "$cache/vmlinux" ] && [ -s "$cache/initramfs.cpio" ] && [ -s "$cache/stamp" ] &&
        grep -qx "recipe $recipe" "$cache/stamp"
}

mkdir -p "$cache"
if fresh; then
    log "cached: $cache ($(grep '^kernel ' "$cache/stamp"))"
    echo "$cache"
    exit 0
fi

exec 9>"$cache/build.lock"
flock 9
if fresh; then
    log "built meanwhile by another run: $cache"
    echo "$cache"
    exit 0
fi
start=$(date +%s)

# --- the kernel package -------------------------------------------------------------------
mkdir -p "$cache/apt/lists/partial" "$cache/apt/cache/archives/partial" "$cache/debs"
apt_private=(
    -o "Dir::Etc::sourcelist=$cache/apt/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$cache/apt/lists"
    -o "Dir::Cache=$cache/apt/cache"
    -o "APT::Get::List-Cleanup=0"
)
# The ABI name (linux-image-6.1.0-N-amd64) linux-image-amd64 depends on.
kernel_package() {
    apt-cache "$@" depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-6\.1\.0-[0-9]+-amd64$/ && !found {print $2; found = 1}'
}
private_state() {
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
        >"$cache/apt/sources.list"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main" \
        >>"$cache/apt/sources.list"
    apt-get "${apt_private[@]}" update </dev/null >&2 || return 1
    apt_opts=("${apt_private[@]}")
    pkg=$(kernel_package "${apt_opts[@]}")
}
download() {
    log "apt-get download $pkg"
    # As root, apt drops to _apt for downloads; a directory it can write avoids the warning.
    local tmp
    tmp=$(mktemp -d)
    chmod 0777 "$tmp"
    if ! (cd "$tmp" && apt-get "${apt_opts[@]}" download "$pkg" </dev/null >&2); then
        rm -rf "$tmp"
        return 1
    fi
    find "$cache/debs" -maxdepth 1 -name '*.deb' -delete
    mv "$tmp"/*.deb "$cache/debs/"
    rm -rf "$tmp"
}
apt_opts=()
pkg=$(kernel_package)
if [ -z "$pkg" ]; then
    log "the machine's apt lists do not know linux-image-amd64 6.1: private apt state"
    private_state || true
fi
[ -n "$pkg" ] || {
    log "no linux-image-6.1.0-*-amd64 found (is deb.debian.org reachable?)"
    exit 1
}
deb=$(find "$cache/debs" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)
if [ -z "$deb" ]; then
    if ! download; then
        # The machine's lists may name a version the mirror no longer has.
        if [ "${#apt_opts[@]}" -eq 0 ]; then
            log "apt-get download $pkg failed with the machine's lists: private apt state"
            private_state && [ -n "$pkg" ] && download || {
                log "apt-get download failed (is deb.debian.org reachable?)"
                exit 1
            }
        else
            log "apt-get download $pkg failed (is deb.debian.org reachable?)"
            exit 1
        fi
    fi
    deb=$(find "$cache/debs" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)
fi
kver=${pkg#linux-image-}

work="$cache/work"
rm -rf "$work"
mkdir -p "$work/pkg" "$work/root"
log "dpkg-deb -x $(basename "$deb")"
dpkg-deb -x "$deb" "$work/pkg"
[ -d "$work/pkg/lib/modules/$kver" ] || {
    log "no /lib/modules/$kver in $deb"
    exit 1
}

# --- vmlinux out of vmlinuz (as the kernel's scripts/extract-vmlinux does) -----------------
vmlinuz="$work/pkg/boot/vmlinuz-$kver"
extract() {
    # $1: magic as a grep -P pattern, $2: decompressor reading stdin
    local offset
    for offset in $(LC_ALL=C grep -obUaP "$1" "$vmlinuz" | cut -d: -f1); do
        tail -c "+$((offset + 1))" "$vmlinuz" | $2 >"$work/vmlinux" 2>/dev/null || true
        if [ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
            return 0
        fi
    done
    return 1
}
if ! extract '\xFD7zXZ\x00' 'xz -dc' && ! extract '\x1f\x8b\x08' 'gzip -dc' &&
    ! extract '\x28\xb5\x2f\xfd' 'zstd -dc'; then
    log "could not find an ELF vmlinux inside $vmlinuz"
    exit 1
fi

# --- the initramfs ------------------------------------------------------------------------
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib64,lib/x86_64-linux-gnu,proc,sys,dev,tmp,run,etc,xfer,mnt}
cp /bin/busybox "$root/bin/busybox"
for applet in $(busybox --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
ln -sf ../bin/busybox "$root/sbin/modprobe"
# The real tools, ahead of busybox's on PATH (weft runs `nft -f -`; tests run `ip`, `wg`).
copy_with_libs() {
    local bin=$1 dest=$2 lib
    install -m 0755 "$bin" "$root$dest"
    for lib in $(ldd "$bin" 2>/dev/null | awk '/=> \// {print $3} /^\s*\/lib/ {print $1}'); do
        [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
}
for tool in nft ip wg; do
    path=$(command -v "$tool") || {
        log "missing $tool on this machine (apt-get install nftables iproute2 wireguard-tools)"
        exit 1
    }
    copy_with_libs "$path" "/usr/sbin/$tool"
done
# What a Rust binary links (the weft binary from the 9p share): libc, libm, libgcc_s, ld.so.
for lib in /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libm.so.6 \
    /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib64/ld-linux-x86-64.so.2; do
    [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
# nft reads its own configuration paths; an empty /etc is enough. Name lookups stay local.
printf 'root:x:0:0:root:/:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
install -m 0755 "$here/init" "$root/init"

# Modules: the VM's devices, what a weft node uses, and everything nftables may load on
# demand; with their dependencies (closure over modules.dep).
moddir="lib/modules/$kver"
busybox depmod -b "$work/pkg" "$kver"
wanted=(
    virtio_pci virtio_net virtio_console 9p 9pnet_virtio
    wireguard tun veth bridge br_netfilter crc32c_generic
)
mapfile -t netfilter < <(cd "$work/pkg/$moddir" && find kernel/net/netfilter kernel/net/ipv4/netfilter \
    kernel/net/ipv6/netfilter kernel/net/bridge/netfilter -name 'nf_*.ko' -o -name 'nft_*.ko' |
    sed 's,.*/,,; s,\.ko$,,')
# name (with - as _) -> path, and path -> its dependencies, from modules.dep
declare -A path_of=() deps_of=() take=()
while IFS= read -r line; do
    path=${line%%:*}
    name=${path##*/}
    name=${name%.ko}
    path_of[${name//-/_}]=$path
    deps_of[$path]=${line#*:}
done <"$work/pkg/$moddir/modules.dep"
resolve() {
    local name=${1//-/_} path dep
    path=${path_of[$name]:-}
    if [ -z "$path" ]; then
        grep -q "/$1.ko$" "$work/pkg/$moddir/modules.builtin" && return 0
        log "module $1 not found in $kver"
        return 1
    fi
    [ -n "${take[$path]:-}" ] && return 0
    take[$path]=1
    for dep in ${deps_of[$path]}; do
        dep=${dep##*/}
        resolve "${dep%.ko}"
    done
}
for m in "${wanted[@]}" "${netfilter[@]}"; do
    resolve "$m"
done
# Soft dependencies (libcrc32c needs crc32c through the crypto API, not a symbol):
# busybox's depmod does not record them, so they are taken here, to a fixed point.
while :; do
    before=${#take[@]}
    for path in "${!take[@]}"; do
        for soft in $(busybox modinfo -F softdep "$work/pkg/$moddir/$path" 2>/dev/null |
            tr ' ' '\n' | grep -v ':$'); do
            [ -n "${path_of[${soft//-/_}]:-}" ] && resolve "$soft"
        done
    done
    [ "${#take[@]}" -eq "$before" ] && break
done
for path in "${!take[@]}"; do
    install -D -m 0644 "$work/pkg/$moddir/$path" "$root/$moddir/$path"
done
cp "$work/pkg/$moddir"/modules.{order,builtin,builtin.modinfo} "$root/$moddir/"
busybox depmod -b "$root" "$kver"
log "${#take[@]} modules"

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null) \
    >"$work/initramfs.cpio"

install -m 0644 "$work/vmlinux" "$cache/vmlinux.tmp"
install -m 0644 "$work/initramfs.cpio" "$cache/initramfs.cpio.tmp"
mv "$cache/vmlinux.tmp" "$cache/vmlinux"
mv "$cache/initramfs.cpio.tmp" "$cache/initramfs.cpio"
end=$(date +%s)
{
    echo "recipe $recipe"
    echo "kernel $kver"
    echo "package $(basename "$deb")"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((end - start)) s"
} >"$cache/stamp"
rm -rf "$work"
log "built in $((end - start)) s: $cache (kernel $kver, vmlinux $(du -h "$cache/vmlinux" | cut -f1), initramfs $(du -h "$cache/initramfs.cpio" | cut -f1))"
echo "$cache"
