"""Apps whose endpoint ids have the shapes the model pages show."""

from __future__ import annotations

from pydantic import BaseModel, Field

import openfal


class StreamInput(BaseModel):
    prompt: str
    steps: int = Field(default=2, ge=1, le=8)


class StreamOnly(openfal.App):
    """An endpoint whose own path ends in /stream and no root endpoint, like the catalog's
    fal-ai/flux-krea-lora/stream; and a sub-path endpoint for the by-id URL forms."""

    app_name = "krea"
    max_multiplexing = 4

    @openfal.endpoint("/stream")
    def stream(self, input: StreamInput) -> dict:
        for step in range(input.steps):
            openfal.partial({"step": step})
        return {"prompt": input.prompt, "steps": input.steps}

    @openfal.endpoint("/dev")
    def dev(self, input: StreamInput) -> dict:
        return {"prompt": input.prompt}
