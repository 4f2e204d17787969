"""Webhooks: ``fal_webhook`` on queue submits, delivered signed, at least once.

``targets``: the URL checks and a request's webhook options. ``payload``: the body.
``signing``: Ed25519 keys, signatures and the JWKS. ``delivery``: the worker and its outbox.
"""
