# A slim image that runs `rapport serve`. No Docker engine runs on the project's own
# machines, so this file is kept simple and is not built in CI (see README, Operations).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    RAPPORT_MIGRATIONS_DIR=/srv/rapport/migrations

WORKDIR /srv/rapport
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip install ".[postgres]" \
    && useradd --system --home-dir /data --create-home rapport

# The embedded SQLite default writes rapport.db into the working directory: mount /data
# to keep it, or set RAPPORT_DATABASE_URL to a PostgreSQL server.
USER rapport
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
# Requests in flight get 8 s after SIGTERM: inside `docker stop`'s 10 s before its SIGKILL
# (give both more with `docker stop -t N` and --shutdown-timeout below N).
CMD ["rapport", "serve", "--host", "0.0.0.0", "--port", "8000", "--shutdown-timeout", "8"]
