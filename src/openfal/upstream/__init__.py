"""Routing endpoints to an upstream provider that speaks the queue API (the hosted platform,
or another openfal): configuration, where each endpoint runs, and the forwarding client
that runs inside a runner like any app."""
