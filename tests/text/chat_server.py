"""A small OpenAI-compatible chat completions server on 127.0.0.1 for the refiner tests, with scripted faults.

Its answer to a request is reply(caption), the caption read back from the prompt, so a test knows what each
clip's description must be. Faults are scripted per caption: each request for that caption takes the next
action of its script ("500", "429", "400", "401", "timeout", "malformed", "empty", and "trickle" or
"trickle-headers": the answer, or the whole response from its status line, one byte every `trickle` seconds),
then "ok" once the script is used up. `python -m tests.text.chat_server DELAY` serves alone and prints its port.
"""

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CAPTION = re.compile(r"^Caption of the clip: (.*)$", re.MULTILINE)


def reply(caption: str) -> str:
    return f"Refined: {caption}"


class ChatServer:
    """Serves POST /v1/chat/completions in a thread; records every request body."""

    def __init__(self, delay: float = 0.0, timeout_sleep: float = 1.0, trickle: float = 0.1):
        self.delay, self.timeout_sleep, self.trickle = delay, timeout_sleep, trickle
        self.scripts: dict[str, list[str]] = {}
        self.always: str | None = None  # an action for every request, e.g. "401"
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "ChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def captions(self) -> Counter:
        """How many requests each caption got."""
        with self._lock:
            return Counter(CAPTION.search(b["messages"][1]["content"]).group(1) for b in self.bodies)

    def _action(self, caption: str) -> str:
        with self._lock:
            if self.always:
                return self.always
            script = self.scripts.get(caption)
            return script.pop(0) if script else "ok"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.bodies.append(body)
                caption = CAPTION.search(body["messages"][1]["content"]).group(1)
                action = server._action(caption)
                time.sleep(server.delay)
                if action == "timeout":
                    time.sleep(server.timeout_sleep)
                if action in ("ok", "timeout", "trickle", "trickle-headers"):
                    message = {"role": "assistant", "content": reply(caption)}
                    choice = {"index": 0, "message": message, "finish_reason": "stop"}
                    answer = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"]}
                    data = json.dumps({**answer, "choices": [choice]}).encode()
                    if action.startswith("trickle"):
                        self._trickle(data, headers_too=action == "trickle-headers")
                    else:
                        self._send(200, data)
                elif action == "malformed":
                    self._send(200, b'{"id": "c", "choices": [')
                elif action == "empty":
                    self._send(200, json.dumps({"id": "c", "object": "chat.completion", "choices": []}).encode())
                else:
                    status = int(action)
                    error = {"error": {"message": f"scripted {status}", "type": "test", "code": status}}
                    self._send(status, json.dumps(error).encode(), {"Retry-After": "0"} if status == 429 else {})

            def _trickle(self, data, headers_too):
                head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                if not headers_too:
                    self.wfile.write(head.encode())
                try:
                    for byte in (head.encode() if headers_too else b"") + data:
                        self.wfile.write(bytes([byte]))
                        time.sleep(server.trickle)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def _send(self, status, data, headers=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a scripted timeout)
                    pass

        return Handler
