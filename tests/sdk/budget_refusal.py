"""What an SDK user sees when a budget refuses them: the exception, its message and fields.

Usage: budget_refusal.py PROXY_URL MODEL -> prints one JSON object.
"""
import json
import sys

import anthropic
import openai

proxy, model = sys.argv[1], sys.argv[2]
tags = {"Tally-User-Id": "alice"}
messages = [{"role": "user", "content": "hi"}]
out = {}

oai = openai.OpenAI(base_url=f"{proxy}/v1", api_key="sk-test", default_headers=tags,
                    max_retries=0)
try:
    oai.chat.completions.create(model=model, messages=messages)
    out["openai"] = {"raised": None}
except openai.RateLimitError as e:
    out["openai"] = {"raised": type(e).__name__, "status": e.status_code, "message": e.message,
                     "body": e.body, "retry_after": e.response.headers.get("retry-after")}

ant = anthropic.Anthropic(base_url=f"{proxy}/anthropic", api_key="sk-ant-test",
                          default_headers=tags, max_retries=0)
try:
    ant.messages.create(model=model, max_tokens=5, messages=messages)
    out["anthropic"] = {"raised": None}
except anthropic.RateLimitError as e:
    out["anthropic"] = {"raised": type(e).__name__, "status": e.status_code, "message": e.message}

print(json.dumps(out))
