# drpo-proxy: the alignment proxy (and optimizer) in one image.
#
#   docker build -t drpo-proxy .                         # proxy only, talks to any OpenAI-compatible backend
#   docker build -t drpo-proxy:local --build-arg EXTRAS=local .   # + embedded llama.cpp/SmolLM2 backend
#
# The store lives in /data (DRPO_HOME): mount a volume there so prompt versions survive restarts.
# Listening on 0.0.0.0 requires client keys (DRPO_API_KEYS), or an explicit --insecure.

FROM python:3.11-slim AS build
ARG EXTRAS=""
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY optimizer ./optimizer
COPY prompts ./prompts
COPY drpo ./drpo
# GGML_NATIVE=OFF: a -march=native llama.cpp build crashes on some CPUs and would not be portable anyway.
RUN python -m venv /opt/drpo \
 && CMAKE_ARGS="-DGGML_NATIVE=OFF" /opt/drpo/bin/pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 drpo && mkdir -p /data && chown drpo /data
# libgomp is needed by llama.cpp when the 'local' extra is installed; harmless otherwise.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/drpo /opt/drpo
ENV PATH=/opt/drpo/bin:$PATH \
    DRPO_HOME=/data \
    PYTHONUNBUFFERED=1
USER drpo
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health').status == 200 else 1)"
ENTRYPOINT ["drpo"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
