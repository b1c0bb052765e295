#!/usr/bin/env bash
# Gives CI a Docker engine and the images of the docker-marked tests, with no container
# registry (DESIGN.md section 7, issue 7).
#
#   1. dockerd: installed from Debian (docker.io, docker-compose) and started in the
#      background with --bridge=none --iptables=false unless `docker info` answers.
#   2. Two base images, each `mmdebstrap --variant=minbase bookworm` from the machine's own
#      Debian mirror piped into `docker import` (dpkg path excludes drop docs, man pages
#      and locales; the excludes stay in the image, so later apt steps honour them too):
#        referee-python:bookworm   python3 only (~165 MiB): the services image's base.
#        referee-base:bookworm     python3 + the sandbox toolchains (~470 MiB): the
#                                  sandbox images' base. Toolchains here rather than in
#                                  a Dockerfile apt step: one apt pass, no extra layer.
#   3. referee-sandbox-runtime:latest (compose/sandbox-runtime.Dockerfile): the image the
#      docker sandbox backend runs jobs in.
#   4. A wheelhouse of the project's dependencies (pip download through the machine's
#      package index, cached in $REFEREE_CACHE/wheelhouse), hard-linked into the build
#      context, then compose/Dockerfile built air-gapped (PIP_NO_INDEX=1):
#        referee:dev           FLAVOR=services on referee-python:bookworm
#        referee-sandbox:dev   FLAVOR=sandbox  on referee-base:bookworm
#        referee-trainer:dev   FLAVOR=trainer  (torch) only with REFEREE_DOCKER_TRAINER=1:
#                              no docker test needs it and its wheelhouse is ~200 MiB more.
#
# Idempotent and cached: a running engine, bases with the same package list, the
# wheelhouse and Docker's layer cache are reused (seconds when warm). Exits 0 with the
# reason when no engine can be started here, so the docker-marked tests skip; a failed
# image build fails. REFEREE_DOCKER_REBUILD=1 rebuilds the bases and the runtime image.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=referee-base:bookworm
PYTHON_IMAGE=referee-python:bookworm
RUNTIME_IMAGE=referee-sandbox-runtime:latest
DOCKERFILE=compose/sandbox-runtime.Dockerfile
DOCKERD_LOG=/tmp/referee-dockerd.log
DOCKERD_PID=/var/run/referee-dockerd.pid
PACKAGES=python3,gcc,g++,libc6-dev,nodejs,bash,util-linux
PYTHON_PACKAGES=python3
CACHE=${REFEREE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/referee}
PIP=${PIP:-.venv/bin/pip}
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

build_base() {  # IMAGE PACKAGES
    local image=$1 packages=$2
    local have; have=$(docker image inspect -f '{{index .Config.Labels "referee.packages"}}' \
        "$image" 2>/dev/null || true)
    if [ "$have" = "$packages" ] && [ "${REFEREE_DOCKER_REBUILD:-0}" != 1 ]; then
        return
    fi
    apt_install mmdebstrap || { say "cannot install mmdebstrap"; exit 1; }
    local mirror; mirror=$(debian_sources)
    say "building $image with mmdebstrap (mirror: $mirror; packages: $packages)"
    # Docs, man pages and locales are dropped: nothing in these images reads them.
    mmdebstrap --variant=minbase --include="$packages" --quiet \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        bookworm - "$mirror" \
        | docker import --change 'CMD ["bash"]' --change "LABEL referee.packages=$packages" \
            - "$image-partial" >/dev/null
    # Tagged only once the whole pipeline succeeded: a cut-off tarball never passes for
    # a base image on the next run.
    docker tag "$image-partial" "$image"
    docker rmi "$image-partial" >/dev/null
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

# The wheelhouse of an air-gapped build: every wheel (or sdist: langdetect ships only one;
# pip builds it inside the image from the same wheelhouse's setuptools) the FLAVOR's
# `pip install` resolves, plus the build backend of the project itself.
fill_wheelhouse() {  # EXTRAS...
    mkdir -p "$CACHE/wheelhouse"
    [ -x "$PIP" ] || { say "no $PIP: run make setup first"; exit 1; }
    "$PIP" download --quiet --disable-pip-version-check -d "$CACHE/wheelhouse" \
        "$@" 'setuptools>=68' wheel 2>&1 | sed '/is ignored: it is neither a file nor a directory/d'
}

build_image() {  # TAG FLAVOR BASE
    local tag=$1 flavor=$2 base=$3
    say "building $tag (FLAVOR=$flavor, BASE_IMAGE=$base)"
    # Legacy builder: Debian's docker.io has no buildx. Docker's layer cache makes an
    # unchanged tree a no-op rebuild.
    DOCKER_BUILDKIT=0 docker build --quiet --network host -f compose/Dockerfile \
        --build-arg FLAVOR="$flavor" --build-arg BASE_IMAGE="$base" \
        --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src/wheelhouse \
        -t "$tag" . >/dev/null
    docker image prune -f --filter label=referee.flavor >/dev/null
}

engine_answers || start_engine
# Debian's docker-compose (1.29) for the compose-stack test; v2 (`docker compose`) also works.
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 \
    || apt_install docker-compose || say "no docker-compose: the compose test will skip"
say "engine $(docker version -f '{{.Server.Version}}' 2>/dev/null) answers"
build_base "$BASE_IMAGE" "$PACKAGES"
build_base "$PYTHON_IMAGE" "$PYTHON_PACKAGES"
build_runtime
size=$(docker image inspect -f '{{.Size}}' "$RUNTIME_IMAGE")
say "$RUNTIME_IMAGE ready ($((size / 1024 / 1024)) MiB)"

extras=('.[judge]')
if [ "${REFEREE_DOCKER_TRAINER:-0}" = 1 ]; then
    # The CPU torch wheel the venv was set up with (a bare torch would be the CUDA build).
    torch=$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')
    extras+=('.[trainer,judge]' "torch==$torch")
fi
say "filling the wheelhouse ($CACHE/wheelhouse)"
fill_wheelhouse "${extras[@]}"
# Into the build context (gitignored); hard links when the cache shares the filesystem.
rm -rf wheelhouse
cp -al "$CACHE/wheelhouse" wheelhouse 2>/dev/null || cp -a "$CACHE/wheelhouse" wheelhouse
build_image referee:dev services "$PYTHON_IMAGE"
build_image referee-sandbox:dev sandbox "$BASE_IMAGE"
[ "${REFEREE_DOCKER_TRAINER:-0}" = 1 ] && build_image referee-trainer:dev trainer "$PYTHON_IMAGE"
for image in referee:dev referee-sandbox:dev referee-trainer:dev; do
    size=$(docker image inspect -f '{{.Size}}' "$image" 2>/dev/null) || continue
    say "$image: $((size / 1024 / 1024)) MiB"
done
say "ready in $((SECONDS - start)) s"
