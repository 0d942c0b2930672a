# One image for every Mailroom process; compose.yaml picks the command (worker, flower, ...).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package needs: tests, scripts and the build context's .venv stay out of the image.
COPY pyproject.toml README.md ./
COPY settings ./settings
COPY workers ./workers
COPY tasks ./tasks
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mailroom

# Nothing in a worker needs root: it only talks to Redis and to remote SMTP ports.
USER mailroom
ENTRYPOINT ["mailroom"]
CMD ["worker"]
