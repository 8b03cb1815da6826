# send-sikkert gateway image: slim Python, a non-root user, the queue on a volume.
#
#   docker build -t send-sikkert .
#   docker run -d --name send-sikkert --stop-timeout 40 \
#     -v /etc/send-sikkert:/etc/send-sikkert:ro -e SEND_SIKKERT_CONFIG=/etc/send-sikkert/gateway.toml \
#     -v send-sikkert-var:/opt/send-sikkert/var -p 25:2525 -p 127.0.0.1:8025:8025 send-sikkert
#
# The configuration, keys and SEPO list are mounted at run time; spool.dir must lie in the
# volume (/opt/send-sikkert/var, as "../var/spool" from policies/ does). `docker stop` sends
# SIGTERM: the gateway stops accepting, lets deliveries in flight finish (up to 30 s) and
# exits 0; give it --stop-timeout 40 (compose: stop_grace_period) so it is never killed.

# Build the wheels (bonsai compiles against libldap) where the compiler may be.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libldap2-dev libsasl2-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# The image that runs: the wheels and the run-time libraries, nothing to build with.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends libldap-2.5-0 libsasl2-2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index /tmp/wheels/*.whl && rm -rf /tmp/wheels

RUN useradd --system --user-group --uid 10025 --home-dir /opt/send-sikkert --no-create-home \
            --shell /usr/sbin/nologin send-sikkert
WORKDIR /opt/send-sikkert
COPY policies ./policies
# certs/ and var/ belong to the gateway's user, so named volumes mounted there start so.
RUN mkdir -p certs var/spool && chown -R send-sikkert:send-sikkert certs var
VOLUME ["/opt/send-sikkert/var"]
USER send-sikkert

ENV PYTHONUNBUFFERED=1 \
    SEND_SIKKERT_HEALTH_URL=http://127.0.0.1:8025/healthz
EXPOSE 2525 8025
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SEND_SIKKERT_HEALTH_URL'], timeout=4)"]
# Exec form: send-sikkert is PID 1 and gets SIGTERM itself, not through a shell.
ENTRYPOINT ["send-sikkert"]
CMD ["serve"]
