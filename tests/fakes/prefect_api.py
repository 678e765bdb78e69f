"""A stand-in for the two Prefect REST endpoints the watcher's trigger calls, served over real HTTP on 127.0.0.1.

``BusyPrefectAPI`` answers ``GET /api/deployments/name/{flow}/{deployment}`` with one deployment and
``POST /api/deployments/{id}/create_flow_run`` as a busy SQLite-backed Prefect server does: the answers of the
first create requests come from ``script`` ("503": Service Unavailable, the server's "database is locked";
"hang": the run IS created, but the answer comes only after ``hang_s``, longer than the client waits; "ok": 201).
Like the real server, a repeated idempotency key returns the run created the first time.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse


@dataclass
class BusyPrefectAPI:
    """The fake's state: the scripted answers still to give, every create request's key, the runs created."""

    script: list[str]
    hang_s: float = 5.0
    deployment: DeploymentResponse = field(default_factory=lambda: DeploymentResponse(
        id=uuid.uuid4(), name="run_733_dispatcher", flow_id=uuid.uuid4(), labels={}))
    create_keys: list[str] = field(default_factory=list)
    runs: dict[str, FlowRun] = field(default_factory=dict)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)

    def _create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        key = body["idempotency_key"]
        with self._lock:
            self.create_keys.append(key)
            answer = self.script.pop(0) if self.script else "ok"
            if answer == "503":
                return 503, {"exception_message": "Service Unavailable"}
            run = self.runs.get(key)
            if run is None:
                run = FlowRun(id=uuid.uuid4(), name=f"run-{len(self.runs)}", flow_id=self.deployment.flow_id,
                              deployment_id=self.deployment.id, parameters=body.get("parameters", {}),
                              idempotency_key=key)
                self.runs[key] = run
        if answer == "hang":  # created, but the answer is late: the client has given up by then
            self._release.wait(self.hang_s)
        return 201, run.model_dump(mode="json")

    def handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the "hang" answer)

            def do_GET(self) -> None:
                if self.path.startswith("/api/deployments/name/"):
                    self._reply(200, api.deployment.model_dump(mode="json"))
                else:
                    self._reply(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                if self.path == f"/api/deployments/{api.deployment.id}/create_flow_run":
                    self._reply(*api._create(body))
                else:
                    self._reply(404, {"detail": "Not Found"})

        return Handler


@contextmanager
def busy_prefect_api(script: Sequence[str], *, hang_s: float = 5.0) -> Iterator[BusyPrefectAPI]:
    """Serve a ``BusyPrefectAPI`` on a free port of 127.0.0.1; its ``url`` is the API URL (``.../api``)."""
    api = BusyPrefectAPI(list(script), hang_s=hang_s)
    server = ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}/api"
    thread = threading.Thread(target=server.serve_forever, name="fake-prefect-api", daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api._release.set()
        server.shutdown()
        server.server_close()
