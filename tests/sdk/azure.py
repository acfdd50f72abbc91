"""Drives Tally with the real openai SDK's AzureOpenAI client, changing only azure_endpoint.

Usage: azure.py PROXY_URL API_KEY -> prints one JSON object: per call, the Tally-Request-Id
and the text the SDK assembled.
"""
import json
import sys

import openai
from openai import AzureOpenAI

proxy, key = sys.argv[1], sys.argv[2]
client = AzureOpenAI(azure_endpoint=f"{proxy}/azure", api_key=key, api_version="2024-10-21",
                     default_headers={"Tally-User-Id": "alice"}, max_retries=0)
messages = [{"role": "user", "content": "Say hello"}]
out = {}

raw = client.chat.completions.with_raw_response.create(model="prod-4o", messages=messages)
out["json"] = {"id": raw.headers.get("tally-request-id"), "text": raw.parse().choices[0].message.content}

stream = client.chat.completions.create(model="prod-4o", messages=messages, stream=True,
                                        stream_options={"include_usage": True})
text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
out["stream"] = {"id": stream.response.headers.get("tally-request-id"), "text": text}

raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
out["unmapped"] = {"id": raw.headers.get("tally-request-id"),
                   "text": raw.parse().choices[0].message.content}

try:
    client.chat.completions.create(model="prod-4o", messages=messages,
                                   extra_headers={"x-fake-mode": "content-filter"})
    out["filtered"] = {"raised": None}
except openai.BadRequestError as e:
    out["filtered"] = {"raised": e.code, "id": e.response.headers.get("tally-request-id")}

print(json.dumps(out))
