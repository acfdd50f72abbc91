"""Drives Tally with the real google-genai SDK in Vertex AI mode, changing only its base URL.

Usage: vertex.py PROXY_URL ACCESS_TOKEN -> prints one JSON object: per call, the
Tally-Request-Id the SDK received and the text it assembled. The SDK always sends a bearer
token: for a Tally that holds a service account, any placeholder that is not an access token.
"""
import json
import sys

from google import genai
from google.genai import types
from google.oauth2.credentials import Credentials

proxy, token = sys.argv[1], sys.argv[2]
client = genai.Client(vertexai=True, project="acme-prod", location="us-central1",
                      credentials=Credentials(token=token),
                      http_options=types.HttpOptions(base_url=f"{proxy}/vertex"))
out = {}


def request_id(response):
    headers = (response.sdk_http_response.headers or {}) if response.sdk_http_response else {}
    return {k.lower(): v for k, v in headers.items()}.get("tally-request-id")


r = client.models.generate_content(model="gemini-2.0-flash", contents="Say hello")
out["json"] = {"id": request_id(r), "text": r.text}

text, last = "", None
for chunk in client.models.generate_content_stream(model="gemini-2.0-flash", contents="Say hello"):
    text += chunk.text or ""
    last = chunk
out["stream"] = {"id": request_id(last), "text": text}
print(json.dumps(out))
