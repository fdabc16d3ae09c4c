#!/usr/bin/env bash
# The Linux guest kit: boots a Linux kernel on cxlvm with a small userspace that creates a CXL
# RAM region through Linux's sysfs ABI, waits for it to come online as a NUMA node, measures
# node-0 memory against CXL-node memory, runs an XSAVEC + AVX loop on CXL memory, prints one
# JSON object and powers off. Needs a host whose KVM is hardware-backed (VT-x / AMD-V): on a
# host like the CI machine's (kvm_pvm) Linux userspace cannot run, and the script says so.
#
#   scripts/linux-kit.sh [--kernel VMLINUX] [--cxlvm BIN] [--config TOML] [--timeout SECONDS]
#                        [--cmdline-extra "ARGS"] [--agent-args "ARGS"] [--build-only]
#
#   scripts/linux-kit.sh                      # kernel from scripts/test-kernel.sh, 120 s limit
#   scripts/linux-kit.sh --kernel vmlinux     # any 6.12 kernel with the options in docs/linux.md
#   scripts/linux-kit.sh --build-only         # only build the initramfs; prints its path
#
# Stdout: the agent's JSON object (one line), nothing else; progress and verdicts go to stderr.
# Exit status: 0 the agent reported ok; 1 it reported a failure (the JSON says which step and
# file); 3 the guest did not reach or finish userspace (kernel panic, /init could not run, the
# timeout hit: the reason is printed); 2 a setup error (missing kernel, build failure, ...).
#
# Steps:
# 1. builds the agent (crates/guest-agent) as a static x86-64 ELF: glibc's static libc
#    (`-C target-feature=+crt-static -C relocation-model=static`, libc6-dev's libc.a), stripped,
#    checked with readelf (no dynamic section, no interpreter);
# 2. builds cxlvm (release) unless --cxlvm is given;
# 3. fetches Debian's `busybox-static` with `apt-get download` into the cache directory (the
#    system's sources; nothing is installed) and extracts /bin/busybox from it;
# 4. packs a newc cpio: /bin/busybox and its sh/mount/poweroff/... links, /sbin/cxlvm-agent,
#    /dev, /proc, /sys, /run, /dev/console (c 5 1: written as a cpio entry, no root needed) and
#    /init, a busybox sh script that mounts devtmpfs/proc/sysfs, runs the agent, prints its JSON
#    between marker lines and powers off (the kernel starts it as `/bin/sh /init`, so the kernel
#    needs no CONFIG_BINFMT_SCRIPT);
# 5. runs `cxlvm run --kernel K --initrd CPIO --memory 2G --vcpus 2 --config scripts/linux-kit.toml
#    --cmdline "console=ttyS0 ... rdinit=/bin/sh /init" --timeout N --serial-file <run>/console.log` and
#    takes the JSON from between the markers, or explains from the kernel log why there is none.
#
# The kernel: --kernel, else the first of the last two lines scripts/test-kernel.sh prints
# (the minimal CXL test kernel). A kernel for the kit also needs userspace support that
# tinyconfig leaves out; docs/linux.md ("Linux guest kit") lists the options.
#
# Files, in ${CXLVM_KIT_DIR:-<repo>/target/linux-kit}/: busybox/ (the .deb and the binary),
# initramfs/ (the staged tree), initramfs.cpio, run/console.log (the guest's console),
# run/cxlvm.log (cxlvm's stderr), run/agent.json (the JSON).
#
# Environment: CXLVM_KIT_DIR (cache and output directory), CARGO_TARGET_DIR (cargo's).
set -euo pipefail

me=linux-kit.sh
die() {
    echo "$me: $*" >&2
    exit 2
}
say() { echo "$me: $*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kit=${CXLVM_KIT_DIR:-$repo/target/linux-kit}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
kernel=
cxlvm=
config=$repo/scripts/linux-kit.toml
timeout=
cmdline_extra=
agent_args=
build_only=0

while (($#)); do
    case $1 in
    --kernel) kernel=${2:?--kernel needs a path}; shift 2 ;;
    --cxlvm) cxlvm=${2:?--cxlvm needs a path}; shift 2 ;;
    --config) config=${2:?--config needs a path}; shift 2 ;;
    --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
    --cmdline-extra) cmdline_extra=${2?}; shift 2 ;;
    --agent-args) agent_args=${2?}; shift 2 ;;
    --build-only) build_only=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ -z $timeout || $timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout: '$timeout' is not a number of seconds"
