"""Drive medallion's MCP server with the official MCP Python SDK.

Usage:
  mcp_check.py http <url> <operator-token> <read-token> <model>
  mcp_check.py stdio <medallion-binary> <model>      (environment passed through)

Prints one JSON object with what the server answered; the Rust test
(tests/tests/e2e/operate.rs) asserts on it. Exits non-zero on a protocol
failure.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client

EXPECTED_TOOLS = {
    "status",
    "list_models",
    "describe_model",
    "query_gold",
    "refresh_model",
    "resync_table",
    "lineage",
}


def structured(result):
    """The tool's structured content, or its text parsed as JSON."""
    if result.structuredContent is not None:
        return result.structuredContent
    for c in result.content:
        if getattr(c, "text", None):
            try:
                return json.loads(c.text)
            except ValueError:
                return {"text": c.text}
    return None


def error_text(result):
    return " ".join(getattr(c, "text", "") for c in result.content)


async def exercise(session, model, out, operate):
    init = await session.initialize()
    out["server"] = init.serverInfo.name
    out["instructions"] = bool(init.instructions)
    tools = await session.list_tools()
    out["tools"] = sorted(t.name for t in tools.tools)
    out["tools_described"] = all(len(t.description or "") > 40 for t in tools.tools)
    out["status"] = structured(await session.call_tool("status", {}))
    out["models"] = structured(await session.call_tool("list_models", {}))
    out["describe"] = structured(await session.call_tool("describe_model", {"name": model}))
    missing = await session.call_tool("describe_model", {"name": "no_such_model"})
    out["describe_missing"] = {"is_error": missing.isError, "text": error_text(missing)}
    q = await session.call_tool(
        "query_gold", {"sql": f"SELECT count(*) AS n FROM gold.{model}", "limit": 10}
    )
    out["query"] = structured(q)
    write = await session.call_tool("query_gold", {"sql": f"DELETE FROM gold.{model}"})
    out["query_write"] = {"is_error": write.isError, "text": error_text(write)}
    pg = await session.call_tool("query_gold", {"sql": "SELECT * FROM pg_catalog.pg_authid"})
    out["query_postgres"] = {"is_error": pg.isError, "text": error_text(pg)}
    out["lineage"] = structured(await session.call_tool("lineage", {}))
    r = await session.call_tool("refresh_model", {"name": model, "wait_seconds": 60})
    out["refresh"] = {"is_error": r.isError, "text": error_text(r), "value": structured(r)}
    rs = await session.call_tool("resync_table", {"table": "public.no_such_table"})
    out["resync_missing"] = {"is_error": rs.isError, "text": error_text(rs)}
    resources = await session.list_resources()
    out["resources"] = sorted(str(r.uri) for r in resources.resources)
    if resources.resources:
        read = await session.read_resource(resources.resources[0].uri)
        out["resource"] = json.loads(read.contents[0].text)


async def over_http(url, operate_token, read_token, model):
    out = {}
    async with streamablehttp_client(
        url, headers={"Authorization": f"Bearer {operate_token}"}
    ) as (read, write, _):
        async with ClientSession(read, write) as session:
            await exercise(session, model, out, True)
    # The read-only token: reads work, refresh is refused.
    async with streamablehttp_client(
        url, headers={"Authorization": f"Bearer {read_token}"}
    ) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            ok = await session.call_tool("list_models", {})
            denied = await session.call_tool("refresh_model", {"name": model})
            out["read_token"] = {
                "list_models_error": ok.isError,
                "refresh_error": denied.isError,
                "refresh_text": error_text(denied),
            }
    # No token: the transport itself is refused (HTTP 401).
    try:
        async with streamablehttp_client(url) as (read, write, _):
            async with ClientSession(read, write) as session:
                await asyncio.wait_for(session.initialize(), 10)
        out["no_token"] = "accepted"
    except BaseException as e:  # the SDK raises an exception group
        out["no_token"] = "refused: " + repr(e)[:300]
    return out


async def over_stdio(binary, model):
    out = {}
    params = StdioServerParameters(command=binary, args=["mcp"], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await exercise(session, model, out, True)
    return out


def main():
    mode = sys.argv[1]
    if mode == "http":
        out = asyncio.run(over_http(*sys.argv[2:6]))
    else:
        out = asyncio.run(over_stdio(*sys.argv[2:4]))
    missing = EXPECTED_TOOLS - set(out.get("tools", []))
    out["missing_tools"] = sorted(missing)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
