from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:7071/v1", api_key="local-dev-key-0000")
result = client.embeddings.create(input=["first text", "second text"], model="all-MiniLM-L6-v2")
vectors = [item.embedding for item in result.data]
print(len(vectors), len(vectors[0]))  # 2 384
