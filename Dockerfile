# send-sikkert gateway image. The configuration and certificates are mounted at run time:
#   docker run -v /etc/send-sikkert:/etc/send-sikkert -e SEND_SIKKERT_CONFIG=/etc/send-sikkert/gateway.toml ...
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libldap2-dev libsasl2-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/send-sikkert
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . \
 && apt-get purge -y gcc && apt-get autoremove -y

COPY policies ./policies
RUN useradd --system --home /var/lib/send-sikkert send-sikkert \
 && mkdir -p /var/lib/send-sikkert && chown send-sikkert /var/lib/send-sikkert
USER send-sikkert
EXPOSE 2525 8025
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8025/healthz')"
ENTRYPOINT ["send-sikkert"]
CMD ["serve"]
