#!/usr/bin/env python3
"""Raw MCP (streamable HTTP) over HTTP/3 client for STOA integration tests.

    python3 h3-client.py --url https://127.0.0.1:PORT/mcp --ca CA_PEM \
        [--header 'Name: value']... [--tool NAME] [--args JSON] [--timeout-s N]

Uses niquests with HTTP/1.1 and HTTP/2 disabled, so the connection is made
directly over QUIC (no Alt-Svc discovery) and fails rather than falling back.
Flow: initialize (2025-11-25) -> read Mcp-Session-Id -> notifications/initialized
-> tools/list -> tools/call (if --tool) -> DELETE session (best effort).
Prints ONE JSON object: {"http_version", "protocolVersion", "sessionId",
"tools": [names], "result": <CallToolResult or null>, "notifications": [...]}.
Exit 0 on success; non-zero with the error on stderr otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import niquests

PROTOCOL_VERSION = "2025-11-25"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--ca", required=True, help="PEM file of the CA that signed the server certificate")
    p.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    p.add_argument("--tool")
    p.add_argument("--args", default="{}")
    p.add_argument("--timeout-s", type=float, default=30.0)
    ns = p.parse_args(argv)
    ns.headers = {}
    for h in ns.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            p.error(f"bad --header {h!r}, expected 'Name: value'")
        ns.headers[name.strip()] = value.strip()
    ns.args = json.loads(ns.args)
    return ns


def iter_sse(lines):
    """Yield (event, id, data) for each SSE event in an iterable of text lines."""
    event, eid, data = None, None, []
    for raw in lines:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r")
        if line == "":
            if data or event or eid:
                yield event, eid, "\n".join(data)
            event, eid, data = None, None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            event = value
        elif field == "id":
            eid = value
        elif field == "data":
            data.append(value)
    if data:
        yield event, eid, "\n".join(data)


class H3Mcp:
    def __init__(self, ns: argparse.Namespace) -> None:
        self.url = ns.url
        self.timeout = ns.timeout_s
        self.s = niquests.Session(disable_http1=True, disable_http2=True)
        # NB: pass verify= on every request; assigning Session.verify after
        # construction is NOT honoured by the QUIC path in niquests 3.21.x
        # (TLS_BAD_CERTIFICATE: unable to get local issuer certificate).
        self.ca = ns.ca
        self.base_headers = dict(ns.headers)
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self.http_versions: set[Any] = set()
        self.notifications: list[dict[str, Any]] = []
        self.next_id = 1

    def _headers(self) -> dict[str, str]:
        h = {
            **self.base_headers,
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        if self.session_id:
            h["Mcp-Session-Id"] = self.session_id
        if self.protocol_version:
            h["MCP-Protocol-Version"] = self.protocol_version
        return h

    def _note(self, r: niquests.Response) -> None:
        self.http_versions.add(r.http_version)
        self.last_http_version = r.http_version

    def notify(self, method: str, params: dict[str, Any] | None = None) -> int:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        r = self.s.post(self.url, data=json.dumps(msg), headers=self._headers(), timeout=self.timeout, verify=self.ca)
        self._note(r)
        if r.status_code != 202 and not (200 <= r.status_code < 300):
            raise RuntimeError(f"{method}: HTTP {r.status_code}: {r.text}")
        return r.status_code

    def request(self, method: str, params: dict[str, Any] | None = None) -> tuple[dict[str, Any], niquests.Response]:
        rid = self.next_id
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}
        r = self.s.post(self.url, data=json.dumps(msg), headers=self._headers(), timeout=self.timeout, verify=self.ca, stream=True)
        self._note(r)
        if r.status_code != 200:
            body = r.text
            raise RuntimeError(f"{method}: HTTP {r.status_code}: {body}")
        ctype = (r.headers.get("content-type") or "").split(";")[0].strip().lower()
        reply: dict[str, Any] | None = None
        if ctype == "application/json":
            reply = json.loads(r.content)
        elif ctype == "text/event-stream":
            for _event, _eid, data in iter_sse(r.iter_lines()):
                if not data.strip():
                    continue  # priming event / keep-alive
                m = json.loads(data)
                if m.get("id") == rid and ("result" in m or "error" in m):
                    reply = m
                    break
                self.notifications.append(m)
        else:
            raise RuntimeError(f"{method}: unexpected content-type {ctype!r}")
        r.close()
        if reply is None:
            raise RuntimeError(f"{method}: stream ended without a response")
        if "error" in reply:
            raise RuntimeError(f"{method}: JSON-RPC error {reply['error']}")
        return reply["result"], r

    def close(self) -> None:
        if self.session_id:
            try:
                self.s.delete(self.url, headers=self._headers(), timeout=self.timeout, verify=self.ca)
            except Exception as e:  # noqa: BLE001 - best effort
                sys.stderr.write(f"[h3-client] DELETE session failed: {e!r}\n")
        self.s.close()


def main() -> int:
    ns = parse_args(sys.argv[1:])
    c = H3Mcp(ns)
    try:
        init, r = c.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "stoa-h3-test-client", "version": "0.1.0"},
            },
        )
        c.session_id = r.headers.get("mcp-session-id")
        c.protocol_version = init.get("protocolVersion", PROTOCOL_VERSION)
        c.notify("notifications/initialized")
        tools_result, _ = c.request("tools/list")
        tools = [t["name"] for t in tools_result.get("tools", [])]
        result = None
        if ns.tool:
            result, _ = c.request("tools/call", {"name": ns.tool, "arguments": ns.args})
        out = {
            "http_version": c.last_http_version,
            "http_versions": sorted(c.http_versions),
            "protocolVersion": c.protocol_version,
            "serverInfo": init.get("serverInfo"),
            "sessionId": c.session_id,
            "tools": tools,
            "result": result,
            "notifications": c.notifications,
        }
    except Exception as e:  # noqa: BLE001
        sys.stderr.write(f"[h3-client] error: {e!r}\n")
        c.s.close()
        return 1
    c.close()
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
