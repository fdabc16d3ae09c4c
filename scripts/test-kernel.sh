#!/usr/bin/env bash
# Builds cxlvm's minimal test kernel: Linux 6.12 from Debian's `linux-source-6.12` package,
# configured as `make tinyconfig` plus scripts/test-kernel.config (everything built in, no
# modules; boots to /init in minutes under this host's instruction emulator), and an initramfs
# whose /init spins forever without a single system call.
#
#   scripts/test-kernel.sh                   # the last two lines of stdout: vmlinux, initramfs
#   out=$(scripts/test-kernel.sh)            # messages go to stderr, stdout is only the paths
#   vmlinux=$(sed -n 1p <<<"$out") initrd=$(sed -n 2p <<<"$out")
#
# Steps: with the same private apt configuration as scripts/debian-kernel.sh (sources, lists and
# download cache under the cache directory, never /etc/apt or /var/lib/apt) it fetches the package
# lists of bookworm-security and bookworm-backports from deb.debian.org, picks the newest
# `linux-source-6.12` (or the pinned version), downloads that .deb with `apt-get download` (apt
# checks its hash against the archive's signed Release file), streams the tarball
# /usr/src/linux-source-6.12.tar.xz out of it into a work directory and deletes the .deb. Then
# `make ARCH=x86_64 tinyconfig`, `scripts/kconfig/merge_config.sh -m` with the fragment,
# `make olddefconfig`, and a check that every option the fragment sets `=y` is `=y` in the final
# .config and every option it marks `is not set` is not set (Kconfig silently drops an option
# whose dependencies are off). `make -j$(nproc) vmlinux` (no modules), then the vmlinux must be
# an x86-64 ELF executable with XEN_ELFNOTE_PHYS32_ENTRY in a PT_NOTE segment (the PVH entry).
# The initramfs: `/init` is assembled from `_start: jmp _start` (`as`, `ld -static -nostdlib`,
# checked to be exactly those two bytes), packed in the newc cpio format by the kernel's own
# usr/gen_init_cpio together with /dev (0755) and the console node /dev/console (c 5 1); the
# list-driven packer needs no root for the device node and gives the same bytes each time.
#
# Output, in ${CXLVM_KERNEL_DIR:-<repo>/target/linux}/test-<package version>-<hash>/, where
# <hash> is the first 12 hex digits of the SHA-256 of the fragment followed by this script's
# build recipe version (a new fragment or recipe gives a new directory):
#   vmlinux         the kernel (ELF, PVH entry)
#   initramfs.cpio  newc archive: /dev, /dev/console, /init
#   config          the final .config
#   VERSION         key=value: package, version, suite, .deb URL and SHA-256, fragment hash,
#                   recipe, kernel release, compiler, build time and duration, sizes, SHA-256s,
#                   PVH entry
#   source/         the built source tree, only with CXLVM_KEEP_SOURCE=1 (~1.6 GB)
# The extracted source tree is deleted after the build unless CXLVM_KEEP_SOURCE=1; the .deb
# (~150 MB) right after extraction. apt's lists stay in <cache dir>/apt/ (shared with
# debian-kernel.sh); the last build's apt and make output is <cache dir>/test-kernel.log and its
# final .config <cache dir>/test-kernel.last-config.
#
# Idempotent: if a valid kernel for this fragment is already in the cache directory (the newest
# one there, or the pinned one), it prints its paths without touching the network. Runs in
# parallel are serialised with flock on <cache dir>/.lock (the lock debian-kernel.sh takes too).
# It needs about 3 GB free there while it builds; a build takes ~5 min on 2 cores.
#
# Environment:
#   CXLVM_KERNEL_DIR             cache directory (default <repo>/target/linux)
#   CXLVM_TEST_KERNEL_VERSION    pin an exact Debian package version of linux-source-6.12
#                                (default: CXLVM_DEBIAN_KERNEL_VERSION, else the newest)
#   CXLVM_KERNEL_REFRESH=1       ask the archive for a newer 6.12 even when one is cached
#   CXLVM_KEEP_SOURCE=1          keep the source and build tree (in the output, or on failure
#                                in <cache dir>/test-kernel.failed-source/)
#   CXLVM_KERNEL_JOBS            make's -j (default: nproc)
#   CXLVM_KERNEL_VERBOSE=1       progress messages on stderr even when it is not a terminal
#   CXLVM_DEBIAN_MIRROR          mirror base URL (default http://deb.debian.org; it must serve
#                                /debian and /debian-security)
#
# What it changes on the machine: the cache directory, and the build tools it lacks: the Debian
# packages gcc, make, libc6-dev, binutils, flex, bison, bc, libelf-dev, xz-utils, util-linux
# installed with apt-get (system sources) as root or with password-less sudo. On failure (no
# network, package not found, an option Kconfig dropped, a build error, a kernel without PVH
# entry) it prints one line on stderr and exits with status 2.
set -euo pipefail

