from langchain_azure_ai.embeddings.inference import AzureAIEmbeddingsModel

embeddings = AzureAIEmbeddingsModel(endpoint="http://127.0.0.1:7071", credential="local-dev-key-0000")
vectors = embeddings.embed_documents(["first text", "second text"])
print(len(vectors), len(vectors[0]))  # 2 384
