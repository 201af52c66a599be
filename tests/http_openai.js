// OpenAI's Node SDK against goldfinchd --http (tests/http_test.py, case openai_sdk, runs
// it): the model list, a streamed and a plain chat completion of GF_QUESTION on GF_MODEL,
// greedy, printed as one line of JSON. Environment: GF_URL, GF_TOKEN, GF_MODEL,
// GF_QUESTION, GF_MAX_TOKENS.
"use strict";
const { OpenAI } = require("openai");

async function main() {
  const env = process.env;
  const client = new OpenAI({ baseURL: env.GF_URL + "/v1", apiKey: env.GF_TOKEN, maxRetries: 0 });
  const models = [];
  for await (const m of client.models.list()) models.push(m.id);
  const req = {
    model: env.GF_MODEL,
    messages: [{ role: "user", content: env.GF_QUESTION }],
    temperature: 0,
    max_tokens: Number(env.GF_MAX_TOKENS),
  };
  const stream = await client.chat.completions.create({ ...req, stream: true });
  let streamed = "", finish = null, usage = null, chunks = 0;
  for await (const ch of stream) {
    chunks++;
    const c = ch.choices[0];
    if (c && c.delta && c.delta.content) streamed += c.delta.content;
    if (c && c.finish_reason) finish = c.finish_reason;
    if (ch.usage) usage = ch.usage;
  }
  const plain = await client.chat.completions.create(req);
  let refused = null;
  try {
    await client.chat.completions.create({ ...req, model: "no-such-model" });
  } catch (e) {
    refused = { status: e.status, message: e.message };
  }
  process.stdout.write(JSON.stringify({
    models, streamed, finish, usage, chunks, refused,
    plain: plain.choices[0].message.content, plain_usage: plain.usage,
  }) + "\n");
}

main().catch((e) => { console.error(e && e.stack ? e.stack : String(e)); process.exit(1); });
