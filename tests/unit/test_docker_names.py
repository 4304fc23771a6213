"""The small HTTP/1.1 client the agent asks dockerd with (agent.docker_names.get_json): bodies by
Content-Length, chunked or up to the close, statuses other than 200, answers that are not HTTP,
and a dockerd that does not answer in time (issue 22: aiohttp's client, ~4 MiB of the agent's
RSS, is no longer loaded for it)."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.docker_names import FAILED, get_json


async def _serve(tmp_path, answer: bytes, delay: float = 0.0):
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        await asyncio.sleep(delay)
        writer.write(answer)
        await writer.drain()
        writer.close()

    path = str(tmp_path / "docker.sock")
    server = await asyncio.start_unix_server(handle, path)
    return server, path, seen


DOC = {"Id": "n1", "Containers": {"c": {"EndpointID": "e1"}}}
BODY = json.dumps(DOC).encode()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n"
        % (10, BODY[:10], len(BODY) - 10, BODY[10:]),
        b"HTTP/1.0 200 OK\r\n\r\n%s" % BODY,
    ],
    ids=["length", "chunked", "close"],
)
async def test_bodies(tmp_path, answer: bytes) -> None:
    server, path, seen = await _serve(tmp_path, answer)
    async with server:
        assert await get_json(path, "/networks/n1") == DOC
    assert seen[0].startswith(b"GET /networks/n1 HTTP/1.1\r\n")


async def test_other_status_is_none(tmp_path) -> None:
    server, path, _ = await _serve(tmp_path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
    async with server:
        assert await get_json(path, "/networks/x") is None


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}"])
async def test_not_http_or_cut_off_fails(tmp_path, answer: bytes) -> None:
    server, path, _ = await _serve(tmp_path, answer)
    async with server:
        with pytest.raises(FAILED):
            await get_json(path, "/info")


async def test_no_answer_in_time_fails(tmp_path) -> None:
    server, path, _ = await _serve(tmp_path, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", delay=5)
    async with server:
        with pytest.raises(TimeoutError):
            await get_json(path, "/info", timeout=0.2)
    with pytest.raises(FileNotFoundError):
        await get_json(str(tmp_path / "gone.sock"), "/info")