me=test-kernel.sh
# shellcheck source=lib/kernel-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/kernel-common.sh"

# Bump when the way the kernel or the initramfs is built changes (not the fragment: it is
# hashed itself), so that cached kernels built the old way are not reused.
recipe=1

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kdir=$(realpath -m "${CXLVM_KERNEL_DIR:-$root/target/linux}")
fragment=$root/scripts/test-kernel.config
pin=${CXLVM_TEST_KERNEL_VERSION:-${CXLVM_DEBIAN_KERNEL_VERSION:-}}
refresh=${CXLVM_KERNEL_REFRESH:-0}
keep=${CXLVM_KEEP_SOURCE:-0}
jobs=${CXLVM_KERNEL_JOBS:-$(nproc)}
mirror=${CXLVM_DEBIAN_MIRROR:-http://deb.debian.org}
mirror=${mirror%/}
pkg=linux-source-6.12
t0=$(date +%s.%N)

[[ -r $fragment ]] || die "$fragment is missing"
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "CXLVM_KERNEL_JOBS must be a positive number, not '$jobs'"
hash=$({ cat "$fragment" && echo "recipe=$recipe"; } | sha256sum | cut -c1-12)

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }'; }

# --- the cache ---------------------------------------------------------------------------------

# A newc cpio archive starts with the magic "070701".
is_newc() { [[ $(head -c 6 "$1" 2>/dev/null) == 070701 ]]; }

# A cache entry is valid when its VERSION is complete and the files still match it.
valid_dir() {
    local d=$1 entry
    [[ -f $d/VERSION && -f $d/vmlinux && -f $d/initramfs.cpio && -f $d/config ]] || return 1
    [[ $(field fragment_hash "$d/VERSION") == "$hash" ]] || return 1
    [[ $(stat -c %s "$d/vmlinux") == "$(field vmlinux_size "$d/VERSION")" ]] || return 1
    [[ $(stat -c %s "$d/initramfs.cpio") == "$(field initramfs_size "$d/VERSION")" ]] || return 1
    entry=$(field pvh_entry "$d/VERSION")
    [[ -n $entry ]] && is_newc "$d/initramfs.cpio" && is_x86_64_elf "$d/vmlinux" &&
        [[ $(pvh_entry "$d/vmlinux") == "$entry" ]]
}

# Prints the directory of the kernel to use from the cache (pinned, else the newest valid one).
cached() { newest_cached test "-$hash"; }

finish() {
    local d=$1 t
    t=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    say "$pkg $(field version "$d/VERSION") (Linux $(field kernel_release "$d/VERSION")," \
        "fragment $(field fragment_hash "$d/VERSION")): vmlinux $(field vmlinux_size "$d/VERSION") bytes," \
        "PVH entry $(field pvh_entry "$d/VERSION"), initramfs $(field initramfs_size "$d/VERSION") bytes, ${t}s"
    echo "$d/vmlinux"
    echo "$d/initramfs.cpio"
    exit 0
}

# --- tools -------------------------------------------------------------------------------------

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    die "needs a Debian-based system (apt-get and dpkg-deb not found)"
fi
need=()
command -v readelf >/dev/null || need+=(binutils)
command -v flock >/dev/null || need+=(util-linux)
# Only what a cache lookup needs above; the build tools below.
need_packages "${need[@]}"

