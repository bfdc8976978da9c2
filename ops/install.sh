#!/usr/bin/env bash
# Install tandem on one server. Run it on both servers of the pair.
#
# Usage: ops/install.sh [--prefix DIR] [--binary PATH | PATH]
#
#   --binary PATH  the tandem binary to install (default: target/release/tandem
#                  in the source tree this script belongs to; build it with
#                  `cargo build --release`).
#   --prefix DIR   install under DIR instead of / (for packaging or testing;
#                  no root needed). systemctl is only ever run when DIR is /.
#
# What it does (paths under the prefix):
#   /usr/local/bin/tandem                    the binary (replaced)
#   /etc/systemd/system/tandem.service       the unit (replaced)
#   /usr/local/lib/tandem/hooks/             vip, service, README.md (replaced)
#   /etc/tandem/                             created, mode 0700
#   /etc/tandem/hooks -> /usr/local/lib/tandem/hooks
#                                            symlink, only if absent (the
#                                            example config uses this path)
#   /etc/tandem/tandem.toml                  the example config, ONLY if absent
#   /etc/tandem/tandem.env                   hook defaults template, ONLY if absent
#   /var/lib/tandem/                         created, mode 0700
# Existing configuration, keys and state are never overwritten.

set -euo pipefail

prog=install.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)

