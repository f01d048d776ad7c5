# GPU trainer: runs `mora train <config>` on a CUDA device.
# Build from the repository root: docker build -f docker/trainer.Dockerfile .
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN useradd --create-home --uid 50000 mora
WORKDIR /opt/mora
COPY pyproject.toml README.md ./
COPY pipelines ./pipelines
COPY mora_models ./mora_models
COPY sql ./sql
COPY expectations ./expectations
COPY configs ./configs

# The base image's CUDA torch satisfies the torch requirement, so pip keeps it.
RUN pip install --no-cache-dir --no-deps . \
    && pip install --no-cache-dir \
        "torch-geometric>=2.8,<2.9" "mlflow>=3.17,<4" "great-expectations>=1.24,<2" \
        "duckdb>=2.0,<3" "h3>=4.5,<5" "h3ronpy>=0.22,<0.23" "geopandas>=1.1" \
        "rioxarray>=0.19" "pooch>=1.8" "pydantic>=2.9" "scikit-learn>=1.6" \
        "lightgbm>=4.5" "pyarrow>=19" "tqdm>=4.66" "boto3>=1.35"

USER 50000
ENTRYPOINT []
CMD ["mora", "--help"]
