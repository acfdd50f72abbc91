"""Drives Tally's unified API with the real OpenAI and Anthropic Python SDKs, unmodified but for
the base URL, against providers that speak other dialects (#19).

Usage: unified.py PROXY_URL OPENAI_TARGETS ANTHROPIC_TARGETS [ALIAS] -> prints one JSON object:
{"openai": {target: {call: result}}, "anthropic": {target: {call: result}}}, where the targets
are comma-separated `provider/model` names and each result holds what the SDK itself parsed
(text, tool calls with their arguments, finish reasons, usage, errors) and the Tally-Request-Id
of the call. The fake upstream answers tool calls when asked with `x-fake-mode: tools`. With
ALIAS (a router), each SDK also streams one answer from it: {"router": {sdk: result}}.
"""
import base64
import json
import sys

import anthropic
import openai

proxy, openai_targets, anthropic_targets = sys.argv[1], sys.argv[2], sys.argv[3]

# The last response's request id, whatever the call style (create, raw, stream helpers).
last = {}


def hook(response):
    last["id"] = response.headers.get("tally-request-id")


def rid():
    return last.pop("id", None)


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()
TOOLS = "tools"
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


def error_of(call):
    """Runs call, which must fail, and returns what the SDK made of the error."""
    try:
        call()
    except (openai.APIStatusError, anthropic.APIStatusError) as e:
        return {"class": type(e).__name__, "status": e.status_code, "body": e.body, "id": rid()}
    raise AssertionError("the call was expected to fail")


def openai_calls(client, model):
    out = {}
    image_url = (f"data:image/png;base64,{PNG}" if model.startswith("bedrock/")
                 else "https://example.com/cat.png")
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in these images?"},
            {"type": "image_url", "image_url": {"url": image_url}},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ]},
        {"role": "assistant", "content": "Two images."},
        {"role": "user", "content": "Say hello"},
    ]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=50,
                                       temperature=0.2, top_p=0.9, stop=["END"])
    out["plain"] = {"id": rid(), "text": r.choices[0].message.content,
                    "finish": r.choices[0].finish_reason, "model": r.model,
                    "usage": r.usage.model_dump() if r.usage else None}

    stream = client.chat.completions.create(model=model, messages=messages, stream=True,
                                            max_completion_tokens=50,
                                            stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage.model_dump()
    out["stream"] = {"id": rid(), "text": text, "finish": finish, "usage": usage}

    ask = [{"role": "user", "content": "Weather in Paris and Tokyo?"}]
    tools = [{"type": "function", "function": WEATHER}]
    r = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice="auto",
                                       extra_headers={"x-fake-mode": TOOLS})
    calls = r.choices[0].message.tool_calls or []
    out["tools"] = {"id": rid(), "finish": r.choices[0].finish_reason,
                    "calls": [{"id": c.id, "name": c.function.name,
                               "arguments": json.loads(c.function.arguments)} for c in calls]}

    # The SDK's own accumulator reassembles the streamed argument pieces.
    with client.chat.completions.stream(model=model, messages=ask, tools=tools,
                                        extra_headers={"x-fake-mode": TOOLS}) as s:
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    out["tools_stream"] = {"id": rid(), "finish": final.choices[0].finish_reason,
                           "calls": [{"id": c.id, "name": c.function.name,
                                      "arguments": json.loads(c.function.arguments)}
                                     for c in calls]}

    # The round trip: the calls go back with their results.
    assistant = r.choices[0].message.model_dump(exclude_none=True)
    results = [{"role": "tool", "tool_call_id": c.id, "content": f"{c.function.name}: 18C"}
               for c in r.choices[0].message.tool_calls]
    r = client.chat.completions.create(model=model, messages=ask + [assistant] + results,
                                       tools=tools)
    out["round_trip"] = {"id": rid(), "text": r.choices[0].message.content}

    out["error"] = error_of(lambda: client.chat.completions.create(
        model=model, messages=ask, extra_headers={"x-fake-mode": "error429"}))
    out["unknown"] = error_of(lambda: client.chat.completions.create(
        model="nowhere/" + model, messages=ask))
    return out