die() { echo "$prog: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; }

prefix=/
binary=""
while (($# > 0)); do
    case $1 in
        --prefix) (($# >= 2)) || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --binary) (($# >= 2)) || die "--binary needs a path"; binary=$2; shift 2 ;;
        --binary=*) binary=${1#--binary=}; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage; die "unknown option '$1'" ;;
        *) [[ -z $binary ]] || die "more than one binary given"; binary=$1; shift ;;
    esac
done

[[ -n $prefix ]] || die "--prefix must not be empty"
mkdir -p -- "$prefix" 2>/dev/null || true
[[ -d $prefix ]] || die "prefix '$prefix' is not a directory"
prefix=$(cd -- "$prefix" && pwd)
real_root=0
[[ $prefix == / ]] && real_root=1
# R: the prefix to put before absolute paths ("" when installing into /).
R=${prefix%/}

if ((real_root)) && ((EUID != 0)); then
    die "installing into / needs root (run with sudo, or use --prefix DIR)"
fi

binary=${binary:-$src/target/release/tandem}
[[ -f $binary ]] || die "no tandem binary at '$binary' (run 'cargo build --release' in $src, or give the path)"
[[ -x $binary ]] || die "'$binary' is not executable"
unit=$here/systemd/tandem.service
hooks=$here/hooks
example=$src/config/examples/tandem.toml
for f in "$unit" "$hooks/vip" "$hooks/service" "$hooks/README.md" "$example"; do
    [[ -f $f ]] || die "missing $f (run this from a complete tandem source tree)"
done

say() { echo "  $*"; }
echo "installing tandem into $prefix"

install -d -m 0755 "$R/usr/local/bin" "$R/etc/systemd/system" "$R/usr/local/lib/tandem/hooks"
# Copy to a temporary name then rename, so a running daemon's binary is
# replaced rather than overwritten in place.
install -m 0755 "$binary" "$R/usr/local/bin/.tandem.new"
mv -f "$R/usr/local/bin/.tandem.new" "$R/usr/local/bin/tandem"
say "/usr/local/bin/tandem"
install -m 0644 "$unit" "$R/etc/systemd/system/tandem.service"
say "/etc/systemd/system/tandem.service"
install -m 0755 "$hooks/vip" "$hooks/service" "$R/usr/local/lib/tandem/hooks/"
install -m 0644 "$hooks/README.md" "$R/usr/local/lib/tandem/hooks/"
say "/usr/local/lib/tandem/hooks/{vip,service,README.md}"

install -d -m 0700 "$R/etc/tandem" "$R/var/lib/tandem"
# install -d leaves the mode of an existing directory alone; the pair key
# lives here, so make sure.
chmod 0700 "$R/etc/tandem" "$R/var/lib/tandem"
say "/etc/tandem/ and /var/lib/tandem/ (mode 0700)"

if [[ -e $R/etc/tandem/hooks || -L $R/etc/tandem/hooks ]]; then
    say "/etc/tandem/hooks exists: left as it is"
else
    ln -s /usr/local/lib/tandem/hooks "$R/etc/tandem/hooks"
    say "/etc/tandem/hooks -> /usr/local/lib/tandem/hooks"
fi

if [[ -e $R/etc/tandem/tandem.toml ]]; then
    say "/etc/tandem/tandem.toml exists: left as it is"
    fresh_config=0
else
    install -m 0600 "$example" "$R/etc/tandem/tandem.toml"
    say "/etc/tandem/tandem.toml (from config/examples/tandem.toml: EDIT IT)"
    fresh_config=1
fi

if [[ -e $R/etc/tandem/tandem.env ]]; then
    say "/etc/tandem/tandem.env exists: left as it is"
else
    (
        umask 077
        cat >"$R/etc/tandem/tandem.env" <<'EOF'
# Environment for the tandem daemon and the hooks it runs (read by
# tandem.service via EnvironmentFile=). KEY=value lines, no "export".
#
# Defaults for the example hooks, used when the hook command in
# /etc/tandem/tandem.toml gives no arguments (`vip up`, `service start`):
# the virtual IP with its prefix length, the device it lives on, and the
# services that run on the primary only (started in this order, stopped in
# reverse).
#TANDEM_VIP=192.168.1.10/24
#TANDEM_VIP_DEV=eth0
#TANDEM_SERVICES=hydro-sender
#
# Log filter for the daemon.
#RUST_LOG=info
EOF
    )
    say "/etc/tandem/tandem.env (hook defaults, all commented out)"
fi

if ((real_root)); then
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        systemctl daemon-reload
        say "systemctl daemon-reload done"
    else
        say "systemd is not running here: run 'systemctl daemon-reload' yourself"
    fi
else
    say "(prefix is not /: systemctl not run)"
fi

key_exists=0
[[ -e $R/etc/tandem/pair.key ]] && key_exists=1

cat <<EOF

Installed. Next steps, on this server:
EOF
n=1
if ((key_exists)); then
    echo "  $n. /etc/tandem/pair.key is already here: make sure the other server has the same file."
else
    cat <<EOF
  $n. On ONE of the two servers only, create the pair key, then copy it to the other:
       tandem keygen --out /etc/tandem/pair.key
       scp -p /etc/tandem/pair.key root@OTHER-SERVER:/etc/tandem/pair.key
     (the same key on both; keep it mode 0600, root only)
EOF
fi
n=$((n + 1))
if ((fresh_config)); then
    echo "  $n. Edit /etc/tandem/tandem.toml: pair name, both [[node]] addresses, [tiebreaker],"
    echo "     [hooks], databases, file sets, serial ports. Use the SAME file on both servers."
else
    echo "  $n. Review /etc/tandem/tandem.toml against config/examples/tandem.toml for new options."
fi
n=$((n + 1))
echo "  $n. If the hooks take their defaults from the environment, set TANDEM_VIP,"
echo "     TANDEM_VIP_DEV and TANDEM_SERVICES in /etc/tandem/tandem.env"
echo "     (see /usr/local/lib/tandem/hooks/README.md)."
n=$((n + 1))
echo "  $n. Check the config:  tandem config check /etc/tandem/tandem.toml"
n=$((n + 1))
echo "  $n. Start it:          systemctl enable --now tandem"
echo "     then:               tandem status   (and journalctl -u tandem -f)"
if ! ((real_root)); then
    echo
    echo "(Installed under $prefix: the paths above are relative to it.)"
fi
