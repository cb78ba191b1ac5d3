#!/bin/sh
# Installs the Debian packages that building and testing Tally need, only those missing.
# Runs apt-get update once, and only when something is missing.
set -e
PKGS="build-essential pkg-config libevent-dev librocksdb-dev liblz4-dev libcjson-dev libsodium-dev
libinih-dev libpcre2-dev libmaxminddb-dev libxxhash-dev zlib1g-dev libyaml-dev libglib2.0-dev tzdata
clang libfuzzer-14-dev libclang-rt-14-dev wrk nginx-light sqlite3 python3 nodejs curl chromium
ca-certificates nats-server libnats-dev libcurl4-openssl-dev"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "deps: installing$missing"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
# fetch_data.sh uses npm; Debian ships it apart from nodejs (NodeSource's nodejs includes it).
if ! command -v npm >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm
fi
