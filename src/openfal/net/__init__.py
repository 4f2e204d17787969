"""Networking around the gateway so the unchanged fal-client can reach it.

fal-client always speaks ``https``/``wss`` and hard-codes some of its hosts, so openfal can
serve TLS with a certificate from a local CA (``tls``), run an HTTP CONNECT proxy that sends
the fal host names to this server (``proxy``), and describe the running server in
``<data-dir>/server.json`` (``runtime``) for ``openfal env``.
"""
