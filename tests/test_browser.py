"""The app in a real browser: Playwright driving Debian's Chromium against `python app.py` and a fake Hub.

Screenshots of each step go to test-artifacts/ (gitignored). Gradio pages never reach "networkidle" (the queue
keeps a connection open), so every step waits on a locator instead. The chat textbox is #chat-input, bot
messages are [data-testid=bot].
"""

import re
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from playwright.sync_api import Page, expect

from tests.chat_fixtures import HUB_TOKEN, REPO, running_app
from tests.train_cli import write_corpus

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts"
pytestmark = [pytest.mark.browser, pytest.mark.slow]
expect.set_options(timeout=60_000)  # a busy 2-core machine can take seconds per step


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright launches Debian's Chromium (never `playwright install`)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


@pytest.fixture(scope="module")
def app():
    return running_app()


@pytest.fixture
def chat_page(page: Page, app) -> Page:
    page.goto(app.url)
    expect(page.locator("#chat-input textarea")).to_be_editable()
    return page


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def set_number(page: Page, elem_id: str, value) -> None:
    """Type into a slider's number box; Gradio takes the value on blur."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.blur()


def send(page: Page, message: str) -> None:
    page.locator("#chat-input textarea").fill(message)
    page.locator("#chat-input textarea").press("Enter")


def last_reply(page: Page):
    return page.locator("#chatbot [data-testid=bot]").last


def test_chat_streams_a_reply_and_controls_change_it(chat_page: Page):
    page = chat_page
    # Record every text the newest bot message shows, to see the reply grow.
    page.evaluate(
        """() => {
            window.botTexts = [];
            new MutationObserver(() => {
                const bots = document.querySelectorAll('#chatbot [data-testid=bot]');
                const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
                if (text && text !== window.botTexts.at(-1)) window.botTexts.push(text);
            }).observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});
        }"""
    )
    # The controls open at the model's generation_config: this model's is greedy.
    expect(page.locator("#temperature input[type=number]")).to_have_value("0")
    send(page, "how are you?")
    expect(last_reply(page)).to_have_text("i am fine, thanks.")
    seen = page.evaluate("window.botTexts")
    assert len(seen) >= 3, seen  # it grew in steps: streamed, not shown at once
    assert seen[-1] == "i am fine, thanks." and all("i am fine, thanks.".startswith(text) for text in seen), seen
    screenshot(page, "chat-reply")

    set_number(page, "max-new-tokens", 3)  # a control the reply visibly obeys
    send(page, "hi")
    expect(page.locator("#chatbot [data-testid=bot]")).to_have_count(2)
    expect(last_reply(page)).to_have_text("hel")  # greedy "hello!" cut to 3 characters
    screenshot(page, "chat-max-new-tokens")


def test_push_to_the_hub_then_pull_it_back(chat_page: Page, app):
    page = chat_page
    page.get_by_role("tab", name="Hub").click()
    page.locator("#push-repo textarea, #push-repo input").first.fill("tester/chat-model")
    page.locator("#push-token input").fill(HUB_TOKEN)
    page.locator("#push-message textarea, #push-message input").first.fill("browser push")
    page.locator("#push-button").click()
    expect(page.locator("#push-status")).to_contain_text(f"to {app.hub_url}/tester/chat-model", timeout=120_000)
    expect(page.locator("#push-status")).to_contain_text("Pushed")
    expect(page.locator("#push-token input")).to_have_value("")  # the token is cleared from the page
    screenshot(page, "hub-pushed")
    files = HfApi(endpoint=app.hub_url).list_repo_files("tester/chat-model")
    assert {"model.safetensors", "config.json", "vocab.json", "modeling_tinygpt.py", "README.md"} <= set(files)

    page.get_by_role("tab", name="Model").click()
    page.locator("#pull-repo textarea, #pull-repo input").first.fill("tester/chat-model")
    page.locator("#pull-button").click()
    expect(page.locator("#model-status")).to_contain_text("Pulled and loaded tester/chat-model", timeout=120_000)
    expect(page.locator("#model-info")).to_contain_text("TinyGPTCharTokenizer")
    expect(page.locator("#loss-plot")).to_be_visible()  # its training curve travels with it (loss.png)
    screenshot(page, "model-pulled")

    page.get_by_role("tab", name="Chat").click()
    set_number(page, "temperature", 0)
    send(page, "bye")
    expect(last_reply(page)).to_have_text("goodbye!")  # the pulled copy answers like the original
    assert HUB_TOKEN not in page.content()
    assert HUB_TOKEN not in app.log.read_text()


def test_a_pull_of_a_crafted_repo_holds_up_no_other_visitors_pull(chat_page: Page, app, browser, tmp_path):
    """One visitor pulls a repo whose chat template loops for hours (refused after the template's time budget);
    another visitor's Pull, started after it, is done before it."""
    import shutil

    from tests.chat_fixtures import trained_chat_model

    crafted = shutil.copytree(trained_chat_model(), tmp_path / "crafted")
    (crafted / "chat_template.jinja").write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    )
    api = HfApi(endpoint=app.hub_url, token=HUB_TOKEN)
    for repo_id, folder in (("tester/looping-template", crafted), ("tester/other-model", trained_chat_model())):
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, allow_patterns=["*.json", "*.safetensors", "*.jinja"])
    other = browser.new_page()
    other.goto(app.url)
    for page, repo_id in ((chat_page, "tester/looping-template"), (other, "tester/other-model")):
        page.get_by_role("tab", name="Model").click()
        page.locator("#pull-repo textarea, #pull-repo input").first.fill(repo_id)
    chat_page.locator("#pull-button").click()
    other.locator("#pull-button").click()
    expect(other.locator("#model-status")).to_contain_text("Pulled and loaded tester/other-model", timeout=60_000)
    expect(chat_page.locator("#model-status")).not_to_contain_text("chat template")  # still on its template
    expect(chat_page.locator("#model-status")).to_contain_text("its chat template does not render", timeout=60_000)
    other.close()


