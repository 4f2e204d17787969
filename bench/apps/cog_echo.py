"""The no-op Cog predictor of ``bench/bench_gateway.py``: Cog's peer of ``openfal/echo``.

It runs in its own virtual environment with ``cog`` installed (not openfal's), served by
``python -m cog.server.http`` with ``COG_PREDICT_TYPE_STUB=<this file>:Runner``. It is async
because Cog runs more than one prediction at once (``COG_MAX_CONCURRENCY``, which the bench
sets) only for an async ``run()``, as ``openfal/echo`` multiplexes its requests.
"""

from cog import BaseRunner, Input


class Runner(BaseRunner):
    async def run(self, prompt: str = Input(description="Text to send back.")) -> str:
        return prompt
