import OpenAI from "openai";

const client = new OpenAI({ baseURL: "http://127.0.0.1:7071/v1", apiKey: "local-dev-key-0000" });
const result = await client.embeddings.create({ input: ["first text", "second text"],
                                                model: "all-MiniLM-L6-v2" });
const vectors = result.data.map((item) => item.embedding);
console.log(vectors.length, vectors[0].length);  // 2 384
