"""`tinygpt serve` through the official openai SDK: a subprocess on 127.0.0.1 serving the tiny chat model of
tests/chat_fixtures.py (which answers its few questions exactly when decoding greedily), with an API key."""

import functools
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch

from tests.chat_fixtures import CONVERSATIONS, REPO, trained_chat_model
from tests.servers import free_port, wait_until_answering
from tinygpt.hub.checks import load_model_and_tokenizer

API_KEY = "sk-test-serve-0123456789"
MAX_BATCH = 4  # fewer slots than the concurrent tests' streams: the rest wait, and must still be answered


@functools.cache
def running_server() -> tuple[str, str, Path]:
    """(base URL, model id, log file) of `python -m tinygpt.cli serve` on a free port; stopped at exit."""
    model = str(trained_chat_model())
    port = free_port()
    log = Path(model) / "serve.log"
    command = [sys.executable, "-m", "tinygpt.cli", "serve", model, "--port", str(port), "--max_batch", str(MAX_BATCH)]
    env = {**os.environ, "TINYGPT_API_KEY": API_KEY}
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    import atexit

    atexit.register(process.terminate)
    url = f"http://127.0.0.1:{port}/v1"
    wait_until_answering(process, f"{url}/models", log, "tinygpt serve", timeout=120)  # a 401: it is up
    return url, model, log


@pytest.fixture(scope="module")
def server():
    return running_server()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0], api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(server):
    return server[1]


def generate_reply(messages, max_new_tokens=40) -> tuple[str, int, int]:
    """transformers' generate(), greedy, over the chat template: (reply, prompt tokens, reply tokens)."""
    model, tokenizer = load_model_and_tokenizer(trained_chat_model())
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    out = model.generate(
        torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id
    )
    new = out[0, len(ids) :].tolist()
    new = new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
    return tokenizer.decode(new, skip_special_tokens=True), len(ids), len(new)


def test_models_list(client, model_id):
    assert [model.id for model in client.models.list()] == [model_id]
    assert client.models.retrieve(model_id).owned_by == "tinygpt"


@pytest.mark.parametrize("question", ["how are you?", "what is your name?"])
def test_greedy_chat_completion_equals_generate_plain_and_streamed(client, model_id, question):
    messages = [{"role": "user", "content": question}]
    expected, prompt_tokens, reply_tokens = generate_reply(messages)
    assert expected == dict(CONVERSATIONS)[question]  # the model learned it: a meaningful comparison

    plain = client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=40)
    assert plain.choices[0].message.content == expected
    assert plain.choices[0].finish_reason == "stop"
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (prompt_tokens, reply_tokens)

    chunks = list(
        client.chat.completions.create(
            model=model_id, messages=messages, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    deltas = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert "".join(deltas) == expected and len([d for d in deltas if d]) > 3  # streamed piece by piece
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == reply_tokens


def test_chat_settings_stop_strings_and_seeds(client, model_id):
    ask = functools.partial(client.chat.completions.create, model=model_id)
    how = [{"role": "user", "content": "how are you?"}]
    short = ask(messages=how, temperature=0, max_tokens=4)
    assert (short.choices[0].message.content, short.choices[0].finish_reason) == ("i am", "length")
    stopped = ask(messages=how, temperature=0, stop=["fine", "zz"])
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == ("i am ", "stop")
    streamed = ask(messages=how, temperature=0, stop="am", stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed) == "i "
    # Sampling: the same seed, the same reply; top_p that small is greedy at any temperature.
    zzz = [{"role": "user", "content": "zzz"}]  # never trained: a high temperature rambles
    seeded = [
        ask(messages=zzz, temperature=2.0, seed=seed, max_tokens=30).choices[0].message.content for seed in (1, 1, 2)
    ]
    assert seeded[0] == seeded[1] != seeded[2]
    nucleus = ask(messages=how, temperature=2.0, top_p=1e-6).choices[0].message.content
    assert nucleus == "i am fine, thanks."
    system = ask(messages=[{"role": "system", "content": "be brief."}, *how], temperature=0)
    assert system.usage.prompt_tokens == generate_reply([{"role": "system", "content": "be brief."}, *how])[1]


def test_completions(client, model_id):
    model, tokenizer = load_model_and_tokenizer(trained_chat_model())
    prompt = "<BOS><user>:bye<EOS><assistant>:"  # the chat template, written out
    ids = tokenizer(prompt)["input_ids"]
    out = model.generate(torch.tensor([ids]), max_new_tokens=5, min_new_tokens=5, do_sample=False)
    expected = tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    completion = client.completions.create(model=model_id, prompt=prompt, max_tokens=5, temperature=0)
    assert completion.choices[0].text == expected == "goodb"
    assert completion.choices[0].finish_reason == "length"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (len(ids), 5)
    streamed = client.completions.create(model=model_id, prompt=prompt, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == "goodbye!"


@pytest.mark.slow
def test_32_concurrent_streams_all_finish(client, model_id):
    questions = [question for question, _ in CONVERSATIONS] * 8

    def ask(question):
        stream = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": question}], temperature=0, stream=True
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream)

    with ThreadPoolExecutor(max_workers=32) as pool:
        replies = list(pool.map(ask, questions))
    assert replies == [answer for _, answer in CONVERSATIONS] * 8


def test_dropped_streams_free_their_slots_at_once(client, model_id):
    # As many rambling streams as the server has slots, each dropped after its first chunk. Had they kept their
    # slots, the next request would wait for 4 x 100,000 tokens.
    for _ in range(MAX_BATCH):
        stream = client.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": "zzz"}],
            temperature=2.0,
            max_tokens=100_000,
            extra_body={"min_tokens": 100_000},  # vLLM's field: no <EOS> before then
            stream=True,
        )
        next(iter(stream))
        stream.close()
    started = time.monotonic()
    reply = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "hi"}], temperature=0, timeout=20
    )
    assert reply.choices[0].message.content == "hello!"
    assert time.monotonic() - started < 10


