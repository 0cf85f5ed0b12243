# editstore daemon image.
#
#   docker build -t editstore .
#   docker run -d --name editstore -p 127.0.0.1:50051:50051 \
#       -v editstore-data:/var/lib/editstore editstore
#
# BASE_IMAGE must be a Debian-like image with python3 (3.11 or newer), the venv
# module and useradd. Both stages use it, so the virtual environment built in
# the first stage finds the same interpreter at the same path in the second.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# .dockerignore limits the context to what the wheel is built from.
COPY . .
RUN python3 -m venv /opt/editstore \
    && /opt/editstore/bin/pip wheel --no-deps --wheel-dir /dist . \
    && /opt/editstore/bin/pip install "$(ls /dist/editstore-*.whl)[postgres]"


FROM ${BASE_IMAGE} AS runtime

ARG EDITSTORE_UID=10001

RUN groupadd --gid "${EDITSTORE_UID}" editstore \
    && useradd --uid "${EDITSTORE_UID}" --gid editstore --no-create-home \
        --home-dir /var/lib/editstore --shell /usr/sbin/nologin editstore \
    && mkdir -p /var/lib/editstore \
    && chown editstore:editstore /var/lib/editstore \
    && chmod 0750 /var/lib/editstore

COPY --from=build /opt/editstore /opt/editstore

ENV PATH=/opt/editstore/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDITSTORE_LISTEN=0.0.0.0:50051 \
    EDITSTORE_DATABASE=sqlite:////var/lib/editstore/editstore.db \
    EDITSTORE_MIGRATE=1

VOLUME ["/var/lib/editstore"]
WORKDIR /var/lib/editstore
USER ${EDITSTORE_UID}:${EDITSTORE_UID}
EXPOSE 50051

# The health check asks the daemon's gRPC health service (grpc.health.v1) and
# passes when the daemon answers SERVING. Its address assumes the default
# EDITSTORE_LISTEN: override the health check when you change the port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["editstore", "health", "--address", "127.0.0.1:50051"]

ENTRYPOINT ["editstore"]
CMD ["serve"]
