"""The HTTP face of search_api (`medindex serve`), a real server against the real stack."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets
import httpx
import numpy as np
import pytest
from PIL import Image
from support import ARTIFACTS, free_port

from pipeline.schemas import point_id
from producers.harness import RunningStack


@pytest.fixture(scope="module")
def api(stack: RunningStack, ingested: dict) -> Iterator[httpx.Client]:
    with serving(stack.env | {"MEDINDEX_MAX_IMAGE_BYTES": "2000000"}, "serve.log") as client:
        yield client


@contextmanager
def serving(env: dict, log_name: str) -> Iterator[httpx.Client]:
    """`medindex serve` on a free port, until it answers /healthz (whatever its status)."""
    port = free_port()
    log = (ARTIFACTS / log_name).open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.get("/healthz")
            break
        except httpx.TransportError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
        time.sleep(0.5)
    try:
        yield client
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def first_row(dataset: Path) -> dict:
    return datasets.load_dataset(str(dataset), split="train")[0]


def test_search_by_id_with_filter(api: httpx.Client, dataset: Path, first_row: dict) -> None:
    pid = point_id(str(dataset.resolve()), "train", first_row["image_id"])
    hits = api.post("/collections/skin/search", json={"point_id": pid, "limit": 3}).json()
    assert hits[0]["id"] == pid and hits[0]["score"] >= 0.999
    female = {"must": [{"key": "sex", "match": {"value": "female"}}]}
    body = {"point_id": pid, "limit": 20, "filter": female}
    hits = api.post("/collections/skin/search", json=body).json()
    assert len(hits) == 20 and all(h["payload"]["sex"] == "female" for h in hits)
    count = api.get("/collections/skin/count", params={"filter": '{"must": []}'}).json()
    assert count["count"] > 0


def test_search_by_uploaded_image(api: httpx.Client, first_row: dict) -> None:
    buffer = io.BytesIO()
    first_row["image"].save(buffer, format="JPEG", quality=95)
    files = {"image": ("q.jpg", buffer.getvalue(), "image/jpeg")}
    hits = api.post("/collections/skin/search/image", files=files, data={"limit": "3"}).json()
    assert hits[0]["payload"]["image_id"] == first_row["image_id"]


def test_batch_groups_and_recommend(api: httpx.Client, dataset: Path, first_row: dict) -> None:
    pid = point_id(str(dataset.resolve()), "train", first_row["image_id"])
    queries = [{"point_id": pid, "limit": 2}, {"point_id": pid, "limit": 4}]
    results = api.post("/collections/skin/search/batch", json={"queries": queries}).json()
    assert [len(r) for r in results] == [2, 4]
    groups = api.post("/collections/skin/groups", json={"point_id": pid, "group_by": "dx"}).json()
    assert len({g["group"] for g in groups}) == len(groups) > 1
    hits = api.post("/collections/skin/recommend", json={"positive": [pid], "limit": 5}).json()
    assert len(hits) == 5 and pid not in {h["id"] for h in hits}


def test_bounds_and_mistakes(api: httpx.Client) -> None:
    too_many = api.post("/collections/skin/search", json={"vector": [0.1] * 384, "limit": 5000})
    assert too_many.status_code == 422
    bad_filter = {"vector": [0.1] * 384, "filter": {"must": "sex"}}
    response = api.post("/collections/skin/search", json=bad_filter)
    assert response.status_code == 400 and "malformed filter" in response.json()["detail"]
    huge = {"image": ("big.jpg", b"\xff\xd8" + b"0" * 2_100_000, "image/jpeg")}
    assert api.post("/collections/skin/search/image", files=huge).status_code == 413
    garbage = {"image": ("x.jpg", b"not an image", "image/jpeg")}
    response = api.post("/collections/skin/search/image", files=garbage)
    assert response.status_code == 400 and "not a readable image" in response.json()["detail"]
    assert api.post("/collections/nope/search", json={"vector": [0.1]}).status_code == 400


def test_query_images_are_bounded_before_they_cost_memory(api: httpx.Client) -> None:
    wide = Image.fromarray(np.zeros((7000, 7000), dtype=np.uint16))  # about 95 KB as PNG
    buffer = io.BytesIO()
    wide.save(buffer, format="PNG")
    files = {"image": ("wide.png", buffer.getvalue(), "image/png")}
    response = api.post("/collections/skin/search/image", files=files)
    assert response.status_code == 400, response.text
    assert "7000x7000 pixels (limit 16000000" in response.json()["detail"]

    gif = io.BytesIO()
    Image.new("RGB", (64, 64)).save(gif, format="GIF")
    files = {"image": ("q.gif", gif.getvalue(), "image/gif")}
    response = api.post("/collections/skin/search/image", files=files)
    assert response.status_code == 400 and "not a readable image" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body's own bytes must count
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n\r\n'
        for _ in range(30):
            yield b"0" * 100_000

    headers = {"content-type": "multipart/form-data; boundary=b"}
    response = api.post("/collections/skin/search/image", content=chunks(), headers=headers)
    assert response.status_code == 413, response.text


def test_an_outage_is_a_503_that_never_shows_a_password(stack: RunningStack) -> None:
    redis_url = f"redis://:s3cr3tpw@127.0.0.1:{free_port()}/0"
    qdrant_url = f"http://medindex:q-s3cr3t@127.0.0.1:{free_port()}"
    for env in ({"MEDINDEX_REDIS_URL": redis_url}, {"MEDINDEX_QDRANT_URL": qdrant_url}):
        with serving(stack.env | env, "serve-outage.log") as client:
            answers = [
                client.get("/healthz"),
                client.post("/collections/skin/search", json={"vector": [0.1] * 384}),
            ]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert "s3cr3t" not in answer.text and "127.0.0.1" not in answer.text
        server_log = (ARTIFACTS / "serve-outage.log").read_text()
        assert "cannot reach" in server_log and ":***@127.0.0.1" in server_log
        assert "s3cr3t" not in server_log
        cli = stack.medindex(
            "search", "--collection", "skin", "--vector", "[0.1]", env=stack.env | env
        )
        assert cli.returncode != 0 and "s3cr3t" not in cli.stderr + cli.stdout


# --- the page's sessions ------------------------------------------------------------------

KEY = "session-test-key-5d2b"
TTL_S = 3
ATTEMPTS = 5  # sign-ins per client and minute


@pytest.fixture(scope="module")
def keyed(stack: RunningStack) -> Iterator[httpx.Client]:
    env = stack.env | {
        "MEDINDEX_API_KEY": KEY,
        "MEDINDEX_SESSION_TTL_S": str(TTL_S),
        "MEDINDEX_LOGIN_ATTEMPTS_PER_MINUTE": str(ATTEMPTS),
    }
    with serving(env, "serve-sessions.log") as client:
        yield client


def client_at(server: httpx.Client, address: str) -> httpx.Client:
    """A client whose connections come from `address` (any 127.x.y.z is this machine's): a
    client of its own to the server, which tells clients apart by address."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.base_url, transport=transport, timeout=60)


def sign_in(client: httpx.Client, key: str = KEY, **headers: str) -> httpx.Response:
    return client.post("/login", data={"api_key": key}, headers=headers)


def with_session(client: httpx.Client, token: str) -> int:
    return client.get("/openapi.json", headers={"Cookie": f"medindex_session={token}"}).status_code


def test_sessions_expire_and_sign_out_ends_them(keyed: httpx.Client) -> None:
    browser = client_at(keyed, "127.0.0.3")
    signed_in = sign_in(browser)
    assert signed_in.status_code == 303, signed_in.text
    token = signed_in.cookies["medindex_session"]
    assert KEY not in token and with_session(browser, token) == 200
    signed_out = browser.post("/logout", headers={"Cookie": f"medindex_session={token}"})
    assert signed_out.status_code == 303
    assert with_session(browser, token) == 401  # a copy of the cookie is no use after sign-out
    signed_in = sign_in(browser)
    assert f"Max-Age={TTL_S}" in signed_in.headers["set-cookie"]  # the browser forgets it too
    token = signed_in.cookies["medindex_session"]
    assert with_session(browser, token) == 200
    time.sleep(TTL_S + 0.5)
    assert with_session(browser, token) == 401  # expired
    assert with_session(browser, "forged") == 401
    assert browser.get("/openapi.json", headers={"X-API-Key": KEY}).status_code == 200


def test_the_cookie_is_secure_beyond_localhost(keyed: httpx.Client) -> None:
    """Behind a TLS ingress the server sees plain HTTP and the page's public host name."""
    client = client_at(keyed, "127.0.0.4")
    public = sign_in(client, host="search.hospital.example").headers["set-cookie"]
    local = sign_in(client).headers["set-cookie"]
    assert "secure" in public.lower() and "httponly" in public.lower()
    assert "secure" not in local.lower()  # plain HTTP on this machine: the cookie must come back


def test_sign_in_attempts_are_bounded_per_client(keyed: httpx.Client) -> None:
    guesser, other = client_at(keyed, "127.0.0.5"), client_at(keyed, "127.0.0.6")
    for _ in range(ATTEMPTS):
        assert sign_in(guesser, "guess").status_code == 401
    refused = sign_in(guesser)  # the right key, but too many tries this minute
    assert refused.status_code == 429 and "too many sign-in attempts" in refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "medindex_session" not in refused.cookies
    assert sign_in(other).status_code == 303  # another client is not held back
