# The responder: gRPC status and OCSP from a local LMDB index built from signed
# snapshots. It never touches the HSM, so the image carries no PKCS#11 module.
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/jpki-va --create-home jpki-va

WORKDIR /opt/jpki-va
COPY pyproject.toml constraints.txt README.md ./
COPY protos ./protos
COPY client ./client
COPY hsm ./hsm
COPY server ./server
# Four of the five distributions: the bench (and numpy, matplotlib) stays out.
RUN pip install --no-cache-dir -c constraints.txt ./protos ./client ./hsm .

USER jpki-va
# /snapshots: where the signer publishes (read-only mount); /state: index and OCSP key.
VOLUME ["/state"]
EXPOSE 50051
ENTRYPOINT ["jpki-va", "responder", "--snapshots", "/snapshots", "--state-dir", "/state"]
# Add --trust-anchor /config/root.pem and TLS options (or --insecure-loopback for a demo).
CMD ["--help"]