def anthropic_calls(client, model):
    out = {}
    messages = [
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        ]},
        {"role": "assistant", "content": "An image."},
        {"role": "user", "content": "Say hello"},
    ]
    r = client.messages.create(model=model, max_tokens=50, system="Answer briefly.",
                               messages=messages, stop_sequences=["END"],
                               extra_body={"temperature": 0.2})
    out["plain"] = {"id": rid(), "text": "".join(b.text for b in r.content if b.type == "text"),
                    "stop": r.stop_reason, "model": r.model, "usage": r.usage.model_dump()}

    with client.messages.stream(model=model, max_tokens=50, system="Answer briefly.",
                                messages=messages) as s:
        final = s.get_final_message()
    out["stream"] = {"id": rid(), "text": "".join(b.text for b in final.content if b.type == "text"),
                     "stop": final.stop_reason, "usage": final.usage.model_dump()}

    ask = [{"role": "user", "content": "Weather in Paris and Tokyo?"}]
    tools = [{"name": WEATHER["name"], "description": WEATHER["description"],
              "input_schema": WEATHER["parameters"]}]
    r = client.messages.create(model=model, max_tokens=100, messages=ask, tools=tools,
                               tool_choice={"type": "auto"},
                               extra_headers={"x-fake-mode": TOOLS})
    out["tools"] = {"id": rid(), "stop": r.stop_reason,
                    "calls": [{"id": b.id, "name": b.name, "input": b.input}
                              for b in r.content if b.type == "tool_use"]}

    # The SDK's accumulator parses the `input_json_delta` pieces into each block's input.
    with client.messages.stream(model=model, max_tokens=100, messages=ask, tools=tools,
                                extra_headers={"x-fake-mode": TOOLS}) as s:
        final = s.get_final_message()
    out["tools_stream"] = {"id": rid(), "stop": final.stop_reason,
                           "calls": [{"id": b.id, "name": b.name, "input": b.input}
                                     for b in final.content if b.type == "tool_use"]}

    uses = [b.model_dump(exclude_none=True) for b in r.content if b.type == "tool_use"]
    results = [{"type": "tool_result", "tool_use_id": b["id"], "content": f"{b['name']}: 18C"}
               for b in uses]
    r = client.messages.create(model=model, max_tokens=100, tools=tools, messages=ask + [
        {"role": "assistant", "content": uses}, {"role": "user", "content": results}])
    out["round_trip"] = {"id": rid(), "text": "".join(b.text for b in r.content if b.type == "text")}

    out["error"] = error_of(lambda: client.messages.create(
        model=model, max_tokens=10, messages=ask, extra_headers={"x-fake-mode": "error429"}))
    out["unknown"] = error_of(lambda: client.messages.create(
        model="nowhere/" + model, max_tokens=10, messages=ask))
    out["unsupported"] = error_of(lambda: client.messages.create(
        model=model, max_tokens=10, messages=ask, extra_body={"top_k": 5}))
    return out


oai = openai.OpenAI(base_url=f"{proxy}/unified/v1", api_key="sk-client-side-0123456789wxyz",
                    max_retries=0, http_client=openai.DefaultHttpxClient(
                        event_hooks={"response": [hook]}))
ant = anthropic.Anthropic(base_url=f"{proxy}/unified", api_key="sk-ant-client-side-0123456789",
                          max_retries=0, http_client=anthropic.DefaultHttpxClient(
                              event_hooks={"response": [hook]}))
out = {"openai": {m: openai_calls(oai, m) for m in openai_targets.split(",") if m},
       "anthropic": {m: anthropic_calls(ant, m) for m in anthropic_targets.split(",") if m}}

if len(sys.argv) > 4:
    alias = sys.argv[4]
    ask = [{"role": "user", "content": "Say hello"}]
    stream = oai.chat.completions.create(model=alias, messages=ask, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    out["router"] = {"openai": {
        "id": rid(), "text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
        "usage": next((c.usage.model_dump() for c in chunks if c.usage), None)}}
    with ant.messages.stream(model=alias, max_tokens=50, messages=ask) as s:
        final = s.get_final_message()
    out["router"]["anthropic"] = {"id": rid(), "text": "".join(b.text for b in final.content),
                                  "usage": final.usage.model_dump()}
    print(json.dumps(out))
    sys.exit(0)

# Where a target cannot honour a member, the SDK gets a 400 naming it.
out["unsupported"] = {
    "response_format": error_of(lambda: oai.chat.completions.create(
        model="anthropic/claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_object"})),
    "image_url": error_of(lambda: oai.chat.completions.create(
        model="bedrock/anthropic.claude-3-haiku-20240307-v1:0", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])),
}
print(json.dumps(out))
