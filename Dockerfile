# rover_stream in a container: `rover-stream serve` (gunicorn, gevent workers) on 0.0.0.0:8000, as a user
# without privileges, writing what it generates to the /data volume.
#
#     docker build -t rover-stream .
#     docker run --rm -p 127.0.0.1:8000:8000 -e ROVER_SECRET_KEY="$(openssl rand -base64 48)" rover-stream
#
# The server refuses to listen beyond loopback without ROVER_SECRET_KEY (32+ characters): an open hub on
# 0.0.0.0 would let anyone publish. One worker needs nothing else; more (ROVER_WORKERS or WEB_CONCURRENCY)
# need ROVER_REDIS_URL. compose.yaml runs the whole deployment: two workers, Redis, nginx in front. Every
# other setting is a ROVER_* variable (docs/settings.md). The same image mints tokens:
#
#     docker run --rm -e ROVER_SECRET_KEY=... rover-stream token --publish 'news'
#
# tests/test_container.py builds this file and runs compose.yaml (with podman).

# -- build: a virtual environment with rover-stream and its dependencies ----------------------------------
FROM debian:bookworm-slim AS build

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/rover-stream
WORKDIR /src

# The dependencies first, from setup.cfg alone: this layer stays cached while only the code changes.
COPY setup.cfg ./
RUN python3 -c 'import configparser; c = configparser.ConfigParser(interpolation=None); \
c.read("setup.cfg"); \
print(c.get("options", "install_requires", fallback=""))' > requirements.txt \
    && /opt/rover-stream/bin/pip install -r requirements.txt

# Then the project itself (.dockerignore lets in only what the wheel is built from).
COPY . .
RUN /opt/rover-stream/bin/pip install . \
    && /opt/rover-stream/bin/rover-stream --help >/dev/null

# -- run: Python, the environment, a user of its own ---------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 rover \
    && useradd --uid 10001 --gid rover --home-dir /data --no-create-home --shell /usr/sbin/nologin rover \
    && mkdir /data && chown rover:rover /data

COPY --from=build /opt/rover-stream /opt/rover-stream

# HOST/PORT: where gunicorn listens (ROVER_BIND=HOST:PORT would win over both; change PORT rather, which the
# HEALTHCHECK follows). ROVER_DATA_DIR: what the server generates and the uploads folder, on the volume.
ENV PATH=/opt/rover-stream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    ROVER_DATA_DIR=/data

USER rover
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000

# Liveness: /health answers 200 while the process serves (point load balancers at /ready instead).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]

# gunicorn runs as PID 1: it reaps its workers, and SIGTERM (docker stop) ends every stream with a final
# `event: shutdown` within a few seconds, well inside the default 10 s stop timeout.
ENTRYPOINT ["rover-stream"]
CMD ["serve"]
