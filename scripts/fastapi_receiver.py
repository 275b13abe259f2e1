"""A stand-in for the platform's analytics service, built like it (FastAPI on uvicorn):
accepts every analytics path, parses the JSON body, and counts what it got.

    python3 -m venv /tmp/receiver && /tmp/receiver/bin/pip install fastapi uvicorn httptools
    /tmp/receiver/bin/uvicorn --app-dir scripts fastapi_receiver:app --port 18555 --log-level warning
    curl -s localhost:18555/count
"""

from fastapi import FastAPI, Request

app = FastAPI()
received = {"events": 0}


@app.api_route("/api/v1/analytics/{path:path}", methods=["POST", "DELETE"])
async def track(path: str, request: Request) -> dict:
    if request.method == "POST":
        await request.json()
    received["events"] += 1
    return {"status": "ok"}


@app.get("/count")
async def count() -> dict:
    return received
