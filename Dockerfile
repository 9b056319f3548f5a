# syntax=docker/dockerfile:1
# One image for every Runstore service; the command picks the service:
#   docker run --rm runstore:local engine | projector | api
# Used by docker-compose.yml. Build context: the repo root (see .dockerignore).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: wheels for the dependencies (cached layer), then for runstore itself ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# Dependencies change less often than the code: resolve them from pyproject.toml alone so
# that editing a .py file does not re-download the whole stack.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip wheel --wheel-dir /wheels -r requirements.txt

COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- runtime: only the installed wheels, no sources or build tools; non-root -------------
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RUNSTORE_API_HOST=0.0.0.0 \
    RUNSTORE_API_PORT=8080

RUN groupadd --system --gid 10001 runstore \
 && useradd --system --uid 10001 --gid runstore --home-dir /home/runstore --create-home \
        --shell /usr/sbin/nologin runstore

COPY --from=build /wheels /tmp/wheels
RUN pip install --no-index --find-links=/tmp/wheels runstore \
 && rm -rf /tmp/wheels

USER runstore:runstore
WORKDIR /home/runstore
EXPOSE 8080
ENTRYPOINT ["runstore"]
CMD ["api"]
