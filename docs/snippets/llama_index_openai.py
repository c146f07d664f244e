from llama_index.embeddings.openai import OpenAIEmbedding

embed_model = OpenAIEmbedding(api_base="http://127.0.0.1:7071/v1", api_key="local-dev-key-0000",
                              model_name="all-MiniLM-L6-v2")
vectors = embed_model.get_text_embedding_batch(["first text", "second text"])
print(len(vectors), len(vectors[0]))  # 2 384
