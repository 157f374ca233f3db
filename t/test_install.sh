#!/bin/bash
# Installs into a temporary DESTDIR, drives the installed init script
# (start, status, reload, stop) against a policy on a free loopback port,
# then uninstalls.  Ends with "N passed, N failed".  Stops what it started.
set -u
cd "$(dirname "$0")/.." || exit 1
T=$(mktemp -d /tmp/kumo-install.XXXXXX)
chmod 755 "$T"
D=$T/root
pass=0; fail=0
ok()   { pass=$((pass + 1)); echo "ok: $*"; }
bad()  { fail=$((fail + 1)); echo "FAILED: $*"; }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi; }
cleanup() {
	[ -s "$T/kumod.pid" ] && kill -9 -- "$(cat "$T/kumod.pid")" 2>/dev/null
	pkill -9 -f "$T/policy.lua" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT

make -s install DESTDIR="$D" PREFIX=/usr >"$T/install.log" 2>&1 || { cat "$T/install.log"; bad "make install"; }
for f in usr/sbin/kumod usr/sbin/kumoctl usr/libexec/kumomta/kumo-smtpd usr/libexec/kumomta/kumo-policyd usr/libexec/kumomta/kumo-qmgr \
	 usr/share/man/man8/kumod.8 usr/share/man/man5/kumo-policy.5 etc/init.d/kumomta \
	 etc/systemd/system/kumomta.service etc/kumomta/policy/init.lua; do
	check "installed $f" test -e "$D/$f"
done
check "installed policy uses /var/spool/kumomta" grep -q "/var/spool/kumomta/data" "$D/etc/kumomta/policy/init.lua"
check "init script names the installed kumod" grep -q "^KUMOD=/usr/sbin/kumod" "$D/etc/init.d/kumomta"
check "installed kumod runs" "$D/usr/sbin/kumod" --version

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$T/policy.lua" <<EOP
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '$T/spool/data' }
  kumo.define_spool { name = 'meta', path = '$T/spool/meta' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:$port', hostname = 'install.test' }
end)
EOP
cat >"$T/defaults" <<EOD
KUMOD=$D/usr/sbin/kumod
KUMOCTL=$D/usr/sbin/kumoctl
POLICY=$T/policy.lua
KUMO_USER=$(id -un)
PIDFILE=$T/kumod.pid
CONTROL_SOCKET=$T/kumod.sock
WORKERS=1
EOD
init() { KUMO_DEFAULTS="$T/defaults" "$D/etc/init.d/kumomta" "$@"; }

init start >"$T/start.log" 2>&1; check "init start" test $? -eq 0
for i in $(seq 50); do [ -S "$T/kumod.sock" ] && break; sleep 0.1; done
init status >/dev/null 2>&1; check "init status says running" test $? -eq 0
banner=$(timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port; head -1 <&3" 2>/dev/null | tr -d '\r')
check "daemonized kumod answers SMTP" test "$banner" = "220 install.test KumoMTA"
check "kumoctl status answers" "$D/usr/sbin/kumoctl" --socket "$T/kumod.sock" status
check "the pid file and the spool lock name the daemon" test "$(cat "$T/kumod.pid")" = "$(cat "$T/spool/meta/lock")"
init reload >/dev/null 2>&1; check "init reload" test $? -eq 0
init stop >/dev/null 2>&1; check "init stop" test $? -eq 0
init status >/dev/null 2>&1; check "init status after stop (3)" test $? -eq 3
check "port closed after stop" bash -c "! timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/$port' 2>/dev/null"

make -s uninstall DESTDIR="$D" PREFIX=/usr >/dev/null 2>&1; check "make uninstall" test $? -eq 0
check "uninstall removed kumod" test ! -e "$D/usr/sbin/kumod"
check "uninstall removed the helpers" test ! -e "$D/usr/libexec/kumomta/kumo-smtpd"
check "uninstall kept the policy" test -e "$D/etc/kumomta/policy/init.lua"
[ $fail -ne 0 ] && { echo "--- start log"; cat "$T/start.log"; }
echo "test_install: $pass passed, $fail failed"
[ $fail -eq 0 ]
