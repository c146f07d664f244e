from langchain_openai import OpenAIEmbeddings

embeddings = OpenAIEmbeddings(base_url="http://127.0.0.1:7071/v1", api_key="local-dev-key-0000")
vectors = embeddings.embed_documents(["first text", "second text"])
print(len(vectors), len(vectors[0]))  # 2 384