# --- fast path: already cached -----------------------------------------------------------------

if [[ $refresh != 1 ]] && d=$(cached); then
    finish "$d"
fi

need=()
for t in gcc:gcc make:make as:binutils ld:binutils objcopy:binutils flex:flex bison:bison bc:bc \
    xz:xz-utils; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
[[ -e /usr/include/gelf.h ]] || need+=(libelf-dev)
[[ -e /usr/include/stdio.h ]] || need+=(libc6-dev)
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u | sed '/^$/d')
need_packages "${need[@]}"

mkdir -p "$kdir" || die "cannot create $kdir"
exec 9>"$kdir/.lock"
flock 9
# Another run may have finished while we waited for the lock.
if [[ $refresh != 1 ]] && d=$(cached); then
    finish "$d"
fi

free_kb=$(df -Pk "$kdir" | awk 'NR == 2 { print $4 }')
((free_kb >= 3000000)) || die "needs ~3 GB free in $kdir to build (df: $((free_kb / 1024)) MiB)"

work=$(mktemp -d "$kdir/.work.XXXXXX")
cleanup() {
    if [[ $keep == 1 && -n ${src:-} && -d ${src:-} ]]; then
        rm -rf "$kdir/test-kernel.failed-source"
        mv "$src" "$kdir/test-kernel.failed-source" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
log=$kdir/test-kernel.log
: >"$log"

# --- the source package ------------------------------------------------------------------------

debian_apt_setup "$kdir/apt"
progress "fetching package lists (bookworm-security, bookworm-backports) from $mirror"
apt-get "${apt_opts[@]}" --error-on=any update >>"$log" 2>&1 ||
    die "cannot fetch Debian's package lists from $mirror (no network? see $log)"

ver=''
while read -r v; do
    if [[ -n $pin ]]; then
        [[ $v == "$pin" ]] && ver=$v
    elif [[ -z $ver ]] || dpkg --compare-versions "$v" gt "$ver"; then
        ver=$v
    fi
done < <(apt-cache "${apt_opts[@]}" show "$pkg" 2>>"$log" | awk '/^Version: / { print $2 }')
if [[ -z $ver ]]; then
    [[ -n $pin ]] && die "Debian package version '$pin' of $pkg not found"
    die "no $pkg package in bookworm-security or bookworm-backports"
fi
out=$kdir/test-$ver-$hash
if valid_dir "$out"; then
    finish "$out"
fi
debian_download "$pkg" "$ver"

progress "extracting the source"
t=$(date +%s.%N)
mkdir "$work/src"
tarball=./usr/src/linux-source-6.12.tar.xz
dpkg-deb --fsys-tarfile "$deb" | tar -xOf - "$tarball" | tar -xJf - -C "$work/src" 2>>"$log" ||
    die "cannot extract $tarball from $pkg $ver (see $log)"
rm -f "$deb"
srcs=("$work"/src/*/Makefile)
src=${srcs[0]%/Makefile}
[[ -f $src/Makefile && -f $src/scripts/kconfig/merge_config.sh ]] ||
    die "$pkg $ver's tarball holds no kernel source tree"
progress "extracted in $(elapsed "$t") s"

# --- configuration -----------------------------------------------------------------------------

kmake=(make -C "$src" ARCH=x86_64 KBUILD_BUILD_USER=cxlvm KBUILD_BUILD_HOST=test-kernel)
{ "${kmake[@]}" tinyconfig &&
    (cd "$src" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$fragment") &&
    "${kmake[@]}" olddefconfig; } >>"$log" 2>&1 || die "make tinyconfig/olddefconfig failed (see $log)"
cp "$src/.config" "$kdir/test-kernel.last-config"

dropped=() leftset=()
while read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=y$ ]]; then
        grep -qx "${BASH_REMATCH[1]}=y" "$src/.config" || dropped+=("${BASH_REMATCH[1]#CONFIG_}")
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        ! grep -q "^${BASH_REMATCH[1]}=" "$src/.config" || leftset+=("${BASH_REMATCH[1]#CONFIG_}")
    elif [[ $line =~ ^CONFIG_ ]]; then
        die "$fragment: only '=y' and 'is not set' lines are supported: '$line'"
    fi
done <"$fragment"
if ((${#dropped[@]} + ${#leftset[@]})); then
    msg=
    ((${#dropped[@]})) && msg="not =y after olddefconfig (missing dependencies?): ${dropped[*]}"
    ((${#leftset[@]})) && msg="${msg:+$msg; }still set: ${leftset[*]}"
    die "$msg (see $kdir/test-kernel.last-config)"
fi

# --- build -------------------------------------------------------------------------------------

krel=$("${kmake[@]}" -s kernelrelease 2>>"$log") || die "make kernelrelease failed (see $log)"
progress "building Linux $krel vmlinux with $jobs jobs (log: $log)"
t=$(date +%s.%N)
build_start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
"${kmake[@]}" -j"$jobs" vmlinux >>"$log" 2>&1 || die "make vmlinux failed (see $log)"
build_s=$(elapsed "$t")
progress "built in $build_s s"
mkdir "$work/out"
vmlinux=$work/out/vmlinux
cp "$src/vmlinux" "$vmlinux"
cp "$src/.config" "$work/out/config"
is_x86_64_elf "$vmlinux" || die "the built vmlinux is not an x86-64 ELF executable"
entry=$(pvh_entry "$vmlinux") ||
    die "the built vmlinux has no XEN_ELFNOTE_PHYS32_ENTRY note in a PT_NOTE segment (no PVH entry)"

# --- initramfs ---------------------------------------------------------------------------------

ird=$work/initramfs
mkdir "$ird"
# /init: one instruction, a jump to itself. No system call ever: on this host's KVM a system
# call from ring 3 never reaches the guest kernel (docs/linux.md).
printf '\t.text\n\t.globl _start\n_start:\n\tjmp _start\n' >"$ird/init.S"
{ as --64 -o "$ird/init.o" "$ird/init.S" && ld -static -nostdlib -s -e _start -o "$ird/init" "$ird/init.o" &&
    objcopy -O binary -j .text "$ird/init" "$ird/init.text"; } >>"$log" 2>&1 ||
    die "cannot assemble and link /init (see $log)"
is_x86_64_elf "$ird/init" || die "/init is not an x86-64 ELF executable"
[[ $(od -An -tx1 "$ird/init.text" | tr -d ' \n') == ebfe ]] || die "/init's code is not 'jmp .' (eb fe)"
gcc -O2 -o "$ird/gen_init_cpio" "$src/usr/gen_init_cpio.c" >>"$log" 2>&1 ||
    die "cannot build usr/gen_init_cpio (see $log)"
cat >"$ird/list" <<EOF
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
file /init $ird/init 0755 0 0
EOF
"$ird/gen_init_cpio" -t 0 "$ird/list" >"$work/out/initramfs.cpio" 2>>"$log" ||
    die "usr/gen_init_cpio failed (see $log)"
is_newc "$work/out/initramfs.cpio" || die "the initramfs is not a newc cpio archive"

cat >"$work/out/VERSION" <<EOF
package=$pkg
version=$ver
suite=$suite
deb_url=$url
deb_size=$deb_size
deb_sha256=${deb_hash#SHA256:}
fragment_hash=$hash
fragment_sha256=$(sha256sum "$fragment" | cut -d' ' -f1)
recipe=$recipe
kernel_release=$krel
compiler=$(gcc --version | head -n1)
build_started=$build_start
build_seconds=$build_s
jobs=$jobs
vmlinux_size=$(stat -c %s "$vmlinux")
vmlinux_sha256=$(sha256sum "$vmlinux" | cut -d' ' -f1)
pvh_entry=$entry
initramfs_size=$(stat -c %s "$work/out/initramfs.cpio")
initramfs_sha256=$(sha256sum "$work/out/initramfs.cpio" | cut -d' ' -f1)
EOF
if [[ $keep == 1 ]]; then
    mv "$src" "$work/out/source"
fi
rm -rf "$out"
mv "$work/out" "$out"
finish "$out"
