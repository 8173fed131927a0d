"""`python app.py` through gradio_client, as API users see it: streaming, concurrency, long chats, bad models.

The app serves the tiny model of tests/chat_fixtures.py, which answers its few questions exactly when decoding
greedily. A gradio_client Client is one session: its /chat calls form one conversation. The per-session limit is
tested on the page built in-process, its replies held open, so that the test does not race a reply's length.
"""

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import openai
import pytest
from gradio_client import Client

from tests.chat_fixtures import CONVERSATIONS, REPO, running_app
from tests.servers import free_port
from tinygpt.app import page as webui

GREEDY = dict(system_prompt="", temperature=0, top_k=0, top_p=1, max_new_tokens=64)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app():
    return running_app()


def test_chat_endpoint_streams_cumulative_partial_replies(app):
    job = Client(app.url, verbose=False).submit(message="hi", **GREEDY, api_name="/chat")
    partials = list(job)
    assert len(partials) >= 3
    assert all(later.startswith(earlier) for earlier, later in pairwise(partials))
    assert partials[-1] == job.result() == "hello!"


def test_eight_concurrent_clients_all_get_sensible_replies(app):
    questions = [question for question, _ in CONVERSATIONS] * 2

    def ask(question):
        return Client(app.url, verbose=False).predict(message=question, **GREEDY, api_name="/chat")

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(ask, questions))
    assert replies == [answer for _, answer in CONVERSATIONS] * 2


def test_one_session_streams_at_most_two_replies_and_others_still_get_answers(monkeypatch, tmp_path):
    """In-process, with the model's replies held open until released: a third reply of the same session is refused
    while two stream, whoever else asks is answered, and the held replies then finish."""
    release = threading.Event()

    def held_chat(message, *rest):  # stands in for webui.chat: "hold" replies stream until released
        yield f"{message}..."
        if message.startswith("hold"):
            assert release.wait(60)
        yield f"{message}: done"

    monkeypatch.setattr(webui, "chat", held_chat)
    demo = webui.build_app(None, tmp_path)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    try:
        session = Client(url, verbose=False)
        held = [session.submit(message=f"hold {i}", **GREEDY, api_name="/chat") for i in range(2)]
        for job in held:  # both are streaming once each has sent its first partial reply
            deadline = time.monotonic() + 60
            while not job.outputs():
                assert time.monotonic() < deadline, job.status()
                time.sleep(0.05)
        with pytest.raises(Exception, match="already streaming 2 replies"):  # gradio_client's AppError
            session.predict(message="third", **GREEDY, api_name="/chat")
        assert Client(url, verbose=False).predict(message="another session", **GREEDY, api_name="/chat") == (
            "another session: done"
        )
        release.set()
        assert [job.result() for job in held] == ["hold 0: done", "hold 1: done"]
        assert session.predict(message="now", **GREEDY, api_name="/chat") == "now: done"  # its count went back down
    finally:
        release.set()
        demo.close()


def test_a_conversation_longer_than_the_window_keeps_answering(app):
    client = Client(app.url, verbose=False)
    for question, answer in CONVERSATIONS * 3:  # ~12 turns, several times the 64-token window
        assert client.predict(message=question, **GREEDY, api_name="/chat") == answer


def test_sampling_controls_reach_the_model(app):
    short = Client(app.url, verbose=False).predict(message="hi", **{**GREEDY, "max_new_tokens": 3}, api_name="/chat")
    top1 = Client(app.url, verbose=False).predict(
        message="bye", **{**GREEDY, "temperature": 1.5, "top_k": 1}, api_name="/chat"
    )
    assert short == "hel"  # one character a token
    assert top1 == "goodbye!"  # top-1 sampling is greedy, whatever the temperature


def test_the_same_server_answers_the_openai_api_on_the_shared_engine(app):
    client = openai.OpenAI(base_url=f"{app.url}v1", api_key="unused", max_retries=0, timeout=60)
    (model,) = client.models.list()
    browser_like = Client(app.url, verbose=False).submit(message="how are you?", **GREEDY, api_name="/chat")
    reply = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "hi"}], temperature=0)
    assert reply.choices[0].message.content == "hello!"
    assert browser_like.result() == "i am fine, thanks."
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])


def test_model_folder_without_weights_is_one_line_error_without_traceback(app):
    result = subprocess.run(
        [sys.executable, "app.py", "--model", str(app.models_dir / "no-weights"), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("app.py: error:")]
    assert len(error_lines) == 1 and "model.safetensors" in error_lines[0]


def test_int8_without_compiling_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, "app.py", "--int8", "--no-compile"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "app.py: error: --int8 decodes through a compiled step" in result.stderr
    assert "drop --no-compile" in result.stderr


def test_sixteen_endless_api_streams_leave_the_browser_chat_its_share(app):
    """16 API streams asking for 2^63 - 1 tokens (and as many min_tokens) would hold all 16 slots: the API decodes
    half the batch at most, so a browser chat is still answered within seconds."""
    api = openai.OpenAI(base_url=f"{app.url}v1", api_key="none", max_retries=0, timeout=120)
    (model,) = api.models.list()
    stop, started = threading.Event(), []

    def endless():
        stream = api.chat.completions.create(
            model=model.id, messages=[{"role": "user", "content": "zzz"}], temperature=2.0,
            max_tokens=2**63 - 1, extra_body={"min_tokens": 2**63 - 1}, stream=True,
        )  # fmt: skip
        with stream:
            for _ in stream:
                started.append(1)
                if stop.is_set():
                    return

    with ThreadPoolExecutor(max_workers=16) as pool:
        streams = [pool.submit(endless) for _ in range(16)]
        try:
            deadline = time.monotonic() + 60
            while not started and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1)  # every stream has asked by now
            asked = time.monotonic()
            reply = Client(app.url, verbose=False).predict(message="hi", **GREEDY, api_name="/chat")
            assert reply == "hello!" and time.monotonic() - asked < 5
        finally:
            stop.set()
            for stream in streams:
                stream.result(timeout=120)
