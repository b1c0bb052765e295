# The image the Docker sandbox backend (sandboxes/docker_backend.py) runs jobs in:
# the toolchains of sandboxes/languages.py, no setuid binaries, /work owned by nobody.
#
# Air-gapped builds (DESIGN.md section 7): pass a local base image, e.g. one made by
# .ci/docker.sh with mmdebstrap + docker import, and build with host networking because a
# daemon started with --bridge=none has no default network:
#   docker build --network host --build-arg BASE_IMAGE=referee-base:bookworm \
#     -f compose/sandbox-runtime.Dockerfile -t referee-sandbox-runtime:latest compose
# The toolchains are installed with apt only when the base lacks them, so a base that
# already carries them (.ci/docker.sh makes one) builds in seconds with no download.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Accepted like every image of DESIGN.md section 7; nothing here installs from pip.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS

# setuid bits are stripped although no-new-privileges already keeps them from elevating.
RUN set -eu; \
    missing=""; \
    for pair in python3:python3 gcc:gcc g++:g++ node:nodejs bash:bash prlimit:util-linux \
                tar:tar env:coreutils; do \
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"; \
    done; \
    [ -e /usr/include/stdio.h ] || missing="$missing libc6-dev"; \
    if [ -n "$missing" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    find / -xdev -type f -perm /6000 -exec chmod a-s {} +; \
    mkdir -p /work; chown 65534:65534 /work; chmod 0700 /work

LABEL org.opencontainers.image.title="referee-sandbox-runtime" \
      org.opencontainers.image.description="Toolchains for referee sandbox jobs"
USER 65534:65534
WORKDIR /work
CMD ["sleep", "infinity"]
