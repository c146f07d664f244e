import os

import chromadb
from chromadb.utils.embedding_functions import OpenAIEmbeddingFunction

os.environ["CHROMA_OPENAI_API_KEY"] = "local-dev-key-0000"  # or export it before starting Python
embed = OpenAIEmbeddingFunction(api_base="http://127.0.0.1:7071/v1", model_name="all-MiniLM-L6-v2")
collection = chromadb.EphemeralClient().get_or_create_collection("texts", embedding_function=embed)
collection.upsert(ids=["1", "2"], documents=["first text", "second text"])
vectors = collection.get(ids=["1", "2"], include=["embeddings"])["embeddings"]
print(len(vectors), len(vectors[0]))  # 2 384
