#!/usr/bin/env bash
# What the sandbox needs from the host: bubblewrap, libseccomp (the seccomp filter is
# built with it), util-linux (setpriv, prlimit) and the language toolchains. Installs
# only what is missing, so a warm machine spends no time here.
set -euo pipefail
need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
ldconfig -p | grep -q 'libseccomp.so.2' || need+=(libseccomp2)
command -v setpriv >/dev/null && command -v prlimit >/dev/null || need+=(util-linux)
[ -x /usr/bin/python3 ] || need+=(python3)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v g++ >/dev/null || need+=(g++)
command -v node >/dev/null || need+=(nodejs)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
fi
bwrap --version
