# syntax=docker/dockerfile:1
# The tidings image: `tidings` is the entry point, `run` the default command.
#
#   docker build -t tidings:0.1.0 .
#   docker run --rm -e TIDINGS_DATABASE_URL=postgresql://... tidings:0.1.0 migrate
#   docker run --rm -e TIDINGS_DATABASE_URL=postgresql://... -p 9464:9464 \
#       tidings:0.1.0 run --metrics-addr 0.0.0.0:9464
#
# Every setting comes from TIDINGS_* variables (docs/settings.md); the image
# never starts the embedded PostgreSQL (TIDINGS_DATABASE_ALLOW_EMBEDDED=false),
# so a missing TIDINGS_DATABASE_URL stops it with an error that says so.
# PYTHON_IMAGE may name a mirror of the same Debian-based Python image.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- build: the wheel, and a virtualenv with it and its dependencies --------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tidings ./tidings
# Every dependency ships wheels (psycopg's binary build among them), so no
# compiler is needed here either; the final stage gets the virtualenv only.
RUN python -m venv /opt/tidings \
    && /opt/tidings/bin/python -m pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/tidings/bin/python -m pip install /wheels/tidings-*.whl

# ---- the image ---------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# tini forwards SIGTERM to tidings and reaps its children; -s keeps that true
# under `docker run --init` or a pod's shared process namespace, where tini is
# not PID 1 itself.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 tidings \
    && useradd --system --uid 10001 --gid tidings --home-dir /home/tidings --create-home \
        --shell /usr/sbin/nologin tidings \
    && install -d -o tidings -g tidings /home/tidings/outbox
COPY --from=build /opt/tidings /opt/tidings
ENV PATH=/opt/tidings/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TIDINGS_DATABASE_ALLOW_EMBEDDED=false
WORKDIR /home/tidings
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# 9464: /metrics, /healthz and /readyz of `tidings run --metrics-addr 0.0.0.0:9464`;
# 8080: the HTTP API of `tidings serve --addr 0.0.0.0:8080`.
EXPOSE 9464 8080
# SIGTERM stops claiming, lets the bulks in flight finish, records their outcomes
# and exits 0; give it at least half of notifications.transaction_duration.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "-s", "--", "tidings"]
CMD ["run"]
