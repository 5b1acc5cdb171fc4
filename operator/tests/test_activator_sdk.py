"""The official OpenAI Python SDK against the activator (FakeEngine behind it)."""

from __future__ import annotations

import openai
import pytest
from activator_fakes import DIMS, engines, harness, service_obj, vector


async def test_openai_sdk_embeddings() -> None:
    async with harness() as h, engines(1) as (e,):
        h.services.apply_service(
            service_obj(
                served="qwen3-small",
                model={"matryoshka": True, "dimensions": DIMS, "minDimensions": 2},
            )
        )
        h.services.set_endpoints("ns1", "emb", [e.address])
        client = openai.AsyncOpenAI(base_url=f"{h.url}/v1", api_key="unused", max_retries=0)
        try:
            # a string, with the SDK's default encoding (it asks for base64)
            r = await client.embeddings.create(model="qwen3-small", input="hello")
            assert e.bodies[-1]["encoding_format"] == "base64"
            assert r.model == "qwen3-small"
            assert r.data[0].embedding == vector(0, DIMS)
            # a list, floats explicitly
            r = await client.embeddings.create(
                model="ns1/qwen3-small", input=["a", "b", "c"], encoding_format="float"
            )
            assert [d.embedding for d in r.data] == [vector(i, DIMS) for i in range(3)]
            # dimensions
            r = await client.embeddings.create(model="qwen3-small", input="x", dimensions=4)
            assert r.data[0].embedding == vector(0, 4)
            # the models list
            models = [m.id async for m in client.models.list()]
            assert models == ["qwen3-small"]
            # unknown model -> the SDK's not-found error
            with pytest.raises(openai.NotFoundError):
                await client.embeddings.create(model="no-such-model", input="x")
            with pytest.raises(openai.BadRequestError):
                await client.embeddings.create(model="qwen3-small", input="x", dimensions=9999)
        finally:
            await client.close()
