#!/usr/bin/env bash
# veth-setup.sh up|down|status [NAME]
#
# A two-host topology for trying dataplane by hand:
#
#   NAME-a: a0 10.200.0.1/24 <--veth--> sa  NAME-sw  sb <--veth--> b0 10.200.0.2/24 :NAME-b
#
# The hosts share one subnet; whatever runs in NAME-sw (dataplane, a bridge)
# connects them. `up` is idempotent; `down` removes only namespaces this
# script created (it records them in /run/dataplane-veth-setup/NAME).
set -euo pipefail

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

cmd=${1:-}
name=${2:-dp}
[[ $name =~ ^[a-zA-Z0-9_-]{1,24}$ ]] || { echo "veth-setup: bad NAME '$name' (letters, digits, - and _, at most 24)" >&2; exit 2; }
state_dir=/run/dataplane-veth-setup
marker=$state_dir/$name
namespaces=("$name-a" "$name-sw" "$name-b")

need_root() {
    [[ $(id -u) -eq 0 ]] || { echo "veth-setup: needs root (creates network namespaces)" >&2; exit 1; }
}

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

up() {
    need_root
    if [[ -f $marker ]]; then
        echo "topology $name is already up (namespaces: ${namespaces[*]})"
        return
    fi
    for ns in "${namespaces[@]}"; do
        if ns_exists "$ns"; then
            echo "veth-setup: namespace $ns exists but was not made by this script; pick another NAME" >&2
            exit 1
        fi
    done
    mkdir -p "$state_dir"
    # Record first, so `down` can clean up after a half-finished `up`.
    printf '%s\n' "${namespaces[@]}" > "$marker"
    for ns in "${namespaces[@]}"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip -n "$name-a" link add a0 type veth peer name sa netns "$name-sw"
    ip -n "$name-b" link add b0 type veth peer name sb netns "$name-sw"
    ip -n "$name-a" addr add 10.200.0.1/24 dev a0
    ip -n "$name-b" addr add 10.200.0.2/24 dev b0
    for pair in "$name-a a0" "$name-b b0" "$name-sw sa" "$name-sw sb"; do
        set -- $pair
        ip -n "$1" link set "$2" up
    done
    echo "topology $name is up:"
    echo "  $name-a: a0 10.200.0.1/24 <-> sa ($name-sw) | ($name-sw) sb <-> b0 10.200.0.2/24 :$name-b"
    echo "  try: dataplane -n $name-sw attach --iface sa --policy pass"
}

down() {
    need_root
    if [[ ! -f $marker ]]; then
        echo "topology $name is not up (nothing recorded in $marker)"
        return
    fi
    while read -r ns; do
        [[ -n $ns ]] || continue
        # Pins of dataplane in this namespace live in the host's bpffs.
        if ns_exists "$ns"; then
            ino=$(stat -L -c %i "/var/run/netns/$ns" 2>/dev/null || true)
            [[ -n $ino && -d /sys/fs/bpf/dataplane/ns$ino ]] && rm -rf "/sys/fs/bpf/dataplane/ns$ino"
            ip netns del "$ns"
        fi
    done < "$marker"
    rmdir /sys/fs/bpf/dataplane 2>/dev/null || true
    rm -f "$marker"
    rmdir "$state_dir" 2>/dev/null || true
    echo "topology $name is down"
}

status() {
    if [[ -f $marker ]]; then
        echo "topology $name is up:"
        while read -r ns; do
            echo "== $ns"
            ip -n "$ns" -br addr 2>/dev/null | grep -v '^lo ' || true
        done < "$marker"
    else
        echo "topology $name is not up"
    fi
}

case $cmd in
    up) up ;;
    down) down ;;
    status) status ;;
    -h|--help|help) usage 0 ;;
    *) usage 2 ;;
esac
