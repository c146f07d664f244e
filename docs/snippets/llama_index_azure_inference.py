from llama_index.embeddings.azure_inference import AzureAIEmbeddingsModel

embed_model = AzureAIEmbeddingsModel(endpoint="http://127.0.0.1:7071", credential="local-dev-key-0000")
vectors = embed_model.get_text_embedding_batch(["first text", "second text"])
print(len(vectors), len(vectors[0]))  # 2 384
