import asyncio

from azure.ai.inference.aio import EmbeddingsClient
from azure.core.credentials import AzureKeyCredential


async def embed(texts):
    async with EmbeddingsClient(endpoint="http://127.0.0.1:7071",
                                credential=AzureKeyCredential("local-dev-key-0000")) as client:
        result = await client.embed(input=texts)
        return [item.embedding for item in result.data]

vectors = asyncio.run(embed(["first text", "second text"]))
print(len(vectors), len(vectors[0]))  # 2 384
