# MLflow tracking server with a Postgres backend store and an S3 (MinIO) artifact store.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN pip install --no-cache-dir "mlflow>=3.17,<4" "psycopg2-binary>=2.9" "boto3>=1.35" \
    && useradd --create-home --uid 50001 mlflow

USER 50001
EXPOSE 5000
ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
