"""The official OpenAI Python SDK against a Tightwad proxy (tests/tests/sdk_clients.rs runs it).

argv: BASE_URL CHAT_MODEL EMBED_MODEL. Every check asserts; the last line printed is a JSON
summary the Rust test reads. Exit status 0 only when every call behaved as the SDK expects.
"""
import json
import sys

import openai

base, chat_model, embed_model = sys.argv[1:4]
client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
out = {}

models = [m.id for m in client.models.list()]
assert chat_model in models and embed_model in models, models
out["models"] = models

# A chat as the SDK sends it: text parts and the default response format.
chat = client.chat.completions.create(
    model=chat_model,
    messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}],
    max_tokens=12,
    temperature=0,
    response_format={"type": "text"},
)
assert chat.choices[0].message.content, chat
out["chat"] = {"content": chat.choices[0].message.content, "tightwad": chat.model_extra.get("tightwad")}

stream = client.chat.completions.create(
    model=chat_model,
    messages=[{"role": "user", "content": "Count to three."}],
    max_tokens=12,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
text, usage, figures = "", None, None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
    figures = (chunk.model_extra or {}).get("tightwad") or figures
assert text and usage and usage.completion_tokens > 0, (text, usage)
out["stream"] = {"content": text, "completion_tokens": usage.completion_tokens, "tightwad": figures}

completion = client.completions.create(model=chat_model, prompt="Once upon a time", max_tokens=8, temperature=0)
assert completion.choices[0].text, completion
out["completion"] = completion.choices[0].text

emb = client.embeddings.create(model=embed_model, input="hello world")
assert len(emb.data[0].embedding) > 0, emb
out["embedding_dims"] = len(emb.data[0].embedding)

resp = client.responses.create(model=chat_model, input="Say hi.", max_output_tokens=16, temperature=0)
assert resp.output_text is not None, resp
out["responses"] = resp.output_text

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an unknown model was served")
except openai.NotFoundError as e:
    out["error"] = {"status": e.status_code, "code": e.code}

print(json.dumps(out))
