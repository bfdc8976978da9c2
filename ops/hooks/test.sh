#!/usr/bin/env bash
# Self-test for the vip and service hooks. Needs no root, no network device
# and no systemd: `ip`, `arping` and `systemctl` are replaced by stubs (put
# first on PATH) that answer the read-only queries from the FAKE_* variables
# below and record every call. Most cases use --dry-run and check the printed
# commands; a few run for real against the stubs to check that the commands
# that change things are issued exactly when needed (idempotency).
#
# Usage: ops/hooks/test.sh        (exit status 0 only if every case passed)

set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VIP=$here/vip
SERVICE=$here/service

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stubs=$tmp/bin
mkdir -p "$stubs"
export STUB_LOG=$tmp/calls.log
export STUB_STATE=$tmp/state

# ip stub. FAKE_DEVS: devices that exist. FAKE_ADDRS: "DEV=ADDR/PLEN ...".
# Changing calls (addr add/del) are logged, and fail unless STUB_WRITE=1.
cat >"$stubs/ip" <<'EOF'
#!/usr/bin/env bash
echo "ip $*" >>"$STUB_LOG"
args=("$@")
if [[ $1 == link && $2 == show && $3 == dev ]]; then
    for d in ${FAKE_DEVS:-}; do [[ $d == "$4" ]] && exit 0; done
    echo "Device \"$4\" does not exist." >&2; exit 1
