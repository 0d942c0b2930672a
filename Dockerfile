# One image for every Mailroom process; compose.yaml picks the command (worker, flower, ...).
# Base images are pinned by tag; the Python packages by uv.lock (versions and hashes).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/mailroom \
    PATH=/opt/mailroom/bin:$PATH

WORKDIR /app
# Only what the package needs: tests, scripts and the build context's .venv stay out of the image.
COPY scripts/uv-requirements.txt ./scripts/
RUN pip install --no-deps --require-hashes -r scripts/uv-requirements.txt
COPY pyproject.toml uv.lock README.md ./
COPY settings ./settings
COPY workers ./workers
COPY tasks ./tasks
# Exactly the locked runtime set (every extra: worker, flower, submission), no test or lint tools,
# installed as a normal (not editable) package.
RUN uv sync --locked --no-cache --no-editable --extra all \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mailroom

# Nothing in a worker needs root: it only talks to Redis and to remote SMTP ports.
USER mailroom
ENTRYPOINT ["mailroom"]
CMD ["worker"]
