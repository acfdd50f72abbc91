"""Drives Tally with the real openai SDK on the endpoints billed by the unit or not at all:
images, speech, transcription, moderations, and the Responses API's background mode.

Usage: units.py PROXY_URL API_KEY -> prints one JSON object: per call, the Tally-Request-Id
the SDK received and what it parsed.
"""
import io
import json
import sys

from openai import OpenAI

proxy, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=f"{proxy}/v1", api_key=key, max_retries=0)
out = {}


def record(name, raw, **parsed):
    out[name] = {"id": raw.headers.get("tally-request-id"), **parsed}


raw = client.images.with_raw_response.generate(model="dall-e-3", prompt="a cat", n=2,
                                               size="1792x1024", quality="hd")
record("dalle", raw, images=len(raw.parse().data))

raw = client.images.with_raw_response.generate(model="gpt-image-1", prompt="a cat")
record("gpt_image", raw, images=len(raw.parse().data))

raw = client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy",
                                                   input="Hello from Tally, twenty-nine chars!")
record("speech", raw, bytes=len(raw.content))

audio = ("hello.mp3", io.BytesIO(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(2048)), "audio/mpeg")
raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=audio)
record("transcribe", raw, text=raw.parse().text)

audio = ("hello.mp3", io.BytesIO(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(2048)), "audio/mpeg")
raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=audio,
                                                           response_format="verbose_json")
record("transcribe_verbose", raw, duration=raw.parse().duration)

raw = client.moderations.with_raw_response.create(model="omni-moderation-latest", input="hi")
record("moderation", raw, flagged=raw.parse().results[0].flagged)

raw = client.responses.with_raw_response.create(model="gpt-4o", input="Say hello", background=True)
created = raw.parse()
record("background", raw, status=created.status)
for n in ("first", "second"):
    raw = client.responses.with_raw_response.retrieve(created.id)
    record(f"retrieve_{n}", raw, status=raw.parse().status)

print(json.dumps(out))
