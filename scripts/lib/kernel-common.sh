# Shell helpers shared by scripts/debian-kernel.sh and scripts/test-kernel.sh. Sourced, not run:
# the caller sets `me` (its name, for messages) and `set -euo pipefail` before sourcing.
#
#   die MSG...            one line on stderr, exit status 2
#   say MSG...            one line on stderr
#   progress MSG...       like say, only on a terminal or with CXLVM_KERNEL_VERBOSE=1
#   need_packages P...    installs the Debian packages P (system sources) as root or with
#                         password-less sudo; dies when it cannot
#   field KEY FILE        the value of KEY=... in FILE
#   is_x86_64_elf FILE    true for an ELF64 x86-64 ET_EXEC
#   pvh_entry FILE        prints the PVH entry (Xen note type 18) of a vmlinux as 0x%08x
#   debian_apt_setup DIR  private apt configuration under DIR (bookworm-security and
#                         bookworm-backports of $mirror); sets the array apt_opts
#   newest_cached PFX [SFX]  prints $kdir/PFX-<version>SFX for $pin, or else the newest such
#                         directory the caller's valid_dir accepts; status 1 when there is none
#   debian_download P V   downloads P=V's .deb into $work; sets suite, url, deb_size,
#                         deb_hash, deb

die() {
    echo "$me: $*" >&2
    exit 2
}
say() { echo "$me: $*" >&2; }
# Progress messages only on a terminal (or with CXLVM_KERNEL_VERBOSE=1): a failure is one line.
progress() { if [[ -t 2 || ${CXLVM_KERNEL_VERBOSE:-0} == 1 ]]; then say "$@"; fi; }

