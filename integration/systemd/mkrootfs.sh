#!/bin/bash
# Build and cache the Debian trixie root filesystem that the systemd suite boots with
# systemd-nspawn, then extract it into the read-only lower dir the containers overlay.
#
# Usage: integration/systemd/mkrootfs.sh
#   Idempotent. Prints the path of the extracted root filesystem as the last line of stdout;
#   progress goes to stderr. Run it once ahead of `cargo test` to prime the cache; the test
#   harness runs it itself once per test process (it is cheap when everything is cached).
#
# Host packages it needs (Debian 12): debootstrap zstd (and, to boot the result,
# systemd-container). Also coreutils, tar, util-linux (flock), which every Debian has.
# It must run as root (debootstrap, and tar keeping owners). It installs nothing on the host.
#
# Environment:
#   CONJURE_ROOTFS_CACHE   cache dir (default /var/cache/conjure-test)
#   CONJURE_DEBIAN_MIRROR  Debian mirror (default: the one apt is configured with, read from
#                          /etc/apt/sources.list.d/ and /etc/apt/sources.list)
#
# Files in the cache dir:
#   trixie-rootfs.tar.zst         the packed root filesystem (about 52 MB)
#   trixie-rootfs.tar.zst.recipe  the recipe it was built with; a different recipe rebuilds it
#   trixie-rootfs/                the extracted tree, reused while the tarball is unchanged
# Every one of them is written under a temporary name and renamed into place, so an interrupted
# run never leaves a half-built cache; a lock serializes concurrent runs.
set -euo pipefail

suite=trixie
variant=minbase
# procps and friends are deliberately absent: tests inspect processes through /proc and
# conjure's own binaries. Add a package here only if a test needs it; the recipe change
# rebuilds the cache automatically.
include=systemd,systemd-sysv,dbus
recipe="suite=$suite variant=$variant include=$include strip=v1"

cache=${CONJURE_ROOTFS_CACHE:-/var/cache/conjure-test}
tarball=$cache/$suite-rootfs.tar.zst
lower=$cache/$suite-rootfs
stamp_name=.conjure-rootfs-stamp

log() { printf 'mkrootfs: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"
for tool in debootstrap zstd tar flock; do
    command -v "$tool" >/dev/null || die "'$tool' not found (apt-get install debootstrap zstd)"
done

# The first plain Debian archive URI apt knows (not -security, not a third-party repository).
find_mirror() {
    local files=() f line
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
        [[ -f $f ]] && files+=("$f")
    done
    for f in "${files[@]}"; do
        while read -r line; do
            # deb822 "URIs: http://…/debian" and one-line "deb [opts] http://…/debian suite …"
            for word in $line; do
                if [[ $word =~ ^https?://[^[:space:]]+/debian/?$ ]]; then
                    printf '%s\n' "${word%/}"
                    return 0
                fi
            done
        done < <(grep -hE '^[[:space:]]*(URIs:|deb[[:space:]])' "$f" || true)
    done
    printf '%s\n' http://deb.debian.org/debian
}

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock -w 1800 9 || die "timed out waiting for the lock on $cache/.lock"

# Leftovers of an interrupted earlier run (we hold the lock, so nobody else is writing them).
rm -rf "$cache"/.build.* "$cache"/.extract.* "$cache"/.old.* "$tarball".tmp.*

build() {
    local mirror root start
    mirror=${CONJURE_DEBIAN_MIRROR:-$(find_mirror)}
    root=$(mktemp -d "$cache/.build.XXXXXX")
    start=$SECONDS
    log "building $suite rootfs from $mirror (about 35 s)"
    if ! debootstrap --variant="$variant" --include="$include" "$suite" "$root" "$mirror" \
        >"$root.log" 2>&1; then
        tail -n 30 "$root.log" >&2 || true
        rm -rf "$root" "$root.log"
        die "debootstrap failed (log above)"
    fi
    rm -f "$root.log"
    # Size, not correctness: package lists, the .deb cache and logs are not needed to boot.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/apt/archives/*.deb "$root"/var/log/journal/* \
        "$root"/var/cache/debconf/*-old "$root"/var/log/*.log
    printf '%s\n' "$recipe" >"$root/etc/conjure-rootfs-recipe"
    log "packing $tarball"
    tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$root" -cf - . \
        | zstd -q -T0 -6 -o "$tarball.tmp.$$"
    rm -rf "$root"
    # Tarball first, recipe second: an interruption in between leaves a stale recipe, which
    # only causes a rebuild.
    mv -f "$tarball.tmp.$$" "$tarball"
    printf '%s\n' "$recipe" >"$tarball.recipe.tmp.$$"
    mv -f "$tarball.recipe.tmp.$$" "$tarball.recipe"
    log "built in $((SECONDS - start)) s ($(du -h "$tarball" | cut -f1))"
}

if [[ ! -f $tarball || ! -f $tarball.recipe || $(cat "$tarball.recipe") != "$recipe" ]]; then
    build
fi

# The identity of the tarball file: a rebuild renames a new file into place, which changes it.
want_stamp=$(stat -c '%s %Y %i' "$tarball")
if [[ ! -f $lower/$stamp_name || $(cat "$lower/$stamp_name") != "$want_stamp" ]]; then
    start_ns=$(date +%s%N)
    tmp=$(mktemp -d "$cache/.extract.XXXXXX")
    zstd -q -dc "$tarball" \
        | tar --numeric-owner --xattrs --xattrs-include='*' --acls -xpf - -C "$tmp"
    # mktemp made it 0700; the root directory of a system must be 0755.
    chmod 0755 "$tmp"
    printf '%s\n' "$want_stamp" >"$tmp/$stamp_name"
    if [[ -e $lower ]]; then
        # Containers of another test process may still use the old tree as their lower dir;
        # this only happens when the tarball itself was rebuilt.
        old=$(mktemp -d "$cache/.old.XXXXXX")
        mv "$lower" "$old/"
        rm -rf "$old"
    fi
    mv "$tmp" "$lower"
    log "extracted in $(( ($(date +%s%N) - start_ns) / 1000000 )) ms"
fi

printf '%s\n' "$lower"
