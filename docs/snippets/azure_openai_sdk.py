from openai import AzureOpenAI

client = AzureOpenAI(azure_endpoint="http://127.0.0.1:7071", api_key="local-dev-key-0000",
                     api_version="2024-10-21", azure_deployment="all-MiniLM-L6-v2")
result = client.embeddings.create(input=["first text", "second text"], model="all-MiniLM-L6-v2")
vectors = [item.embedding for item in result.data]
print(len(vectors), len(vectors[0]))  # 2 384
