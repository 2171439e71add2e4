# One image for every Chuangwei service; the command picks the service.
# The console's chart library and CJK font come from npm at build time (never a CDN at run time).
FROM node:20-slim AS console-assets
WORKDIR /assets
COPY services/console/assets/package.json services/console/assets/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# The bulletin PDF embeds a subset of this free CJK font (notify/pdf.py).
RUN apt-get update && apt-get install -y --no-install-recommends fonts-wqy-microhei \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY services ./services
COPY infra ./infra
RUN pip install --no-cache-dir .
COPY --from=console-assets /assets/node_modules /app/console-assets/node_modules
ENV CONSOLE_ASSETS_DIR=/app/console-assets/node_modules
EXPOSE 8000
CMD ["nameko", "run", "--config", "infra/nameko.yaml", "services.inspection.service"]