fi
if [[ $1 == -o && $2 == -f ]]; then
    # ip -o -f FAMILY addr show dev DEV to ADDR/LEN
    fam=$3 dev=${args[6]} want=${args[8]%/*}
    for e in ${FAKE_ADDRS:-}; do
        d=${e%%=*} c=${e#*=}
        if [[ $d == "$dev" && ${c%/*} == "$want" ]]; then
            echo "2: $dev    $fam $c scope global $dev\\       valid_lft forever preferred_lft forever"
        fi
    done
    exit 0
fi
if [[ $1 == addr && ( $2 == add || $2 == del ) ]]; then
    [[ ${STUB_WRITE:-0} == 1 ]] && exit 0
    echo "stub ip: refusing to change anything: ip $*" >&2; exit 99
fi
echo "stub ip: unexpected call: ip $*" >&2; exit 98
EOF

cat >"$stubs/arping" <<'EOF'
#!/usr/bin/env bash
echo "arping $*" >>"$STUB_LOG"
[[ ${STUB_WRITE:-0} == 1 ]] && exit "${STUB_ARPING_RC:-0}"
echo "stub arping: refusing to send: arping $*" >&2; exit 99
EOF

# systemctl stub. FAKE_UNITS: "UNIT=ACTIVESTATE ..."; unlisted units are
# not-found. A successful start/stop records the new state in $STUB_STATE.
# STUB_FAIL: a unit whose start/stop fails. STUB_STUCK: a unit whose stop
# "succeeds" but leaves it active.
cat >"$stubs/systemctl" <<'EOF'
#!/usr/bin/env bash
echo "systemctl $*" >>"$STUB_LOG"
if [[ $1 == show ]]; then
    unit=${!#}
    if [[ -f $STUB_STATE/$unit ]]; then
        echo "LoadState=loaded"; echo "ActiveState=$(<"$STUB_STATE/$unit")"; exit 0
    fi
    for e in ${FAKE_UNITS:-}; do
        if [[ ${e%%=*} == "$unit" ]]; then
            echo "LoadState=loaded"; echo "ActiveState=${e#*=}"; exit 0
        fi
    done
    echo "LoadState=not-found"; echo "ActiveState=inactive"; exit 0
fi
if [[ $1 == start || $1 == stop ]]; then
    [[ ${STUB_WRITE:-0} == 1 ]] || { echo "stub systemctl: refusing: systemctl $*" >&2; exit 99; }
    [[ ${!#} == "${STUB_FAIL:-}" ]] && { echo "Job for ${!#} failed." >&2; exit 1; }
    [[ ${!#} == "${STUB_STUCK:-}" ]] && exit 0
    if [[ $1 == start ]]; then echo active; else echo inactive; fi >"$STUB_STATE/${!#}"
    exit 0
fi
echo "stub systemctl: unexpected call: systemctl $*" >&2; exit 98
EOF
chmod +x "$stubs/ip" "$stubs/arping" "$stubs/systemctl"
export PATH="$stubs:$PATH"

passed=0
failed=0
name="" out="" err="" rc=0

# case_ NAME CMD...: run CMD with a fresh call log; keep stdout, stderr, rc.
case_() {
    name=$1
    shift
    : >"$STUB_LOG"
    rm -rf "$STUB_STATE" && mkdir -p "$STUB_STATE"
    out=$("$@" 2>"$tmp/err")
    rc=$?
    err=$(<"$tmp/err")
}
ok() { passed=$((passed + 1)); }
bad() {
    failed=$((failed + 1))
    echo "FAIL: $name: $*"
    echo "  stdout: ${out//$'\n'/$'\n'          }"
    echo "  stderr: ${err//$'\n'/$'\n'          }"
    echo "  calls:  $(tr '\n' ';' <"$STUB_LOG")"
}
expect_rc() { if [[ $rc == "$1" ]]; then ok; else bad "exit $rc, expected $1"; fi; }
# expect_out LINE: stdout has exactly this line.
expect_out() { if grep -qxF -- "$1" <<<"$out"; then ok; else bad "no stdout line '$1'"; fi; }
no_out() { if grep -qF -- "$1" <<<"$out"; then bad "stdout unexpectedly has '$1'"; else ok; fi; }
expect_err() { if grep -qF -- "$1" <<<"$err"; then ok; else bad "stderr lacks '$1'"; fi; }
# expect_last TEXT: the last stdout line contains TEXT (tandem logs it).
expect_last() { if [[ $(tail -n1 <<<"$out") == *"$1"* ]]; then ok; else bad "last stdout line lacks '$1'"; fi; }
expect_call() { if grep -qxF -- "$1" "$STUB_LOG"; then ok; else bad "no call '$1'"; fi; }
no_call() { if grep -qE -- "$1" "$STUB_LOG"; then bad "unexpected call matching '$1'"; else ok; fi; }
# expect_order A B: stdout line A comes before line B.
expect_order() {
    local a b
    a=$(grep -nxF -- "$1" <<<"$out" | head -n1 | cut -d: -f1)
    b=$(grep -nxF -- "$2" <<<"$out" | head -n1 | cut -d: -f1)
    if [[ -n $a && -n $b ]] && ((a < b)); then ok; else bad "'$1' not before '$2'"; fi
}

export FAKE_DEVS="eth0 eth1"
unset TANDEM_VIP TANDEM_VIP_DEV TANDEM_SERVICES TANDEM_ARPING STUB_WRITE TANDEM_EVENT TANDEM_EPOCH

# ---------------------------------------------------------------- vip
FAKE_ADDRS="" case_ "vip up, absent" "$VIP" --dry-run up 192.168.1.10/24 eth0
expect_rc 0
expect_out "dry-run: ip addr add 192.168.1.10/24 dev eth0"
expect_out "dry-run: arping -U -c 3 -I eth0 192.168.1.10"
expect_last "vip: up 192.168.1.10/24 on eth0: added, gratuitous ARP sent"
no_call "^ip addr (add|del)|^arping"

FAKE_ADDRS="eth0=192.168.1.10/24" case_ "vip up, already present" "$VIP" --dry-run up 192.168.1.10/24 eth0
expect_rc 0
no_out "ip addr add"
expect_out "dry-run: arping -U -c 3 -I eth0 192.168.1.10"
expect_last "already present"

FAKE_ADDRS="eth0=192.168.1.10/32" case_ "vip up, present with another prefix" "$VIP" --dry-run up 192.168.1.10/24 eth0
expect_rc 0
no_out "ip addr add"
expect_err "already on eth0 as 192.168.1.10/32"

FAKE_ADDRS="eth1=192.168.1.10/24" case_ "vip up, present on another device only" "$VIP" --dry-run up 192.168.1.10/24 eth0
expect_rc 0
expect_out "dry-run: ip addr add 192.168.1.10/24 dev eth0"

FAKE_ADDRS="eth0=192.168.1.10/24" case_ "vip down, present" "$VIP" --dry-run down 192.168.1.10/24 eth0
expect_rc 0
expect_out "dry-run: ip addr del 192.168.1.10/24 dev eth0"
expect_last "vip: down 192.168.1.10/24 on eth0: removed"
no_out "arping"

FAKE_ADDRS="eth0=192.168.1.10/32" case_ "vip down deletes the prefix it has" "$VIP" --dry-run down 192.168.1.10/24 eth0
expect_rc 0
expect_out "dry-run: ip addr del 192.168.1.10/32 dev eth0"

FAKE_ADDRS="" case_ "vip down, absent is success" "$VIP" --dry-run down 192.168.1.10/24 eth0
expect_rc 0
no_out "ip addr del"
expect_last "already absent"

FAKE_ADDRS="" TANDEM_VIP=10.0.0.5/16 TANDEM_VIP_DEV=eth1 case_ "vip defaults from env" "$VIP" up --dry-run
expect_rc 0
expect_out "dry-run: ip addr add 10.0.0.5/16 dev eth1"
expect_out "dry-run: arping -U -c 3 -I eth1 10.0.0.5"

FAKE_ADDRS="" TANDEM_VIP_DEV=eth1 case_ "vip address from args, device from env" "$VIP" -n up 10.0.0.6/16
expect_rc 0
expect_out "dry-run: ip addr add 10.0.0.6/16 dev eth1"

FAKE_ADDRS="" case_ "vip IPv6 skips arping" "$VIP" --dry-run up 2001:db8::10/64 eth0
expect_rc 0
expect_out "dry-run: ip addr add 2001:db8::10/64 dev eth0"
no_out "arping -U"
expect_out "vip: 2001:db8::10 is IPv6: skipping gratuitous ARP (the kernel sends unsolicited neighbour advertisements)"
expect_call "ip -o -f inet6 addr show dev eth0 to 2001:db8::10/128"

FAKE_ADDRS="" TANDEM_ARPING=/nonexistent/arping case_ "vip up without arping warns, succeeds" "$VIP" --dry-run up 192.168.1.10/24 eth0
expect_rc 0
expect_out "dry-run: ip addr add 192.168.1.10/24 dev eth0"
expect_err "install iputils-arping"
expect_last "NO gratuitous ARP"

FAKE_ADDRS="" TANDEM_EVENT=on_promote TANDEM_EPOCH=7 case_ "vip summary names the event" "$VIP" --dry-run up 192.168.1.10/24 eth0
expect_last "[on_promote epoch 7] (dry-run)"

case_ "vip no args" "$VIP"
expect_rc 2
case_ "vip bad action" "$VIP" --dry-run sideways 192.168.1.10/24 eth0
expect_rc 2
expect_err "unknown action 'sideways'"
case_ "vip missing prefix" "$VIP" --dry-run up 192.168.1.10 eth0
expect_rc 2
expect_err "no prefix length"
case_ "vip bad address" "$VIP" --dry-run up 192.168.1.300/24 eth0
expect_rc 2
case_ "vip bad prefix" "$VIP" --dry-run up 192.168.1.10/33 eth0
expect_rc 2
case_ "vip no address" "$VIP" --dry-run up
expect_rc 2
expect_err "TANDEM_VIP"
case_ "vip no device" "$VIP" --dry-run up 192.168.1.10/24
expect_rc 2
expect_err "TANDEM_VIP_DEV"
case_ "vip unknown device" "$VIP" --dry-run up 192.168.1.10/24 wlan9
expect_rc 3
expect_err "no such network device 'wlan9'"
case_ "vip unknown option" "$VIP" --frobnicate up 192.168.1.10/24 eth0
expect_rc 2

# Real (not dry-run) runs against the stubs: the changing commands are
# issued exactly when needed.
FAKE_ADDRS="" STUB_WRITE=1 case_ "vip up for real, absent" "$VIP" up 192.168.1.10/24 eth0
expect_rc 0
expect_call "ip addr add 192.168.1.10/24 dev eth0"
expect_call "arping -U -c 3 -I eth0 192.168.1.10"
FAKE_ADDRS="eth0=192.168.1.10/24" STUB_WRITE=1 case_ "vip up for real, present: no add" "$VIP" up 192.168.1.10/24 eth0
expect_rc 0
no_call "^ip addr add"
FAKE_ADDRS="" STUB_WRITE=1 STUB_ARPING_RC=2 case_ "vip up for real, arping fails: still up" "$VIP" up 192.168.1.10/24 eth0
expect_rc 0
expect_err "announcement may not have gone out"
FAKE_ADDRS="" STUB_WRITE=1 case_ "vip down for real, absent: no del" "$VIP" down 192.168.1.10/24 eth0
expect_rc 0
no_call "^ip addr del"
FAKE_ADDRS="eth0=192.168.1.10/24" STUB_WRITE=1 case_ "vip down for real, present" "$VIP" down 192.168.1.10/24 eth0
expect_rc 0
expect_call "ip addr del 192.168.1.10/24 dev eth0"
FAKE_ADDRS="" case_ "vip up for real, ip add fails" "$VIP" up 192.168.1.10/24 eth0
expect_rc 4
expect_err "'ip addr add 192.168.1.10/24 dev eth0' failed"

# ------------------------------------------------------------ service
FAKE_UNITS="a=inactive b=inactive c=inactive" case_ "service start in order" "$SERVICE" --dry-run start a b c
expect_rc 0
expect_order "dry-run: systemctl start -- a" "dry-run: systemctl start -- b"
expect_order "dry-run: systemctl start -- b" "dry-run: systemctl start -- c"
expect_last "service: start ok: a=started b=started c=started"
no_call "^systemctl (start|stop)"

FAKE_UNITS="a=active b=active c=active" case_ "service stop in reverse order" "$SERVICE" --dry-run stop a b c
expect_rc 0
expect_order "dry-run: systemctl stop -- c" "dry-run: systemctl stop -- b"
expect_order "dry-run: systemctl stop -- b" "dry-run: systemctl stop -- a"
expect_last "service: stop ok: c=stopped b=stopped a=stopped"

FAKE_UNITS="a=active b=inactive" case_ "service start skips active units" "$SERVICE" --dry-run start a b
expect_rc 0
no_out "systemctl start -- a"
expect_out "dry-run: systemctl start -- b"
expect_out "service: a already active"

FAKE_UNITS="a=active b=inactive c=failed" case_ "service stop skips stopped units" "$SERVICE" --dry-run stop a b c
expect_rc 0
expect_out "dry-run: systemctl stop -- a"
no_out "systemctl stop -- b"
no_out "systemctl stop -- c"

FAKE_UNITS="a=active" case_ "service stop of a missing unit succeeds" "$SERVICE" --dry-run stop a ghost
expect_rc 0
expect_out "service: ghost not found, nothing to stop"
expect_out "dry-run: systemctl stop -- a"

FAKE_UNITS="a=inactive" case_ "service start of a missing unit fails" "$SERVICE" --dry-run start ghost a
expect_rc 4
expect_err "unit 'ghost' not found"
no_out "systemctl start -- a"

FAKE_UNITS="a=inactive b=inactive" TANDEM_SERVICES="a b" case_ "service units from env" "$SERVICE" --dry-run start
expect_rc 0
expect_order "dry-run: systemctl start -- a" "dry-run: systemctl start -- b"

FAKE_UNITS="a=active b=active" TANDEM_SERVICES="a b" case_ "service stop from env, reversed" "$SERVICE" stop -n
expect_order "dry-run: systemctl stop -- b" "dry-run: systemctl stop -- a"

FAKE_UNITS="hydro-sender.service=active" case_ "service unit names with suffix" "$SERVICE" -n stop hydro-sender.service
expect_out "dry-run: systemctl stop -- hydro-sender.service"

case_ "service no args" "$SERVICE"
expect_rc 2
case_ "service no units" "$SERVICE" --dry-run start
expect_rc 2
expect_err "TANDEM_SERVICES"
case_ "service bad action" "$SERVICE" --dry-run restart a
expect_rc 2
case_ "service bad unit name" "$SERVICE" --dry-run start 'a;reboot'
expect_rc 2
expect_err "not a systemd unit name"

FAKE_UNITS="a=inactive b=inactive c=inactive" STUB_WRITE=1 STUB_FAIL=b case_ "service start for real stops at first failure" "$SERVICE" start a b c
expect_rc 4
expect_call "systemctl start -- a"
expect_call "systemctl start -- b"
no_call "^systemctl start -- c"
expect_err "start FAILED for: b"

FAKE_UNITS="a=active b=active c=active" STUB_WRITE=1 STUB_FAIL=b case_ "service stop for real goes on after a failure" "$SERVICE" stop a b c
expect_rc 4
expect_call "systemctl stop -- c"
expect_call "systemctl stop -- b"
expect_call "systemctl stop -- a"
expect_err "stop FAILED for: b"

FAKE_UNITS="a=active b=inactive" STUB_WRITE=1 case_ "service stop for real" "$SERVICE" stop a b
expect_rc 0
expect_call "systemctl stop -- a"
no_call "^systemctl stop -- b"
expect_last "service: stop ok: b=already-stopped a=stopped"

# The unit is still active after the stop: must be a failure.
FAKE_UNITS="a=active" STUB_WRITE=1 STUB_STUCK=a case_ "service stop for real, unit still active" "$SERVICE" stop a
expect_rc 4
expect_err "still active after 'systemctl stop'"

echo "$passed passed, $failed failed"
((failed == 0))
