# One image for every Chuangwei service; the command picks the service.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
COPY infra ./infra
RUN pip install --no-cache-dir .
EXPOSE 8000
CMD ["nameko", "run", "--config", "infra/nameko.yaml", "services.inspection.service"]
