"""Drives Tally with the real anthropic SDK's AnthropicVertex client, changing only base_url.

Usage: vertex_claude.py PROXY_URL ACCESS_TOKEN -> prints one JSON object: per call, the
Tally-Request-Id and the text the SDK assembled.
"""
import json
import sys

from anthropic import AnthropicVertex

proxy, token = sys.argv[1], sys.argv[2]
client = AnthropicVertex(region="us-east5", project_id="acme-prod", access_token=token,
                         base_url=f"{proxy}/vertex/v1", max_retries=0)
messages = [{"role": "user", "content": "Say hello"}]
out = {}
raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=64,
                                               messages=messages)
out["json"] = {"id": raw.headers.get("tally-request-id"), "text": raw.parse().content[0].text}
stream = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=messages,
                                stream=True)
text = "".join(e.delta.text for e in stream if e.type == "content_block_delta")
out["stream"] = {"id": stream.response.headers.get("tally-request-id"), "text": text}
print(json.dumps(out))
