# An app in the hosted SDK's style that needs what the server lacks: a requirement from PyPI
# (inflection, installed into the app's own environment) and an app secret. Also plain
# parameters instead of a model, a Response for billing, and server-side streaming realtime.
import os
from collections.abc import Iterator

import fal
from fal.exceptions import AppException
from fal.toolkit import File, Image
from fastapi import Response
from pydantic import BaseModel


class Word(BaseModel):
    word: str


class Picture(BaseModel):
    image: Image


class Words(BaseModel):
    plural: str
    signed: str
    request_id: str | None


class Pluralizer(fal.App, keep_alive=30, name="pluralizer"):
    requirements = ["inflection==0.5.1"]
    secrets = ["PLURALIZER_SIGNATURE"]
    machine_type = "XS"

    def setup(self) -> None:
        import inflection

        self.pluralize = inflection.pluralize
        self.signature = os.environ.get("PLURALIZER_SIGNATURE", "unsigned")

    @fal.endpoint("/")
    def plural(self, input: Word, response: Response) -> Words:
        if not input.word.isalpha():
            raise AppException("letters only", 400)
        response.headers["x-fal-billable-units"] = str(len(input.word))
        plural = self.pluralize(input.word)
        return Words(plural=plural, signed=f"{plural} ({self.signature})",
                     request_id=self.current_request.request_id)

    @fal.endpoint("/count")
    async def count(self, word: str, times: int = 2) -> dict:
        return {"text": " ".join([word] * times)}

    @fal.endpoint("/file")
    def file(self, input: Word) -> File:
        return File.from_bytes(self.pluralize(input.word).encode(), "text/plain",
                               repository="in_memory")

    @fal.endpoint("/size")
    def size(self, input: Picture) -> dict:
        picture = input.image.to_pil()  # fetched now, not before the endpoint ran
        return {"size": list(picture.size), "mode": picture.mode}

    @fal.realtime("/realtime")
    def spell(self, input: Word) -> Iterator[Word]:
        for letter in input.word:
            yield Word(word=letter)
