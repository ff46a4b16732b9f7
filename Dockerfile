# jpki-va container images, one per role, from one file (build context: the repository):
#
#   docker build --target responder -t jpki-va-responder .
#   docker build --target signer    -t jpki-va-signer .
#
# Both run from a virtual environment as an unprivileged user (uid 10001), take their
# settings from a TOML file (--config; keys as in README "Running the roles yourself")
# and report health through grpc.health.v1 (`jpki-va health`). The bench is not
# installed. Only the signer image carries a PKCS#11 module (SoftHSM2, the embedded
# default; mount a vendor's module and name it in [hsm] module). No container engine
# runs in CI: tests/integration/deploy/test_images.py replays the build stage's steps
# into a fresh venv and checks each stage against this file.

FROM python:3.11-slim-bookworm AS base
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/jpki-va --create-home jpki-va
ENV PATH=/opt/jpki-va/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The venv, built once and copied into each role's image: four of the five
# distributions (protos, client, hsm, server); the bench (numpy, matplotlib) stays out.
FROM base AS build
WORKDIR /src
# A C compiler for the compiled CheckStream encoder (setup.py); only this stage has it.
RUN command -v gcc >/dev/null || { apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*; }
COPY pyproject.toml setup.py constraints.txt README.md ./
COPY protos ./protos
COPY client ./client
COPY hsm ./hsm
COPY server ./server
RUN python -m venv /opt/jpki-va/venv \
    && /opt/jpki-va/venv/bin/pip install --no-cache-dir -c constraints.txt ./protos ./client ./hsm .

# The responder: gRPC status, HTTP OCSP and CRLs from a local LMDB index built from
# signed snapshots. It never touches the HSM, so it has no PKCS#11 module.
FROM base AS responder
COPY --from=build /opt/jpki-va/venv /opt/jpki-va/venv
USER 10001
# state: the index, OCSP key, ledgers (must be the pod's own); snapshots: a local store.
VOLUME ["/var/lib/jpki-va/state", "/var/lib/jpki-va/snapshots"]
# gRPC (mTLS), HTTP OCSP and CRLs (--http-tls), Prometheus /metrics (--metrics-tls).
EXPOSE 50051 8443 9100
# The deployment sets JPKI_VA_HEALTH_CA, _CLIENT_CERT, _CLIENT_KEY, _TLS_SERVER_NAME
# (or _INSECURE_LOOPBACK=1 for a demo): see `jpki-va health --help`.
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["jpki-va", "health", "--server", "127.0.0.1:50051"]
ENTRYPOINT ["jpki-va", "responder"]
CMD ["--config", "/etc/jpki-va/responder.toml"]

# The signer: the registry and every signature made with an HSM key. One replica.
FROM base AS signer
RUN apt-get update \
    && apt-get install -y --no-install-recommends softhsm2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/jpki-va/venv /opt/jpki-va/venv
USER 10001
# data: registry, snapshots, ledger, ceremony records; tokens: SoftHSM2's token store.
VOLUME ["/var/lib/jpki-va/data", "/var/lib/jpki-va/tokens"]
# gRPC (mTLS), Prometheus /metrics (--metrics-tls).
EXPOSE 50052 9100
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 \
    CMD ["jpki-va", "health", "--server", "127.0.0.1:50052"]
ENTRYPOINT ["jpki-va", "signer"]
CMD ["--config", "/etc/jpki-va/signer.toml"]
