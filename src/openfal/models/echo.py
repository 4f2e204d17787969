"""``openfal/echo``: returns its input. A smoke test for a server and the no-op app of the
benchmarks, so it does as little as an app can."""

from __future__ import annotations

from pydantic import BaseModel, Field

import openfal


class EchoInput(BaseModel):
    prompt: str = Field(description="Text to send back.", examples=["hello"])


class EchoOutput(BaseModel):
    text: str = Field(description="The prompt, unchanged.")


class Echo(openfal.App):
    app_name = "echo"
    keep_alive = 300
    max_concurrency = 1
    max_multiplexing = 64

    @openfal.endpoint("/")
    async def run(self, input: EchoInput) -> EchoOutput:
        return EchoOutput(text=input.prompt)
