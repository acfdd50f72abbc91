"""Drives Tally with the real openai, anthropic and google-genai SDKs holding a Tally key where
each puts its provider key; Tally swaps it for the provider credential it holds.

Usage: keys.py PROXY_URL TALLY_KEY -> prints one JSON object: per call, the Tally-Request-Id
and what came back, and for a model the key may not use, the SDK's exception.
"""
import json
import sys

import anthropic
import openai
from google import genai
from google.genai import types

proxy, key = sys.argv[1], sys.argv[2]
out = {}

oa = openai.OpenAI(base_url=f"{proxy}/v1", api_key=key, max_retries=0)
raw = oa.chat.completions.with_raw_response.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
out["openai"] = {"id": raw.headers.get("tally-request-id"),
                 "text": raw.parse().choices[0].message.content}

try:
    oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    out["forbidden"] = {"raised": None}
except openai.APIStatusError as e:
    out["forbidden"] = {"raised": type(e).__name__, "status": e.status_code,
                        "message": str(e.message)}

an = anthropic.Anthropic(base_url=f"{proxy}/anthropic", api_key=key, max_retries=0)
raw = an.messages.with_raw_response.create(
    model="claude-haiku-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
out["anthropic"] = {"id": raw.headers.get("tally-request-id"),
                    "text": raw.parse().content[0].text}

gc = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=f"{proxy}/google"))
r = gc.models.generate_content(model="gemini-2.0-flash", contents="Say hello")
headers = (r.sdk_http_response.headers or {}) if r.sdk_http_response else {}
out["google"] = {"id": {k.lower(): v for k, v in headers.items()}.get("tally-request-id"),
                 "text": r.text}

bad = openai.OpenAI(base_url=f"{proxy}/v1", api_key=key[:-1] + ("0" if key[-1] != "0" else "1"),
                    max_retries=0)
try:
    bad.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    out["wrong"] = {"raised": None}
except openai.APIStatusError as e:
    out["wrong"] = {"raised": type(e).__name__, "status": e.status_code,
                    "message": str(e.message)}

print(json.dumps(out))
