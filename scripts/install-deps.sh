#!/usr/bin/env bash
# Installs what building and testing kvtc needs on Debian 12; does nothing when
# everything is already there. Run as root (or with sudo available).
set -euo pipefail
pkgs=(build-essential cmake pkg-config libdeflate-dev libopenblas-dev liblapacke-dev
      nettle-dev libzstd-dev zstd libmicrohttpd-dev libhiredis-dev redis-server redis-tools curl
      libcurl4-openssl-dev clang libclang-rt-14-dev python3 python3-pip python3-venv
      unzip ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # Wait for another apt run (several builds may install at once) instead of failing.
  lock=(-o DPkg::Lock::Timeout=600)
  $SUDO apt-get "${lock[@]}" update -q
  $SUDO apt-get "${lock[@]}" install -y -q --no-install-recommends "${missing[@]}"
fi
