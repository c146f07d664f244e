import { OpenAIEmbeddings } from "@langchain/openai";

const embeddings = new OpenAIEmbeddings({ model: "all-MiniLM-L6-v2", apiKey: "local-dev-key-0000",
                                          configuration: { baseURL: "http://127.0.0.1:7071/v1" } });
const vectors = await embeddings.embedDocuments(["first text", "second text"]);
console.log(vectors.length, vectors[0].length);  // 2 384
