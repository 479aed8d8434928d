# The gitsync agent in a container. It talks to Docker through a mounted socket
# or over TCP+TLS (certificates mounted read-only), and keeps its git mirror and
# history in /var/lib/gitsync.
#
#   docker build -t gitsync .
#   docker run -d --name gitsync \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -v "$PWD/gitsync.yaml:/etc/gitsync/gitsync.yaml:ro" \
#     -v gitsync-state:/var/lib/gitsync \
#     -e GITSYNC_WEBHOOK_SECRET -e GITHUB_TOKEN \
#     -p 9100:9100 gitsync
#
# In the container, set server.listen: 0.0.0.0:9100 so that the published port reaches the agent.
# Access to the Docker socket is root on that host whatever the user inside; the
# agent still runs unprivileged here so a bug cannot write outside its state.
#
# Debian 12's own Python (3.11) and git, the agent in a virtual environment: any bookworm root
# file system can be the base (--build-arg BASE=...; the tests build it on a debootstrapped one).
ARG BASE=debian:bookworm-slim
FROM ${BASE}

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv git openssh-client gnupg ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/gitsync --create-home gitsync

WORKDIR /opt/gitsync
COPY pyproject.toml README.md ./
COPY gitsync ./gitsync
RUN python3 -m venv /opt/gitsync/venv \
 && /opt/gitsync/venv/bin/pip install --no-cache-dir . \
 && ln -s /opt/gitsync/venv/bin/gitsync /usr/local/bin/gitsync

USER gitsync
WORKDIR /var/lib/gitsync
VOLUME ["/var/lib/gitsync"]
EXPOSE 9100
ENTRYPOINT ["gitsync"]
CMD ["run", "-c", "/etc/gitsync/gitsync.yaml"]
