import asyncio

from azure.ai.inference.aio import EmbeddingsClient
from azure.core.credentials import AzureKeyCredential
from semantic_kernel.connectors.ai.azure_ai_inference import AzureAIInferenceTextEmbedding


async def embed(texts):
    async with EmbeddingsClient(endpoint="http://127.0.0.1:7071",
                                credential=AzureKeyCredential("local-dev-key-0000")) as client:
        service = AzureAIInferenceTextEmbedding(ai_model_id="all-MiniLM-L6-v2", client=client)
        return await service.generate_embeddings(texts)

vectors = asyncio.run(embed(["first text", "second text"]))
print(len(vectors), len(vectors[0]))  # 2 384
