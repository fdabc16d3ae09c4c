#!/usr/bin/env bash
# The full test suite: `./test.sh` (extra arguments go to `cargo test`).
#
# What it changes on the machine: if a tool the tests use is missing, it installs the Debian package
# that has it (pciutils for `lspci`, util-linux for `setpriv`/`prlimit`, coreutils for `mkfifo`,
# binutils for `readelf`, gcc for linking, acpica-tools for `iasl`/`acpiexec`) with apt-get, when
# run as root or with password-less sudo. Without root or sudo it says what is missing and stops
# (status 2) before building. It changes nothing else: vm.max_map_count stays as it is (volatile
# interleaves are one host mapping each, whatever their size and granularity).
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v lspci >/dev/null || need+=(pciutils)
{ command -v setpriv && command -v prlimit; } >/dev/null || need+=(util-linux)
command -v mkfifo >/dev/null || need+=(coreutils)
command -v readelf >/dev/null || need+=(binutils)
command -v cc >/dev/null || need+=(gcc)
command -v iasl >/dev/null && command -v acpiexec >/dev/null || need+=(acpica-tools)

if [[ $(id -u) == 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo)
else
    sudo=(false)
fi

if ((${#need[@]})); then
    if [[ ${sudo[*]-} == false ]]; then
        echo "test.sh: the tests need these Debian packages: ${need[*]}." >&2
        echo "test.sh: install them (sudo apt-get install ${need[*]}) or run ./test.sh as root." >&2
        exit 2
    fi
    echo "test.sh: installing ${need[*]} (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [[ ! -e /dev/kvm ]]; then
    echo "test.sh: /dev/kvm is missing; cxlvm's tests boot real guests and cannot run here" >&2
    exit 2
fi

exec cargo test --workspace --locked "$@"
