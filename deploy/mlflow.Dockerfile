# syntax=docker/dockerfile:1.7
#
# An image for the unmodified `mlflow server` behind the gate, with the PostgreSQL driver
# (psycopg2) and the S3 client (boto3). Build it from any folder (it copies nothing in):
#
#     docker build -f deploy/mlflow.Dockerfile -t mlflow-server:3.17.2 deploy
#
# Keep MLFLOW_VERSION equal to the one in deploy/Dockerfile: the gate's route table is checked
# against that mlflow's routes (tests/unit/test_route_coverage.py).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13
ARG BOTO3_VERSION=1.44.8
RUN python -m venv /opt/mlflow \
 && /opt/mlflow/bin/pip install "mlflow==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}" \
                                "boto3==${BOTO3_VERSION}"


FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="mlflow-server" \
      org.opencontainers.image.description="mlflow server with PostgreSQL and S3 drivers, meant to run behind mlflow-gate"
# The venv is copied whole from the build stage (same base image, same path).
COPY --from=build /opt/mlflow /opt/mlflow
ENV PATH=/opt/mlflow/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
    HOME=/tmp
RUN groupadd --system --gid 10001 mlflow \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mlflow
USER 10001:10001
WORKDIR /tmp
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["mlflow"]
# Never publish this port: only the gate may reach it (see deploy/README.md).
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
