"""Drives Tally with the real google-genai Python SDK, changing only its base URL.

Usage: gemini.py PROXY_URL API_KEY -> prints one JSON object: per call, the Tally-Request-Id
the SDK received (from the response headers it exposes) and the text it assembled.
"""
import json
import sys

from google import genai
from google.genai import types

proxy, key = sys.argv[1], sys.argv[2]
tags = {"Tally-User-Id": "alice", "Tally-Session-Id": "s-g"}
opts = types.HttpOptions(base_url=f"{proxy}/google", headers=tags)
client = genai.Client(api_key=key, http_options=opts)
out = {}


def request_id(response):
    headers = (response.sdk_http_response.headers or {}) if response.sdk_http_response else {}
    return {k.lower(): v for k, v in headers.items()}.get("tally-request-id")


r = client.models.generate_content(model="gemini-2.0-flash", contents="Say hello")
out["json"] = {"id": request_id(r), "text": r.text,
               "usage": r.usage_metadata.candidates_token_count}

text, last = "", None
for chunk in client.models.generate_content_stream(model="gemini-2.0-flash", contents="Say hello"):
    text += chunk.text or ""
    last = chunk
out["stream"] = {"id": request_id(last), "text": text}

c = client.models.count_tokens(model="gemini-2.0-flash", contents="Say hello")
out["count"] = {"id": request_id(c), "total": c.total_tokens}

e = client.models.embed_content(model="gemini-embedding-001",
                                contents=["The quick brown fox", "jumps over the lazy dog"])
out["embed"] = {"id": request_id(e), "vectors": len(e.embeddings)}

print(json.dumps(out))
