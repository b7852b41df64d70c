"""Drives Agentplane's gateway with the official OpenAI Python SDK, unchanged.

Environment: AGENTPLANE_BASE (e.g. http://127.0.0.1:8080/v1), AGENTPLANE_KEY (a tenant API
key), AGENTPLANE_MODEL (an agent's name). Prints one JSON object with what it saw; exits
non-zero (with the reason) when the SDK's view of the gateway is not what OpenAI's API gives.
"""

import json
import os
import sys

import openai

client = openai.OpenAI(
    base_url=os.environ["AGENTPLANE_BASE"],
    api_key=os.environ["AGENTPLANE_KEY"],
    max_retries=0,
)
model = os.environ["AGENTPLANE_MODEL"]
seen = {"sdk_version": openai.__version__}

# GET /v1/models
seen["models"] = [m.id for m in client.models.list()]

# Non-streaming.
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=16
)
seen["content"] = r.choices[0].message.content
seen["usage"] = r.usage.model_dump() if r.usage else None

# Streaming, with usage in the final chunk.
text, usage, chunks = "", None, 0
for chunk in client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "hi"}],
    stream=True,
    stream_options={"include_usage": True},
):
    chunks += 1
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage.model_dump()
seen["stream_text"] = text
seen["stream_usage"] = usage
seen["stream_chunks"] = chunks

# Errors come back as the SDK's typed exceptions.
try:
    client.chat.completions.create(model="no-such-agent", messages=[{"role": "user", "content": "x"}])
    seen["not_found"] = "no error"
except openai.NotFoundError as e:
    seen["not_found"] = e.code if hasattr(e, "code") else "NotFoundError"
try:
    openai.OpenAI(base_url=os.environ["AGENTPLANE_BASE"], api_key="ap_live_bogus_key", max_retries=0).models.list()
    seen["unauthenticated"] = "no error"
except openai.AuthenticationError:
    seen["unauthenticated"] = "AuthenticationError"

json.dump(seen, sys.stdout)
