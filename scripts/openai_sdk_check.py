"""The official `openai` Python package against a running chat-service: one round trip of
the OpenAI-compatible API with a personal API key (run by scripts/openai-sdk-check.sh).

Environment: CHAT_BASE (http://127.0.0.1:PORT) and CHAT_TOKEN (a user's JWT). The service
answers with its offline `echo` provider. Prints PASS/FAIL per check; exits 1 on a failure.
"""

import json
import os
import sys
import urllib.request

import openai

BASE = os.environ["CHAT_BASE"]
TOKEN = os.environ["CHAT_TOKEN"]
passed = failures = 0


def check(name, condition, detail=""):
    global passed, failures
    if condition:
        passed += 1
        print(f"PASS  {name}")
    else:
        failures += 1
        print(f"FAIL  {name} {detail}")


def rest(method, path, body=None):
    """A REST call with the JWT; answers the status and the JSON body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


status, created = rest("POST", "/api/v1/users/me/api-keys", {"name": "openai sdk check"})
check("an API key is made", status == 201 and created["key"].startswith("cs-"), created)
client = openai.OpenAI(base_url=BASE + "/v1", api_key=created["key"], max_retries=0)

models = [m.id for m in client.models.list()]
check("models.list names the offered models", len(models) >= 1, models)
model = models[0]

raw = client.chat.completions.with_raw_response.create(
    model=model,
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello from python"},
    ],
)
completion = raw.parse()
conversation = raw.headers.get("x-conversation-id")
check(
    "chat.completions.create answers a chat.completion",
    completion.object == "chat.completion"
    and completion.choices[0].message.content == "Echo: hello from python"
    and completion.choices[0].finish_reason == "stop"
    and completion.usage.total_tokens > 0,
    completion,
)
status, messages = rest("GET", f"/api/v1/conversations/{conversation}/messages")
check(
    "the call is kept in the conversation X-Conversation-Id names",
    status == 200 and [m["role"] for m in messages] == ["system", "user", "assistant"],
    messages,
)

chunks = list(
    client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "stream it back"}],
        stream=True,
        stream_options={"include_usage": True},
        metadata={"conversation_id": conversation},
    )
)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
check(
    "a streamed completion: chunks, finish_reason, then the usage chunk",
    text == "Echo: stream it back"
    and finish == ["stop"]
    and not chunks[-1].choices
    and chunks[-1].usage.completion_tokens > 0,
    chunks,
)
status, messages = rest("GET", f"/api/v1/conversations/{conversation}/messages")
check("metadata.conversation_id keeps the call there", status == 200 and len(messages) == 5, messages)

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    check("an unknown model is refused", False)
except openai.NotFoundError as error:
    check("an unknown model is refused: NotFoundError model_not_found", error.code == "model_not_found", error)

try:
    client.chat.completions.create(model=model, messages=[])
    check("no messages is refused", False)
except openai.BadRequestError as error:
    check("no messages is refused: BadRequestError", error.status_code == 400, error)

status, _ = rest("DELETE", f"/api/v1/users/me/api-keys/{created['id']}")
try:
    client.models.list()
    check("a revoked key is refused", False)
except openai.AuthenticationError as error:
    check("a revoked key is refused: AuthenticationError", status == 200 and error.status_code == 401, error)

print(f"{passed} passed, {failures} failed")
sys.exit(1 if failures else 0)
