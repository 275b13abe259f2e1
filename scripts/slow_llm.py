"""An OpenAI-compatible chat server for the deployment checks and fault drills.

It streams word by word: "Echo: <message>" at once, or, when the message asks to reply
slowly, N words 50 ms apart ("reply slowly 1000"; 300 without a number), long enough to be
stopped, restarted or killed mid-reply.

Usage: python3 slow_llm.py PORT [HOST]   (HOST defaults to 127.0.0.1)
"""

import json
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        last = users[-1].get("content") if users else ""
        last = last if isinstance(last, str) else json.dumps(last)
        slow = re.search(r"slowly(?: (\d+))?", last)
        if slow:
            words = [f"w{i} " for i in range(1, int(slow.group(1) or 300) + 1)]
        else:
            words = re.findall(r"\S+\s*", f"Echo: {last}")
        model = body.get("model", "deploy-check")
        usage = {"prompt_tokens": 10, "completion_tokens": len(words), "total_tokens": 10 + len(words)}
        if not body.get("stream"):
            answer = json.dumps({"id": "chatcmpl-deploy-check", "object": "chat.completion",
                "created": int(time.time()), "model": model, "usage": usage,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(words)}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return

        def chunk(delta, finish=None):
            return {"id": "chatcmpl-deploy-check", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

        def send(event):
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()

        try:
            send(chunk({"role": "assistant", "content": ""}))
            for word in words:
                if slow:
                    time.sleep(0.05)
                send(chunk({"content": word}))
            send(chunk({}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                send(dict(chunk({}), choices=[], usage=usage))
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service stopped the reply


host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
ThreadingHTTPServer((host, int(sys.argv[1])), Handler).serve_forever()
