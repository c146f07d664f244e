import ModelClient, { isUnexpected } from "@azure-rest/ai-inference";
import { AzureKeyCredential } from "@azure/core-auth";

// allowInsecureConnection only for make serve's http:// address; a deployed Function is https.
const client = ModelClient("http://127.0.0.1:7071", new AzureKeyCredential("local-dev-key-0000"),
                           { allowInsecureConnection: true });
const response = await client.path("/embeddings").post({
  body: { input: ["first text", "second text"], model: "all-MiniLM-L6-v2" },
});
if (isUnexpected(response)) throw new Error(response.body.error.message);
const vectors = response.body.data.map((item) => item.embedding);
console.log(vectors.length, vectors[0].length);  // 2 384
