import litellm

result = litellm.embedding(model="openai/all-MiniLM-L6-v2", api_base="http://127.0.0.1:7071/v1",
                           api_key="local-dev-key-0000", input=["first text", "second text"])
vectors = [item["embedding"] for item in result.data]
print(len(vectors), len(vectors[0]))  # 2 384
