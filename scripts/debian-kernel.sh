#!/usr/bin/env bash
# Obtains Debian's packaged Linux 6.12 kernel (amd64 flavour) from Debian's own package archive
# and turns it into an uncompressed ELF `vmlinux` that cxlvm boots through the PVH entry.
#
#   scripts/debian-kernel.sh            # prints the vmlinux path as the last line of stdout
#   path=$(scripts/debian-kernel.sh)    # messages go to stderr, stdout is only the path
#
# Steps: with a private apt configuration (sources, lists and download cache under the cache
# directory, never /etc/apt or /var/lib/apt) it fetches the package lists of bookworm-security and
# bookworm-backports from deb.debian.org, picks the newest
# `linux-image-6.12.<N>+deb12-amd64-unsigned` (both suites carry 6.12; the newest is usually in
# bookworm-security), downloads that .deb with `apt-get download` (apt checks its hash against the
# archive's signed Release file, keys from debian-archive-keyring), unpacks ./boot/vmlinuz-* and
# ./boot/config-* from it with dpkg-deb, finds the zstd frame magic (28 b5 2f fd) in the bzImage,
# decompresses at each offset until the output is an ELF, and checks the result: an x86-64 ELF
# executable, the same size as the bzImage's own record of it, with a PT_NOTE that holds Xen's
# XEN_ELFNOTE_PHYS32_ENTRY (type 18, owner "Xen"), the PVH entry point.
#
# Output, in ${CXLVM_KERNEL_DIR:-<repo>/target/linux}/debian-<package version>/:
#   vmlinux   the decompressed payload (ELF, followed by the kernel's relocation table, exactly
#             what the bzImage's decompressor would produce; loaders use the ELF headers only)
#   bzImage   /boot/vmlinuz-* as Debian ships it
#   config    /boot/config-* (the kernel configuration)
#   VERSION   key=value: package, version, suite, .deb URL and SHA-256, kernel release, sizes,
#             PVH entry
# The .deb (~107 MB) is deleted after extraction. Apt's lists stay in <cache dir>/apt/.
#
# Idempotent: if a valid kernel is already in the cache directory (the newest one there, or the
# pinned one), it prints its path without touching the network. Runs in parallel are serialised
# with flock on <cache dir>/.lock.
#
# Environment:
#   CXLVM_KERNEL_DIR             cache directory (default <repo>/target/linux)
#   CXLVM_DEBIAN_KERNEL_VERSION  pin an exact Debian package version (e.g. 6.12.118-1~deb12u1)
#   CXLVM_KERNEL_REFRESH=1       ask the archive for a newer 6.12 even when one is cached
#   CXLVM_KERNEL_VERBOSE=1       progress messages on stderr even when it is not a terminal
#   CXLVM_DEBIAN_MIRROR          mirror base URL (default http://deb.debian.org; it must serve
#                                /debian and /debian-security)
#
# What it changes on the machine: only the cache directory, except that if `zstd` or `readelf`
# is missing it installs the Debian package (zstd, binutils) with apt-get (system sources), as
# root or with password-less sudo. On failure (no network, package not found, a kernel that is
# not what it should be) it prints one line on stderr and exits with status 2.
set -euo pipefail

