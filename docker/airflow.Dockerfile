# Airflow scheduler, API server and workers with mora installed.
# Build from the repository root: docker build -f docker/airflow.Dockerfile .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/mora/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

# libgomp1 (OpenMP, for LightGBM) follows Debian's security updates, so it is not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 50000 airflow
WORKDIR /opt/mora
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY pipelines ./pipelines
COPY mora_models ./mora_models
COPY sql ./sql
COPY expectations ./expectations
COPY configs ./configs
COPY dags ./dags

# torch first and exactly, as scripts/install.sh does, so no CUDA build is pulled.
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir --constraint requirements/constraints.txt ".[deploy]" \
        "psycopg2-binary>=2.9"

USER 50000
EXPOSE 8080
ENTRYPOINT ["airflow"]
CMD ["api-server"]
