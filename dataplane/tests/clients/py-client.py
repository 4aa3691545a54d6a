#!/usr/bin/env python3
"""STOA integration-test client built on the official MCP Python SDK (PyPI `mcp`).

    python3 py-client.py --url URL [--header 'Name: value']... --scenario list|call
                         [--tool NAME] [--args JSON] [--timeout-s N] [--settle-ms N]
                         [--no-terminate]

Prints exactly ONE JSON object on stdout and exits 0, or prints the error on
stderr and exits 1. Output shapes match ts-client.mjs (see README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any

import anyio
import mcp_types as types
from mcp import ClientSession
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

ROOTS = [types.Root(uri="file:///stoa-test-root", name="stoa-root")]
METHOD_NOT_FOUND = -32601


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    p.add_argument("--scenario", required=True, choices=["list", "call"])
    p.add_argument("--tool")
    p.add_argument("--args", default="{}", help="JSON object of tool arguments")
    p.add_argument("--timeout-s", type=float, default=60.0)
    p.add_argument("--settle-ms", type=int, default=500, help="wait for late notifications after a call")
    p.add_argument("--no-terminate", action="store_true", help="do not DELETE the session on exit")
    ns = p.parse_args(argv)
    headers: dict[str, str] = {}
    for h in ns.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            p.error(f"bad --header {h!r}, expected 'Name: value'")
        headers[name.strip()] = value.strip()
    ns.headers = headers
    ns.args = json.loads(ns.args)
    if ns.scenario == "call" and not ns.tool:
        p.error("--tool is required for scenario call")
    return ns


# ---- elicitation: a plausible value for every requested property ----
def fill_value(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return "stoa"
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for k in ("oneOf", "anyOf"):
        if schema.get(k):
            return fill_value(schema[k][0])
    t = schema.get("type")
    if t in ("number", "integer"):
        v = 42
        if isinstance(schema.get("minimum"), (int, float)) and v < schema["minimum"]:
            v = schema["minimum"]
        if isinstance(schema.get("maximum"), (int, float)) and v > schema["maximum"]:
            v = schema["maximum"]
        return v
    if t == "boolean":
        return True
    if t == "array":
        return [fill_value(schema.get("items") or {"type": "string"})]
    return {
        "email": "stoa@example.com",
        "uri": "https://example.com/stoa",
        "date": "2000-01-01",
        "date-time": "2000-01-01T00:00:00Z",
    }.get(schema.get("format"), "stoa")


def fill_elicitation(requested_schema: Any) -> dict[str, Any]:
    if hasattr(requested_schema, "model_dump"):
        requested_schema = requested_schema.model_dump(by_alias=True, exclude_none=True)
    props = (requested_schema or {}).get("properties") or {}
    return {name: fill_value(prop) for name, prop in props.items()}


def last_user_text(messages: list[types.SamplingMessage]) -> str:
    users = [m for m in messages if m.role == "user"]
    if not users:
        return ""
    content = users[-1].content
    blocks = content if isinstance(content, list) else [content]
    return "\n".join(b.text for b in blocks if getattr(b, "type", None) == "text")


def dump(model: Any) -> Any:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json") if model is not None else None


class Stats:
    def __init__(self) -> None:
        self.sampling = 0
        self.elicitation = 0
        self.roots = 0
        self.logs: list[dict[str, Any]] = []
        self.progress: list[dict[str, Any]] = []


def make_callbacks(stats: Stats) -> dict[str, Any]:
    async def sampling_callback(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        stats.sampling += 1
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"stoa-sampled: {last_user_text(params.messages)}"),
            model="stoa-test-model",
            stop_reason="endTurn",
        )

    async def elicitation_callback(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        if isinstance(params, types.ElicitRequestURLParams):
            return types.ErrorData(code=-32602, message="stoa test client only supports form elicitation")
        stats.elicitation += 1
        return types.ElicitResult(action="accept", content=fill_elicitation(params.requested_schema))

    async def list_roots_callback(context: ClientRequestContext) -> types.ListRootsResult:
        stats.roots += 1
        return types.ListRootsResult(roots=ROOTS)

    async def logging_callback(params: types.LoggingMessageNotificationParams) -> None:
        stats.logs.append(dump(params))

    return dict(
        sampling_callback=sampling_callback,
        elicitation_callback=elicitation_callback,
        list_roots_callback=list_roots_callback,
        logging_callback=logging_callback,
        client_info=types.Implementation(name="stoa-py-test-client", version="0.1.0"),
    )


async def list_or_null(fn, key: str, attr: str) -> list[Any] | None:
    try:
        out: list[Any] = []
        cursor = None
        while True:
            page = await fn(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            out.extend(str(getattr(x, attr)) for x in getattr(page, key))
            cursor = page.next_cursor
            if not cursor:
                return out
    except MCPError as e:
        if e.code == METHOD_NOT_FOUND:
            return None
        raise


async def run(ns: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    seen: dict[str, str | None] = {"session_id": None}

    async def on_response(response: Any) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid:
            seen["session_id"] = sid

    http_client = create_mcp_http_client(headers=ns.headers)
    http_client.event_hooks["response"].append(on_response)
    async with http_client:
        async with streamable_http_client(
            ns.url, http_client=http_client, terminate_on_close=not ns.no_terminate
        ) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=ns.timeout_s, **make_callbacks(stats)) as session:
                init = await session.initialize()
                if ns.scenario == "list":
                    tools = await list_or_null(session.list_tools, "tools", "name")
                    resources = await list_or_null(session.list_resources, "resources", "uri")
                    prompts = await list_or_null(session.list_prompts, "prompts", "name")
                    return {
                        "serverInfo": dump(init.server_info),
                        "protocolVersion": init.protocol_version,
                        "capabilities": dump(init.capabilities),
                        "tools": tools,
                        "resources": resources,
                        "prompts": prompts,
                    }

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    stats.progress.append({"progress": progress, "total": total, "message": message})

                result = await session.call_tool(
                    ns.tool, ns.args, read_timeout_seconds=ns.timeout_s, progress_callback=on_progress
                )
                if ns.settle_ms > 0:
                    await anyio.sleep(ns.settle_ms / 1000)
                return {
                    "result": dump(result),
                    "progress": stats.progress,
                    "logs": stats.logs,
                    "sampling": stats.sampling,
                    "elicitation": stats.elicitation,
                    "roots": stats.roots,
                    "sessionId": seen["session_id"],
                }


def main() -> int:
    ns = parse_args(sys.argv[1:])
    try:
        out = anyio.run(_guarded, ns)
    except BaseException as e:  # noqa: BLE001 - report anything, including ExceptionGroups
        sys.stderr.write(f"[py-client] error: {e!r}\n")
        traceback.print_exception(e, file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


async def _guarded(ns: argparse.Namespace) -> dict[str, Any]:
    with anyio.fail_after(ns.timeout_s + 30):
        return await run(ns)


if __name__ == "__main__":
    sys.exit(main())
