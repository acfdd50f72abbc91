"""What an SDK user sees when the privacy guard blocks or masks their request.

Usage: privacy_guard.py PROXY_URL TOKEN EMAIL SSN -> prints one JSON object.
TOKEN is a value a blocking detector finds; EMAIL and SSN are values masking detectors find.
"""
import json
import sys

import anthropic
import openai

proxy, token, email, ssn = sys.argv[1:5]
out = {}
mask_prompt = f"write to {email} about ssn {ssn}"

oai = openai.OpenAI(base_url=f"{proxy}/v1", api_key="sk-test", max_retries=0,
                    default_headers={"x-fake-mode": "echo"})
try:
    oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"my token is {token}, mail {email}"}])
    out["openai_block"] = {"raised": None}
except openai.BadRequestError as e:
    out["openai_block"] = {"raised": type(e).__name__, "status": e.status_code,
                           "message": e.message, "body": e.body,
                           "id": e.response.headers.get("tally-request-id")}

raw = oai.chat.completions.with_raw_response.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": mask_prompt}])
completion = raw.parse()
out["openai_mask"] = {"text": completion.choices[0].message.content,
                      "masked": raw.headers.get("tally-privacy-masked"),
                      "id": raw.headers.get("tally-request-id")}

text = ""
with oai.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", stream=True,
        messages=[{"role": "user", "content": mask_prompt}]) as resp:
    for chunk in resp.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    out["openai_stream_mask"] = {"text": text, "masked": resp.headers.get("tally-privacy-masked")}

ant = anthropic.Anthropic(base_url=f"{proxy}/anthropic", api_key="sk-ant-test", max_retries=0,
                          default_headers={"x-fake-mode": "echo"})
try:
    ant.messages.create(model="claude-3-5-haiku-latest", max_tokens=20,
                        messages=[{"role": "user", "content": f"token {token} for {email}"}])
    out["anthropic_block"] = {"raised": None}
except anthropic.BadRequestError as e:
    out["anthropic_block"] = {"raised": type(e).__name__, "status": e.status_code,
                              "message": e.message}

msg = ant.messages.create(model="claude-3-5-haiku-latest", max_tokens=20,
                          messages=[{"role": "user", "content": mask_prompt}])
out["anthropic_mask"] = {"text": "".join(b.text for b in msg.content if b.type == "text")}

print(json.dumps(out))
