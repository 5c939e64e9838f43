# The pgbatch app image used by docker-compose.yml: the library, its `pgbatch` command and
# the example workers in workers/. Build: docker build -t pgbatch .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # `pgbatch worker workers.emails:app` and `python -m workers.producer` import from here.
    PYTHONPATH=/app

WORKDIR /app

# The package first, the examples after: editing an example does not reinstall pgbatch.
COPY pyproject.toml README.md ./
COPY pgbatch ./pgbatch
RUN pip install .

COPY workers ./workers

# No root at run time; no embedded PostgreSQL either (compose gives PGBATCH_DSN).
RUN useradd --create-home --uid 10001 pgbatch
USER pgbatch

CMD ["pgbatch", "--help"]
