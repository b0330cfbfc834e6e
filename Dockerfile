# syntax=docker/dockerfile:1
# One image for the API, every CronJob/Job and the MLflow server, so the MLflow client and server versions and
# the Feast definitions never drift apart between components.

# ---- build: compilers live here only --------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fallback for any dependency that has no wheel for this platform; none of it reaches the runtime stage. Pinned
# (hadolint DL3008) to the version of the base image's Debian release, which is why the base names it (bookworm):
# a new release changes the version, and the build then fails here instead of installing whatever came.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential=12.9 \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, from pyproject alone, so a source change does not reinstall Feast and MLflow.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

COPY churn_common ./churn_common
COPY products ./products
COPY transformations ./transformations
COPY training ./training
COPY serving ./serving
COPY monitoring ./monitoring
COPY jobs ./jobs
# Non-editable: the runtime stage gets the packages inside the venv, not a link back to /src.
RUN pip install --no-deps . \
 && churn --help >/dev/null

# ---- runtime ----------------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime

# The installed package cannot find feature_repo/ or data/ relative to itself (it lives in site-packages),
# so both are pinned here. MPLCONFIGDIR and PYTHONDONTWRITEBYTECODE keep a read-only root filesystem working.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    CHURN_FEATURE_REPO=/app/feature_repo \
    CHURN_DATA_DIR=/data \
    CHURN_API_HOST=0.0.0.0 \
    CHURN_API_PORT=8000

RUN groupadd --system --gid 10001 churn \
 && useradd --system --uid 10001 --gid churn --home-dir /home/churn --create-home --shell /usr/sbin/nologin churn \
 && mkdir -p /data \
 && chown churn:churn /data

COPY --from=build /opt/venv /opt/venv
# Owned by root and not writable by the app user: the feature definitions are code, not state.
COPY feature_repo /app/feature_repo

WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000

# The slim image has no curl; the interpreter is already there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('CHURN_API_PORT', '8000'), timeout=4)"]

CMD ["churn", "serve"]