[[ -f $config ]] || die "no topology file $config"
[[ $agent_args =~ ^[-a-zA-Z0-9_.=/\ ]*$ ]] || die "--agent-args: only letters, digits, spaces and -_.=/ please"

pvm=0
[[ -d /sys/module/kvm_pvm ]] && pvm=1

mkdir -p "$kit/busybox" "$kit/run"

# --- 1. the static agent -----------------------------------------------------------------------
[[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] ||
    die "glibc's static libc.a is missing: install libc6-dev (apt-get install libc6-dev)"
say "building cxlvm-agent (static)"
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static -C strip=symbols" \
    cargo build --quiet --release -p cxlvm-guest-agent --target x86_64-unknown-linux-gnu \
    --manifest-path "$repo/Cargo.toml" >&2 || die "cargo build of cxlvm-guest-agent failed"
agent=$target_dir/x86_64-unknown-linux-gnu/release/cxlvm-agent
[[ -x $agent ]] || die "no agent binary at $agent"
hdr=$(readelf -hlW "$agent" 2>/dev/null) || die "readelf cannot read $agent"
grep -q 'Machine: *Advanced Micro Devices X86-64' <<<"$hdr" || die "$agent is not an x86-64 ELF"
grep -q 'Type: *EXEC' <<<"$hdr" || die "$agent is not a static (ET_EXEC) executable"
! grep -q 'INTERP' <<<"$hdr" || die "$agent has a program interpreter: not static"
dyn=$(readelf -d "$agent" 2>&1 || true)
grep -q 'no dynamic section' <<<"$dyn" || die "$agent has a dynamic section: not static"

# --- 2. cxlvm ----------------------------------------------------------------------------------
if [[ -z $cxlvm && $build_only == 0 ]]; then
    say "building cxlvm (release)"
    cargo build --quiet --release -p cxlvm --manifest-path "$repo/Cargo.toml" >&2 ||
        die "cargo build of cxlvm failed"
    cxlvm=$target_dir/release/cxlvm
fi

# --- 3. busybox from Debian's busybox-static ---------------------------------------------------
bb=$kit/busybox/busybox
if [[ ! -x $bb ]]; then
    say "fetching Debian's busybox-static (apt-get download)"
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
        die "needs apt-get and dpkg-deb (a Debian host) to fetch busybox-static"
    rm -f "$kit"/busybox/*.deb
    (cd "$kit/busybox" && apt-get download busybox-static) >"$kit/busybox/apt.log" 2>&1 ||
        die "apt-get download busybox-static failed (see $kit/busybox/apt.log; try apt-get update)"
    deb=$(ls "$kit"/busybox/busybox-static_*.deb 2>/dev/null | head -n1)
    [[ -n $deb ]] || die "apt-get download left no busybox-static .deb in $kit/busybox"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -O ./bin/busybox >"$bb.tmp" ||
        die "cannot extract ./bin/busybox from $deb"
    chmod 755 "$bb.tmp"
    mv "$bb.tmp" "$bb"
fi
bbhdr=$(readelf -lW "$bb" 2>/dev/null) || die "$bb is not an ELF"
! grep -q INTERP <<<"$bbhdr" || die "$bb is not static"
bbhelp=$("$bb" cpio --help 2>&1 || true)
grep -q 'Create' <<<"$bbhelp" || die "$bb's cpio cannot create archives"

# --- 4. the initramfs --------------------------------------------------------------------------
stage=$kit/initramfs
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,run}
cp "$bb" "$stage/bin/busybox"
for a in sh mount umount poweroff cat echo sleep mkdir ls dmesg; do
    ln -s busybox "$stage/bin/$a"
done
cp "$agent" "$stage/sbin/cxlvm-agent"
cat >"$stage/init" <<EOF
#!/bin/sh
# cxlvm Linux guest kit: mount, run cxlvm-agent, print its JSON between markers, power off.
export PATH=/sbin:/bin
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "cxlvm-kit: userspace reached"
/sbin/cxlvm-agent --no-poweroff $agent_args >/run/agent.json
rc=\$?
# Kernel messages must not split the JSON line on the console.
dmesg -n 1 2>/dev/null
echo "===== cxlvm-agent JSON begin ====="
cat /run/agent.json
echo "===== cxlvm-agent JSON end (status \$rc) ====="
poweroff -f
sleep 1000000
EOF
chmod 755 "$stage/init"

# One newc entry without data (a directory or a device node): "070701", 13 fields of 8 hex
# digits (ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize
# check), the name with its NUL, padded to 4 bytes.
newc_entry() { # name mode nlink rdevmajor rdevminor ino
    local name=$1 n
    n=$((${#name} + 1))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
        "$6" "$2" 0 0 "$3" 0 0 0 0 "$4" "$5" "$n" 0 "$name"
    head -c $(((4 - (110 + n) % 4) % 4)) /dev/zero
}
cpio=$kit/initramfs.cpio
# /dev/console in an archive of its own, first (the kernel reads concatenated newc archives), so
# that the kernel can open the console before /init runs; then the tree from busybox cpio.
{
    newc_entry dev $((8#040755)) 2 0 0 1
    newc_entry dev/console $((8#020600)) 1 5 1 2
    newc_entry TRAILER!!! 0 1 0 0 0
} >"$cpio.head" || die "cannot write the initramfs"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | "$bb" cpio -o -H newc -R 0:0 2>/dev/null) \
    >"$cpio.body" || die "busybox cpio failed"
listing=$("$bb" cpio -t <"$cpio.head" 2>/dev/null; "$bb" cpio -t <"$cpio.body" 2>/dev/null) || true
for f in dev/console init bin/sh sbin/cxlvm-agent; do
    grep -qx "$f" <<<"$listing" || die "the initramfs lacks $f"
done
cat "$cpio.head" "$cpio.body" >"$cpio.tmp"
rm -f "$cpio.head" "$cpio.body"
[[ $(head -c 6 "$cpio.tmp") == 070701 ]] || die "the initramfs is not a newc archive"
mv "$cpio.tmp" "$cpio"
say "initramfs: $cpio ($(stat -c %s "$cpio") bytes)"
if [[ $build_only == 1 ]]; then
    echo "$cpio"
    exit 0
fi

# --- 5. the run --------------------------------------------------------------------------------
if [[ -z $kernel ]]; then
    say "no --kernel: asking scripts/test-kernel.sh for the minimal CXL kernel"
    out=$("$repo/scripts/test-kernel.sh") || die "scripts/test-kernel.sh failed"
    kernel=$(tail -n 2 <<<"$out" | head -n 1)
fi
[[ -f $kernel ]] || die "no kernel at '$kernel'"
[[ -x $cxlvm ]] || die "no cxlvm binary at '$cxlvm'"

# `rdinit=/bin/sh /init`: the kernel runs busybox's sh as PID 1 and hands it the unknown word
# "/init" as its argument, so /init runs even on a kernel without CONFIG_BINFMT_SCRIPT.
cmdline="console=ttyS0 earlyprintk=serial,ttyS0,115200 rdinit=/bin/sh /init loglevel=5 memhp_default_state=online panic=-1"
if [[ $pvm == 1 ]]; then
    say "this host's KVM is kvm_pvm: guest ring 0 runs through KVM's instruction emulator and a"
    say "SYSCALL from guest userspace never reaches the guest kernel, so the kit CANNOT reach"
    say "userspace here (docs/linux.md). Booting anyway to show how far it gets; use a VT-x/AMD-V host."
    # What the kernel needs to boot at all here (docs/linux.md, "On this development host").
    cmdline+=" clearcpuid=xsave,cx16,bmi1,bmi2,smap,fsgsbase,pcid,invpcid,rdpid,popcnt,erms,fsrm,rdseed,clflushopt,clwb,ssse3,sse4_1,sse4_2 nopcid nofsgsbase mitigations=off init_on_alloc=0 cryptomgr.notests=1 nowatchdog"
    timeout=${timeout:-600}
fi
timeout=${timeout:-120}
[[ -n $cmdline_extra ]] && cmdline+=" $cmdline_extra"

run=$kit/run
rm -f "$run"/console.log "$run"/cxlvm.log "$run"/agent.json
say "running cxlvm (up to $timeout s; console in $run/console.log)"
set +e
"$cxlvm" run --kernel "$kernel" --initrd "$cpio" --memory 2G --vcpus 2 --config "$config" \
    --cmdline "$cmdline" --timeout "$timeout" --serial-file "$run/console.log" \
    </dev/null 2>"$run/cxlvm.log"
status=$?
set -e
log=$(tr -d '\r' <"$run/console.log" 2>/dev/null || true)

json=$(sed -n '/^===== cxlvm-agent JSON begin =====$/,/^===== cxlvm-agent JSON end/p' <<<"$log" |
    grep '^{' | tail -n 1 || true)
end=$(grep -o '^===== cxlvm-agent JSON end (status [0-9]*) =====$' <<<"$log" | tail -n 1 || true)
if [[ -n $json ]]; then
    printf '%s\n' "$json" >"$run/agent.json"
    printf '%s\n' "$json"
    agent_status=$(sed -n 's/.*(status \([0-9]*\)).*/\1/p' <<<"$end")
    [[ $status == 0 ]] || say "note: cxlvm ended with status $status after the agent finished (see $run/cxlvm.log)"
    if [[ ${agent_status:-1} == 0 ]]; then
        say "agent ok: JSON in $run/agent.json"
        exit 0
    fi
    say "the agent reported a failure (status ${agent_status:-unknown}): see the JSON's \"error\" and \"notes\""
    exit 1
fi

# No JSON: say why, from the kernel's log (every finding, most telling first).
why=()
# PID 1 faulting in user mode at a kernel-text address: its SYSCALL jumped to LSTAR
# (entry_SYSCALL_64) but stayed in ring 3, the kvm_pvm failure (docs/linux.md).
if grep -Eq 'entry_SYSCALL_64|\[1\]: segfault at ffffffff[0-9a-f]+ ip ffffffff' <<<"$log"; then
    w="userspace's first system call faulted at the kernel's SYSCALL entry (a ring-3 fault at"
    w+=" entry_SYSCALL_64): guest userspace cannot make system calls under this host's KVM"
    [[ $pvm == 1 ]] && w+=" (kvm_pvm; expected here, use a VT-x/AMD-V host)"
    why+=("$w")
fi
if grep -q 'Failed to execute /bin/sh' <<<"$log"; then
    why+=("the kernel could not run /bin/sh (busybox) as init: $(grep -m1 'Failed to execute /bin/sh' <<<"$log")")
fi
if grep -q 'Kernel panic' <<<"$log"; then
    why+=("the kernel panicked: $(grep -m1 'Kernel panic' <<<"$log")")
fi
if ((${#why[@]} == 0)); then
    if grep -q 'cxlvm-kit: userspace reached' <<<"$log"; then
        why+=("userspace started but the agent printed no JSON")
    elif ((status == 124)); then
        w="the $timeout s timeout hit before userspace printed anything"
        grep -q 'Run /bin/sh as init process' <<<"$log" && w+=" (the kernel had started /bin/sh /init)"
        [[ $pvm == 1 ]] && w+="; under kvm_pvm's emulator a kernel needs minutes, and userspace cannot run here anyway"
        why+=("$w")
    else
        why+=("cxlvm ended with status $status and no JSON: $(tail -n 1 "$run/cxlvm.log" 2>/dev/null)")
    fi
fi
for w in "${why[@]}"; do
    say "NO RESULT: $w"
done
say "console: $run/console.log; cxlvm: $run/cxlvm.log"
exit 3