def test_abandoned_whole_replies_free_their_slots(server, model_id):
    # As many rambling non-streamed requests as the server has slots, each given up by its client after a second.
    # Had they kept decoding, the next request would wait for 4 x 100,000 tokens.
    def abandon():
        with pytest.raises(httpx.TimeoutException):
            httpx.post(
                f"{server[0]}/chat/completions",
                json={"model": model_id, "messages": [{"role": "user", "content": "zzz"}], "temperature": 2.0,
                      "max_tokens": 100_000, "min_tokens": 100_000},
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=1.0,
            )  # fmt: skip

    with ThreadPoolExecutor(max_workers=MAX_BATCH) as pool:
        list(pool.map(lambda _: abandon(), range(MAX_BATCH)))
    started = time.monotonic()
    client = openai.OpenAI(base_url=server[0], api_key=API_KEY, max_retries=0, timeout=20)
    reply = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}], temperature=0)
    assert reply.choices[0].message.content == "hello!"
    assert time.monotonic() - started < 10


def test_stop_strings_are_found_across_pieces_and_held_back():
    from tinygpt.serving.openai import StopStrings

    stop = StopStrings(["END", "the end"])
    sent = [stop.push(piece) for piece in ["it was th", "e e", "nd of it"]]
    assert sent == ["it was ", "", ""] and stop.stopped
    assert StopStrings(["abc"]).push("xxabxxab") == "xxabxx"  # "ab" may begin the stop string: held back


