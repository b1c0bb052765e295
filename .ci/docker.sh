#!/usr/bin/env bash
# Gives CI a Docker engine and the sandbox runtime image, with no container registry.
#
#   1. dockerd: installed from Debian (docker.io) and started in the background with
#      --bridge=none --iptables=false (DESIGN.md section 7) unless `docker info` answers.
#   2. referee-base:bookworm: mmdebstrap --variant=minbase bookworm, from the machine's own
#      Debian mirror, with the sandbox toolchains included, piped into `docker import`.
#      Including them here is one apt pass with no layer to commit, and dpkg path
#      excludes drop docs, man pages and locales: 473 MiB. Letting the Dockerfile's apt
#      step install them on a bare minbase works too (checked) but gives 700 MiB and
#      a second download.
#   3. referee-sandbox-runtime:latest from compose/sandbox-runtime.Dockerfile with
#      BASE_IMAGE=referee-base:bookworm (its apt step is skipped: the base has all).
#
# Idempotent and cached: a running engine, a base image with the same package list and a
# runtime image whose recipe label matches are reused (seconds when warm). Exits 0 with the reason when no
# engine can be started here, so the docker-marked tests skip; a failed image build
# fails. REFEREE_DOCKER_REBUILD=1 rebuilds both images.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=referee-base:bookworm
RUNTIME_IMAGE=referee-sandbox-runtime:latest
DOCKERFILE=compose/sandbox-runtime.Dockerfile
DOCKERD_LOG=/tmp/referee-dockerd.log
DOCKERD_PID=/var/run/referee-dockerd.pid
PACKAGES=python3,gcc,g++,libc6-dev,nodejs,bash,util-linux
start=$SECONDS

say() { echo "docker.sh: $*"; }
skip() { say "no Docker engine: $*; docker-marked tests will skip"; exit 0; }

engine_answers() { timeout 20 docker info >/dev/null 2>&1; }

apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        return 1
    fi
    say "apt-get install ${missing[*]}"
    apt-get update -qq || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || return 1
}

start_engine() {
    if ! command -v dockerd >/dev/null; then
        apt_install docker.io || skip "cannot install docker.io (not root, or apt failed)"
    fi
    command -v docker >/dev/null || skip "no docker client"
    local pid waited=0
    if [ -f "$DOCKERD_PID" ] && kill -0 "$(cat "$DOCKERD_PID")" 2>/dev/null; then
        pid=$(cat "$DOCKERD_PID")
        say "dockerd $pid is running but does not answer yet"
    else
        say "starting dockerd (log: $DOCKERD_LOG)"
        # setsid: the daemon must outlive this script and CI's process group. Without
        # job control setsid need not fork, so $! is dockerd itself.
        setsid dockerd --bridge=none --iptables=false --ip6tables=false \
            --pidfile "$DOCKERD_PID" --log-level=warn >"$DOCKERD_LOG" 2>&1 </dev/null &
        pid=$!
    fi
    until engine_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$DOCKERD_LOG" 2>/dev/null | sed 's/^/dockerd: /'
            skip "dockerd exited (log above)"
        fi
        if [ $waited -ge 60 ]; then
            tail -n 20 "$DOCKERD_LOG" 2>/dev/null | sed 's/^/dockerd: /'
            skip "dockerd did not answer within 60 s"
        fi
        sleep 1; waited=$((waited + 1))
    done
}

# Debian mirror the machine is configured with (deb822 or one-line sources).
debian_sources() {
    local f
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        if [ -s "$f" ] && grep -Eq '^[^#]*(URIs:|deb ) *[a-z]+://' "$f"; then
            echo "$f"; return
        fi
    done
    echo http://deb.debian.org/debian
}

build_base() {
    apt_install mmdebstrap || { say "cannot install mmdebstrap"; exit 1; }
    local mirror; mirror=$(debian_sources)
    say "building $BASE_IMAGE with mmdebstrap (mirror: $mirror; packages: $PACKAGES)"
    # Docs, man pages and locales are dropped: nothing in a sandbox reads them.
    mmdebstrap --variant=minbase --include="$PACKAGES" --quiet \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        bookworm - "$mirror" \
        | docker import --change 'CMD ["bash"]' --change "LABEL referee.packages=$PACKAGES" \
            - "$BASE_IMAGE-partial" >/dev/null
    # Tagged only once the whole pipeline succeeded: a cut-off tarball never passes for
    # a base image on the next run.
    docker tag "$BASE_IMAGE-partial" "$BASE_IMAGE"
    docker rmi "$BASE_IMAGE-partial" >/dev/null
}

build_runtime() {
    # The recipe label ties the image to the Dockerfile and the base it was built from,
    # so an edited Dockerfile rebuilds and an unchanged one is reused.
    local base_id recipe have
    base_id=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")
    recipe=$( (cat "$DOCKERFILE"; echo "$base_id") | sha256sum | cut -c1-16)
    have=$(docker image inspect -f '{{index .Config.Labels "referee.recipe"}}' \
        "$RUNTIME_IMAGE" 2>/dev/null || true)
    if [ "$have" = "$recipe" ] && [ "${REFEREE_DOCKER_REBUILD:-0}" != 1 ]; then
        say "$RUNTIME_IMAGE is up to date"
        return
    fi
    say "building $RUNTIME_IMAGE from $DOCKERFILE"
    DOCKER_BUILDKIT=0 docker build --quiet --network host \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --label referee.recipe="$recipe" \
        -f "$DOCKERFILE" -t "$RUNTIME_IMAGE" compose >/dev/null
    # The image this one replaced, now untagged.
    docker image prune -f --filter label=referee.recipe >/dev/null
}

engine_answers || start_engine
say "engine $(docker version -f '{{.Server.Version}}' 2>/dev/null) answers"
base_packages=$(docker image inspect -f '{{index .Config.Labels "referee.packages"}}' \
    "$BASE_IMAGE" 2>/dev/null || true)
if [ "${REFEREE_DOCKER_REBUILD:-0}" = 1 ] || [ "$base_packages" != "$PACKAGES" ]; then
    build_base
fi
build_runtime
size=$(docker image inspect -f '{{.Size}}' "$RUNTIME_IMAGE")
say "$RUNTIME_IMAGE ready ($((size / 1024 / 1024)) MiB) in $((SECONDS - start)) s"