me=debian-kernel.sh
# shellcheck source=lib/kernel-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/kernel-common.sh"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kdir=$(realpath -m "${CXLVM_KERNEL_DIR:-$root/target/linux}")
pin=${CXLVM_DEBIAN_KERNEL_VERSION:-}
refresh=${CXLVM_KERNEL_REFRESH:-0}
mirror=${CXLVM_DEBIAN_MIRROR:-http://deb.debian.org}
mirror=${mirror%/}
# Debian's binary package names for the amd64 flavour of 6.12 (not cloud, not rt, not -dbg).
pkg_re='^linux-image-6\.12\.[0-9]+\+deb[0-9.]+-amd64-unsigned$'
t0=$(date +%s.%N)

# --- the cache ---------------------------------------------------------------------------------

# A cache entry is valid when its VERSION is complete and the vmlinux still matches it.
valid_dir() {
    local d=$1 size entry
    [[ -f $d/VERSION && -f $d/vmlinux && -f $d/bzImage ]] || return 1
    size=$(field vmlinux_size "$d/VERSION")
    entry=$(field pvh_entry "$d/VERSION")
    [[ -n $size && -n $entry && $(stat -c %s "$d/vmlinux") == "$size" ]] || return 1
    [[ $(stat -c %s "$d/bzImage") == "$(field bzimage_size "$d/VERSION")" ]] || return 1
    is_x86_64_elf "$d/vmlinux" && [[ $(pvh_entry "$d/vmlinux") == "$entry" ]]
}

# Prints the directory of the kernel to use from the cache (pinned, else the newest valid one).
cached() { newest_cached debian; }

finish() {
    local d=$1 t
    t=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    say "$(field package "$d/VERSION") $(field version "$d/VERSION") ($(field suite "$d/VERSION")):" \
        "vmlinux $(field vmlinux_size "$d/VERSION") bytes, bzImage $(field bzimage_size "$d/VERSION")" \
        "bytes, PVH entry $(field pvh_entry "$d/VERSION"), ${t}s"
    echo "$d/vmlinux"
    exit 0
}

# --- tools -------------------------------------------------------------------------------------

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    die "needs a Debian-based system (apt-get and dpkg-deb not found)"
fi
need=()
command -v zstd >/dev/null || need+=(zstd)
command -v readelf >/dev/null || need+=(binutils)
command -v flock >/dev/null || need+=(util-linux)
need_packages "${need[@]}"

# --- fast path: already cached -----------------------------------------------------------------

if [[ $refresh != 1 ]] && d=$(cached); then
    finish "$d"
fi

mkdir -p "$kdir" || die "cannot create $kdir"
exec 9>"$kdir/.lock"
flock 9
# Another run may have finished while we waited for the lock.
if [[ $refresh != 1 ]] && d=$(cached); then
    finish "$d"
fi

work=$(mktemp -d "$kdir/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$kdir/apt.log
: >"$log"

# --- private apt configuration -----------------------------------------------------------------

debian_apt_setup "$kdir/apt"

progress "fetching package lists (bookworm-security, bookworm-backports) from $mirror"
apt-get "${apt_opts[@]}" --error-on=any update >>"$log" 2>&1 ||
    die "cannot fetch Debian's package lists from $mirror (no network? see $log)"

# Candidate packages and their versions; pick the pinned or the newest.
mapfile -t names < <(apt-cache "${apt_opts[@]}" pkgnames linux-image-6.12. 2>>"$log" | grep -E "$pkg_re" | sort)
((${#names[@]})) || die "no linux-image-6.12.*-amd64-unsigned package in bookworm-security or bookworm-backports"
pkg='' ver=''
while read -r n v; do
    if [[ -n $pin ]]; then
        [[ $v == "$pin" ]] && pkg=$n ver=$v
    elif [[ -z $ver ]] || dpkg --compare-versions "$v" gt "$ver"; then
        pkg=$n ver=$v
    fi
done < <(apt-cache "${apt_opts[@]}" show "${names[@]}" 2>>"$log" |
    awk '/^Package: / { p = $2 } /^Version: / { print p, $2 }')
[[ -n $pkg ]] || die "Debian package version '$pin' of linux-image-6.12 (amd64, unsigned) not found"
out=$kdir/debian-$ver
if valid_dir "$out"; then
    finish "$out"
fi
debian_download "$pkg" "$ver"

# --- extract /boot/vmlinuz-* -------------------------------------------------------------------

mkdir "$work/root"
dpkg-deb --fsys-tarfile "$deb" | tar -xf - -C "$work/root" --wildcards './boot/vmlinuz-*' './boot/config-*' 2>>"$log" ||
    die "$pkg $ver has no /boot/vmlinuz-* (see $log)"
rm -f "$deb"
bzs=("$work"/root/boot/vmlinuz-*)
bz=${bzs[0]}
[[ -f $bz ]] || die "$pkg $ver has no /boot/vmlinuz-*"
krel=${bz##*/vmlinuz-}
mkdir "$work/out"
mv "$bz" "$work/out/bzImage"
mv "$work"/root/boot/config-* "$work/out/config" 2>/dev/null || true
bz=$work/out/bzImage

# --- decompress the zstd payload ---------------------------------------------------------------

u32() { od -An -tu4 --endian=little -j "$2" -N4 "$1" | tr -d ' '; }
u8() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; }
# The setup header says where the payload is and the payload ends with the decompressed size
# (boot protocol 2.08+); used to check the output, the magic scan below finds the frame.
hdr_off='' hdr_len=''
if [[ $(u32 "$bz" $((0x202))) == 1400005704 ]]; then # "HdrS"
    setup_sects=$(u8 "$bz" $((0x1f1)))
    ((setup_sects == 0)) && setup_sects=4
    hdr_off=$(((setup_sects + 1) * 512 + $(u32 "$bz" $((0x248)))))
    hdr_len=$(u32 "$bz" $((0x24c)))
fi
mapfile -t offsets < <(LC_ALL=C grep -obUaF $'(\xb5/\xfd' "$bz" | cut -d: -f1)
((${#offsets[@]})) || die "$krel's bzImage has no zstd frame (is it zstd-compressed?)"
vmlinux=$work/out/vmlinux
found=
for off in "${offsets[@]}"; do
    # zstd stops with an error at the bytes after the frame (the size trailer): expected.
    tail -c +$((off + 1)) "$bz" | zstd -dcq >"$vmlinux" 2>/dev/null || true
    if [[ -s $vmlinux && $(head -c 4 "$vmlinux" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; then
        found=$off
        break
    fi
done
[[ -n $found ]] || die "no zstd frame in $krel's bzImage decompresses to an ELF"
size=$(stat -c %s "$vmlinux")
if [[ -n $hdr_off ]]; then
    ((found == hdr_off)) || die "ELF payload at offset $found, but the setup header says $hdr_off"
    want=$(u32 "$bz" $((hdr_off + hdr_len - 4)))
    ((size == want)) || die "decompressed $size bytes, the bzImage records $want (truncated?)"
fi
is_x86_64_elf "$vmlinux" || die "the payload of $krel is not an x86-64 ELF executable"
entry=$(pvh_entry "$vmlinux") ||
    die "$krel's vmlinux has no XEN_ELFNOTE_PHYS32_ENTRY note in a PT_NOTE segment (no PVH entry)"

cat >"$work/out/VERSION" <<EOF
package=$pkg
version=$ver
suite=$suite
deb_url=$url
deb_size=$deb_size
deb_sha256=${deb_hash#SHA256:}
kernel_release=$krel
bzimage_size=$(stat -c %s "$bz")
zstd_offset=$found
vmlinux_size=$size
vmlinux_sha256=$(sha256sum "$vmlinux" | cut -d' ' -f1)
pvh_entry=$entry
EOF
rm -rf "$out"
mv "$work/out" "$out"
finish "$out"
