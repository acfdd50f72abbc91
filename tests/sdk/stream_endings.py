"""The OpenAI Python SDK against the stream endings of the named-phases issue (#16).

Usage: stream_endings.py PROXY_URL -> prints one JSON object: per case, the Tally-Request-Id
and the text the SDK assembled.

- "spaced": the upstream writes Python-spaced JSON. The client did not ask for usage, so the
  usage chunk Tally asked for must stay hidden: `chunk.choices[0]` on every chunk, as most
  client code does, raises IndexError if it leaks.
- "linger": the upstream keeps the body open after `[DONE]`; the SDK stops reading and closes
  the response right there, as it always does.
"""
import json
import sys

from openai import OpenAI

proxy = sys.argv[1]
out = {}
messages = [{"role": "user", "content": "Say hello"}]
for mode in ["spaced", "linger"]:
    oai = OpenAI(base_url=f"{proxy}/v1", api_key="sk-test-sdk-0123456789wxyz",
                 default_headers={"x-fake-mode": mode}, max_retries=0)
    stream = oai.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    out[mode] = {"id": stream.response.headers.get("tally-request-id"), "text": text}
print(json.dumps(out))