def test_errors_are_one_line_messages_and_the_app_keeps_serving(chat_page: Page, app):
    page = chat_page
    page.get_by_role("tab", name="Hub").click()
    repo_box = page.locator("#push-repo textarea, #push-repo input").first
    status = page.locator("#push-status")
    for repo_id, token, message in [
        ("not a repo id", HUB_TOKEN, "is not a Hub repo id"),
        ("tester/chat-model", "hf_wrong_token", "refused the token (401"),
        ("tester/server-error", HUB_TOKEN, "server error (500)"),
    ]:
        repo_box.fill(repo_id)
        page.locator("#push-token input").fill(token)
        page.locator("#push-button").click()
        expect(status).to_contain_text(message, timeout=120_000)
        expect(page.locator("#push-token input")).to_have_value("")
    screenshot(page, "hub-error")

    page.get_by_role("tab", name="Model").click()
    expect(page.locator("#model-info")).to_contain_text("parameters")  # the model the app started with
    expect(page.locator("#model-info")).to_contain_text("eval loss: 0.")  # from its all_results.json
    expect(page.locator("#loss-plot img")).to_be_visible()  # its loss.png
    page.locator("#pull-repo textarea, #pull-repo input").first.fill("tester/missing")
    page.locator("#pull-button").click()
    expect(page.locator("#model-status")).to_contain_text("tester/missing was not found", timeout=120_000)
    page.locator("#local-model input").fill(str(app.models_dir / "no-weights"))
    page.locator("#local-model input").press("Enter")
    page.locator("#load-button").click()
    expect(page.locator("#model-status")).to_contain_text("no model.safetensors")
    screenshot(page, "model-error")

    page.get_by_role("tab", name="Chat").click()  # the session still chats with the model it had
    set_number(page, "temperature", 0)
    send(page, "hi")
    expect(last_reply(page)).to_have_text("hello!")
    assert "hf_wrong_token" not in app.log.read_text() and HUB_TOKEN not in app.log.read_text()


