// The official OpenAI Node SDK against a Tightwad proxy (tests/tests/sdk_clients.rs runs it).
// argv: BASE_URL CHAT_MODEL EMBED_MODEL; NODE_PATH names the SDK's node_modules. Every check
// asserts; the last line printed is a JSON summary the Rust test reads.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH, "noop.js"));
const OpenAI = require("openai").default ?? require("openai");
const [base, chatModel, embedModel] = process.argv.slice(2);
const client = new OpenAI({ baseURL: base + "/v1", apiKey: "sk-test", maxRetries: 0 });
const out = {};

const models = [];
for await (const m of client.models.list()) models.push(m.id);
assert.ok(models.includes(chatModel) && models.includes(embedModel), String(models));
out.models = models;

const chat = await client.chat.completions.create({
  model: chatModel,
  messages: [{ role: "user", content: [{ type: "text", text: "Say hello." }] }],
  max_tokens: 12,
  temperature: 0,
  response_format: { type: "text" },
});
assert.ok(chat.choices[0].message.content);
out.chat = { content: chat.choices[0].message.content, tightwad: chat.tightwad };

const stream = await client.chat.completions.create({
  model: chatModel,
  messages: [{ role: "user", content: "Count to three." }],
  max_tokens: 12,
  temperature: 0,
  stream: true,
  stream_options: { include_usage: true },
});
let text = "", usage = null, figures = null;
for await (const chunk of stream) {
  if (chunk.choices?.[0]?.delta?.content) text += chunk.choices[0].delta.content;
  if (chunk.usage) usage = chunk.usage;
  if (chunk.tightwad) figures = chunk.tightwad;
}
assert.ok(text && usage && usage.completion_tokens > 0);
out.stream = { content: text, completion_tokens: usage.completion_tokens, tightwad: figures };

const completion = await client.completions.create({ model: chatModel, prompt: "Once upon a time", max_tokens: 8, temperature: 0 });
assert.ok(completion.choices[0].text);
out.completion = completion.choices[0].text;

const emb = await client.embeddings.create({ model: embedModel, input: "hello world" });
assert.ok(emb.data[0].embedding.length > 0);
out.embedding_dims = emb.data[0].embedding.length;

const resp = await client.responses.create({ model: chatModel, input: "Say hi.", max_output_tokens: 16, temperature: 0 });
assert.ok(resp.output_text !== undefined);
out.responses = resp.output_text;

try {
  await client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] });
  assert.fail("an unknown model was served");
} catch (e) {
  assert.ok(e instanceof OpenAI.NotFoundError, String(e));
  out.error = { status: e.status, code: e.code };
}

console.log(JSON.stringify(out));
