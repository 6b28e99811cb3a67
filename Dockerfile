# syntax=docker/dockerfile:1
# Build stage: wheels of the project (the SQL migrations travel inside it) and of its dependencies
# at the pins of requirements.lock, every download checked against the lock's hashes (scripts/lock
# makes it; scripts/audit audits it). Their own layer: it changes only with the lock.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir pip==24.3.1
COPY requirements.lock ./
RUN pip wheel --no-cache-dir --wheel-dir /wheels --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY routing ./routing
COPY auth ./auth
COPY db ./db
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels --no-deps '.'

# Runtime stage: no compilers, no sources, a non-root user with a fixed id. /wheels holds one
# version of each dependency, the locked one, so the install below cannot pick another.
FROM python:3.11-slim
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'plugin-gateway==0.1.0' && rm -rf /wheels
USER 10001:10001
ENV GATEWAY_HOST=0.0.0.0 PYTHONUNBUFFERED=1
EXPOSE 8080 9180
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
# The same two commands as the README's "Running it for real": migrate (a no-op when up to
# date, safe from many replicas at once), then serve.
CMD ["sh", "-c", "gateway migrate && exec gateway serve"]