def test_train_tab_trains_an_upload_live_and_the_model_chats(chat_page: Page, tmp_path):
    page = chat_page
    page.get_by_role("tab", name="Train").click()
    # Record every status line and count the curve's redraws while the run goes.
    page.evaluate(
        """() => {
            window.trainStatus = [];
            window.curveRedraws = 0;
            const status = document.querySelector('#train-status');
            new MutationObserver(() => {
                const text = status.innerText.trim();
                if (text !== window.trainStatus.at(-1)) window.trainStatus.push(text);
            }).observe(status, {subtree: true, childList: true, characterData: true});
            new MutationObserver(() => window.curveRedraws++).observe(
                document.querySelector('#train-curve'), {subtree: true, childList: true});
        }"""
    )
    page.locator("#train-file input[type=file]").set_input_files(str(write_corpus(tmp_path / "my-text.txt")))
    expect(page.locator("#train-file")).to_contain_text("my-text.txt")
    set_number(page, "train-steps", 60)
    page.get_by_text("Model and optimizer").click()
    set_number(page, "train-n_embd", 64)
    set_number(page, "train-block_size", 64)
    page.locator("#train-start").click()
    expect(page.locator("#train-status")).to_contain_text("step", timeout=120_000)
    screenshot(page, "train-running")
    expect(page.locator("#train-status")).to_contain_text("Finished", timeout=180_000)
    expect(page.locator("#train-log textarea")).to_have_value(re.compile("my-text.txt"))
    expect(page.locator("#train-curve canvas, #train-curve svg").first).to_be_visible()
    screenshot(page, "train-finished")
    steps = {int(m) for text in page.evaluate("window.trainStatus") for m in re.findall(r"step (\d+)/60", text)}
    assert len(steps - {0}) >= 2, page.evaluate("window.trainStatus")  # progress streamed, not shown at the end
    assert page.evaluate("window.curveRedraws") >= 2

    page.get_by_role("tab", name="Model").click()
    expect(page.locator("#local-model input")).to_have_value(re.compile(r"train-tiny-"))  # chosen in the picker
    page.locator("#load-button").click()
    expect(page.locator("#model-status")).to_contain_text("Loaded")
    expect(page.locator("#model-info")).to_contain_text("train-tiny-")
    screenshot(page, "train-model-loaded")

    page.get_by_role("tab", name="Chat").click()
    set_number(page, "max-new-tokens", 20)
    send(page, "the king")
    expect(last_reply(page)).to_have_text(re.compile(r"\S"))  # the new model answers (text it learned, roughly)
    screenshot(page, "train-model-chat")


def test_a_train_run_stays_its_owners_after_a_reload_and_strangers_cannot_stop_it(
    chat_page: Page, browser, app, tmp_path
):
    """The run belongs to this browser (its token in gr.BrowserState), not to the page's Gradio session: after a
    reload its owner still stops and resumes it; another browser can do neither. A stop shows the step of the
    checkpoint it saved."""
    page = chat_page
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-file input[type=file]").set_input_files(str(write_corpus(tmp_path / "long.txt", words=20000)))
    expect(page.locator("#train-file")).to_contain_text("long.txt")
    set_number(page, "train-steps", 30000)
    page.get_by_text("Model and optimizer").click()
    for knob, value in (("n_layer", 1), ("n_embd", 32), ("block_size", 32), ("per_device_train_batch_size", 8)):
        set_number(page, f"train-{knob}", value)
    page.locator("#train-start").click()
    status = page.locator("#train-status")
    expect(status).to_contain_text(re.compile(r"step [1-9]\d*/30000"), timeout=120_000)
    name = re.search(r"train-tiny-[\w-]+", status.inner_text()).group(0)

    page.reload()  # a new Gradio session; the same browser
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-stop").click()
    expect(status).to_contain_text(f"Stopped {name} at step", timeout=120_000)
    step = int(re.search(r"at step (\d+)", status.inner_text()).group(1))
    folder = app.models_dir / name
    assert step == max(int(path.name.split("-")[1]) for path in folder.glob("checkpoint-*")) > 0
    assert not (folder / "model.safetensors").exists()
    expect(page.locator("#train-log textarea")).to_have_value(re.compile(f"stopped at step {step} as asked"))
    screenshot(page, "train-stopped-after-reload")

    stranger = browser.new_context().new_page()
    stranger.goto(app.url)
    stranger.get_by_role("tab", name="Train").click()
    stranger_status = stranger.locator("#train-status")
    stranger.locator("#train-resume").click()
    expect(stranger_status).to_contain_text(f"only the visitor who started {name} can resume it")
    page.locator("#train-resume").click()
    expect(status).to_contain_text(re.compile(rf"Training {name}: step \d+/30000"), timeout=120_000)
    stranger.locator("#train-stop").click()
    expect(stranger_status).to_have_text(f"Only the visitor who started {name} can stop it.")
    stranger.locator("#train-start").click()
    expect(stranger_status).to_contain_text(f"busy: {name} (started by another visitor)")
    page.locator("#train-stop").click()
    expect(status).to_contain_text(f"Stopped {name} at step", timeout=120_000)
    stranger.context.close()