def test_bad_requests_are_openai_errors_and_the_server_keeps_serving(client, model_id, server):
    hi = [{"role": "user", "content": "hi"}]
    cases = [
        (openai.NotFoundError, dict(model="no-such-model", messages=hi), "does not exist here"),
        (openai.BadRequestError, dict(model=model_id, messages=hi, n=2), "only n=1"),
        (openai.BadRequestError, dict(model=model_id, messages=hi, max_tokens=-1), "max_tokens"),
        (openai.BadRequestError, dict(model=model_id, messages=hi, seed=2**63), "seed"),  # past int64
        (openai.BadRequestError, dict(model=model_id, messages=hi, extra_body={"top_k": 2**64}), "top_k"),
        (openai.BadRequestError, dict(model=model_id, messages=hi, stop=list("abcde")), "at most 4 stop strings"),
        (openai.BadRequestError, dict(model=model_id, messages=hi, stop="x" * 257), "at most 256 characters"),
        (
            openai.BadRequestError,
            dict(model=model_id, messages=[{"role": "user", "content": "hi " * 40}]),
            "reads at most 63",
        ),
    ]
    for error_type, request, message in cases:
        with pytest.raises(error_type, match=message) as caught:
            client.chat.completions.create(**request)
        assert set(caught.value.body) >= {"message", "type", "code"}  # OpenAI's error object
        assert client.chat.completions.create(model=model_id, messages=hi, temperature=0).choices[0].message.content
    malformed = httpx.post(
        f"{server[0]}/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="prompt is 81 tokens"):
        client.completions.create(model=model_id, prompt="hi " * 27)


def test_fields_are_strict_and_unsupported_ones_are_refused(client, model_id):
    """A field tinygpt would ignore while it changes the reply, a typo, a wrong type or a non-text part: a 400 that
    names it. The same fields at their neutral values, and fields that change nothing, are accepted."""
    hi = [{"role": "user", "content": "hi"}]
    cases = [
        (dict(extra_body={"max_token": 5}), "Unrecognized request argument supplied: max_token"),
        (dict(logit_bias={"17": -100}), "logit_bias: tinygpt does not support it"),
        (dict(logprobs=True), "logprobs: tinygpt does not support it"),
        (dict(response_format={"type": "json_object"}), "response_format: tinygpt does not support it"),
        (dict(extra_body={"max_tokens": "5"}), "max_tokens: Input should be a valid integer"),
        (dict(extra_body={"stream": "false"}), "stream: Input should be a valid boolean"),
        (dict(stream=True, stream_options={"include_usage": "false"}), "include_usage: Input should be a valid boolean"),
        (dict(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), "each part must be"),
        (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), "text only"),
        (dict(messages=[{"role": "user", "contnet": "hi"}]), "Unrecognized request argument supplied: messages.0.contnet"),
    ]  # fmt: skip
    for request, message in cases:
        with pytest.raises(openai.BadRequestError, match=message):
            client.chat.completions.create(**{"model": model_id, "messages": hi, **request})
    neutral = dict(
        frequency_penalty=0, logprobs=False, response_format={"type": "text"}, tool_choice="none", user="u-1"
    )
    reply = client.chat.completions.create(model=model_id, messages=hi, temperature=0, **neutral)
    assert reply.choices[0].message.content == "hello!"
    parts = [{"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}]
    assert client.chat.completions.create(model=model_id, messages=parts, temperature=0).choices[0].message.content == (
        "hello!"
    )


def test_a_huge_prompt_is_refused_before_it_is_tokenized(client, model_id):
    """Far more text than the window holds, however it tokenizes: refused from its length alone (the message says
    "more than"), without rendering the conversation, which would hold every other client up."""
    long_chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}] * 5_000
    with pytest.raises(openai.BadRequestError, match="more than 63 tokens"):
        client.chat.completions.create(model=model_id, messages=long_chat)
    with pytest.raises(openai.BadRequestError, match="more than 63 tokens"):
        client.completions.create(model=model_id, prompt="x" * 1_000_000)  # just under the 1 MiB body limit


