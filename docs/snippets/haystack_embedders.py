from haystack import Document
from haystack.components.embedders import OpenAIDocumentEmbedder
from haystack.utils import Secret

embedder = OpenAIDocumentEmbedder(api_base_url="http://127.0.0.1:7071/v1",
                                  api_key=Secret.from_token("local-dev-key-0000"),
                                  model="all-MiniLM-L6-v2")
documents = embedder.run([Document(content="first text"), Document(content="second text")])
vectors = [document.embedding for document in documents["documents"]]
print(len(vectors), len(vectors[0]))  # 2 384
