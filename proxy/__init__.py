"""The OpenAI-compatible alignment proxy. Imports ``prompts`` only.

Layout (thin routes → a serving class → the forwarding modules):

- :mod:`proxy.app`        app factory, lifespan, thin routes (hot ones dispatched before Starlette's stack)
- :mod:`proxy.serving`    per-request flow: parse → route → inject → forward → relay, timing, metrics
- :mod:`proxy.injection`  minimal request checks and the prompt injection (via ``prompts.layout``)
- :mod:`proxy.routing`    which backend serves a model (config, discovery from ``/v1/models``)
- :mod:`proxy.upstream`   the forward call on aiohttp's client (stale keep-alive retry), transport errors mapped
- :mod:`proxy.streaming`  SSE framing and completion → chat translation
- :mod:`proxy.llamacpp`   llama.cpp fixes: backend kind, response_format rewrite, the missing usage chunk
- :mod:`proxy.snapshot`   the in-memory artifact snapshot with background hot swap
- :mod:`proxy.auth`       client keys and the bypass policy; :mod:`proxy.readiness` the cached ``/ready`` check
- :mod:`proxy.admin`      the admin API under ``/admin`` (FastAPI, only with ``DRPO_ADMIN_KEY``)
- :mod:`proxy.metrics`, :mod:`proxy.errors`, :mod:`proxy.asgi`, :mod:`proxy.server`
"""
