"""Drives Tally with the real boto3 bedrock-runtime client, changing only its endpoint_url.

Usage: bedrock.py PROXY_URL ACCESS_KEY SECRET_KEY -> prints one JSON object: per call, the
Tally-Request-Id boto3 received and the text it assembled. The client signs with the
credentials given (for Tally's host); Tally signs again with the ones it holds. Tally's tagging
headers are added before boto3 signs, as any header a user adds would be.
"""
import base64
import json
import sys

import boto3

proxy, access_key, secret_key = sys.argv[1], sys.argv[2], sys.argv[3]
client = boto3.client(
    "bedrock-runtime",
    endpoint_url=f"{proxy}/bedrock",
    region_name="us-east-1",
    aws_access_key_id=access_key,
    aws_secret_access_key=secret_key,
)


def tag(request, **kwargs):
    request.headers["Tally-User-Id"] = "alice"
    request.headers["Tally-Session-Id"] = "s-b"


client.meta.events.register("before-sign.bedrock-runtime.*", tag)


def request_id(response):
    return response["ResponseMetadata"]["HTTPHeaders"].get("tally-request-id")


model = "anthropic.claude-3-haiku-20240307-v1:0"
messages = [{"role": "user", "content": [{"text": "Say hello"}]}]
out = {}

r = client.converse(modelId=model, messages=messages)
out["converse"] = {"id": request_id(r),
                   "text": "".join(c["text"] for c in r["output"]["message"]["content"]),
                   "usage": r["usage"]}

r = client.converse_stream(modelId=model, messages=messages)
text, usage = "", None
for event in r["stream"]:
    if "contentBlockDelta" in event:
        text += event["contentBlockDelta"]["delta"]["text"]
    if "metadata" in event:
        usage = event["metadata"]["usage"]
out["converse_stream"] = {"id": request_id(r), "text": text, "usage": usage}

claude_body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                          "messages": [{"role": "user", "content": "Say hello"}]})
r = client.invoke_model(modelId=model, body=claude_body)
answer = json.loads(r["body"].read())
out["invoke"] = {"id": request_id(r), "text": "".join(c["text"] for c in answer["content"])}

r = client.invoke_model_with_response_stream(modelId=model, body=claude_body)
text = ""
for event in r["body"]:
    chunk = json.loads(event["chunk"]["bytes"])
    if chunk["type"] == "content_block_delta":
        text += chunk["delta"]["text"]
out["invoke_stream"] = {"id": request_id(r), "text": text}

print(json.dumps(out))
