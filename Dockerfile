# CI does not build this image. It proves its two steps in a brand-new venv (.ci/first_run.py: install
# requirements.txt alone, run the Procfile's command, which is this CMD) and replays its COPY lines
# (tests/e2e/test_deploy_files.py); keep both true when changing it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HOST=0.0.0.0 PORT=3000 USAGE_DB_PATH=/app/data/usage.sqlite3

WORKDIR /app

# Dependencies in their own layer: code changes do not reinstall them.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY app ./app
COPY config ./config
COPY client-setup ./client-setup
COPY wsgi.py pyproject.toml README.md ./

RUN useradd --system --uid 10001 --home /app nexus \
    && mkdir -p /app/data /app/credentials \
    && chown -R nexus /app/data
# Credential files are expected read-only at /app/credentials (mount with :ro).
VOLUME ["/app/data"]
USER nexus

EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('PORT','3000'), timeout=4)" || exit 1

CMD ["gunicorn", "-c", "config/gunicorn.conf.py", "wsgi:app"]
