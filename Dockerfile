# syntax=docker/dockerfile:1
# Build stage: a wheel of the project (migrations inside) and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY routing ./routing
COPY auth ./auth
COPY db ./db
COPY migrations ./migrations
RUN pip install --no-cache-dir --upgrade pip==24.3.1 \
 && pip wheel --no-cache-dir --wheel-dir /wheels '.[fast]'

# Runtime stage: no compilers, no sources, a non-root user.
FROM python:3.11-slim
RUN groupadd --system gateway && useradd --system --gid gateway --home-dir /nonexistent gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'plugin-gateway[fast]' && rm -rf /wheels
USER gateway
ENV GATEWAY_HOST=0.0.0.0 PYTHONUNBUFFERED=1
EXPOSE 8080 9180
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["gateway", "serve"]
