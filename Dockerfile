# Image with the `projector` command line, used by docker-compose.yml. A lean install: no
# embedded PostgreSQL (the `embedded` extra); the database is PROJECTOR_DATABASE_URL.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY projector ./projector
COPY migrations ./migrations
RUN pip install --no-cache-dir .
ENTRYPOINT ["projector"]
CMD ["--help"]
