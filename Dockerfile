# CrispML images, from one pinned base:
#
# * the scoring service (the default, last stage): `crispml serve` on port 8000, as a
#   non-root user;
# * `--target ci`: the image the CI jobs run in (.gitlab-ci.yml, CRISPML_CI_IMAGE): the
#   package with every dependency (postgres and dev extras), git for DVC, so that no job
#   pays an 11-minute `pip install`. The jobs still run the commit's own code (they put
#   the checkout first on PYTHONPATH). Its tag is the hash of this file, pyproject.toml
#   and the lock files (tests/gitops/test_gitops_ci_file.py checks it), so a dependency
#   change gets a new image by construction. Both images install from the hashed locks.
#
#   docker build -t crispml-service .
#   docker build --target ci -t crispml-ci .
#   docker run -p 8000:8000 \
#     -e MLFLOW_TRACKING_URI=... -e CRISPML_STORE_URL=postgresql+psycopg://... \
#     -e CRISPML_API_TOKEN=... -e CRISPML_ENV=dev crispml-service
#
# Nothing secret is baked in: the registry, the store, the API token and the
# pseudonymisation key all come from the environment at run time. Without
# CRISPML_STORE_URL the service writes to a SQLite file inside the container, which is
# only fit for a single throwaway container.

# ---------------------------------------------------------------- build: a venv with the package
# The base, pinned to a patch release (bump deliberately; rebuilds both images).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Metadata first, then the code: the layer order a dependency cache can reuse.
COPY pyproject.toml README.md requirements.lock ./
# Hashed pins first (a layer a dependency cache can reuse), then the package alone.
RUN pip install --require-hashes --no-deps -r requirements.lock
COPY pipeline ./pipeline
# A regular (not editable) install: the image needs no source tree to run.
RUN pip install --no-deps . && pip check

# ---------------------------------------------------------------- ci: the CI jobs' image
FROM ${PYTHON_IMAGE} AS ci
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
# git: DVC and the lineage facts read the repository; the rest is the package's own.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md requirements-dev.lock ./
RUN pip install --require-hashes --no-deps -r requirements-dev.lock
COPY pipeline ./pipeline
RUN pip install --no-deps . && pip check && crispml --version
WORKDIR /

# ---------------------------------------------------------------- runtime (the default target)
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1
RUN groupadd --system --gid 10001 crispml \
 && useradd --system --uid 10001 --gid crispml --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin crispml
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The configuration the service reads (the data contract and the environment overlays),
# owned by root and read-only for the service user.
COPY params.yaml ./
COPY environments ./environments
# The only place the service user may write: the default SQLite store.
RUN mkdir -p /app/data/store && chown crispml:crispml /app/data/store
USER 10001:10001
EXPOSE 8000
# /healthz answers once the model is loaded and uvicorn listens; the start period covers
# loading MLflow and the model.
HEALTHCHECK --interval=15s --timeout=3s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["crispml"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
