from langchain_azure_ai.embeddings import AzureAIOpenAIApiEmbeddingsModel

embeddings = AzureAIOpenAIApiEmbeddingsModel(endpoint="http://127.0.0.1:7071/v1",
                                             credential="local-dev-key-0000")
vectors = embeddings.embed_documents(["first text", "second text"])
print(len(vectors), len(vectors[0]))  # 2 384
