"""A small OpenAI-compatible chat-completions server on localhost, for the reward annotate tests.

``FakeMLLM(answer)``: ``answer(request_body, n)`` returns the message text for the n-th request
(or an int HTTP status to fail with). Requests are kept in ``.requests``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeMLLM:
    def __init__(self, answer):
        self.answer = answer
        self.requests = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer._lock:
                    outer.requests.append({"path": self.path, "body": body,
                                           "auth": self.headers.get("Authorization")})
                    n = len(outer.requests)
                out = outer.answer(body, n)
                if isinstance(out, int):
                    self.send_response(out)
                    self.end_headers()
                    self.wfile.write(b'{"error": "scripted failure"}')
                    return
                data = json.dumps({"id": f"cmpl-{n}", "object": "chat.completion", "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": out}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.server.shutdown()
        self.server.server_close()


def caption_of(body) -> str:
    """The caption the rating prompt carries."""
    text = body["messages"][1]["content"][0]["text"]
    return text.split("Caption:\n", 1)[1].rsplit("\n\nRate this", 1)[0]