need_packages() {
    (($#)) || return 0
    local sudo
    if [[ $(id -u) == 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo=(sudo)
    else
        die "needs the Debian packages $*: run 'sudo apt-get install $*' or run as root"
    fi
    progress "installing $* (apt-get)"
    { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } \
        >/dev/null 2>&1 ||
        die "could not install $* with apt-get"
}

field() { sed -n "s/^$1=//p" "$2" 2>/dev/null | head -n1; }

# An x86-64 ELF executable (ELF64, EM_X86_64, ET_EXEC).
is_x86_64_elf() {
    local h
    [[ $(head -c 4 "$1" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]] || return 1
    h=$(readelf -hW "$1" 2>/dev/null) || return 1
    grep -q 'Class: *ELF64' <<<"$h" && grep -q 'Machine: *Advanced Micro Devices X86-64' <<<"$h" &&
        grep -q 'Type: *EXEC' <<<"$h"
}

# Prints the PVH entry (XEN_ELFNOTE_PHYS32_ENTRY, owner Xen, type 0x12) as 0x%08x, provided the
# note lies in a PT_NOTE segment; fails otherwise.
pvh_entry() {
    local f=$1 notes bytes hex b seg
    notes=$(readelf -nW "$f" 2>/dev/null) || return 1
    # readelf reads notes from sections when there are any: find which section held the note,
    # then make sure that section is mapped by a PT_NOTE segment (what PVH loaders read).
    read -r seg bytes < <(awk '
        /^Displaying notes found in: / { sec = $NF; next }
        /^Displaying notes found at / { sec = "segment"; next }
        # The description is on the note'"'"'s line (-W) or the next one.
        function desc() { d = $0; sub(/.*description data: */, "", d); print (sec == "" ? "segment" : sec), d; exit }
        want && /description data:/ { desc() }
        { want = 0 }
        $1 == "Xen" && /\(0x00000012\)/ { if (/description data:/) desc(); want = 1 }' <<<"$notes") || return 1
    [[ -n ${bytes:-} ]] || return 1
    if [[ $seg != "segment" ]]; then
        readelf -lW "$f" 2>/dev/null | awk -v sec="$seg" '
            /^Program Headers:/ { ph = 1; n = 0; next }
            ph && /^ +[A-Z_]+ +0x/ { type[n++] = $1; next }
            ph && /^$/ { ph = 0 }
            /^ +[0-9]+ +/ && ($1 + 0) in type && type[$1 + 0] == "NOTE" {
                for (i = 2; i <= NF; i++) if ($i == sec) found = 1
            }
            END { exit !found }' || return 1
    fi
    hex=
    for b in $bytes; do hex=$b$hex; done # little-endian
    [[ $hex =~ ^[0-9a-f]+$ ]] || return 1
    ((16#$hex > 0 && 16#$hex < 16#100000000)) || return 1
    printf '0x%08x\n' $((16#$hex))
}

# Private apt configuration: sources, lists and download cache under $1, never /etc/apt or
# /var/lib/apt. Uses $mirror (base URL serving /debian and /debian-security).
debian_apt_setup() {
    local apt_dir=$1 keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d"
    [[ -r $keyring ]] || die "$keyring is missing (install debian-archive-keyring)"
    cat >"$apt_dir/sources.list" <<EOF
deb [signed-by=$keyring] $mirror/debian-security bookworm-security main
deb [signed-by=$keyring] $mirror/debian bookworm-backports main
EOF
    apt_opts=(
        -o "Dir::Etc::SourceList=$apt_dir/sources.list"
        -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
        -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache=$apt_dir/cache"
        -o "Dir::Cache::pkgcache="
        -o "Dir::Cache::srcpkgcache="
        -o "APT::Sandbox::User=root"
        -o "Acquire::Retries=2"
        -o "Acquire::http::Timeout=30"
        -o "Acquire::Languages=none"
    )
}

# debian_download PKG VER: downloads the .deb of PKG=VER into $work with the apt options of
# debian_apt_setup. Sets suite (where apt found it), url, deb_size, deb_hash (SHA256:...) and
# deb (the file's path).
# Uses $log, $work and $mirror.
debian_download() {
    local pkg=$1 ver=$2 debs
    # `apt-cache policy` lists each version, prefixed by *** when installed, then its suites.
    suite=$(apt-cache "${apt_opts[@]}" policy "$pkg" 2>>"$log" |
        awk -v v="$ver" '$1 == v || ($1 == "***" && $2 == v) { getline; print $3; exit }')
    read -r url _ deb_size deb_hash < <(apt-get "${apt_opts[@]}" --print-uris download "$pkg=$ver" 2>>"$log") ||
        die "apt cannot locate $pkg=$ver (see $log)"
    url=${url//\'/}
    progress "downloading $pkg $ver from ${suite:-?} ($((deb_size / 1000000)) MB)"
    (cd "$work" && apt-get "${apt_opts[@]}" download "$pkg=$ver") >>"$log" 2>&1 ||
        die "cannot download $pkg $ver from $mirror (see $log)"
    debs=("$work"/*.deb)
    deb=${debs[0]}
    [[ -f $deb ]] || die "apt-get download of $pkg $ver left no .deb (see $log)"
}

# newest_cached PREFIX [SUFFIX]: the cached build to use. With $pin set, $kdir/PREFIX-$pinSUFFIX
# if the caller's valid_dir accepts it; otherwise the highest Debian version among the
# directories $kdir/PREFIX-<version>SUFFIX that valid_dir accepts. Prints nothing and returns 1
# when there is none.
newest_cached() {
    local prefix=$1 suffix=${2-} d v best='' bestv=''
    if [[ -n $pin ]]; then
        valid_dir "$kdir/$prefix-$pin$suffix" && echo "$kdir/$prefix-$pin$suffix"
        return
    fi
    for d in "$kdir/$prefix"-*"$suffix"/; do
        d=${d%/}
        [[ -d $d ]] || continue
        v=$(field version "$d/VERSION")
        [[ -n $v ]] || continue
        if [[ -z $bestv ]] || dpkg --compare-versions "$v" gt "$bestv"; then
            valid_dir "$d" || continue
            best=$d bestv=$v
        fi
    done
    [[ -n $best ]] && echo "$best"
}
