from azure.ai.inference import EmbeddingsClient
from azure.ai.inference.models import EmbeddingEncodingFormat, EmbeddingInputType
from azure.core.credentials import AzureKeyCredential

client = EmbeddingsClient(endpoint="http://127.0.0.1:7071",
                          credential=AzureKeyCredential("local-dev-key-0000"))
result = client.embed(input=["first text", "second text"], input_type=EmbeddingInputType.QUERY,
                      encoding_format=EmbeddingEncodingFormat.INT8)
vectors = [item.embedding for item in result.data]  # 384 integers each
print(len(vectors), len(vectors[0]))  # 2 384
