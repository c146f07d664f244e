import { embedMany } from "ai";
import { createOpenAI } from "@ai-sdk/openai";

const openai = createOpenAI({ baseURL: "http://127.0.0.1:7071/v1", apiKey: "local-dev-key-0000" });
const { embeddings: vectors } = await embedMany({ model: openai.embedding("all-MiniLM-L6-v2"),
                                                  values: ["first text", "second text"] });
console.log(vectors.length, vectors[0].length);  // 2 384
