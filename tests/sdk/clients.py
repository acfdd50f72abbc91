"""Drives Tally with the real OpenAI and Anthropic Python SDKs, as a user would.

Usage: clients.py PROXY_URL  -> prints one JSON object: per call, the Tally-Request-Id the
SDK received and the text it assembled.
"""
import json
import sys

import anthropic
from openai import OpenAI

proxy = sys.argv[1]
tags = {"Tally-User-Id": "alice", "Tally-Session-Id": "s-1", "Tally-Property-Env": "prod"}
out = {}

oai = OpenAI(base_url=f"{proxy}/v1", api_key="sk-test-sdk-0123456789wxyz",
             default_headers=tags, max_retries=0)
messages = [{"role": "user", "content": "Say hello"}]

raw = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
out["openai_json"] = {"id": raw.headers.get("tally-request-id"),
                      "text": raw.parse().choices[0].message.content}

stream = oai.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
out["openai_stream"] = {"id": stream.response.headers.get("tally-request-id"), "text": text}

ant = anthropic.Anthropic(base_url=f"{proxy}/anthropic", api_key="sk-ant-test-sdk-0123456789wxyz",
                          default_headers=tags, max_retries=0)
raw = ant.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=64, messages=messages)
out["anthropic_json"] = {"id": raw.headers.get("tally-request-id"),
                         "text": raw.parse().content[0].text}

stream = ant.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=messages, stream=True)
text = "".join(e.delta.text for e in stream if e.type == "content_block_delta")
out["anthropic_stream"] = {"id": stream.response.headers.get("tally-request-id"), "text": text}

print(json.dumps(out))