def test_raw_http_a_web_page_could_send_is_refused(server, model_id):
    """A page may post a form or text to any server without asking it first; JSON needs the server's consent,
    which it never gives. So only an application/json body is read. Other errors keep OpenAI's shape too."""
    url, _, _ = server
    body = f'{{"model": "{model_id}", "messages": [{{"role": "user", "content": "hi"}}]}}'
    for content_type in ["text/plain", "application/x-www-form-urlencoded", None]:
        headers = {"Authorization": f"Bearer {API_KEY}"} | ({"Content-Type": content_type} if content_type else {})
        refused = httpx.post(f"{url}/chat/completions", content=body, headers=headers)
        assert refused.status_code == 415 and "Content-Type: application/json" in refused.json()["error"]["message"]
    lower_case_scheme = {"Authorization": f"bearer {API_KEY}", "Content-Type": "application/json"}
    assert httpx.post(f"{url}/chat/completions", content=body, headers=lower_case_scheme).status_code == 200
    for method, path, status in [("GET", "/nowhere", 404), ("DELETE", "/models", 405)]:
        answer = httpx.request(method, url + path, headers={"Authorization": f"Bearer {API_KEY}"})
        assert answer.status_code == status and set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_a_missing_or_wrong_key_is_401_and_never_echoed_or_logged(server, model_id):
    url, _, log = server
    for key in ("sk-wrong-key-abcdef", ""):
        anonymous = openai.OpenAI(base_url=url, api_key=key or "none", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            anonymous.models.list()
        assert key not in str(caught.value.body) or not key
    bare = httpx.get(f"{url}/models")
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
    assert API_KEY not in bare.text
    assert API_KEY not in log.read_text()


def test_an_ipv6_address_is_its_own_allowed_host():
    """Host headers write an IPv6 address in brackets ([::1]:8000): the check, and the URL serve prints, do too."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from tinygpt.serving.server import host_check, url_host

    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))], middleware=[host_check("::1")])
    for base_url, status in [("http://[::1]:8000", 200), ("http://localhost:8000", 200), ("http://evil.example", 400)]:
        assert TestClient(app, base_url=base_url).get("/").status_code == status, base_url
    assert url_host("::1") == "[::1]" and url_host("127.0.0.1") == "127.0.0.1"


def test_a_key_no_header_can_carry_is_refused_without_echoing_it():
    secret = "clé-secrète"
    env = {**os.environ, "TINYGPT_API_KEY": secret}
    command = [sys.executable, "-m", "tinygpt.cli", "serve", "no-such-model"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "tinygpt serve: error: argument --api_key: must be printable ASCII without spaces, as an HTTP header carries it"
    )
    assert secret not in result.stdout + result.stderr


def test_a_reply_is_capped_at_four_times_the_models_max_new_tokens(client, model_id):
    """max_tokens of 2^63 - 1 (and as many min_tokens, so no <EOS>) would hold a slot for good: the reply ends at
    the server's cap, 4 x the model's max_new_tokens (256 for this model), as a reply that reached its length."""
    reply = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "zzz"}],
        temperature=2.0,
        max_tokens=2**63 - 1,
        extra_body={"min_tokens": 2**63 - 1},
        timeout=120,
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 4 * 256


def raw_request(url: str, head: bytes, body_parts: list[bytes], timeout: float = 10) -> tuple[bytes, float]:
    """Send a request over a plain socket, part by part, and read the answer's status line: (status line, seconds
    from the first byte sent to the answer)."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(head)
        for part in body_parts:
            try:
                sock.sendall(part)
            except OSError:  # the server answered and closed: it read no further
                break
        answer = sock.recv(4096)
        return answer.split(b"\r\n")[0], time.monotonic() - started


def test_a_body_past_the_limit_is_refused_unread_while_other_streams_go_on(server, client, model_id):
    url, _, _ = server
    path = "/v1/chat/completions"
    headers = f"Host: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
    tokens, stop = [], threading.Event()

    def stream_meanwhile():
        stream = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "zzz"}], temperature=2.0, max_tokens=100_000,
            extra_body={"min_tokens": 100_000}, stream=True,
        )  # fmt: skip
        with stream:
            for _ in stream:
                tokens.append(time.monotonic())
                if stop.is_set():
                    return

    streaming = threading.Thread(target=stream_meanwhile)
    streaming.start()
    try:
        while not tokens:
            time.sleep(0.05)
        declared = f"POST {path} HTTP/1.1\r\n{headers}Content-Length: {100_000_000}\r\n\r\n".encode()
        status, seconds = raw_request(url, declared, [b"{" + b" " * 65_535] * 1_600)  # 100 MB, if it were read
        assert status == b"HTTP/1.1 413 Request Entity Too Large" and seconds < 1
        chunked = f"POST {path} HTTP/1.1\r\n{headers}Transfer-Encoding: chunked\r\n\r\n".encode()
        chunk = b"10000\r\n" + b" " * 65_536 + b"\r\n"
        status, seconds = raw_request(url, chunked, [chunk] * 1_600)  # no length: cut at the limit
        assert status == b"HTTP/1.1 413 Request Entity Too Large" and seconds < 5
        before = len(tokens)
        time.sleep(0.5)
        assert len(tokens) > before  # the other stream kept streaming
    finally:
        stop.set()
        streaming.join(timeout=60)
